"""A cancel cannot be lost: when the pub/sub message misses a worker, its record still stops the task."""

from __future__ import annotations

import asyncio

import psutil

from taskd.config import ExecutionConfig, WorkerConfig
from taskd.tasks.diagnostics import marker_path


async def wait_marker(service, task_id: str, event: str, timeout: float = 20) -> str:
    path = marker_path(service.service.config.data_path, task_id, event)
    async with asyncio.timeout(timeout):
        while not path.exists():
            await asyncio.sleep(0.02)
    return path.read_text()


def running(pid: int) -> bool:
    """The process is there and not a zombie (it may be reaped between two looks)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def cancel(service, task_id: str) -> None:
    async with service.client.delete(f"/api/v1/tasks/{task_id}") as response:
        assert response.status == 200


async def test_a_cancel_the_subscriber_missed_stops_the_process_tree_within_one_heartbeat(start_service):
    service = await start_service(
        worker=WorkerConfig(heartbeat_interval=0.5, heartbeat_ttl=3),
        execution=ExecutionConfig(cancel_grace=1),
    )
    task = await service.submit("tool_child", {})
    pid = int(await wait_marker(service, task["task_id"], "child_started"))
    service.deafen()

    await cancel(service, task["task_id"])

    async with asyncio.timeout(5):  # one heartbeat (0.5 s) and the grace, with room for a slow box
        while running(pid):
            await asyncio.sleep(0.05)
        while service.service._pool.running_jobs:
            await asyncio.sleep(0.05)
    await wait_marker(service, task["task_id"], "cleanup")


async def test_a_cancel_the_subscriber_missed_stops_the_task_at_its_next_progress_write(start_service):
    # Heartbeats far apart: only the refused progress write can notice the cancel in time.
    service = await start_service(worker=WorkerConfig(heartbeat_interval=60, heartbeat_ttl=180))
    task = await service.submit("sleep", {"seconds": 60, "steps": 120})
    await wait_marker(service, task["task_id"], "started")
    service.deafen()

    await cancel(service, task["task_id"])

    await wait_marker(service, task["task_id"], "cleanup", timeout=10)
    assert (await service.status(task["task_id"]))["status"] == "cancelled"


async def test_a_cancel_heard_before_the_run_began_here_stops_the_task_before_its_handler(
    start_service, monkeypatch
):
    # Heartbeats far apart: only the cancel message itself can stop the task in time.
    service = await start_service(worker=WorkerConfig(heartbeat_interval=60, heartbeat_ttl=180))
    executor = service.service._executor
    # The run pauses between its start (the record says processing) and its handler: where it
    # reads its $refs, one round trip that the cancel message can overtake.
    paused, go, heard = asyncio.Event(), asyncio.Event(), asyncio.Event()
    resolve, cancel_local = executor._resolve_refs, executor.cancel_local

    async def resolve_when_told(record):
        paused.set()
        await go.wait()
        return await resolve(record)

    def hear(task_id: str) -> bool:
        stopped = cancel_local(task_id)
        heard.set()
        return stopped

    monkeypatch.setattr(executor, "_resolve_refs", resolve_when_told)
    monkeypatch.setattr(executor, "cancel_local", hear)
    first = await service.submit("noop", {})
    second = await service.submit(
        "sleep",
        {"seconds": 60, "steps": {"$ref": f"{first['task_id']}#/attempt"}},
        depends_on=[first["task_id"]],
    )
    async with asyncio.timeout(20):
        await paused.wait()
    await cancel(service, second["task_id"])  # "Task was running and has been terminated"
    async with asyncio.timeout(20):
        await heard.wait()
    go.set()

    # Before, the message found no run to stop and was forgotten: the handler ran its 60 s (until
    # a heartbeat's check, or its first progress write). Now the run ends before its handler.
    async with asyncio.timeout(20):
        while second["task_id"] in executor.held:  # until its run has ended here
            await asyncio.sleep(0.05)
    assert not marker_path(service.service.config.data_path, second["task_id"], "started").exists()
    assert (await service.status(second["task_id"]))["status"] == "cancelled"
