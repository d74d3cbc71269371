"""Job processes, cancel with SIGTERM then SIGKILL, soft and hard time limits, memory and recycling."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import psutil
import pytest
import support_tasks
from conftest import TEST_TASK_MODULES, is_running

from taskd.config import ExecutionConfig, QueueConfig, RetryConfig, TasksConfig
from taskd.tasks.diagnostics import marker_path


def data_dir(service) -> str:
    return str(service.service.config.data_path)


async def wait_marker(service, task_id: str, event: str, timeout: float = 15) -> str:
    path = marker_path(data_dir(service), task_id, event)
    async with asyncio.timeout(timeout):
        while not path.exists():
            await asyncio.sleep(0.02)
    return path.read_text()


async def cancel(service, task_id):
    async with service.client.delete(f"/api/v1/tasks/{task_id}") as response:
        return response.status, await response.json()


def limits(**by_type: tuple[float | None, float | None]) -> TasksConfig:
    soft = {name: s for name, (s, _) in by_type.items() if s is not None}
    hard = {name: h for name, (_, h) in by_type.items() if h is not None}
    return TasksConfig(modules=TEST_TASK_MODULES, soft_time_limits=soft, hard_time_limits=hard)


async def test_plain_function_handler_runs_in_a_child_process(start_service):
    service = await start_service()
    task = await service.submit("cpu", {"seconds": 0.05})

    body = await service.wait_terminal(task["task_id"])

    assert body["status"] == "completed"
    assert body["result"]["pid"] != os.getpid()


# A latency bound: run alone (the serial pass of `make test`), not beside other tests' CPU load.
@pytest.mark.serial
async def test_status_answers_promptly_while_four_cpu_jobs_burn(start_service):
    service = await start_service()
    ids = [(await service.submit("cpu", {"seconds": 4}))["task_id"] for _ in range(4)]
    for task_id in ids:
        await wait_marker(service, task_id, "started")

    started = time.monotonic()
    body = await service.status(ids[0])
    elapsed = time.monotonic() - started

    assert body["status"] == "processing"
    assert elapsed < 1.0  # generous: the loop is not blocked by the burning jobs


async def test_cancel_sends_sigterm_to_the_job_process_and_its_cleanup_runs(start_service):
    service = await start_service()
    task = await service.submit("cpu", {"seconds": 30})
    pid = int(await wait_marker(service, task["task_id"], "started"))

    status, body = await cancel(service, task["task_id"])

    assert (status, body["previous_state"]) == (200, "processing")
    assert int(await wait_marker(service, task["task_id"], "sigterm")) == pid
    await wait_marker(service, task["task_id"], "cleanup")
    assert (await service.status(task["task_id"]))["status"] == "cancelled"


async def test_a_job_process_a_sigterm_from_outside_taskd_stopped_waits_for_a_retry(start_service):
    # As when a stop reaches every process of the service at once (systemd's default
    # KillMode=control-group) or a kill by hand: the handler is stopped as by a cancel, but nobody
    # cancelled the task. Before, nothing was written and the task stayed `processing` until a
    # check of the worker's runs found it and queued it again.
    service = await start_service(retry=RetryConfig(base_delay=3600))
    task = await service.submit("cpu", {"seconds": 60})
    pid = int(await wait_marker(service, task["task_id"], "started"))

    os.kill(pid, signal.SIGTERM)

    body = await service.wait_for(task["task_id"], lambda body: body["last_error"] is not None, timeout=30)
    assert body["status"] == "queued"
    assert "stopped by a signal from outside taskd" in body["last_error"]


async def test_job_process_that_ignores_sigterm_is_killed_after_the_grace(start_service):
    service = await start_service(execution=ExecutionConfig(cancel_grace=1, reclaim_interval=0.5))
    task = await service.submit("cpu", {"seconds": 60, "ignore_sigterm": True})
    pid = int(await wait_marker(service, task["task_id"], "started"))

    await cancel(service, task["task_id"])
    await wait_marker(service, task["task_id"], "sigterm")
    assert psutil.pid_exists(pid)

    async with asyncio.timeout(10):
        while is_running(pid):
            await asyncio.sleep(0.05)
    assert not marker_path(data_dir(service), task["task_id"], "cleanup").exists()


async def test_cancelled_coroutine_handler_runs_its_cleanup(start_service):
    service = await start_service()
    task = await service.submit("sleep", {"seconds": 30})
    await wait_marker(service, task["task_id"], "started")

    await cancel(service, task["task_id"])

    await wait_marker(service, task["task_id"], "cleanup")
    assert (await service.status(task["task_id"]))["status"] == "cancelled"


async def test_cancelled_task_counts_in_cancelled_tasks(start_service):
    service = await start_service()
    task = await service.submit("sleep", {"seconds": 30})
    await wait_marker(service, task["task_id"], "started")

    await cancel(service, task["task_id"])

    async with service.client.get("/api/v1/tasks/metrics") as response:
        assert (await response.json())["metrics"]["cancelled_tasks"] == 1


async def test_soft_limit_reaches_a_coroutine_handler_as_soft_time_limit_exceeded(start_service):
    service = await start_service(tasks=limits(sleep=(0.5, 10)))
    task = await service.submit("sleep", {"seconds": 30})

    body = await service.wait_terminal(task["task_id"])

    await wait_marker(service, task["task_id"], "soft_limit")
    assert body["status"] == "failed"
    assert body["error"] == "Task exceeded its soft time limit of 0.5 seconds"


async def test_soft_limit_reaches_a_job_process_as_soft_time_limit_exceeded(start_service):
    service = await start_service(tasks=limits(cpu=(0.5, 10)))
    task = await service.submit("cpu", {"seconds": 30})

    body = await service.wait_terminal(task["task_id"])

    await wait_marker(service, task["task_id"], "soft_limit")
    await wait_marker(service, task["task_id"], "cleanup")
    assert body["error"] == "Task exceeded its soft time limit of 0.5 seconds"


async def test_hard_limit_kills_the_job_process(start_service):
    service = await start_service(tasks=limits(cpu=(None, 1)))
    task = await service.submit("cpu", {"seconds": 30, "ignore_sigterm": True})
    pid = int(await wait_marker(service, task["task_id"], "started"))

    body = await service.wait_terminal(task["task_id"])

    assert body["status"] == "failed"
    assert body["error"] == "Task exceeded its hard time limit of 1 seconds (job process killed)"
    assert not is_running(pid)


async def test_hard_limit_stops_a_coroutine_handler(start_service):
    service = await start_service(tasks=limits(sleep=(None, 0.5)))
    task = await service.submit("sleep", {"seconds": 30})

    body = await service.wait_terminal(task["task_id"])

    assert body["error"] == "Task exceeded its hard time limit of 0.5 seconds"
    await wait_marker(service, task["task_id"], "cleanup")


async def test_job_process_over_the_memory_limit_is_recycled_and_alerted(start_service):
    service = await start_service(execution=ExecutionConfig(memory_limit_mb=120, reclaim_interval=0.5))
    task = await service.submit("allocate", {"megabytes": 400, "hold_seconds": 10})

    body = await service.wait_terminal(task["task_id"])
    async with service.client.get("/api/v1/tasks/health") as response:
        health = await response.json()

    assert body["status"] == "failed"
    assert body["error"].startswith("Job process exceeded the memory limit of 120 MB")
    assert health["status"] == "critical"
    recycled = [
        alert for alert in health["alerts"] if alert["metric"] == "memory_usage" and "task_id" in alert
    ]
    assert [alert["task_id"] for alert in recycled] == [task["task_id"]]
    assert recycled[0]["severity"] == "critical"


async def test_job_process_is_replaced_after_max_tasks(start_service):
    service = await start_service(
        execution=ExecutionConfig(max_tasks_per_runner=2, reclaim_interval=0.5),
        queues={
            "cpu_intensive": QueueConfig(concurrency=1, timeout=60),
            "default": QueueConfig(1, 60),
            "gpu_heavy": QueueConfig(1, 60),
            "gpu_medium": QueueConfig(1, 60),
        },
    )
    pids = []
    for _ in range(3):
        task = await service.submit("cpu", {"seconds": 0})
        pids.append((await service.wait_terminal(task["task_id"]))["result"]["pid"])

    assert pids[0] == pids[1] != pids[2]


@pytest.mark.parametrize("seconds", [1.0])
async def test_progress_is_monotone_and_visible_while_running(start_service, seconds):
    service = await start_service()
    task = await service.submit("sleep", {"seconds": seconds, "steps": 5})
    seen = []
    async with asyncio.timeout(15):
        while True:
            body = await service.status(task["task_id"])
            seen.append(body["progress"])
            if body["status"] == "completed":
                break
            await asyncio.sleep(0.05)

    assert seen == sorted(seen)
    assert len({p for p in seen if 0 < p < 1}) >= 2


@pytest.mark.parametrize(
    ("task_type", "error"),
    [
        ("raise_soft_limit", "Task execution failed: SoftTimeLimitExceeded: raised by the handler"),
        ("raise_soft_limit_in_process", "SoftTimeLimitExceeded: raised by the handler"),
    ],
)
async def test_soft_time_limit_exceeded_raised_by_a_type_without_a_soft_limit_fails_at_once_naming_it(
    start_service, task_type, error
):
    service = await start_service()
    task = await service.submit(task_type, {})

    body = await service.wait_terminal(task["task_id"])

    assert (body["status"], body["attempt"], body["error"]) == ("failed", 1, error)


async def test_the_soft_limit_stops_the_task_group_a_coroutine_handler_waits_on(start_service):
    # The soft limit reaches the handler as SoftTimeLimitExceeded, not a CancelledError: on 3.11 a
    # TaskGroup aborts its children on a CancelledError only, and they ran on after the task failed.
    service = await start_service(tasks=limits(task_group=(0.5, 30)))
    task = await service.submit("task_group", {})
    await wait_marker(service, task["task_id"], "child_started")

    body = await service.wait_terminal(task["task_id"])

    assert body["error"] == "Task exceeded its soft time limit of 0.5 seconds"
    assert marker_path(data_dir(service), task["task_id"], "child_stopped").exists()


async def test_an_asyncio_task_a_coroutine_handler_left_running_is_stopped_when_its_task_ends(start_service):
    service = await start_service()
    task = await service.submit("leave_a_task", {})

    body = await service.wait_terminal(task["task_id"])

    assert body["status"] == "completed"
    assert marker_path(data_dir(service), task["task_id"], "child_started").exists()
    assert marker_path(data_dir(service), task["task_id"], "child_stopped").exists()


@pytest.fixture
def swallowing(start_service) -> Iterator[None]:
    """`swallow_cancels` handlers go on until the test ends (before its services stop)."""
    support_tasks.SWALLOWING.set()
    yield
    support_tasks.SWALLOWING.clear()


@pytest.mark.usefixtures("swallowing")
async def test_a_coroutine_handler_that_swallows_its_cancel_lets_go_of_its_worker_slot_after_the_grace(
    start_service,
):
    service = await start_service()
    task = await service.submit("swallow_cancels", {})
    await wait_marker(service, task["task_id"], "started")

    await cancel(service, task["task_id"])

    await wait_marker(service, task["task_id"], "cancel_swallowed")
    await service.wait_idle(timeout=20)


@pytest.mark.usefixtures("swallowing")
async def test_a_coroutine_handler_that_swallows_its_cancel_still_fails_at_the_hard_limit(start_service):
    # Stopped at the hard limit, it catches the CancelledError and goes on: the task stayed
    # `processing` for ever. It fails once the cancel grace (2 s here) has passed.
    service = await start_service(tasks=limits(swallow_cancels=(None, 0.5)))
    task = await service.submit("swallow_cancels", {})

    body = await service.wait_terminal(task["task_id"], timeout=20)

    assert (body["status"], body["error"]) == ("failed", "Task exceeded its hard time limit of 0.5 seconds")


async def test_a_coroutine_handlers_cleanup_runs_to_its_end_with_a_cancel_grace_of_0(start_service):
    # cancel_grace = 0 kills a cancelled task's processes at once; the wait for the handler's end
    # was 0 s too: its cleanup, past its first await, was cancelled again and never ended.
    execution = ExecutionConfig(cancel_grace=0, reclaim_interval=0.5, shutdown_grace=2)
    service = await start_service(execution=execution)
    task = await service.submit("clean_up_when_cancelled", {})
    await wait_marker(service, task["task_id"], "started")

    await cancel(service, task["task_id"])
    await service.wait_idle()

    assert marker_path(data_dir(service), task["task_id"], "cleaned_up").exists()
