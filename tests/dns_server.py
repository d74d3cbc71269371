"""A real DNS server on loopback (UDP) for tests: A records from a table, and names it never answers."""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from typing import cast

A, AAAA = 1, 28
NXDOMAIN = 3


class DnsServer(asyncio.DatagramProtocol):
    """Answers an A query for a name of `addresses` with its address; never answers a name ending in
    one of `silent` (a DNS server that hangs); any other name is NXDOMAIN, and AAAA is empty."""

    def __init__(self, addresses: dict[str, str], silent: tuple[str, ...] = ()) -> None:
        self.addresses = addresses
        self.silent = silent
        self.queries: list[str] = []  # the names asked, in order
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None

    @property
    def nameserver(self) -> str:
        """This server as c-ares names one: host:port."""
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> DnsServer:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self.port = transport.get_extra_info("sockname")[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        ident = data[:2]
        labels, at = [], 12
        while data[at]:
            labels.append(data[at + 1 : at + 1 + data[at]].decode())
            at += data[at] + 1
        question = data[12 : at + 5]
        qtype = struct.unpack(">H", data[at + 1 : at + 3])[0]
        name = ".".join(labels).lower()
        self.queries.append(name)
        if self.silent and name.endswith(self.silent):
            return
        answers = b""
        address = self.addresses.get(name)
        if address is not None and qtype == A:
            answers = b"\xc0\x0c" + struct.pack(">HHIH", A, 1, 60, 4) + ipaddress.IPv4Address(address).packed
        flags = 0x8180 | (0 if address is not None else NXDOMAIN)
        header = ident + struct.pack(">HHHHH", flags, 1, 1 if answers else 0, 0, 0)
        assert self._transport is not None
        self._transport.sendto(header + question + answers, addr)
