"""A loopback video-generation provider speaking both protocols taskd knows: the OpenAI Videos API
(`/v1/videos`) and Replicate-style predictions (`/v1/predictions`, `/v1/models/{owner}/{name}/predictions`).

A job advances one step per poll: `steps` polls in progress (progress 100/steps apart), then it
succeeds with `video` (or fails with `fail`). `hang` keeps it in progress for ever.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import imageio_ffmpeg
from aiohttp import web
from fake_media_apis import _Server


def make_mp4(path: Path, *, size: str = "160x120", seconds: float = 1.0, rate: int = 10) -> bytes:
    """A small H.264 MP4 (a test pattern) made by the bundled ffmpeg; its bytes."""
    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            *("-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"),
            *("-i", f"testsrc=size={size}:rate={rate}:duration={seconds}"),
            *("-pix_fmt", "yuv420p", "-movflags", "+faststart", str(path)),
        ],
        check=True,
        capture_output=True,
    )
    return path.read_bytes()


class FakeVideoAPI(_Server):
    """Both protocols on one server; `requests` records (method, path) of every call."""

    def __init__(self, video: bytes, *, steps: int = 2, fail: str | None = None, hang: bool = False) -> None:
        super().__init__()
        self.video = video
        self.steps = steps
        self.fail = fail
        self.hang = hang
        # Seconds a create takes to answer once its request is read (the job is made all the same
        # if the client has gone by then, as a real provider does).
        self.create_delay = 0.0
        # HTTP statuses to answer the next creates with, first to last (then they work).
        self.create_errors: list[int] = []
        # The same for the polls of a job (OpenAI's GET /v1/videos/{id}).
        self.poll_errors: list[int] = []
        # The Retry-After header of those error answers ("": none).
        self.retry_after = ""
        # Replicate: where the output is said to be ("" = this server's /files/<id>.mp4).
        self.output_url = ""
        # OpenAI: where GET /v1/videos/{id}/content redirects to ("" = it answers with the video).
        self.content_redirect = ""
        self.file_authorizations: list[str | None] = []  # the Authorization header of each /files/ GET
        self.created: list[Any] = []  # each create's JSON body, or its form fields
        self.cancelled: list[str] = []
        self.jobs: dict[str, int] = {}  # id -> polls so far
        self.active = 0  # jobs created and not yet ended
        self.most_active = 0
        self._ended: set[str] = set()
        router = self.app.router
        router.add_post("/v1/videos", self._openai_create)
        router.add_get("/v1/videos/{id}", self._openai_get)
        router.add_get("/v1/videos/{id}/content", self._openai_content)
        router.add_delete("/v1/videos/{id}", self._openai_delete)
        router.add_post("/v1/predictions", self._replicate_create)
        router.add_post("/v1/models/{owner}/{name}/predictions", self._replicate_create)
        router.add_get("/v1/predictions/{id}", self._replicate_get)
        router.add_post("/v1/predictions/{id}/cancel", self._replicate_cancel)
        router.add_get("/files/{name}", self._file)

    @property
    def base_url(self) -> str:
        """The `/v1` base clients use."""
        return f"{self.url}/v1"

    def _record(self, request: web.Request) -> None:
        self.requests.append((request.method, request.path))

    def _error(self, status: int, message: str) -> web.Response:
        body = {"error": {"message": message, "type": "invalid_request_error"}}
        return web.json_response(body, status=status, headers=self._retry_after())

    def _retry_after(self) -> dict[str, str]:
        return {"Retry-After": self.retry_after} if self.retry_after else {}

    def _start(self) -> str:
        job = f"job_{len(self.jobs) + 1}"
        self.jobs[job] = 0
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        return job

    def _end(self, job: str) -> None:
        if job not in self._ended:
            self._ended.add(job)
            self.active -= 1

    def _advance(self, job: str) -> tuple[str, int]:
        """("running" | "succeeded" | "failed", progress 0..100) after one more poll."""
        if job in self._ended:
            return ("cancelled", 0) if job in self.cancelled else self._outcome()
        self.jobs[job] += 1
        polls = self.jobs[job]
        if self.hang or polls <= self.steps:
            return "running", min(99, (polls - 1) * 100 // max(1, self.steps))
        self._end(job)
        return self._outcome()

    def _outcome(self) -> tuple[str, int]:
        return ("failed", 100) if self.fail is not None else ("succeeded", 100)

    # OpenAI Videos API

    async def _openai_create(self, request: web.Request) -> web.Response:
        self._record(request)
        form = await request.post()
        fields: dict[str, Any] = {}
        for name, value in form.items():
            fields[name] = value.file.read() if isinstance(value, web.FileField) else value
        self.created.append(fields)
        await asyncio.sleep(self.create_delay)
        if self.create_errors:
            return self._error(self.create_errors.pop(0), "fake create refused")
        job = self._start()
        return web.json_response(
            {"id": job, "object": "video", "model": fields.get("model"), "status": "queued", "progress": 0}
        )

    async def _openai_get(self, request: web.Request) -> web.Response:
        self._record(request)
        job = request.match_info["id"]
        if job not in self.jobs:
            return self._error(404, "no such video")
        if self.poll_errors:
            return self._error(self.poll_errors.pop(0), "fake poll refused")
        status, progress = self._advance(job)
        body: dict[str, Any] = {"id": job, "object": "video", "progress": progress}
        body["status"] = {"running": "in_progress", "succeeded": "completed"}.get(status, status)
        if status == "failed":
            body["error"] = {"code": "video_generation_failed", "message": self.fail}
        return web.json_response(body)

    async def _openai_content(self, request: web.Request) -> web.Response:
        self._record(request)
        if request.headers.get("Authorization") != "Bearer sk-video":
            return self._error(401, "no key")
        if self.content_redirect:
            raise web.HTTPFound(self.content_redirect)
        return web.Response(body=self.video, content_type="video/mp4")

    async def _openai_delete(self, request: web.Request) -> web.Response:
        self._record(request)
        job = request.match_info["id"]
        self.cancelled.append(job)
        self._end(job)
        return web.json_response({"id": job, "object": "video.deleted", "deleted": True})

    # Replicate predictions

    async def _replicate_create(self, request: web.Request) -> web.Response:
        self._record(request)
        body = await request.json()
        self.created.append(body)
        await asyncio.sleep(self.create_delay)
        if self.create_errors:
            status = self.create_errors.pop(0)
            return web.json_response(
                {"title": "refused", "detail": "fake create refused"},
                status=status,
                headers=self._retry_after(),
            )
        job = self._start()
        return web.json_response(self._prediction(job, "starting", body.get("input")), status=201)

    async def _replicate_get(self, request: web.Request) -> web.Response:
        self._record(request)
        job = request.match_info["id"]
        if job not in self.jobs:
            return web.json_response({"detail": "Not found."}, status=404)
        status, progress = self._advance(job)
        # Replicate spells it "canceled".
        prediction = self._prediction(
            job, {"running": "processing", "cancelled": "canceled"}.get(status, status)
        )
        if status == "running":
            prediction["logs"] = f"loading\n{progress:3d}%|####      | {progress}/100 [00:01<00:02]\n"
        elif status == "succeeded":
            prediction["output"] = self.output_url or f"{self.url}/files/{job}.mp4"
        elif status == "failed":
            prediction["error"] = self.fail
        return web.json_response(prediction)

    async def _replicate_cancel(self, request: web.Request) -> web.Response:
        self._record(request)
        job = request.match_info["id"]
        self.cancelled.append(job)
        self._end(job)
        return web.json_response(self._prediction(job, "canceled"))

    def _prediction(self, job: str, status: str, inputs: Any = None) -> dict[str, Any]:
        return {
            "id": job,
            "status": status,
            "input": inputs or {},
            "output": None,
            "error": None,
            "logs": "",
            "urls": {
                "get": f"{self.base_url}/predictions/{job}",
                "cancel": f"{self.base_url}/predictions/{job}/cancel",
            },
        }

    async def _file(self, request: web.Request) -> web.Response:
        self._record(request)
        self.file_authorizations.append(request.headers.get("Authorization"))
        return web.Response(body=self.video, content_type="video/mp4")
