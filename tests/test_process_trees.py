"""Every child a coroutine task starts is part of the task: cancels, limits and memory reach it."""

from __future__ import annotations

import asyncio
import os
import resource
import sys

import psutil
import pytest
from conftest import TEST_TASK_MODULES
from fake_media_apis import png

from taskd import proctree
from taskd.config import ExecutionConfig, MediaConfig, NetworkConfig, RetryConfig, TasksConfig
from taskd.tasks.diagnostics import marker_path


def running(pid: int) -> bool:
    """The process is there and not a zombie (it may be reaped between two looks)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def marker(service, task_id: str, event: str):
    return marker_path(service.service.config.data_path, task_id, event)


async def wait_marker(service, task_id: str, event: str, timeout: float = 20) -> str:
    path = marker(service, task_id, event)
    async with asyncio.timeout(timeout):
        while not path.exists():
            await asyncio.sleep(0.02)
    return path.read_text()


async def wait_gone(pid: int, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while running(pid):
            await asyncio.sleep(0.05)


async def cancel(service, task_id: str) -> None:
    async with service.client.delete(f"/api/v1/tasks/{task_id}") as response:
        assert response.status == 200


async def test_a_cancel_gives_a_tool_child_sigterm_then_the_grace_then_sigkill(start_service):
    service = await start_service(execution=ExecutionConfig(cancel_grace=2))
    task = await service.submit("tool_child", {"ignore_sigterm": True})
    pid = int(await wait_marker(service, task["task_id"], "child_started"))

    await cancel(service, task["task_id"])
    await wait_marker(service, task["task_id"], "child_sigterm")
    await asyncio.sleep(0.5)
    alive_within_the_grace = running(pid)
    await wait_gone(pid)

    assert alive_within_the_grace
    await wait_marker(service, task["task_id"], "cleanup")
    assert (await service.wait_terminal(task["task_id"]))["status"] == "cancelled"


async def test_a_tool_child_that_heeds_sigterm_ends_at_once_and_the_task_is_cancelled(start_service):
    service = await start_service(execution=ExecutionConfig(cancel_grace=60))
    task = await service.submit("tool_child", {})
    pid = int(await wait_marker(service, task["task_id"], "child_started"))

    await cancel(service, task["task_id"])

    await wait_gone(pid, timeout=10)  # far inside the 60 s grace
    assert (await service.wait_terminal(task["task_id"], timeout=10))["status"] == "cancelled"


async def test_a_hard_time_limit_kills_the_tool_children(start_service):
    tasks = TasksConfig(modules=TEST_TASK_MODULES, hard_time_limits={"tool_child": 1.5})
    service = await start_service(tasks=tasks, execution=ExecutionConfig(cancel_grace=60))
    task = await service.submit("tool_child", {"ignore_sigterm": True})
    pid = int(await wait_marker(service, task["task_id"], "child_started"))

    body = await service.wait_terminal(task["task_id"], timeout=20)

    assert body["error"] == "Task exceeded its hard time limit of 1.5 seconds"
    await wait_gone(pid, timeout=10)  # SIGKILL, not the 60 s grace


async def test_tool_children_over_the_memory_limit_are_killed_and_the_task_fails_naming_it(start_service):
    service = await start_service(execution=ExecutionConfig(memory_limit_mb=100, cancel_grace=60))
    task = await service.submit("tool_child", {"megabytes": 300, "ignore_sigterm": True})

    body = await service.wait_terminal(task["task_id"], timeout=30)
    async with service.client.get("/api/v1/tasks/health") as response:
        health = await response.json()

    assert body["status"] == "failed"
    assert body["error"].startswith("The task's processes exceeded the memory limit of 100 MB (")
    killed = [alert for alert in health["alerts"] if alert.get("task_id") == task["task_id"]]
    assert [(alert["metric"], alert["severity"]) for alert in killed] == [("memory_usage", "critical")]
    assert killed[0]["value"] >= 100
    assert "were killed" in killed[0]["message"]


async def test_a_cancel_mid_render_stops_ffmpeg_and_removes_the_scratch_dir(start_service, tmp_path, files):
    scratch = tmp_path / "scratch"
    media = MediaConfig(base_url="http://media.test", scratch_dir=str(scratch))
    service = await start_service(
        media=media, network=NetworkConfig(allow_private=True), execution=ExecutionConfig(cancel_grace=3)
    )
    url = files.add("frame.png", png(320, 240))
    data = {"storyboard_images": [url], "duration": 30, "fps": 30, "resolution": "1920x1080"}
    task = await service.submit("generate_video", data)
    async with asyncio.timeout(30):
        while not (
            renderers := [p for p in psutil.Process().children(recursive=True) if "ffmpeg" in p.name()]
        ):
            await asyncio.sleep(0.05)

    await cancel(service, task["task_id"])

    body = await service.wait_terminal(task["task_id"], timeout=20)
    assert body["status"] == "cancelled"
    for renderer in renderers:
        await wait_gone(renderer.pid, timeout=10)
    # The record says cancelled at once; the handler's cleanup follows within the grace.
    async with asyncio.timeout(10):
        while any(scratch.iterdir()):
            await asyncio.sleep(0.05)


async def test_a_render_whose_ffmpeg_a_signal_from_outside_taskd_stopped_waits_for_a_retry(
    start_service, tmp_path
):
    # As when a stop reaches every process of the service at once (systemd's default
    # KillMode=control-group, `tini -g`): ffmpeg, which traps SIGTERM, exits 255. taskd's own
    # cancels and stops cancel the handler as they signal, so they never see that exit.
    media = MediaConfig(base_url="http://media.test", scratch_dir=str(tmp_path / "scratch"))
    service = await start_service(media=media, retry=RetryConfig(base_delay=3600))
    data = {"scene_description": "card", "duration": 30, "fps": 60, "resolution": "1920x1080"}
    task_id = (await service.submit("generate_video", data))["task_id"]
    async with asyncio.timeout(60):
        while not (renderers := [p for p in psutil.Process().children() if "ffmpeg" in p.name()]):
            await asyncio.sleep(0.05)
    # Rendering: past its start (where it sets its handlers), ffmpeg reports progress.
    before = (await service.status(task_id))["progress"]
    await service.wait_for(task_id, lambda body: body["progress"] > before, timeout=60)

    renderers[0].terminate()

    body = await service.wait_for(task_id, lambda body: body["status"] != "processing", timeout=60)
    assert body["status"] == "queued"
    assert "stopped by a signal from outside taskd" in body["last_error"]


async def test_a_tool_child_gets_its_own_process_group_and_the_address_space_limit():
    tree = proctree.ProcessTree(proctree.TreeLimits(address_space_bytes=512 * 1024 * 1024))
    probe = (
        "import os, resource; print(os.getpgid(0) == os.getpid(), resource.getrlimit(resource.RLIMIT_AS)[0])"
    )

    child = await tree.spawn(sys.executable, "-c", probe, stdout=asyncio.subprocess.PIPE)
    out, _ = await child.communicate()

    assert out.decode().split() == ["True", str(512 * 1024 * 1024)]
    assert resource.getrlimit(resource.RLIMIT_AS)[0] != 512 * 1024 * 1024  # taskd's own is untouched


async def test_a_tool_child_keeps_a_descriptor_it_was_passed():
    # Its start closes every other one above stderr (tests/test_child_descriptors.py).
    read_end, write_end = os.pipe()
    try:
        writer = f"import os; os.write({write_end}, b'kept')"
        child = await proctree.ProcessTree().spawn(sys.executable, "-c", writer, pass_fds=(write_end,))
        await child.wait()
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read() == b"kept"


async def test_an_allocation_past_the_address_space_limit_fails_inside_the_tool():
    tree = proctree.ProcessTree(proctree.TreeLimits(address_space_bytes=256 * 1024 * 1024))
    greedy = "bytearray(1024 * 1024 * 1024)"

    child = await tree.spawn(sys.executable, "-c", greedy, stderr=asyncio.subprocess.PIPE)
    _, err = await child.communicate()

    assert child.returncode != 0
    assert b"MemoryError" in err


async def test_whatever_a_task_left_running_is_killed_when_the_tree_is_done():
    tree = proctree.ProcessTree()
    child = await tree.spawn(sys.executable, "-c", "import time; time.sleep(60)")

    await tree.kill()

    assert child.returncode is not None
    assert tree.alive == []


@pytest.mark.parametrize("grace", [0.3])
async def test_stop_waits_the_grace_for_a_child_that_ignores_sigterm(grace):
    tree = proctree.ProcessTree(proctree.TreeLimits(grace=grace))
    stubborn = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"
    child = await tree.spawn(sys.executable, "-c", stubborn, stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None
    await child.stdout.readline()  # the handler is installed

    await tree.stop()

    assert child.returncode == -9  # SIGKILL, after the grace


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux-only")
async def test_a_tool_child_dies_with_the_process_that_started_it_even_by_sigkill():
    # A stand-in for a worker: it starts a tool child through the tree, prints the child's pid, waits.
    worker_code = (
        "import asyncio, sys\n"
        "from taskd import proctree\n"
        "async def main():\n"
        "    child = await proctree.spawn(sys.executable, '-c', 'import time; time.sleep(60)')\n"
        "    print(child.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", worker_code, stdout=asyncio.subprocess.PIPE
    )
    assert worker.stdout is not None
    tool_pid = int(await worker.stdout.readline())

    worker.kill()
    await worker.wait()

    async with asyncio.timeout(10):
        while running(tool_pid):
            await asyncio.sleep(0.05)
    # The tool child held the worker's stdout pipe: read it to its end, so the pipe's transport
    # closes inside this test's event loop (left open, it warns when collected in a later test).
    async with asyncio.timeout(10):
        await worker.stdout.read()


async def test_what_a_job_process_handler_left_running_is_killed_when_its_task_ends(start_service):
    taskd = await start_service()
    task = await taskd.submit("leave_children", {})

    body = await taskd.wait_terminal(task["task_id"])

    assert body["status"] == "completed", body
    left = body["result"]
    for pid in (left["child"], left["orphan"]):  # the orphan's parent had exited first
        assert not psutil.pid_exists(pid), f"{pid} is left, a zombie at least"


async def stubborn_children(service, then: str, **limits):
    """A job-process task's two children that a signal to its group does not end (one ignores
    SIGTERM, one left the group), once both run: the task id and their pids."""
    task = await service.submit("leave_stubborn_children", {"then": then})
    pids = [int(pid) for pid in (await wait_marker(service, task["task_id"], "children")).split()]
    return task["task_id"], pids


async def test_a_cancel_of_a_job_process_task_leaves_none_of_its_children_running(start_service):
    service = await start_service(execution=ExecutionConfig(cancel_grace=2))
    task_id, pids = await stubborn_children(service, "wait")

    await cancel(service, task_id)
    for pid in pids:
        await wait_gone(pid, timeout=5)  # the job process ends at once; what it left goes with it

    assert (await service.status(task_id))["status"] == "cancelled"


async def test_the_children_of_a_job_process_that_dies_mid_task_are_killed(start_service):
    service = await start_service()
    task_id, pids = await stubborn_children(service, "die")

    body = await service.wait_terminal(task_id)
    for pid in pids:
        await wait_gone(pid, timeout=5)

    assert body["error"] == "Job process died while running the task (exit status 3)"


async def test_the_children_of_a_job_process_killed_at_the_hard_limit_are_killed(start_service):
    limits = TasksConfig(modules=TEST_TASK_MODULES, hard_time_limits={"leave_stubborn_children": 2})
    service = await start_service(tasks=limits)
    task_id, pids = await stubborn_children(service, "wait")

    body = await service.wait_terminal(task_id)
    for pid in pids:
        await wait_gone(pid, timeout=5)

    assert body["error"].startswith("Task exceeded its hard time limit of 2 seconds"), body


async def test_a_stop_leaves_nothing_of_a_job_process_deaf_to_sigterm_running(start_service):
    service = await start_service(execution=ExecutionConfig(cancel_grace=5, shutdown_grace=0.5))
    _, pids = await stubborn_children(service, "ignore_sigterm")

    await service.service.stop()  # before the cancel's grace is out: the stop does not wait for it
    for pid in pids:
        await wait_gone(pid, timeout=5)
