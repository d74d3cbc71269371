"""`taskd serve` killed with SIGKILL in the middle of each built-in task type, at the phase of it that
matters (an input being fetched, ffmpeg rendering, a provider's answer awaited, a video job being
polled, the output on its way to the CMS), then started again: the task ends once, completed, with
one stored output under its one name, no scratch dir, and one `completed` webhook. Real ffmpeg, the
loopback fakes of the inputs, the providers and the CMS."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from builtin_phases import PHASES, PROJECT, Fakes, running_fakes
from faultkit import Api, Receiver, child_env


@pytest.fixture
async def fakes(tmp_path: Path) -> AsyncIterator[Fakes]:
    async with running_fakes(tmp_path) as running:
        yield running


def leftovers(data: Path) -> list[str]:
    """What is left in the scratch root, and every stored file of the project."""
    scratch = sorted(f"scratch/{path.name}" for path in (data / "scratch").glob("*"))
    return scratch + sorted(f"media/{path.name}" for path in (data / "media" / PROJECT).glob("*"))


@pytest.mark.parametrize("phase", sorted(PHASES))
async def test_a_builtin_task_killed_mid_phase_completes_once_after_a_restart_leaving_nothing_behind(
    spawn_taskd, tmp_path, fakes, phase
):
    case = PHASES[phase]
    data = tmp_path / "data"
    env = child_env(data, **fakes.env(case))
    case.hold(fakes)
    async with asyncio.timeout(150), Receiver() as receiver, aiohttp.ClientSession() as session:
        first = spawn_taskd("serve", env=env)
        api = Api(session, first.base_url)
        task_id = await api.submit(
            case.task_type, case.data(fakes), project_id=PROJECT, callback_url=receiver.url()
        )
        while not case.reached(fakes, first.proc.pid):
            running = await api.status(task_id)
            assert running["status"] in ("queued", "processing"), running["error"]
            await asyncio.sleep(0.05)

        first.stop(signal.SIGKILL)
        case.release(fakes)
        api = Api(session, spawn_taskd("serve", env=env).base_url)
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
