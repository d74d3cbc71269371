"""A client that stops taking its answer loses the connection after `http.send_timeout` seconds.

aiohttp has no write timeout: a client that sends a request and then reads nothing (its TCP window
shut) held the connection, the handler's task and all of the answer not yet in the kernel (a page
of the task list can be tens of MB) for as long as it stayed connected, and an event stream's place
among its key's `limits.open_streams`. The kernel bounds it as nginx's `send_timeout` does: with
TCP_USER_TIMEOUT, a connection whose sent data stays unacknowledged, or whose window stays shut,
that long is reset, and the write waiting on it ends in the ConnectionResetError aiohttp and the
event streams already take for a client gone. A client reading slowly but reading is not cut off.
Only Linux has the option; elsewhere nothing is set.

The option is set once, on the listening sockets: Linux copies it to every connection they accept.
It was set on each connection as each answer started, a socket object made and a setsockopt for
every response (~3 µs of a submit's ~130 µs of the API's CPU, docs/performance.md). Until
something is sent, the option has nothing to time, so a connection bounded from its accept behaves
as one bounded at its first answer.
"""

from __future__ import annotations

import socket

from aiohttp import web

_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


class BoundedSite(web.TCPSite):
    """A TCPSite whose connections are reset once what it sent stays untaken `send_timeout` seconds."""

    __slots__ = ("_send_timeout",)

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, send_timeout: float) -> None:
        super().__init__(runner, host, port)
        self._send_timeout = send_timeout

    async def start(self) -> None:
        """Listen, then bound the listening sockets, before anything is told where they listen."""
        await super().start()
        option: int | None = getattr(socket, "TCP_USER_TIMEOUT", None)  # None on macOS, Windows
        if option is None or self._server is None:
            return
        milliseconds = max(1, round(self._send_timeout * 1000))
        for sock in self._server.sockets:  # type: ignore[attr-defined]
            if sock.family in _TCP_FAMILIES:
                sock.setsockopt(socket.IPPROTO_TCP, option, milliseconds)
