"""Each built-in task type cancelled at the phase of its run that matters (an input being fetched,
ffmpeg rendering, a provider's or the LLM's answer awaited, a video job polled, the output on its way
to the CMS): the task is cancelled, its tools are stopped, its scratch dir is removed, and nothing is
stored, even once what the run waited for comes. Real ffmpeg, the loopback fakes (tests/builtin_phases.py)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
from builtin_phases import PHASES, PROJECT, Fakes, running_fakes

from taskd.config import MediaConfig
from taskd.media.store import media_dir


@pytest.fixture
async def fakes(tmp_path: Path) -> AsyncIterator[Fakes]:
    async with running_fakes(tmp_path) as running:
        yield running


def tools() -> list[psutil.Process]:
    """The ffmpeg processes below this one (the test's Valkey is a child too, and not a tool)."""
    return [child for child in psutil.Process().children(recursive=True) if "ffmpeg" in child.name()]


@pytest.mark.parametrize("phase", sorted(PHASES))
async def test_a_builtin_task_cancelled_mid_phase_stops_its_tools_and_leaves_nothing_behind(
    start_service, tmp_path, fakes, phase
):
    case = PHASES[phase]
    case.hold(fakes)
    scratch = tmp_path / "scratch"
    service = await start_service(media=MediaConfig(scratch_dir=str(scratch)), **fakes.sections(case))
    task = await service.submit(case.task_type, case.data(fakes), project_id=PROJECT)
    async with asyncio.timeout(60):
        while not case.reached(fakes, os.getpid()):
            running = await service.status(task["task_id"])
            assert running["status"] in ("queued", "processing"), running["error"]
            await asyncio.sleep(0.05)
    started = tools()

    async with service.client.delete(f"/api/v1/tasks/{task['task_id']}") as response:
        assert response.status == 200
    await service.wait_idle()
    case.release(fakes)  # what the run waited for comes, to nobody

    assert (await service.status(task["task_id"]))["status"] == "cancelled"
    assert [tool.pid for tool in started if tool.is_running() and tool.status() != psutil.STATUS_ZOMBIE] == []
    assert list(scratch.glob("*")) == []
    assert list((media_dir(service.service.config) / PROJECT).glob("*")) == []
