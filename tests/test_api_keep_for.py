"""`keep_for` in a submission: how long the task's record and result are kept once it ends."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from taskd import keys

DAY = 24 * 3600


async def test_keep_for_is_the_ttl_of_a_completed_tasks_record(start_service, redis: Redis):
    service = await start_service()
    task = await service.submit("noop", {}, keep_for=120)
    await service.wait_terminal(task["task_id"])

    assert 100 < await redis.ttl(keys.task(task["task_id"])) <= 120


async def test_keep_for_is_the_ttl_of_a_cancelled_tasks_record(start_service, redis: Redis):
    api_only = await start_service(workers=False)
    task = await api_only.submit("noop", {}, keep_for=30 * DAY)
    await api_only.client.delete(f"/api/v1/tasks/{task['task_id']}")

    assert 30 * DAY - 20 < await redis.ttl(keys.task(task["task_id"])) <= 30 * DAY


async def test_a_long_keep_for_keeps_the_task_in_its_projects_list(start_service, redis: Redis):
    api_only = await start_service(workers=False)
    task = await api_only.submit("noop", {}, project_id="films", keep_for=30 * DAY)
    await api_only.client.delete(f"/api/v1/tasks/{task['task_id']}")

    assert await redis.ttl(keys.project("films")) > 29 * DAY


async def test_a_later_submit_to_the_project_leaves_a_long_keep_for_in_its_list(start_service, redis: Redis):
    api_only = await start_service(workers=False)
    task = await api_only.submit("noop", {}, project_id="films", keep_for=30 * DAY)
    await api_only.client.delete(f"/api/v1/tasks/{task['task_id']}")

    await api_only.submit("noop", {}, project_id="films")

    assert await redis.ttl(keys.project("films")) > 29 * DAY


async def test_a_task_that_ran_a_while_stays_in_its_projects_list_as_long_as_its_record(
    start_service, redis: Redis
):
    service = await start_service()
    task = await service.submit("sleep", {"seconds": 3, "steps": 1}, project_id="films")
    await service.wait_terminal(task["task_id"])

    assert await redis.ttl(keys.project("films")) >= await redis.ttl(keys.task(task["task_id"]))


async def test_without_keep_for_an_ended_tasks_record_is_kept_24_hours(start_service, redis: Redis):
    service = await start_service()
    task = await service.submit("noop", {})
    await service.wait_terminal(task["task_id"])

    assert DAY - 20 < await redis.ttl(keys.task(task["task_id"])) <= DAY


async def test_a_tasks_keep_for_is_not_passed_on_to_the_tasks_waiting_for_it(start_service, redis: Redis):
    api_only = await start_service(workers=False)
    first = await api_only.submit("noop", {}, keep_for=120)
    waiting = await api_only.submit("noop", {}, depends_on=[first["task_id"]])
    dependent_of_waiting = await api_only.submit("noop", {}, depends_on=[waiting["task_id"]])

    await api_only.client.delete(f"/api/v1/tasks/{first['task_id']}")  # cancels the chain

    assert await redis.ttl(keys.task(first["task_id"])) <= 120
    for task in (waiting, dependent_of_waiting):
        assert DAY - 20 < await redis.ttl(keys.task(task["task_id"])) <= DAY


async def test_a_retry_keeps_the_original_keep_for(start_service, redis: Redis):
    api_only = await start_service(workers=False)
    task = await api_only.submit("noop", {}, keep_for=600)
    await api_only.client.delete(f"/api/v1/tasks/{task['task_id']}")

    async with api_only.client.post(f"/api/v1/tasks/{task['task_id']}/retry") as response:
        retried = await response.json()

    assert await redis.hget(keys.task(retried["new_task_id"]), "keep_for") == b"600"


@pytest.mark.parametrize("keep_for", [59, 30 * DAY + 1, 120.5, "120", True, -1])
async def test_keep_for_out_of_range_or_not_a_whole_number_is_400(start_service, redis: Redis, keep_for):
    api_only = await start_service(workers=False)
    body = {"project_id": "films", "task_type": "noop", "task_data": {}, "keep_for": keep_for}

    async with api_only.client.post("/api/v1/tasks/submit", json=body) as response:
        status, refused = response.status, await response.json()

    assert status == 400
    assert refused["error"] == "validation_error"
    assert set(refused["details"]) == {"keep_for"}
    assert await redis.zcard(keys.project("films")) == 0


async def test_a_keep_for_written_as_a_whole_float_is_that_many_seconds(start_service, redis: Redis):
    api_only = await start_service(workers=False)
    # 600.0 is an integer to JSON Schema (the OpenAPI document's `integer`), and what Python's json
    # module writes for a float; it was a 400.
    task = await api_only.submit("noop", {}, keep_for=600.0)
    await api_only.client.delete(f"/api/v1/tasks/{task['task_id']}")

    assert await redis.hget(keys.task(task["task_id"]), "keep_for") == b"600"
    assert 580 < await redis.ttl(keys.task(task["task_id"])) <= 600


@pytest.mark.parametrize("keep_for", [60, 30 * DAY])
async def test_keep_for_at_its_limits_is_accepted(start_service, keep_for):
    api_only = await start_service(workers=False)

    task = await api_only.submit("noop", {}, keep_for=keep_for)

    assert task["status"] == "queued"
