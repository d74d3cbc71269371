"""The OpenAI Videos API: `POST /videos` (multipart), `GET /videos/{id}`, `GET /videos/{id}/content`,
`DELETE /videos/{id}`."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from taskd.logs import shorten
from taskd.providers.video_api import JobState, ProviderCalls, VideoRequest, job_id, json_object

# `queued` and `in_progress` are running; a status this version does not know is polled on (the
# task's time limits still end it).
_FAILED = frozenset({"failed", "cancelled", "canceled", "expired"})


class OpenAIVideos:
    """Jobs of the Videos API (Sora's shape): the request as form fields, the reference as a file."""

    uploads_reference = True

    def __init__(self, calls: ProviderCalls, model: str) -> None:
        self._calls = calls
        self._model = model

    async def create(self, request: VideoRequest) -> str:
        """`POST /videos` with model, prompt, seconds, size and input_reference; the video's id."""
        image = await asyncio.to_thread(request.image_file.read_bytes) if request.image_file else None

        def form() -> aiohttp.FormData:
            data = aiohttp.FormData()
            data.add_field("model", self._model)
            data.add_field("prompt", request.prompt)
            # The API takes seconds as a string of a whole number ("4", "8", "12" for Sora 2).
            data.add_field("seconds", str(request.seconds))
            data.add_field("size", request.size)
            if image is not None:
                data.add_field("input_reference", image, filename="reference.png", content_type="image/png")
            return data

        return job_id(json_object(await self._calls.call("POST", "videos", form)).get("id"))

    async def state(self, video_id: str) -> JobState:
        """`GET /videos/{id}`: status queued / in_progress / completed / failed, progress 0..100."""
        data = json_object(await self._calls.call("GET", f"videos/{video_id}"))
        status = data.get("status")
        progress = data.get("progress")
        fraction = (
            min(1.0, max(0.0, progress / 100))
            if isinstance(progress, (int, float)) and not isinstance(progress, bool)
            else None
        )
        if status == "completed":
            return JobState(done=True, succeeded=True, progress=1.0)
        if status in _FAILED:
            return JobState(done=True, error=self._error(data, str(status)))
        return JobState(done=False, progress=fraction)

    async def cancel(self, video_id: str) -> None:
        """`DELETE /videos/{id}`: the API has no separate cancel; deleting stops and removes the job."""
        await self._calls.call("DELETE", f"videos/{video_id}", retry=False)

    def output_url(self, video_id: str, state: JobState) -> str:
        """`GET /videos/{id}/content`, on the provider's own origin (sent the key)."""
        return f"{self._calls.base_url}/videos/{video_id}/content"

    def _error(self, data: dict[str, Any], status: str) -> str:
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        code = error.get("code") if isinstance(error, dict) else None
        text = shorten(str(message), self._calls.settings.api_key) if message else f"the job is {status}"
        return f"{text} ({shorten(str(code))})" if isinstance(code, str) and code else text
