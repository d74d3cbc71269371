"""A real local HTTP server that receives webhooks, answering from a script of statuses, hangs and redirects."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import orjson
from aiohttp import web

DOCS = Path(__file__).resolve().parents[1] / "docs"
WEBHOOKS_DOC = DOCS / "webhooks.md"
SECURITY_DOC = DOCS / "security.md"


def documented_verify() -> Callable[[str, Mapping[str, str], bytes], bool]:
    """The `verify` of docs/webhooks.md's example, run as a receiver that copied it would run it."""
    (example,) = re.findall(
        r"```python\n(import base64, hashlib.*?def verify\(.*?)```", WEBHOOKS_DOC.read_text(), re.S
    )
    namespace: dict[str, Any] = {}
    exec(compile(example, str(WEBHOOKS_DOC), "exec"), namespace)
    verify: Callable[[str, Mapping[str, str], bytes], bool] = namespace["verify"]
    return verify


def documented_verified(secret: str) -> Callable[[bytes, Mapping[str, str]], Any]:
    """The `verified` of security.md's `standardwebhooks` example, holding `secret` where it says `whsec_…`."""
    (example,) = re.findall(
        r"```python\n(from standardwebhooks import Webhook\n.*?def verified\(.*?)```",
        SECURITY_DOC.read_text(),
        re.S,
    )
    namespace: dict[str, Any] = {}
    exec(compile(example.replace('"whsec_…"', repr(secret)), str(SECURITY_DOC), "exec"), namespace)
    verified: Callable[[bytes, Mapping[str, str]], Any] = namespace["verified"]
    return verified


@attrs.frozen
class Received:
    """One request the receiver got."""

    at: float  # time.monotonic() on arrival
    wall: float  # time.time() on arrival
    path: str
    headers: dict[str, str]
    body: bytes
    peer: str  # the sender's end of the connection, host:port: one per connection it opened

    @property
    def json(self) -> Any:
        """The body decoded."""
        return orjson.loads(self.body)


@attrs.frozen
class _Hang:
    seconds: float


@attrs.frozen
class _Redirect:
    location: str
    status: int = 302


class WebhookReceiver:
    """`POST /<any path>`: records the request, then answers with the next scripted behaviour (default 200)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.default_status = 200
        self._script: deque[int | _Hang | _Redirect] = deque()
        self._arrived = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self, path: str = "/hook") -> str:
        """A callback URL on this receiver."""
        return f"http://127.0.0.1:{self.port}{path}"

    def respond(self, *statuses: int) -> None:
        """Answer the next requests with these statuses, in order."""
        self._script.extend(statuses)

    def always(self, status: int) -> None:
        """Answer every unscripted request with `status`."""
        self.default_status = status

    def hang(self, seconds: float) -> None:
        """Hold the next request `seconds` (or until stop) before answering 200."""
        self._script.append(_Hang(seconds))

    def redirect(self, location: str, status: int = 302) -> None:
        """Answer the next request with a redirect to `location`."""
        self._script.append(_Redirect(location, status))

    def at(self, path: str) -> list[Received]:
        """Requests that arrived at `path`."""
        return [request for request in self.received if request.path == path]

    async def wait_for(self, count: int, timeout: float = 20) -> list[Received]:
        """Wait until `count` requests have arrived; return them all."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= count)
        return list(self.received)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with self._arrived:
            headers = {name.lower(): value for name, value in request.headers.items()}
            host, port = request.transport.get_extra_info("peername") if request.transport else ("?", 0)
            self.received.append(
                Received(time.monotonic(), time.time(), request.path, headers, body, f"{host}:{port}")
            )
            self._arrived.notify_all()
        behaviour = self._script.popleft() if self._script else self.default_status
        if isinstance(behaviour, _Hang):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), behaviour.seconds)
            return web.Response(status=200)
        if isinstance(behaviour, _Redirect):
            return web.Response(status=behaviour.status, headers={"Location": behaviour.location})
        return web.json_response({"received": True}, status=behaviour)

    async def __aenter__(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
