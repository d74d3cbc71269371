"""Keep-alive HTTP/1.1 connections to webhook receivers: a pool for each receiver, a POST answered by its status.

The sender's own client when there is no egress proxy and no tracing (WebhookSender picks it).
A webhook is one small POST, usually to a receiver that sat idle, and aiohttp's request path
(building a ClientRequest, its timer, its writer task) took about 0.4 ms of Python on a CPU woken
from idle: more than the store's write before it. This client does only what a webhook needs:
the request written in one send, the answer parsed by httptools (llhttp, the parser of Node.js),
the connection kept for the next POST to the same receiver. It never follows a redirect, never
reads more than MAX_BODY of an answer, and connects only to the addresses its resolver returns:
GuardedResolver's, which has checked every one (the SSRF guard, as for aiohttp's connector).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import socket
import ssl
from collections.abc import Callable, Mapping
from typing import cast

import httptools
from aiohttp import BasicAuth
from aiohttp.abc import AbstractResolver
from yarl import URL

from taskd.net.guard import host_and_port, parse_ip

MAX_HEAD = 64 * 1024  # bytes of an answer's status line and headers
MAX_BODY = 64 * 1024  # bytes of an answer's body read to keep its connection; past it, closed
KEEPALIVE = 15.0  # seconds an idle connection is kept, aiohttp's default
# Connections per receiver kept after their answer's status while its body still comes, to be reused
# once it ends; past these, such a connection is closed. The sender passes webhooks.max_per_receiver.
MAX_DRAINING = 32

Receiver = tuple[str, str, int]  # scheme, host, port: one pool each


class BadResponse(ConnectionError):
    """The receiver's answer is not HTTP/1.x, or its head is over MAX_HEAD."""


class _Connection(asyncio.Protocol):
    """One connection to a receiver: one request at a time, its answer parsed as it arrives.

    `request` returns a future that is the answer's status once its headers are in. The body
    (usually in the same read) is counted, not kept; once the answer ends, `on_end` runs if the
    connection may carry another request.
    """

    def __init__(self, on_lost: Callable[[_Connection], None]) -> None:
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[int] | None = None
        self._head = 0  # bytes read before the answer's headers were complete
        self._body = 0
        self.answered = False  # the final (not 1xx) answer's headers are in
        self.ended = False  # ... and its body too
        self.reusable = False  # it ended, and it allows another request on this connection
        self.on_end: Callable[[], None] | None = None
        self.expiry: asyncio.TimerHandle | None = None

    def request(self, data: list[bytes]) -> asyncio.Future[int]:
        """Send a request (its head and body); a future of the answer's status."""
        assert self.transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._answer.add_done_callback(_unheeded)
        self._head = self._body = 0
        self.answered = self.ended = self.reusable = False
        self.transport.writelines(data)
        return self._answer

    def close(self) -> None:
        """Close the connection; an answer still awaited fails."""
        self.reusable = False
        if self.expiry is not None:
            self.expiry.cancel()
        if self.transport is not None:
            self.transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is one without the subclass

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self.ended:  # no request in flight: the receiver speaks out of turn
            self.close()
            return
        if not self.answered:
            self._head += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # 101: whatever follows is not HTTP
            self.close()
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"the receiver's answer is not HTTP: {exc}"))
            return
        if not self.answered and self._head > MAX_HEAD:
            # Everything read so far is head: a cap on what an endless header costs.
            self._fail(BadResponse(f"the receiver's answer has a head over {MAX_HEAD} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self.expiry is not None:
            self.expiry.cancel()
        self._on_lost(self)
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(
                exc or ConnectionResetError("the receiver closed the connection before answering")
            )

    def _fail(self, exc: Exception) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc)
        self.close()

    # httptools' callbacks

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # informational (103 Early Hints): the answer follows
            return
        self.answered = True
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(status)

    def on_body(self, body: bytes) -> None:
        self._body += len(body)
        if self._body > MAX_BODY:
            self.close()

    def on_message_complete(self) -> None:
        if not self.answered:  # the end of an informational answer
            self._head = 0
            return
        self.ended = True
        assert self.transport is not None
        self.reusable = not self.transport.is_closing() and self._parser.should_keep_alive()
        if self.reusable and self.on_end is not None:
            on_end, self.on_end = self.on_end, None
            on_end()


class ReceiverConnections:
    """POSTs over keep-alive connections, pooled per receiver (scheme, host, port).

    An answered connection goes back to its receiver's pool once its answer has ended, for
    KEEPALIVE seconds at most; the most recently used is taken first. A POST that fails on a
    reused connection before any answer (the receiver closed it while it sat idle) is sent once
    more on a new one: a webhook is delivered at least once, and its `webhook-id` lets a receiver
    that did get the first one see the second as the same.
    """

    def __init__(
        self,
        resolver: AbstractResolver,
        *,
        tls: ssl.SSLContext | None = None,
        keepalive: float = KEEPALIVE,
        max_draining: int = MAX_DRAINING,
    ) -> None:
        self._resolver = resolver
        self._tls = tls  # made on the first https connection: loading the CA store costs memory
        self._keepalive = keepalive
        self._max_draining = max_draining
        self._idle: dict[Receiver, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        # Connections whose answer's status is in and its body not yet, by receiver (_exchange).
        self._draining: dict[_Connection, Receiver] = {}
        self._draining_to: collections.Counter[Receiver] = collections.Counter()

    def post(self, url: URL, headers: Mapping[str, str], body: bytes) -> asyncio.Future[int]:
        """POST `body` to `url`: a future of the answer's status.

        On a connection kept for this receiver the request is written before post() returns, so a
        caller in the middle of other work sends it without waiting for a turn of the loop;
        otherwise it is written once a new connection is made. Raises ValueError at once for a line
        break in the URL or a header. The future fails with OSError: ForbiddenAddress from the
        resolver, a connection that fails or closes before the answer, BadResponse. Cancelling it
        closes the connection.
        """
        host, port = host_and_port(url)
        receiver = _receiver(url.scheme, host, port)
        data = [_request_head(url, headers, len(body)), body]
        reused = self._take(receiver)
        written = None if reused is None else (reused, reused.request(data))
        status = asyncio.ensure_future(self._answer(receiver, url.scheme, host, port, data, written))
        status.add_done_callback(_unheeded)
        return status

    async def _answer(
        self,
        receiver: Receiver,
        scheme: str,
        host: str,
        port: int,
        data: list[bytes],
        written: tuple[_Connection, asyncio.Future[int]] | None,
    ) -> int:
        if written is not None:
            reused, answer = written
            try:
                return await self._exchange(receiver, reused, answer)
            except ConnectionError as exc:
                if isinstance(exc, BadResponse):
                    raise
                # Closed while it sat idle, nothing answered: its idle siblings are likely closed too.
                for stale in self._idle.pop(receiver, []):
                    stale.close()
        connection = await self._connect(scheme, host, port)
        return await self._exchange(receiver, connection, connection.request(data))

    async def _exchange(
        self, receiver: Receiver, connection: _Connection, answer: asyncio.Future[int]
    ) -> int:
        try:
            status = await answer
        except BaseException:
            connection.close()
            raise
        if connection.ended:
            self._give_back(receiver, connection)
        elif self._draining_to[receiver] >= self._max_draining:
            # A receiver that answers and then trickles (or never sends) its body would otherwise keep
            # a connection, a file descriptor, per webhook for KEEPALIVE seconds: as many as webhooks
            # reach it in that time, past its webhooks.max_per_receiver places.
            connection.close()
        else:  # the body is still coming: the connection goes back if it ends in time
            self._draining[connection] = receiver
            self._draining_to[receiver] += 1
            connection.on_end = functools.partial(self._drained_back, receiver, connection)
            connection.expiry = asyncio.get_running_loop().call_later(self._keepalive, connection.close)
        return status

    def close(self) -> None:
        """Close every connection, idle or not."""
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()
        self._draining.clear()
        self._draining_to.clear()

    def _take(self, receiver: Receiver) -> _Connection | None:
        idle = self._idle.pop(receiver, [])
        while idle:
            connection = idle.pop()
            if connection.expiry is not None:
                connection.expiry.cancel()
            if connection.reusable:
                if idle:  # a receiver's pool is dropped once empty: callback hosts come and go
                    self._idle[receiver] = idle
                return connection
            connection.close()
        return None

    def _drained_back(self, receiver: Receiver, connection: _Connection) -> None:
        self._drained(connection)
        self._give_back(receiver, connection)

    def _drained(self, connection: _Connection) -> None:
        # Its answer's body ended, or the connection closed first (over MAX_BODY, KEEPALIVE passed, the
        # receiver closed it): either way it no longer counts against its receiver's MAX_DRAINING.
        receiver = self._draining.pop(connection, None)
        if receiver is not None:
            self._draining_to[receiver] -= 1
            if not self._draining_to[receiver]:
                del self._draining_to[receiver]

    def _lost(self, connection: _Connection) -> None:
        self._open.discard(connection)
        self._drained(connection)

    def _give_back(self, receiver: Receiver, connection: _Connection) -> None:
        if not connection.reusable:
            connection.close()
            return
        if connection.expiry is not None:
            connection.expiry.cancel()
        idle = self._idle.setdefault(receiver, [])
        idle.append(connection)
        connection.expiry = asyncio.get_running_loop().call_later(
            self._keepalive, self._expire, receiver, connection
        )

    def _expire(self, receiver: Receiver, connection: _Connection) -> None:
        idle = self._idle.get(receiver, [])
        if connection in idle:
            idle.remove(connection)
        if not idle:
            self._idle.pop(receiver, None)
        connection.close()

    async def _connect(self, scheme: str, host: str, port: int) -> _Connection:
        tls = self._tls_context() if scheme == "https" else None
        literal = parse_ip(host)
        if literal is not None:
            # The address the sender checked (check_literal_host): the resolver is not asked, as
            # aiohttp does not ask it either; 127.1 and 0x7f000001 connect where they were checked.
            targets: list[tuple[str, int]] = [(str(literal), socket.AF_UNSPEC)]
        else:
            found = await self._resolver.resolve(host, port, socket.AF_UNSPEC)
            targets = [(result["host"], result["family"]) for result in found]
        loop = asyncio.get_running_loop()
        failure: OSError = OSError(f"{host} has no address")
        for address, family in targets:
            try:
                _, connection = await loop.create_connection(
                    functools.partial(_Connection, self._lost),
                    address,
                    port,
                    family=family,
                    ssl=tls,
                    server_hostname=host if tls else None,
                )
            except OSError as exc:
                failure = exc
                continue
            self._open.add(connection)
            return connection
        raise failure

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()  # certificates and host names checked
        return self._tls


def _receiver(scheme: str, host: str, port: int) -> Receiver:
    return (scheme, host.lower(), port)


@functools.lru_cache(maxsize=1024)
def receiver_of(url: str) -> Receiver | None:
    """The receiver a callback URL names, as its connections are pooled; None for one that cannot
    be sent (its POST fails and is recorded as such). Cached: a service's webhooks go to a few URLs."""
    try:
        target = URL(url)
        host, port = host_and_port(target)
    except (ValueError, OSError):  # not a URL; not http(s) with a host (NotHttp)
        return None
    return _receiver(target.scheme, host, port)


def _unheeded(answer: asyncio.Future[int]) -> None:
    # A POST written and then left by its caller (a shutdown between the write and the wait) fails
    # when its connection closes, with nobody left to tell: that is not worth a line in the log.
    if not answer.cancelled():
        answer.exception()


def _request_head(url: URL, headers: Mapping[str, str], length: int) -> bytes:
    lines = [f"POST {url.raw_path_qs} HTTP/1.1", f"Host: {url.host_port_subcomponent}"]
    auth = BasicAuth.from_url(url)  # credentials in the URL, sent as aiohttp sends them
    if auth is not None:
        lines.append(f"Authorization: {auth.encode()}")
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    lines.append(f"Content-Length: {length}")
    if any("\r" in line or "\n" in line for line in lines):
        raise ValueError("a line break in the request's URL or headers")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
