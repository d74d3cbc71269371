"""`taskd serve` killed with SIGKILL in the middle of each built-in task type, at the phase of it that
matters (an input being fetched, ffmpeg rendering, a provider's answer awaited, a video job being
polled, the output on its way to the CMS), then started again: the task ends once, completed, with
one stored output under its one name, no scratch dir, and one `completed` webhook. What the killed
run was answered and kept (a video job, the LLM's answers: taskd.store.run_state) is not asked for
again. Real ffmpeg, the loopback fakes of the inputs, the providers and the CMS."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from builtin_phases import PHASES, PROJECT, Fakes, Phase, running_fakes
from fake_media_apis import sine_wav
from faultkit import Api, Receiver, child_env


@pytest.fixture
async def fakes(tmp_path: Path) -> AsyncIterator[Fakes]:
    async with running_fakes(tmp_path) as running:
        yield running


def leftovers(data: Path) -> list[str]:
    """What is left in the scratch root, and every stored file of the project."""
    scratch = sorted(f"scratch/{path.name}" for path in (data / "scratch").glob("*"))
    return scratch + sorted(f"media/{path.name}" for path in (data / "media" / PROJECT).glob("*"))


async def killed_mid_phase(
    spawn_taskd: Callable[..., Any],
    data: Path,
    fakes: Fakes,
    case: Phase,
    session: aiohttp.ClientSession,
    *,
    stop_with: int = signal.SIGKILL,
    settings: dict[str, str] | None = None,
    **fields: Any,
) -> tuple[Api, str]:
    """`case`'s task submitted (with `fields`) to a `taskd serve` on `data` (with `settings`, env
    variables), killed with SIGKILL (or stopped with `stop_with`) once its run is in the phase, the
    phase released and another `taskd serve` started on the same data dir: that one's API and the
    task's id."""
    env = child_env(data, **fakes.env(case), **(settings or {}))
    case.hold(fakes)
    first = spawn_taskd("serve", env=env)
    api = Api(session, first.base_url)
    task_id = await api.submit(case.task_type, case.data(fakes), project_id=PROJECT, **fields)
    while not case.reached(fakes, first.proc.pid):
        running = await api.status(task_id)
        assert running["status"] in ("queued", "processing"), running["error"]
        await asyncio.sleep(0.05)
    first.stop(stop_with)
    case.release(fakes)
    return Api(session, spawn_taskd("serve", env=env).base_url), task_id


@pytest.mark.parametrize("phase", sorted(PHASES))
async def test_a_builtin_task_killed_mid_phase_completes_once_after_a_restart_leaving_nothing_behind(
    spawn_taskd, tmp_path, fakes, phase
):
    data = tmp_path / "data"
    async with asyncio.timeout(150), Receiver() as receiver, aiohttp.ClientSession() as session:
        api, task_id = await killed_mid_phase(
            spawn_taskd, data, fakes, PHASES[phase], session, callback_url=receiver.url()
        )
        [body] = await api.wait_all([task_id], timeout=120)
        async with asyncio.timeout(20):
            while f"msg_{task_id}_completed" not in receiver.delivered:
                await asyncio.sleep(0.1)
        _, metrics = await api.call("GET", "/api/v1/tasks/metrics")

    assert (body["status"], body["attempt"], body["error"]) == ("completed", 2, None)
    assert metrics["metrics"]["completed_tasks"] == 1
    assert receiver.ids[f"msg_{task_id}_completed"] == 1
    media_url = (body["result"] or {}).get("media_url")
    stored = [f"media/{media_url.split('?')[0].rsplit('/', 1)[1]}"] if media_url else []
    assert leftovers(data) == stored


POLLING = PHASES["generate_video polling the video provider"]


@pytest.mark.parametrize("protocol", ["openai", "replicate"])
async def test_a_video_task_killed_while_its_job_runs_fetches_that_job_after_a_restart(
    spawn_taskd, tmp_path, fakes, protocol
):
    case = attrs.evolve(POLLING, video_protocol=protocol)
    async with asyncio.timeout(150), aiohttp.ClientSession() as session:
        api, task_id = await killed_mid_phase(spawn_taskd, tmp_path / "data", fakes, case, session)
        [body] = await api.wait_all([task_id], timeout=120)

    assert (body["status"], body["attempt"]) == ("completed", 2)
    assert (len(fakes.video.created), fakes.video.cancelled) == (1, [])


async def test_a_video_task_handed_back_by_a_stopping_worker_leaves_its_job_to_the_next_run(
    spawn_taskd, tmp_path, fakes
):
    # A SIGTERM past the shutdown grace (a deploy, while the job runs for minutes) hands the task
    # back: its next run follows the job, which must not have been cancelled at the provider.
    async with asyncio.timeout(150), aiohttp.ClientSession() as session:
        api, task_id = await killed_mid_phase(
            spawn_taskd,
            tmp_path / "data",
            fakes,
            POLLING,
            session,
            stop_with=signal.SIGTERM,
            settings={"TASKD_EXECUTION__SHUTDOWN_GRACE": "0"},
        )
        [body] = await api.wait_all([task_id], timeout=120)

    assert (body["status"], body["attempt"]) == ("completed", 2)
    assert (len(fakes.video.created), fakes.video.cancelled) == (1, [])


async def test_a_cancel_after_a_restart_cancels_the_video_job_of_the_killed_run(spawn_taskd, tmp_path, fakes):
    case = attrs.evolve(POLLING, release=lambda f: None)  # the job stays in progress
    async with asyncio.timeout(150), aiohttp.ClientSession() as session:
        api, task_id = await killed_mid_phase(spawn_taskd, tmp_path / "data", fakes, case, session)
        polls = fakes.video.jobs["job_1"]
        await api.wait_all([task_id], lambda body: fakes.video.jobs["job_1"] > polls, timeout=120)
        status, _ = await api.call("DELETE", f"/api/v1/tasks/{task_id}")
        assert status == 200
        async with asyncio.timeout(20):
            while fakes.video.cancelled != ["job_1"]:
                await asyncio.sleep(0.05)

    assert len(fakes.video.created) == 1


def answered_then_held(f: Fakes) -> None:
    """The story department's answer comes; the audio department's is held until the kill, and
    the next run's comes."""
    f.llm.reply('{"items": [{"content": "A harbour at dawn"}]}')
    f.llm.hang(300)
    f.llm.reply('{"items": [{"content": "Rain on tin roofs"}]}')


async def test_a_gather_task_killed_between_departments_asks_only_for_the_unanswered_after_a_restart(
    spawn_taskd, tmp_path, fakes
):
    case = Phase(
        "automated_gather_creation",
        lambda f: {"brief": "A noir series.", "departments": ["story", "audio"]},
        reached=lambda f, pid: len(f.llm.requests) == 2,
        hold=answered_then_held,
    )
    async with asyncio.timeout(150), aiohttp.ClientSession() as session:
        api, task_id = await killed_mid_phase(spawn_taskd, tmp_path / "data", fakes, case, session)
        [body] = await api.wait_all([task_id], timeout=120)

    assert (body["status"], body["attempt"]) == ("completed", 2)
    assert body["result"]["gather_data"] == {
        "story": [{"content": "A harbour at dawn", "summary": "", "context": ""}],
        "audio": [{"content": "Rain on tin roofs", "summary": "", "context": ""}],
    }
    assert len(fakes.llm.requests) == 3
    assert "audio department" in fakes.llm.requests[2].json["messages"][0]["content"]


def cms_answer_held(f: Fakes) -> None:
    """The CMS makes the document of the upload and holds its answer."""
    f.cms.answer_hold = asyncio.Event()


def cms_answers(f: Fakes) -> None:
    assert f.cms.answer_hold is not None
    f.cms.answer_hold.set()


@pytest.mark.parametrize(
    "storing", ["render_animation storing to the CMS", "process_audio storing to the CMS"]
)
async def test_a_task_killed_before_the_cms_answered_its_upload_reuses_that_document_after_a_restart(
    spawn_taskd, tmp_path, fakes, storing
):
    data = {
        "render_animation storing to the CMS": PHASES["render_animation storing to the CMS"].data,
        "process_audio storing to the CMS": lambda f: {
            "tracks": [{"url": f.files.add("tone.wav", sine_wav(1.0))}],
            "output_format": "wav",
        },
    }[storing]
    case = Phase(
        storing.split()[0],
        data,
        reached=lambda f, pid: len(f.cms.uploads) == 1,
        hold=cms_answer_held,
        release=cms_answers,
    )
    async with asyncio.timeout(150), aiohttp.ClientSession() as session:
        api, task_id = await killed_mid_phase(spawn_taskd, tmp_path / "data", fakes, case, session)
        [body] = await api.wait_all([task_id], timeout=120)

    assert (body["status"], body["attempt"]) == ("completed", 2)
    assert body["result"]["payload_media_id"] == "101"
    assert (len(fakes.cms.uploads), fakes.cms.searches) == (1, 1)
