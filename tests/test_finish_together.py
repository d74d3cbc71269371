"""Issue 19, Redis commands per task: the runs that end at once end in one call of finish.lua, which
writes their counters, running and project sets and project stream expiry once for all of them,
while each end is still checked and answered on its own (docs/performance.md, "Redis cost per task")."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError, ResponseError
from redis_probes import alive, monitored

from taskd import keys
from taskd.model import TaskRecord, TaskStatus
from taskd.store import TaskStore, scripts
from taskd.store.coalesce import Merged


async def taken(api: Any, redis: Redis, store: TaskStore, count: int) -> list[TaskRecord]:
    """`count` noop tasks of one project, submitted and started by one take of worker-a."""
    for _ in range(count):
        await api.submit("noop", {}, project_id="together")
    await alive(redis, "worker-a")
    started = (await store.take("default", "worker-a", time.time(), count, 100)).started
    records = [start.record for start in started if start.record]
    assert len(records) == count
    return records


async def finish_all(store: TaskStore, records: list[TaskRecord]) -> list[Any]:
    """Each record's finish, made in one turn of the event loop; an end's error is its result."""
    at = time.time()
    return await asyncio.gather(
        *(
            store.finish(record, "worker-a", TaskStatus.COMPLETED, at, result={"n": n})
            for n, record in enumerate(records)
        ),
        return_exceptions=True,
    )


async def test_runs_that_end_at_once_are_one_call_that_counts_them_once(start_service: Any, redis: Redis):
    api = await start_service(workers=False)
    store = TaskStore(redis, 3600)
    records = await taken(api, redis, store, 6)
    await store.finish(records.pop(), "worker-a", TaskStatus.COMPLETED, time.time())  # finish.lua loaded
    finish_sha = scripts.load(redis, "finish", events_ttl=3600).registered.sha  # the store's: task_ttl 3600

    finished, sent, ran = await monitored(redis, lambda: finish_all(store, records))

    assert [f.written for f in finished] == [True] * 5
    assert len([command for command in sent if command.startswith(f"EVALSHA {finish_sha}")]) == 1
    # The completed count, the duration's sum, count and bucket once each for the five ends; one
    # SREM for each of the project's two sets; one ZREM off the running set.
    counters = [c for c in ran if c.startswith(("HINCRBY ", "HINCRBYFLOAT ")) and keys.METRICS in c]
    assert len(counters) == 4
    assert len([c for c in ran if c.startswith("SREM ")]) == 2
    assert len([c for c in ran if c.startswith(f"ZREM {keys.running('default')} ")]) == 1
    metrics = await redis.hgetall(keys.METRICS)
    assert (metrics[b"completed_tasks"], metrics[b"duration_count:noop"]) == (b"6", b"6")
    assert await redis.zcard(keys.running("default")) == 0
    assert await redis.scard(keys.project_processing("together")) == 0
    assert await redis.scard(keys.project_active("together")) == 0


async def test_an_end_cancelled_meanwhile_is_left_as_it_is_and_the_others_of_its_call_end(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    store = TaskStore(redis, 3600)
    records = await taken(api, redis, store, 3)
    async with api.client.delete(f"/api/v1/tasks/{records[1].task_id}") as response:
        assert response.status == 200

    finished = await finish_all(store, records)

    assert [f.written for f in finished] == [True, False, True]
    assert [(await api.status(r.task_id))["status"] for r in records] == [
        "completed",
        "cancelled",
        "completed",
    ]
    assert await redis.hget(keys.METRICS, "completed_tasks") == b"2"


async def test_an_end_that_raises_an_error_gets_it_and_the_others_of_its_call_end(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    store = TaskStore(redis, 3600)
    records = await taken(api, redis, store, 3)
    # A record its end cannot read: the webhook's choice is not JSON, so the Lua raises for it alone.
    await redis.hset(
        keys.task(records[1].task_id), mapping={"callback_url": "http://x", "webhook_events": "{"}
    )

    finished = await finish_all(store, records)

    assert isinstance(finished[1], ResponseError)
    assert [f.written for f in (finished[0], finished[2])] == [True, True]
    assert [(await api.status(records[n].task_id))["status"] for n in (0, 2)] == ["completed", "completed"]


@pytest.mark.parametrize("failed", [False, True])
async def test_a_lone_end_writes_what_it_wrote_alone(start_service: Any, redis: Redis, failed: bool):
    api = await start_service(workers=False)
    store = TaskStore(redis, 3600)
    (record,) = await taken(api, redis, store, 1)
    status = TaskStatus.FAILED if failed else TaskStatus.COMPLETED

    finished = await store.finish(record, "worker-a", status, time.time(), error="boom" if failed else None)

    assert finished.written
    metrics = await redis.hgetall(keys.METRICS)
    if failed:
        assert (metrics[b"failed_tasks"], metrics[b"failed:noop"]) == (b"1", b"1")
        assert b"duration_count:noop" not in metrics
    else:
        assert (metrics[b"completed_tasks"], metrics[b"duration_count:noop"]) == (b"1", b"1")
    assert await redis.ttl(keys.project_events("together")) > 0


async def test_ends_after_redis_forgot_the_script_load_it_again_and_are_written(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    store = TaskStore(redis, 3600)
    records = await taken(api, redis, store, 3)
    await redis.script_flush()

    finished = await finish_all(store, records)

    assert [f.written for f in finished] == [True] * 3
    assert await redis.hget(keys.METRICS, "completed_tasks") == b"3"


def test_only_a_script_that_takes_calls_one_after_another_can_merge_them(redis: Redis):
    with pytest.raises(ValueError, match="no trailing"):
        Merged(redis, scripts.load(redis, "take"), {}, {})


async def test_ends_refused_by_a_full_redis_each_get_its_out_of_memory_error(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    store = TaskStore(redis, 3600)
    records = await taken(api, redis, store, 2)
    await redis.config_set("maxmemory", (await redis.info("memory"))["used_memory"] // 2)
    try:
        finished = await finish_all(store, records)
    finally:
        await redis.config_set("maxmemory", 0)

    assert all(isinstance(outcome, OutOfMemoryError) for outcome in finished)
    assert [f.written for f in await finish_all(store, records)] == [True, True]
