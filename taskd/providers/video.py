"""A video-generation API behind the ClipRenderer interface: create a job, poll it, download the MP4.

`[providers.video] protocol` picks the shape ("openai": the Videos API, "replicate": predictions).
The job holds one slot of the provider's limits from creation to its end, progress is the
provider's, and a task that is cancelled (or stopped at a limit, or fails) cancels its job before
it ends. The job's id is kept in the task's run state (taskd.store.run_state) as soon as the
provider answers the create: a run cut short (its worker killed) is followed by one that polls that
job instead of creating (and paying for) another, unless the provider says it failed, expired or
does not know it. The MP4 is downloaded through the SSRF guard (the provider's own origin is trusted),
bounded by `media.max_download_bytes`, and copied without re-encoding into a file with no tags, so
that what taskd measures and stores is what ffmpeg wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs

from taskd import runtasks
from taskd.config import Config, VideoProvider
from taskd.errors import TaskError
from taskd.media import download, ffmpeg
from taskd.media.bounds import Bounds
from taskd.media.own import MediaLinks
from taskd.media.video import ClipRequest, ProgressFn
from taskd.net.guarded import GuardedClient
from taskd.providers.http import ProviderError
from taskd.providers.limits import Gate
from taskd.providers.video_api import JOB_ID, NAME, JobApi, JobState, ProviderCalls, VideoRequest
from taskd.providers.video_openai import OpenAIVideos
from taskd.providers.video_replicate import ReplicatePredictions
from taskd.store.run_state import RunState

log = logging.getLogger("taskd.providers")

# The renderer's progress (0..1): the reference image until PREPARED, the provider's own progress up
# to GENERATED, then the download and the copy.
PREPARED = 0.2
GENERATED = 0.9
DOWNLOADED = 0.95
# A cancel is one request, sent while the task is already stopping: it may not hold that up long.
CANCEL_TIMEOUT = 10.0
# The run state's field of the job a run created (taskd.store.run_state).
KEPT_JOB = "video_job"
# The provider's answers to a poll of a job it does not know (any more).
UNKNOWN = frozenset({404, 410})


def renderer(
    config: Config,
    http: aiohttp.ClientSession,
    gate: Gate | None = None,
    state: RunState | None = None,
) -> ProviderRenderer | None:
    """The renderer of `providers.video.protocol`, or None when none is configured; with `state`,
    the job it creates is kept for the next run of the task, and the one an earlier run kept is
    polled instead of creating another."""
    settings = config.providers.video
    if not settings.protocol:
        return None
    calls = ProviderCalls(settings, http)
    api: JobApi = (
        OpenAIVideos(calls, settings.model)
        if settings.protocol == "openai"
        else ReplicatePredictions(calls, settings)
    )
    return ProviderRenderer(
        settings,
        calls,
        api,
        GuardedClient.from_config(config, http),
        download.Limits.from_config(config.media),
        Bounds.from_config(config.media),
        gate,
        MediaLinks.from_config(config),
        state,
    )


def _words(value: str) -> str:
    return " ".join(value.replace("_", " ").split())


def _text(details: dict[str, Any], key: str) -> str | None:
    value = details.get(key)
    return _words(value) if isinstance(value, str) and value.strip() else None


def compose_prompt(clip: ClipRequest) -> str:
    """The prompt: the scene, then camera, lighting and where each character is and what it does."""
    details = clip.details
    lines = []
    scene = details.get("scene_description") or clip.title
    if isinstance(scene, str) and scene.strip():
        lines.append(scene.strip())
    for label, key in (
        ("Camera", "camera_angle"),
        ("Lighting", "lighting"),
        ("Character", "character_id"),
        ("Motion", "animation_type"),
    ):
        if text := _text(details, key):
            lines.append(f"{label}: {text}.")
    placed = []
    positions = details.get("character_positions")
    for item in positions if isinstance(positions, list) else []:
        if not isinstance(item, dict) or not (who := _text(item, "character_id")):
            continue
        where, action = _text(item, "position"), _text(item, "action")
        placed.append(who + (f" at {where}" if where else "") + (f", {action}" if action else ""))
    if placed:
        lines.append("Characters: " + "; ".join(placed) + ".")
    if not lines:
        raise TaskError(f"{NAME} needs a description to write its prompt: give a scene_description")
    return "\n".join(lines)


class ProviderRenderer:
    """Renders a ClipRequest with the configured video-generation API."""

    def __init__(
        self,
        settings: VideoProvider,
        calls: ProviderCalls,
        api: JobApi,
        inputs: GuardedClient,
        limits: download.Limits,
        bounds: Bounds,
        gate: Gate | None,
        media: MediaLinks | None = None,
        state: RunState | None = None,
    ) -> None:
        self.model = settings.model
        self._settings = settings
        self._calls = calls
        self._api = api
        self._inputs = inputs
        self._limits = limits
        self._bounds = bounds
        self._gate = gate
        self._media = media
        self._state = state
        # The job the run state holds for the next run (this run's, or the one it follows).
        self._kept: str | None = None

    async def render(self, clip: ClipRequest, workdir: Path, progress: ProgressFn) -> Path:
        """Ask the provider for the clip (or follow the job an earlier run of the task made) and
        return the MP4 it made, copied into `workdir`."""
        job = await self._kept_job(clip.task_id)
        if job is None:
            request = await self._request(clip, workdir, progress)
            await progress(PREPARED)
            async with self._slot():
                job = await self._create(request)
                log.info("task %s: %s job %s created", clip.task_id, self._settings.protocol, job)
                async with self._cancelled_on_stop(job):
                    # Before the first poll: a run cut short from here on leaves its job to the next.
                    if self._state is not None and await self._state.keep(
                        KEPT_JOB, {"provider": self._provider, "id": job}
                    ):
                        self._kept = job
                    state = await self._follow(job, progress)
        else:
            async with self._cancelled_on_stop(job):
                await progress(PREPARED)
                async with self._slot():
                    state = await self._follow(job, progress)
        if not state.succeeded:
            raise TaskError(f"{NAME} could not make the video: {state.error or 'no reason given'}")
        url = self._api.output_url(job, state)
        fetched = await self._calls.retrying(
            lambda: download.fetch(
                self._inputs,
                url,
                workdir / "generated",
                kind="video",
                limits=self._limits,
                what="Generated video",
                trusted=[self._calls.base_url],
                trusted_headers=self._calls.auth,
            ),
            "download",
        )
        await progress(DOWNLOADED)
        return await self._copy(fetched, workdir)

    async def _request(self, clip: ClipRequest, workdir: Path, progress: ProgressFn) -> VideoRequest:
        image_url = clip.reference_image
        request = VideoRequest(
            prompt=compose_prompt(clip),
            seconds=max(1, round(clip.duration)),
            width=clip.width,
            height=clip.height,
            fps=clip.fps,
            image_url=image_url,
        )
        if image_url is None:
            return request
        # A link of this taskd's media store is read or refused as the built-in renderer reads or
        # refuses it: fetched over HTTP, another project's signed link was served for its good
        # signature and became this task's reference (and the task's own one, at taskd's loopback
        # address, was refused by the SSRF guard).
        own = None
        if self._media is not None and clip.project_id is not None:
            own = self._media.of(clip.project_id)
        if not self._api.uploads_reference:
            # The provider fetches the URL itself: only checked here.
            if own is not None:
                await asyncio.to_thread(own.find, image_url, "Image")
            return request
        fetched = await download.fetch(
            self._inputs,
            image_url,
            workdir / "reference",
            kind="image",
            limits=self._limits,
            what="Image",
            own=own,
        )
        # The header is read from disk: in a thread.
        await asyncio.to_thread(self._bounds.check_image, fetched, f"Image {image_url}")
        await progress(PREPARED / 2)
        # The Videos API wants the reference at exactly the video's size: scaled and cropped to fill it.
        fitted = workdir / "reference_fitted.png"
        size = f"{clip.width}:{clip.height}"
        await ffmpeg.run_ffmpeg(
            [
                *self._bounds.image_input(fetched),
                *("-vf", f"scale={size}:force_original_aspect_ratio=increase,crop={size},setsar=1"),
                *("-frames:v", "1", *self._bounds.output_args(), str(fitted)),
            ],
            log_path=workdir / "reference.log",
            what="Preparing the reference image",
        )
        return attrs.evolve(request, image_file=fitted)

    async def _create(self, request: VideoRequest) -> str:
        """Create the job; if the task stops while the create is in flight, cancel the job it makes."""
        # Neither the create nor the cancel of what it made is the run's (runtasks.detached): a run
        # that ends without its handler, still waiting here past its cancel grace, cancelled them,
        # and the job ran on, paid for.
        creating = runtasks.detached(self._api.create(request))
        try:
            return await asyncio.shield(creating)
        except BaseException:
            # The provider may make the job all the same (a real one does once it has the request):
            # its id comes only with the answer, and without a cancel the job runs on, paid for. The
            # answer may also be in already, the stop reaching this task before it resumed with it:
            # a create that failed has no job (_cancel_created reads its error and cancels nothing).
            if not creating.cancelled():
                await asyncio.shield(runtasks.detached(self._cancel_created(creating)))
            raise

    async def _cancel_created(self, creating: asyncio.Future[str]) -> None:
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT):
                job = await creating
        except TimeoutError:
            log.warning("a %s job's create did not answer in time; it is left", self._settings.protocol)
            return
        except Exception:  # the create failed: no job to cancel
            return
        await self._cancel(job)

    @property
    def _provider(self) -> dict[str, str]:
        # What names the provider a kept job belongs to: one kept under other settings is not polled.
        return {
            "protocol": self._settings.protocol,
            "base_url": self._calls.base_url,
            "model": self._settings.model,
        }

    async def _kept_job(self, task_id: str) -> str | None:
        """The job an earlier run of the task created, if the provider still runs it or has its video."""
        kept = await self._state.get(KEPT_JOB) if self._state is not None else None
        if not isinstance(kept, dict):
            return None
        protocol = self._settings.protocol
        job = kept.get("id")
        if kept.get("provider") != self._provider or not isinstance(job, str) or not JOB_ID.fullmatch(job):
            log.warning(
                "task %s: the job an earlier run created was of other video provider settings; a new job is created",
                task_id,
            )
            return None
        self._kept = job
        async with self._cancelled_on_stop(job):
            # A failure other than "unknown" (transient ones are tried again inside) fails the run
            # as a poll's would, the job cancelled.
            state = await self._state_unless_unknown(job)
        if isinstance(state, str):
            log.warning(
                "task %s: %s job %s of an earlier run is unknown to the provider (%s); a new job is created",
                task_id,
                protocol,
                job,
                state,
            )
            return None
        if state.done and not state.succeeded:
            log.warning(
                "task %s: %s job %s of an earlier run ended without a video (%s); a new job is created",
                task_id,
                protocol,
                job,
                state.error or "no reason given",
            )
            return None
        log.info(
            "task %s: %s job %s of an earlier run is followed, not created again", task_id, protocol, job
        )
        return job

    async def _state_unless_unknown(self, job: str) -> JobState | str:
        """The job's state, or why the provider does not know it (any more)."""
        try:
            return await self._api.state(job)
        except ProviderError as exc:
            if exc.status in UNKNOWN:
                return exc.reason
            raise

    def _slot(self) -> contextlib.AbstractAsyncContextManager[object]:
        """A slot of the provider's limits, held while a job runs."""
        return self._gate.slot() if self._gate else contextlib.nullcontext()

    async def _follow(self, job: str, progress: ProgressFn) -> JobState:
        """Poll `job` until it ends."""
        while True:
            state = await self._api.state(job)  # transient failures are tried again inside
            if state.progress is not None:
                await progress(PREPARED + (GENERATED - PREPARED) * state.progress)
            if state.done:
                return state
            await asyncio.sleep(self._settings.poll_interval)

    @contextlib.asynccontextmanager
    async def _cancelled_on_stop(self, job: str) -> AsyncIterator[None]:
        """Cancel `job` at the provider if the task stops inside the block, however it stops."""
        try:
            yield
        except BaseException as exc:
            if (
                isinstance(exc, asyncio.CancelledError)
                and self._state is not None
                and self._state.handed_back
                and self._kept == job
            ):
                # Handed back by a stopping worker: the task runs again, and that run follows the job.
                log.info("%s job %s is left running for the task's next run", self._settings.protocol, job)
                raise
            # Cancelled, at a time limit, or the provider unreachable past the retries: the job
            # would run on (and be paid for) with nobody to collect it.
            await asyncio.shield(runtasks.detached(self._cancel(job)))
            raise

    async def _cancel(self, job: str) -> None:
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT):
                await self._api.cancel(job)
        except (TaskError, TimeoutError) as exc:
            log.warning("could not cancel %s job %s: %s", self._settings.protocol, job, exc)
        else:
            log.info("%s job %s cancelled", self._settings.protocol, job)

    async def _copy(self, fetched: Path, workdir: Path) -> Path:
        # Streams copied, not re-encoded; the file's tags, chapters and any box ffmpeg does not know
        # are left behind, so `ffmpeg -i` on the copy shows only ffmpeg's own lines (see ffmpeg.probe).
        output = workdir / "clip.mp4"
        await ffmpeg.run_ffmpeg(
            [
                *(
                    "-t",
                    f"{self._bounds.max_input_seconds:.3f}",
                    *ffmpeg.demuxer(fetched),
                    "-i",
                    str(fetched),
                ),
                *("-map", "0:v:0", "-map", "0:a:0?", "-c", "copy", "-movflags", "+faststart"),
                *self._bounds.output_args(),
                str(output),
            ],
            log_path=workdir / "copy.log",
            what="Reading the generated video",
        )
        self._bounds.check_output(output, "The generated video")
        return output
