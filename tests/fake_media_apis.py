"""Loopback servers for the media tests: static files, an OpenAI-compatible Images API and speech API."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import struct
import wave
from typing import Any

import orjson
from aiohttp import web
from PIL import Image


def png(width: int = 64, height: int = 48, colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    """A small PNG with a stripe, so pan/zoom has something to move."""
    image = Image.new("RGB", (width, height), colour)
    for x in range(width // 3, width // 3 + max(1, width // 8)):
        for y in range(height):
            image.putpixel((x, y), (255, 255, 255))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def sine_wav(seconds: float = 2.0, freq: float = 440.0, amplitude: float = 0.3, rate: int = 44100) -> bytes:
    """A mono 16-bit sine tone as WAV bytes."""
    frames = b"".join(
        struct.pack("<h", int(amplitude * 32767 * math.sin(2 * math.pi * freq * n / rate)))
        for n in range(int(seconds * rate))
    )
    return mono_wav(frames, rate)


def mono_wav(frames: bytes, rate: int) -> bytes:
    """Mono 16-bit little-endian samples as WAV bytes."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return out.getvalue()


# FileServer.errors: the connection is closed halfway through the body.
DROP = "drop"


class _Server:
    def __init__(self) -> None:
        self.app = web.Application()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.requests: list[tuple[str, Any]] = []

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`."""
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Any:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class FileServer(_Server):
    """Serves bytes at paths; `/slow/...` waits `slow_seconds` first, `/split/...` sends the first 3
    bytes alone (then the rest), `/huge` streams without a length."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, tuple[bytes, str]] = {}
        self.slow_seconds = 30.0
        # What the next file requests get instead, first to last (then they work): an HTTP status,
        # or DROP (the headers and half the body, then the connection is closed).
        self.errors: list[int | str] = []
        self.app.router.add_get("/huge", self._huge)
        self.app.router.add_get("/slow/{name}", self._slow)
        self.app.router.add_get("/split/{name}", self._split)
        self.app.router.add_get("/{name}", self._file)

    def add(self, name: str, body: bytes, content_type: str = "application/octet-stream") -> str:
        """Serve `body` at `/<name>`; returns its URL."""
        self.files[name] = (body, content_type)
        return f"{self.url}/{name}"

    async def _file(self, request: web.Request) -> web.StreamResponse:
        found = self.files.get(request.match_info["name"])
        if found is None:
            return web.Response(status=404, text="not found")
        if self.errors:
            error = self.errors.pop(0)
            if error != DROP:
                return web.Response(status=int(error), text="fake failure")
            resp = web.StreamResponse(headers={"Content-Length": str(len(found[0]))})
            await resp.prepare(request)
            await resp.write(found[0][: len(found[0]) // 2])
            assert request.transport is not None
            request.transport.close()
            return resp
        return web.Response(body=found[0], content_type=found[1])

    async def _slow(self, request: web.Request) -> web.Response:
        self.requests.append(("slow", request.match_info["name"]))
        await asyncio.sleep(self.slow_seconds)
        return await self._file(request)

    async def _split(self, request: web.Request) -> web.StreamResponse:
        body = self.files[request.match_info["name"]][0]
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(body[:3])
        await asyncio.sleep(0.2)  # the client has read the 3 bytes as a chunk of their own by then
        await resp.write(body[3:])
        return resp

    async def _huge(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "image/png"
        await resp.prepare(request)
        await resp.write(png())
        for _ in range(64):
            await resp.write(b"\0" * 65536)
        return resp


class FakeImagesAPI(_Server):
    """`POST /v1/images/generations`: answers with a PNG as b64_json, or as a URL when `as_url`."""

    def __init__(self, *, as_url: bool = False, fail: int | None = None) -> None:
        super().__init__()
        self.as_url = as_url
        self.fail = fail
        self.image = png(32, 32, (10, 120, 200))
        self.revised_prompt: str | None = None  # what the API says it drew instead; None: from the prompt
        self.delay = 0.0  # seconds before each answer (a slow model)
        self.errors: list[int] = []  # HTTP statuses to answer the next requests with, first to last
        self.app.router.add_post("/v1/images/generations", self._generate)
        self.app.router.add_get("/files/out.png", self._file)

    @property
    def base_url(self) -> str:
        """The `/v1` base clients use."""
        return f"{self.url}/v1"

    async def _generate(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.headers.get("Authorization", ""), body))
        await asyncio.sleep(self.delay)
        fail = self.errors.pop(0) if self.errors else self.fail
        if fail:
            error = {"error": {"message": f"fake image failure {fail}", "type": "server_error"}}
            return web.Response(status=fail, body=orjson.dumps(error), content_type="application/json")
        item = (
            {"url": f"{self.url}/files/out.png"}
            if self.as_url
            else {"b64_json": base64.b64encode(self.image).decode()}
        )
        item["revised_prompt"] = self.revised_prompt or "revised: " + body["prompt"][:20]
        return web.Response(
            body=orjson.dumps({"created": 1, "data": [item]}), content_type="application/json"
        )

    async def _file(self, _: web.Request) -> web.Response:
        return web.Response(body=self.image, content_type="image/png")


class FakeSpeechAPI(_Server):
    """`POST /v1/audio/speech`: answers with a short sine WAV, `delay` seconds after the request."""

    def __init__(self) -> None:
        super().__init__()
        self.delay = 0.0
        self.errors: list[int] = []  # HTTP statuses to answer the next requests with, first to last
        self.app.router.add_post("/v1/audio/speech", self._speech)

    @property
    def base_url(self) -> str:
        """The `/v1` base clients use."""
        return f"{self.url}/v1"

    async def _speech(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.headers.get("Authorization", ""), body))
        await asyncio.sleep(self.delay)
        if self.errors:
            return web.json_response({"error": {"message": "fake speech failure"}}, status=self.errors.pop(0))
        return web.Response(body=sine_wav(1.5, rate=24000), content_type="audio/wav")


class OversizedAPI(_Server):
    """Answers any POST or GET with a 200 of `size` bytes: `head`, then spaces, streamed without a
    Content-Length (a broken or hostile provider); `sent` counts what the client took."""

    def __init__(self, head: bytes, size: int, content_type: str = "application/json") -> None:
        super().__init__()
        self.head, self.size, self.content_type = head, size, content_type
        self.sent = 0
        self.app.router.add_route("*", "/{path:.*}", self._answer)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": self.content_type})
        await resp.prepare(request)
        await resp.write(self.head)
        self.sent = len(self.head)
        chunk = b" " * 65536
        while self.sent < self.size:
            await resp.write(chunk)
            self.sent += len(chunk)
        return resp


class RedirectingAPI(_Server):
    """Answers any request with a redirect (`status`) to `location`."""

    def __init__(self, location: str, status: int = 307) -> None:
        super().__init__()
        self.location, self.status = location, status
        self.app.router.add_route("*", "/{path:.*}", self._answer)

    async def _answer(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests.append((request.headers.get("Authorization", ""), request.path))
        return web.Response(status=self.status, headers={"Location": self.location})


# A status line of kilobytes with a terminal escape in it: what aiohttp's parser error quotes.
BROKEN_STATUS_LINE = b"HTTP/1.1 2\x1b[31m00 OK " + b"X" * 5000 + b"\r\n\r\n"


class NotHttpAPI(_Server):
    """Answers any request with exactly `data` on the connection, then closes it: a reply that is not
    HTTP (a broken status line, a bad header), as a broken or hostile provider may send."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data
        self.app.router.add_route("*", "/{path:.*}", self._answer)

    async def _answer(self, request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        request.transport.write(self.data)
        request.transport.close()
        return web.Response()  # aiohttp's own answer goes nowhere: the connection is closed


class Progress:
    """Records every progress report a handler makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str | None]] = []

    async def __call__(self, fraction: float, step: str | None) -> None:
        self.calls.append((fraction, step))


def make_ctx(
    http: Any, config: Any, task_id: str = "task-1", project_id: str = "proj-1"
) -> tuple[Any, Progress]:
    """A TaskContext for calling a handler directly."""
    import attrs

    from taskd.tasks.spec import TaskContext

    sink = Progress()
    fields: dict[str, Any] = {
        "task_id": task_id,
        "project_id": project_id,
        "attempt": 1,
        "config": config,
        "http": http,
        "metadata": {},
        "sink": sink,
    }
    if "max_attempts" in attrs.fields_dict(TaskContext):
        fields["max_attempts"] = 1
    return TaskContext(**fields), sink
