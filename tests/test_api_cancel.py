"""DELETE /api/v1/tasks/{id}: every row of the document's cancellation table."""

from __future__ import annotations

import asyncio

from examples import TASK_DATA
from redis.asyncio import Redis

from taskd import keys


async def cancel(service, task_id):
    async with service.client.delete(f"/api/v1/tasks/{task_id}") as response:
        return response.status, await response.json()


async def metric(service, name):
    async with service.client.get("/api/v1/tasks/metrics") as response:
        return (await response.json())["metrics"][name]


async def test_queued_task_is_revoked(start_service):
    api_only = await start_service(workers=False)
    task = await api_only.submit("generate_video", {"duration": 7})

    status, body = await cancel(api_only, task["task_id"])

    assert status == 200
    assert body["status"] == "cancelled"
    assert body["message"] == "Task was queued and has been revoked"
    assert body["previous_state"] == "queued"
    assert body["cancelled_at"].endswith("Z")


async def test_revoked_task_is_removed_from_its_queue_and_never_starts(start_service, redis: Redis):
    api_only = await start_service(workers=False)
    task = await api_only.submit("generate_video", {"duration": 7})
    await cancel(api_only, task["task_id"])

    assert await redis.zscore(keys.queue("gpu_heavy"), task["task_id"]) is None
    worker = await start_service(http=False)
    await asyncio.sleep(0.5)

    assert worker.service.queues
    body = await api_only.status(task["task_id"])
    assert body["status"] == "cancelled"
    assert body["started_at"] is None


async def test_running_task_is_terminated(taskd, fake_llm):
    fake_llm.hang(30)
    task = await taskd.submit("test_prompt", TASK_DATA["test_prompt"])
    await taskd.wait_for(task["task_id"], lambda b: b["status"] == "processing")

    status, body = await cancel(taskd, task["task_id"])

    assert status == 200
    assert body["message"] == "Task was running and has been terminated"
    assert body["previous_state"] == "processing"


async def test_terminated_task_handler_stops_and_never_completes(taskd, fake_llm):
    fake_llm.hang(2)
    fake_llm.reply("too late")
    task = await taskd.submit("test_prompt", TASK_DATA["test_prompt"])
    await taskd.wait_for(task["task_id"], lambda b: b["status"] == "processing")

    await cancel(taskd, task["task_id"])
    await asyncio.sleep(2.5)

    body = await taskd.status(task["task_id"])
    assert body["status"] == "cancelled"
    assert body["result"] is None
    assert not taskd.service._pool.executor.running


async def test_completed_task_cannot_be_cancelled(taskd, fake_llm):
    task = await taskd.submit("test_prompt", TASK_DATA["test_prompt"])
    await taskd.wait_terminal(task["task_id"])

    status, body = await cancel(taskd, task["task_id"])

    assert status == 400
    assert body == {"detail": "Task has already completed successfully and cannot be cancelled"}


async def test_failed_task_cannot_be_cancelled(taskd):
    task = await taskd.submit("fail", {})
    await taskd.wait_terminal(task["task_id"])

    status, body = await cancel(taskd, task["task_id"])

    assert status == 400
    assert body == {"detail": "Task has already failed and cannot be cancelled"}


async def test_cancelled_task_returns_the_already_cancelled_status(start_service):
    api_only = await start_service(workers=False)
    task = await api_only.submit("generate_video", {"duration": 7})
    _, first = await cancel(api_only, task["task_id"])

    status, again = await cancel(api_only, task["task_id"])

    assert status == 200
    assert again["status"] == "cancelled"
    assert again["message"] == "Task was already cancelled"
    assert again["previous_state"] == "queued"
    assert again["cancelled_at"] == first["cancelled_at"]


async def test_cancel_counts_once_in_metrics(start_service):
    api_only = await start_service(workers=False)
    task = await api_only.submit("generate_video", {"duration": 7})

    await cancel(api_only, task["task_id"])
    await cancel(api_only, task["task_id"])

    assert await metric(api_only, "cancelled_tasks") == 1


async def test_unknown_task_cancel_is_404(taskd):
    status, body = await cancel(taskd, "no-such-task")

    assert status == 404
    assert body["error"] == "task_not_found"
