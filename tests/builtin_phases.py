"""Each built-in task type held at a phase of its run that matters, for the fault tests that kill
or cancel it there: the loopback fakes it reads from and sends to, what makes the phase last, and
how a test sees that a run is in it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import orjson
import psutil
from fake_media_apis import FakeImagesAPI, FakeSpeechAPI, FileServer, png, sine_wav
from fake_openai import FakeOpenAI
from fake_payload import FakePayload
from fake_video_apis import FakeVideoAPI, make_mp4

from taskd.config import (
    ImageProvider,
    LlmProvider,
    NetworkConfig,
    PayloadConfig,
    ProvidersConfig,
    SpeechProvider,
    VideoProvider,
)

PROJECT = "faults"
# The model each video-generation protocol is configured with.
VIDEO_MODELS = {"openai": "sora-2", "replicate": "acme/video-model"}
VERDICT = {"rating": 85, "summary": "Solid story.", "issues": [], "suggestions": [], "confidence": 0.9}


@attrs.frozen
class Fakes:
    """The loopback servers the built-in types read from and send to."""

    files: FileServer
    images: FakeImagesAPI
    speech: FakeSpeechAPI
    llm: FakeOpenAI
    cms: FakePayload
    video: FakeVideoAPI

    def env(self, phase: Phase) -> dict[str, str]:
        """The environment of a `taskd` child that uses these fakes for `phase`."""
        video = {
            "TASKD_PROVIDERS__VIDEO__PROTOCOL": phase.video_protocol,
            "TASKD_PROVIDERS__VIDEO__BASE_URL": self.video.base_url,
            "TASKD_PROVIDERS__VIDEO__API_KEY": "sk-video",
            "TASKD_PROVIDERS__VIDEO__MODEL": VIDEO_MODELS[phase.video_protocol],
            "TASKD_PROVIDERS__VIDEO__POLL_INTERVAL": "0.1",
        }
        return {
            **(video if phase.video_api else {}),
            "TASKD_NETWORK__ALLOW_PRIVATE": "true",
            "TASKD_PROVIDERS__IMAGE__BASE_URL": self.images.base_url,
            "TASKD_PROVIDERS__IMAGE__API_KEY": "sk-img",
            "TASKD_PROVIDERS__SPEECH__BASE_URL": self.speech.base_url,
            "TASKD_PROVIDERS__SPEECH__API_KEY": "sk-speech",
            "TASKD_PROVIDERS__LLM__BASE_URL": self.llm.base_url,
            "TASKD_PROVIDERS__LLM__API_KEY": "sk-llm",
            "TASKD_PAYLOAD__BASE_URL": self.cms.url,
            "TASKD_PAYLOAD__API_KEY": self.cms.api_key,
        }

    def sections(self, phase: Phase) -> dict[str, Any]:
        """The same as config sections of a taskd started in the test's process."""
        video = VideoProvider(
            protocol=phase.video_protocol,
            base_url=self.video.base_url,
            api_key="sk-video",
            model=VIDEO_MODELS[phase.video_protocol],
            poll_interval=0.1,
        )
        return {
            "network": NetworkConfig(allow_private=True),
            "providers": ProvidersConfig(
                image=ImageProvider(base_url=self.images.base_url, api_key="sk-img"),
                speech=SpeechProvider(base_url=self.speech.base_url, api_key="sk-speech"),
                llm=LlmProvider(base_url=self.llm.base_url, api_key="sk-llm"),
                **({"video": video} if phase.video_api else {}),
            ),
            "payload": PayloadConfig(base_url=self.cms.url, api_key=self.cms.api_key),
        }


@attrs.frozen
class Phase:
    """A task of one type held at one phase: `hold` makes the phase last, `reached` says the run is
    in it, `release` lets the run that follows the kill through."""

    task_type: str
    data: Callable[[Fakes], dict[str, Any]]
    reached: Callable[[Fakes, int], bool]
    hold: Callable[[Fakes], None] = lambda f: None
    release: Callable[[Fakes], None] = lambda f: None
    # A video-generation API renders generate_video / render_animation, not ffmpeg ...
    video_api: bool = False
    # ... speaking this protocol.
    video_protocol: str = "openai"


def renders(f: Fakes, pid: int) -> bool:
    """An ffmpeg under the taskd process `pid` writes into a task's scratch dir (not the probe of
    its encoders that taskd runs at start-up)."""
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "ffmpeg" in child.name() and any("scratch" in arg for arg in child.cmdline()):
                return True
    return False


def hold_llm(f: Fakes, reply: str | None = None) -> None:
    f.llm.answering.clear()
    if reply is not None:
        for _ in range(3):  # the killed run's request, answered after the kill, may take one
            f.llm.reply(reply)


def hold_cms(f: Fakes) -> None:
    f.cms.hold = asyncio.Event()


def release_cms(f: Fakes) -> None:
    assert f.cms.hold is not None
    f.cms.hold.set()


PHASES: dict[str, Phase] = {
    "process_audio fetching its input": Phase(
        "process_audio",
        lambda f: {
            "tracks": [{"url": f.files.add("tone.wav", sine_wav(1.0)).replace("/tone", "/slow/tone")}],
            "output_format": "wav",
        },
        reached=lambda f, pid: bool(f.files.requests),
        hold=lambda f: setattr(f.files, "slow_seconds", 120.0),
        release=lambda f: setattr(f.files, "slow_seconds", 0.0),
    ),
    "generate_video inside ffmpeg": Phase(
        "generate_video",
        lambda f: {
            "storyboard_images": [f.files.add("a.png", png(320, 240)), f.files.add("b.png", png(320, 240))],
            "duration": 10,
            "fps": 24,
            "resolution": "1280x720",
        },
        reached=renders,
    ),
    "generate_video polling the video provider": Phase(
        "generate_video",
        lambda f: {"scene_description": "A rainy alley", "duration": 2},
        reached=lambda f, pid: any(method == "GET" for method, _ in f.video.requests),
        hold=lambda f: setattr(f.video, "hang", True),
        release=lambda f: setattr(f.video, "hang", False),
        video_api=True,
    ),
    "render_animation storing to the CMS": Phase(
        "render_animation",
        lambda f: {
            "character_id": "detective_jones",
            "keyframes": [{"image_url": f.files.add("k.png", png(64, 48))}],
            "duration": 1,
            "resolution": "64x48",
        },
        reached=lambda f, pid: f.cms.posts > 0,
        hold=hold_cms,
        release=release_cms,
    ),
    "generate_image waiting on the image provider": Phase(
        "generate_image",
        lambda f: {"prompt": "a detective in the rain", "resolution": "1024x1024"},
        reached=lambda f, pid: bool(f.images.requests),
        hold=lambda f: setattr(f.images, "delay", 120.0),
        release=lambda f: setattr(f.images, "delay", 0.0),
    ),
    "generate_character_voice waiting on the speech provider": Phase(
        "generate_character_voice",
        lambda f: {"text": "I've been expecting you.", "output_format": "wav"},
        reached=lambda f, pid: bool(f.speech.requests),
        hold=lambda f: setattr(f.speech, "delay", 120.0),
        release=lambda f: setattr(f.speech, "delay", 0.0),
    ),
    "test_prompt waiting on the LLM": Phase(
        "test_prompt",
        lambda f: {"prompt_template": "Describe {{who}}", "test_parameters": {"who": "a librarian"}},
        reached=lambda f, pid: f.llm.in_flight > 0,
        hold=hold_llm,
        release=lambda f: f.llm.answering.set(),
    ),
    "evaluate_department waiting on the LLM": Phase(
        "evaluate_department",
        lambda f: {
            "department_slug": "story",
            "department_number": 1,
            "gather_data": [{"content": "A detective arrives in town."}],
        },
        reached=lambda f, pid: f.llm.in_flight > 0,
        hold=lambda f: hold_llm(f, orjson.dumps(VERDICT).decode()),
        release=lambda f: f.llm.answering.set(),
    ),
    "automated_gather_creation waiting on the LLM": Phase(
        "automated_gather_creation",
        lambda f: {"brief": "A noir series.", "departments": ["story"]},
        reached=lambda f, pid: f.llm.in_flight > 0,
        hold=lambda f: hold_llm(f, '{"items": [{"content": "A harbour at dawn"}]}'),
        release=lambda f: f.llm.answering.set(),
    ),
}


@contextlib.asynccontextmanager
async def running_fakes(tmp_path: Path) -> AsyncIterator[Fakes]:
    """Every fake, listening on loopback until the block ends."""
    mp4 = make_mp4(tmp_path / "provider.mp4")
    async with (
        FileServer() as files,
        FakeImagesAPI() as images,
        FakeSpeechAPI() as speech,
        FakeOpenAI() as llm,
        FakePayload() as cms,
        FakeVideoAPI(mp4) as video,
    ):
        yield Fakes(files, images, speech, llm, cms, video)
