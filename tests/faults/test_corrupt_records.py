"""A record hash broken by hand (fields missing, garbage JSON, unknown status) is reported and skipped."""

from __future__ import annotations

import asyncio
import logging

import pytest
from faultkit import Receiver

from taskd import keys
from taskd.config import WebhooksConfig
from taskd.engine.keeper import LiveRecords
from taskd.store import TaskStore
from taskd.store.records import RunningTask

BREAKAGES = {
    "missing_fields": lambda redis, key: redis.hdel(key, "task_type", "created_at", "project_id"),
    "garbage_task_data": lambda redis, key: redis.hset(key, "task_data", b"{not json"),
    "unknown_status": lambda redis, key: redis.hset(key, "status", "exploded"),
    "bad_number": lambda redis, key: redis.hset(key, "priority", "high"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
async def test_status_of_a_corrupt_record_is_404_task_not_found(start_service, redis, breakage):
    service = await start_service(workers=False)
    task = await service.submit("noop", {})
    await BREAKAGES[breakage](redis, keys.task(task["task_id"]))

    async with service.client.get(f"/api/v1/tasks/{task['task_id']}/status") as response:
        body = await response.json()

    assert response.status == 404
    assert body["error"] == "task_not_found"


async def test_project_list_skips_a_corrupt_record_and_shows_the_rest(start_service, redis):
    service = await start_service(workers=False)
    good = [(await service.submit("noop", {}, project_id="p"))["task_id"] for _ in range(3)]
    broken = (await service.submit("noop", {}, project_id="p"))["task_id"]
    await redis.hset(keys.task(broken), "task_data", b"{not json")

    async with service.client.get("/api/v1/projects/p/tasks") as response:
        body = await response.json()

    assert response.status == 200
    assert {task["task_id"] for task in body["tasks"]} == set(good)


async def test_workers_skip_a_corrupt_queued_task_and_run_the_others(start_service, redis):
    api = await start_service(workers=False)
    broken = (await api.submit("noop", {}))["task_id"]
    others = [(await api.submit("noop", {}))["task_id"] for _ in range(5)]
    await redis.hset(keys.task(broken), "status", "exploded")

    await start_service(http=False)
    bodies = [await api.wait_terminal(task_id) for task_id in others]
    more = await api.submit("noop", {})

    assert [body["status"] for body in bodies] == ["completed"] * 5
    assert (await api.wait_terminal(more["task_id"]))["status"] == "completed"


async def test_reclaimer_reads_past_a_corrupt_priority(redis):
    store = TaskStore(redis, 3600)
    await redis.zadd(keys.running("default"), {"t-broken": 1})
    await redis.hset(keys.task("t-broken"), mapping={"worker_id": "gone", "priority": "high"})

    assert await store.running_tasks(["default"]) == [
        RunningTask("t-broken", "default", 2, job_id="", worker_id="gone", alive=False)
    ]


async def test_webhook_sender_drops_a_corrupt_record_and_delivers_the_others(start_service, redis):
    async with Receiver() as receiver:
        api = await start_service(webhooks=WebhooksConfig(allow_private=True))
        broken = (await api.submit("noop", {}, callback_url=receiver.url()))["task_id"]
        await _delivered(receiver, broken)
        await redis.hset(keys.task(broken), "result", b"{not json")
        await redis.zadd(keys.WEBHOOKS_DUE, {broken: 0})  # as a redelivery would
        good = (await api.submit("noop", {}, callback_url=receiver.url()))["task_id"]
        await _delivered(receiver, good)
        await asyncio.sleep(0.5)

    assert receiver.ids[f"msg_{broken}_completed"] == 1


async def _delivered(receiver: Receiver, task_id: str) -> None:
    async with asyncio.timeout(10):
        while f"msg_{task_id}_completed" not in receiver.delivered:
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("breakage", ["missing_fields", "bad_stored_until"])
async def test_the_keeper_renews_the_records_after_a_corrupt_one(start_service, redis, breakage):
    service = await start_service(workers=False)
    broken, good = [(await service.submit("noop", {}, project_id="p"))["task_id"] for _ in range(2)]
    if breakage == "missing_fields":
        await BREAKAGES[breakage](redis, keys.task(broken))
    else:
        await redis.hset(keys.task(broken), mapping={"stored_until": "soon", "stored_bytes": "many"})
    for task_id in (broken, good):
        await redis.expire(keys.task(task_id), 3)

    await LiveRecords(TaskStore(redis, 24 * 3600), ["default"]).once()

    assert await redis.ttl(keys.task(good)) > 3


async def test_a_retried_webhook_of_a_record_with_a_broken_count_is_recorded(
    start_service, redis, receiver, caplog
):
    caplog.set_level(logging.WARNING, logger="taskd.webhooks")
    api = await start_service(webhooks=WebhooksConfig(allow_private=True, timeout=1))
    receiver.always(500)
    receiver.hang(5)  # the first attempt times out after the record is broken
    task_id = (await api.submit("noop", {}, callback_url=receiver.url(), keep_for=60))["task_id"]
    await receiver.wait_for(1)
    await redis.hset(keys.task(task_id), mapping={"stored_until": "soon", "stored_bytes": "many"})
    await redis.expire(keys.task(task_id), 30)

    await receiver.wait_for(4, timeout=60)
    async with asyncio.timeout(30):
        while b"failed_at" not in await redis.hgetall(keys.webhook(task_id)):
            await asyncio.sleep(0.1)

    assert not [record for record in caplog.records if "broke off" in record.getMessage()]


async def test_project_list_of_a_quiet_project_skips_a_record_whose_type_is_not_utf8(start_service, redis):
    # A listing of a project that has not changed for a second counts its tasks by status and type
    # (list.lua's census, JSON): a record's bytes that are not UTF-8 must not fail it.
    from redis_probes import project_quiet

    service = await start_service(workers=False)
    good = [(await service.submit("noop", {}, project_id="p"))["task_id"] for _ in range(3)]
    broken = (await service.submit("noop", {}, project_id="p"))["task_id"]
    await redis.hset(keys.task(broken), "task_type", b"\xff\xfe")
    await project_quiet(redis)

    async with service.client.get("/api/v1/projects/p/tasks") as response:
        body = await response.json()

    assert response.status == 200
    assert {task["task_id"] for task in body["tasks"]} == set(good)
