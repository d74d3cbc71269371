"""A transient failure at each phase of each built-in type's run is retried as documented: an input
host's 5xx or dropped connection, a provider's or the LLM's 5xx fail the run transiently and the task
runs again (docs/task-types.md, automatic retries); a video provider's failed poll and the CMS's
5xx are retried inside the run (`providers.video.max_retries`, `payload.max_attempts`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import pytest
from builtin_phases import PHASES, PROJECT, Fakes, Phase, running_fakes
from fake_media_apis import DROP, sine_wav

from taskd.config import MediaConfig, PayloadConfig


@pytest.fixture
async def fakes(tmp_path: Path) -> AsyncIterator[Fakes]:
    async with running_fakes(tmp_path) as running:
        yield running


@attrs.frozen
class Failure:
    """`fail` makes one phase of a run of `phase` fail once; `attempt` is the run that completes."""

    phase: Phase
    fail: Callable[[Fakes], None]
    attempt: int


# process_audio with an input served at once (its phase's is a slow one).
AUDIO = attrs.evolve(
    PHASES["process_audio fetching its input"],
    data=lambda f: {"tracks": [{"url": f.files.add("tone.wav", sine_wav(1.0))}], "output_format": "wav"},
)

FAILURES: dict[str, Failure] = {
    "an input answering 503": Failure(AUDIO, lambda f: f.files.errors.append(503), attempt=2),
    "an input whose connection drops halfway": Failure(
        AUDIO, lambda f: f.files.errors.append(DROP), attempt=2
    ),
    "the image provider answering 500": Failure(
        PHASES["generate_image waiting on the image provider"],
        lambda f: f.images.errors.append(500),
        attempt=2,
    ),
    "the speech provider answering 503": Failure(
        PHASES["generate_character_voice waiting on the speech provider"],
        lambda f: f.speech.errors.append(503),
        attempt=2,
    ),
    "the LLM answering 500": Failure(
        PHASES["test_prompt waiting on the LLM"], lambda f: f.llm.fail(500), attempt=2
    ),
    "a poll of the video provider answering 503": Failure(
        PHASES["generate_video polling the video provider"],
        lambda f: f.video.poll_errors.append(503),
        attempt=1,
    ),
    "the generated video's download dropping halfway": Failure(
        PHASES["generate_video polling the video provider"],
        lambda f: (
            setattr(f.video, "content_redirect", f.files.add("generated.mp4", f.video.video)),
            f.files.errors.append(DROP),
        ),
        attempt=1,
    ),
    "the CMS answering 500": Failure(
        PHASES["render_animation storing to the CMS"],
        lambda f: setattr(f.cms, "fail_next", 1),
        attempt=1,
    ),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
async def test_a_transient_failure_at_a_phase_of_a_builtin_task_is_retried_and_the_task_completes(
    start_service, tmp_path, fakes, failure
):
    case = FAILURES[failure]
    sections = fakes.sections(case.phase)
    sections["payload"] = PayloadConfig(base_url=fakes.cms.url, api_key=fakes.cms.api_key, retry_delay=0.01)
    service = await start_service(media=MediaConfig(scratch_dir=str(tmp_path / "scratch")), **sections)
    case.fail(fakes)

    task = await service.submit(case.phase.task_type, case.phase.data(fakes), project_id=PROJECT)
    body = await service.wait_terminal(task["task_id"], timeout=90)

    assert (body["status"], body["attempt"], body["error"]) == ("completed", case.attempt, None)
