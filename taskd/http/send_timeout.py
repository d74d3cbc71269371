"""A client that stops taking its answer loses the connection after `http.send_timeout` seconds.

aiohttp has no write timeout: a client that sends a request and then reads nothing (its TCP window
shut) held the connection, the handler's task and all of the answer not yet in the kernel (a page
of the task list can be tens of MB) for as long as it stayed connected, and an event stream's place
among its key's `limits.open_streams`. The kernel bounds it as nginx's `send_timeout` does: with
TCP_USER_TIMEOUT, a connection whose sent data stays unacknowledged, or whose window stays shut,
that long is reset, and the write waiting on it ends in the ConnectionResetError aiohttp and the
event streams already take for a client gone. A client reading slowly but reading is not cut off.
Only Linux has the option; elsewhere nothing is set.
"""

from __future__ import annotations

import contextlib
import socket

from aiohttp import web

from taskd.http.context import API

_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def install(app: web.Application) -> None:
    """Bound, on every connection an answer is sent on, how long the client may leave it untaken."""
    option: int | None = getattr(socket, "TCP_USER_TIMEOUT", None)  # None on macOS, Windows
    if option is None:
        return
    milliseconds = max(1, round(app[API].config.http.send_timeout * 1000))

    async def bound_sending(request: web.Request, response: web.StreamResponse) -> None:
        # Set as each answer starts: a connection only needs it once something is sent on it, and a
        # setsockopt costs less than remembering which connections already have it.
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None and sock.family in _TCP_FAMILIES:
            # A connection the client has just torn down has nothing left to bound.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, milliseconds)

    app.on_response_prepare.append(bound_sending)
