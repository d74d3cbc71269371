"""The SSRF guard (OWASP, the webhook case): callbacks go only to public addresses, checked where connected.

At submit the URL's host is resolved and every address checked. At send time the connection goes
through GuardedResolver: the one DNS lookup of the attempt is checked and its addresses are the
ones connected to, so a name that re-resolves to an internal address (DNS rebinding) gets nowhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Iterable

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from taskd.model import ValidationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

RESOLVE_TIMEOUT = 5.0
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class ForbiddenAddress(OSError):
    """A callback host that is, or resolves to, an address taskd must not connect to."""


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    # IPv6 forms that carry an IPv4 address and reach it: mapped, 6to4, Teredo, NAT64, compatible.
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64 or int(ip) >> 32 == 0:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    """True for a global unicast address; loopback, private, CGNAT, link-local, multicast... are not."""
    if ip.is_multicast or not ip.is_global:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return is_public(embedded)
    return True


def parse_ip(text: str) -> IPAddress | None:
    """The address in `text` (brackets and an IPv6 zone allowed), or None for a name."""
    try:
        return ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def check_addresses(
    host: str, addresses: Iterable[str], allowed: Callable[[IPAddress], bool] = is_public
) -> None:
    """Raise ForbiddenAddress unless every one of `addresses` is public (or passes `allowed`)."""
    for address in addresses:
        ip = parse_ip(address)
        if ip is None or not allowed(ip):
            where = host if address == host else f"{host} ({address})"
            raise ForbiddenAddress(f"{where} is not a public address")


def _host_and_port(url: str) -> tuple[str, int]:
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise ForbiddenAddress("only http and https URLs with a host are allowed")
    return parsed.raw_host, parsed.port or 80


async def check_callback_url(url: str, *, allow_private: bool, timeout: float = RESOLVE_TIMEOUT) -> None:
    """Refuse, as a 400 on `callback_url`, a URL whose host is or resolves to a non-public address."""
    if allow_private:
        return
    try:
        host, port = _host_and_port(url)
        literal = parse_ip(host)
        if literal is not None:
            check_addresses(host, [str(literal)])
            return
        async with asyncio.timeout(timeout):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        check_addresses(host, [str(info[4][0]) for info in infos])
    except ForbiddenAddress as exc:
        raise ValidationError(
            {"callback_url": f"Callback URL must point to a public address: {exc}"}
        ) from None
    except (OSError, TimeoutError, ValueError):
        raise ValidationError({"callback_url": f"Callback URL host could not be resolved: {url}"}) from None


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that returns a name's addresses only if every one is public.

    aiohttp connects to exactly what a resolver returns, so the checked addresses are the ones
    used; the URL, its Host header and TLS server name are left as they are. Names in `exempt`
    (the egress proxy) are resolved unchecked.
    """

    def __init__(
        self,
        base: AbstractResolver | None = None,
        exempt: Iterable[str] = (),
        allowed: Callable[[IPAddress], bool] = is_public,
    ) -> None:
        self._base = base
        self._exempt = frozenset(exempt)
        self._allowed = allowed

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve `host` and check every address; raise ForbiddenAddress if any is not public."""
        if self._base is None:
            self._base = ThreadedResolver()
        results = await self._base.resolve(host, port, family)
        if host not in self._exempt:
            check_addresses(host, [result["host"] for result in results], self._allowed)
        return results

    async def close(self) -> None:
        """Close the resolver underneath."""
        if self._base is not None:
            await self._base.close()


def check_literal_host(url: str) -> None:
    """Raise ForbiddenAddress for a non-http(s) URL or an IP-literal host that is not public.

    aiohttp does not ask the resolver about IP literals, so they are checked here before sending.
    """
    host, _ = _host_and_port(url)
    if parse_ip(host) is not None:
        check_addresses(host, [host])
