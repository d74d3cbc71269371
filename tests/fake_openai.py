"""A real local HTTP server speaking the OpenAI Chat Completions protocol, scripted by tests."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import attrs
import orjson
from aiohttp import web

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


@attrs.frozen
class Recorded:
    """One request the server received."""

    path: str
    headers: dict[str, str]
    json: Any
    # time.monotonic() when it arrived.
    at: float = attrs.field(factory=time.monotonic)


@attrs.frozen
class _Reply:
    text: str | None  # None: echo the last message's content
    model: str | None = None
    usage: tuple[int, int] | None = None


@attrs.frozen
class _Fail:
    status: int
    message: str
    error_type: str


@attrs.frozen
class _Hang:
    seconds: float


@attrs.frozen
class _Raw:
    status: int
    body: bytes
    content_type: str


_Behaviour = _Reply | _Fail | _Hang | _Raw


class FakeOpenAI:
    """`POST /v1/chat/completions` answered from a queue of scripted behaviours, echoing when it is empty."""

    def __init__(self, model: str = "fake-model") -> None:
        self.model = model
        self.requests: list[Recorded] = []
        self._script: deque[_Behaviour] = deque()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._port = 0
        # Seconds every request takes before it is answered, so that requests overlap.
        self.delay = 0.0
        # Cleared, requests are held unanswered until it is set: a test decides when they end.
        self.answering = asyncio.Event()
        self.answering.set()
        # Requests being answered now, and the most there ever were at once.
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def base_url(self) -> str:
        """Where clients point: `http://127.0.0.1:<port>/v1`."""
        if self._runner is None:
            raise RuntimeError("FakeOpenAI is not started")
        return f"http://127.0.0.1:{self._port}/v1"

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Wake any hanging request and shut the server down."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def reply(self, text: str, *, model: str | None = None, usage: tuple[int, int] | None = None) -> None:
        """Answer the next request with `text`; `usage` is (prompt_tokens, completion_tokens)."""
        self._script.append(_Reply(text, model, usage))

    def echo(self) -> None:
        """Answer the next request with its last message's content (also what happens unscripted)."""
        self._script.append(_Reply(None))

    def fail(self, status: int, message: str | None = None, error_type: str | None = None) -> None:
        """Answer the next request with HTTP `status` and an OpenAI error body."""
        default_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self._script.append(_Fail(status, message or f"Fake error {status}", error_type or default_type))

    def hang(self, seconds: float) -> None:
        """Wait `seconds` (or until stop) on the next request, then answer it with the behaviour after."""
        self._script.append(_Hang(seconds))

    def raw(self, body: bytes | str, *, status: int = 200, content_type: str = "application/json") -> None:
        """Answer the next request with exactly `body`."""
        data = body.encode() if isinstance(body, str) else body
        self._script.append(_Raw(status, data, content_type))

    async def _handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self.answering.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        self.requests.append(Recorded(request.path, dict(request.headers), body))
        behaviour = self._script.popleft() if self._script else _Reply(None)
        while isinstance(behaviour, _Hang):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), behaviour.seconds)
            behaviour = self._script.popleft() if self._script else _Reply(None)
        if isinstance(behaviour, _Fail):
            error = {"message": behaviour.message, "type": behaviour.error_type, "param": None, "code": None}
            return _json({"error": error}, behaviour.status)
        if isinstance(behaviour, _Raw):
            return web.Response(
                status=behaviour.status, body=behaviour.body, content_type=behaviour.content_type
            )
        return _json(self._completion(body, behaviour))

    def _completion(self, body: Any, reply: _Reply) -> dict[str, Any]:
        messages = body.get("messages") if isinstance(body, dict) else None
        messages = messages if isinstance(messages, list) else []
        text = reply.text if reply.text is not None else _last_content(messages)
        if reply.usage is not None:
            prompt_tokens, completion_tokens = reply.usage
        else:
            contents = [str(m.get("content", "")) for m in messages if isinstance(m, dict)]
            prompt_tokens = sum(len(content.split()) for content in contents)
            completion_tokens = len(text.split())
        model = reply.model or (body.get("model") if isinstance(body, dict) else None) or self.model
        return {
            "id": f"chatcmpl-fake{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _last_content(messages: list[Any]) -> str:
    last = messages[-1] if messages else None
    content = last.get("content") if isinstance(last, dict) else None
    return content if isinstance(content, str) else ""


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


async def fake_openai_server() -> AsyncIterator[FakeOpenAI]:
    """Fixture body: yield a started FakeOpenAI and stop it afterwards."""
    server = FakeOpenAI()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
