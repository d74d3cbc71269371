"""Replicate-style predictions: `POST /models/{owner}/{name}/predictions` (or `/predictions` with a
version), `GET /predictions/{id}`, `POST /predictions/{id}/cancel`."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from taskd.config import DEFAULT_VIDEO_INPUTS, VideoProvider
from taskd.errors import TaskError
from taskd.logs import shorten
from taskd.providers.video_api import NAME, JobState, ProviderCalls, VideoRequest, job_id, json_object

# A model that prints a tqdm bar to its logs (`45%|████▌     | 9/20`) says how far it is.
_PERCENT = re.compile(r"(\d{1,3})%\|")


class ReplicatePredictions:
    """Predictions of one model; its inputs named as `providers.video.inputs` says."""

    uploads_reference = False

    def __init__(self, calls: ProviderCalls, settings: VideoProvider) -> None:
        self._calls = calls
        self._settings = settings

    def body(self, request: VideoRequest) -> tuple[str, dict[str, Any]]:
        """The path and JSON body that create a prediction for `request`."""
        values: dict[str, Any] = {
            "prompt": request.prompt,
            "seconds": request.seconds,
            "size": request.size,
            "fps": request.fps,
            # The provider fetches it from where the caller put it.
            "image": request.image_url,
        }
        names = {**DEFAULT_VIDEO_INPUTS, **self._settings.inputs}
        inputs = dict(self._settings.extra_input)
        inputs.update(
            {names[key]: value for key, value in values.items() if names[key] and value is not None}
        )
        model = self._settings.model.strip()
        name, _, version = model.partition(":")
        if version or "/" not in model:
            return "predictions", {"version": version or model, "input": inputs}
        owner, _, model_name = name.partition("/")
        return f"models/{quote(owner, safe='')}/{quote(model_name, safe='')}/predictions", {"input": inputs}

    async def create(self, request: VideoRequest) -> str:
        """Create the prediction; its id."""
        path, body = self.body(request)
        return job_id(json_object(await self._calls.call("POST", path, lambda: body)).get("id"))

    async def state(self, prediction_id: str) -> JobState:
        """`GET /predictions/{id}`: starting / processing / succeeded / failed / canceled."""
        data = json_object(await self._calls.call("GET", f"predictions/{prediction_id}"))
        status = data.get("status")
        if status == "succeeded":
            return JobState(done=True, succeeded=True, progress=1.0, output=data.get("output"))
        if status in ("failed", "canceled"):
            error = data.get("error")
            text = shorten(str(error), self._settings.api_key) if error else f"the prediction was {status}"
            return JobState(done=True, error=text)
        logs = data.get("logs")
        found = _PERCENT.findall(logs[-4096:]) if isinstance(logs, str) else []
        return JobState(done=False, progress=min(100, int(found[-1])) / 100 if found else None)

    async def cancel(self, prediction_id: str) -> None:
        """`POST /predictions/{id}/cancel`."""
        await self._calls.call("POST", f"predictions/{prediction_id}/cancel", retry=False)

    def output_url(self, prediction_id: str, state: JobState) -> str:
        """The output URL, or the first of a list of them (a URL the provider chose: fetched guarded)."""
        output = state.output[0] if isinstance(state.output, list) and state.output else state.output
        if not isinstance(output, str) or not output:
            raise TaskError(f"{NAME} sent a malformed reply: prediction {prediction_id} has no output URL")
        return output
