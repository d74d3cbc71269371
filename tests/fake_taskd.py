"""A real local HTTP server standing in for taskd (or a proxy before it), answering as each test scripts it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def fake_taskd(routes: dict[str, Handler]) -> AsyncIterator[str]:
    """Serve `routes` ({path: handler}, any method) on a free port; yields the base URL."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    # A handler a test left hanging (a server that never answers) is not waited for at the end.
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def event_stream(request: web.Request, *chunks: bytes) -> web.StreamResponse:
    """A text/event-stream answer that sends `chunks` and ends."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for chunk in chunks:
        await response.write(chunk)
    return response
