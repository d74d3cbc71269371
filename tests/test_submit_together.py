"""Issue 19, Redis commands per task: the submits made at once are one call of submit.lua, which
writes their counters and their project's expiries and reads their type's past durations once for
all of them, while each submit is still admitted, stored and answered on its own
(docs/performance.md, "Redis cost per task")."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio import Redis
from redis_probes import monitored

from taskd import keys
from taskd.model import PRIORITY_NORMAL, RateLimited, ServiceUnavailable, TaskRecord
from taskd.queue.task_queue import job_score
from taskd.store import TaskStore, scripts
from taskd.store.records import Admission, Created, QueuedJob


def new_task(project: str) -> tuple[TaskRecord, QueuedJob]:
    """A noop task of `project` and its first job, as the dispatcher makes them."""
    task_id = keys.new_task_id(project)
    at = time.time()
    job = QueuedJob(f"{task_id}.1", job_score(at, PRIORITY_NORMAL, 300.0))
    record = TaskRecord(
        task_id=task_id,
        project_id=project,
        task_type="noop",
        queue="default",
        task_data={},
        enqueues=1,
        job_id=job.job_id,
        created_at=at,
        updated_at=at,
    )
    return record, job


UNLIMITED = Admission()


async def create_all(store: TaskStore, projects: list[str], admission: Admission = UNLIMITED) -> list[Any]:
    """One submit per project named, made in one turn of the event loop; a refusal is its result."""
    tasks = [new_task(project) for project in projects]
    return await asyncio.gather(
        *(store.create(record, job, admission) for record, job in tasks), return_exceptions=True
    )


async def test_submits_made_at_once_are_one_call_that_counts_them_once(redis: Redis):
    store = TaskStore(redis, 3600)
    await create_all(store, ["warm-up"])  # submit.lua loaded
    submit_sha = scripts.load(redis, "submit", events_ttl=3600).registered.sha  # the store's: task_ttl 3600

    created, sent, ran = await monitored(redis, lambda: create_all(store, ["together"] * 5))

    assert all(isinstance(c, Created) for c in created)
    # Behind the warm-up's task, in the order they were made.
    assert [c.position for c in created] == [2, 3, 4, 5, 6]
    assert len([command for command in sent if command.startswith(f"EVALSHA {submit_sha}")]) == 1
    # total_tasks and submitted:noop once each; the project's index and active set: their expiry
    # read and set once each; the type's past durations read once.
    assert len([c for c in ran if c.startswith("HINCRBY ") and keys.METRICS in c]) == 2
    assert len([c for c in ran if c.startswith("TTL ")]) == 2
    assert len([c for c in ran if c.startswith("HMGET ") and keys.METRICS in c]) == 1
    metrics = await redis.hgetall(keys.METRICS)
    assert (metrics[b"total_tasks"], metrics[b"submitted:noop"]) == (b"6", b"6")
    assert await redis.zcard(keys.project("together")) == 5
    assert 3500 < await redis.ttl(keys.project("together")) <= 3600


async def test_submits_made_at_once_read_their_queues_heads_their_heads_place_and_their_projects_count_once(
    redis: Redis,
):
    store = TaskStore(redis, 3600)
    await create_all(store, ["together"])  # the project's head, on arq's set
    head = (await redis.hget(keys.heads("default"), "together")).decode()

    created, _, ran = await monitored(
        redis, lambda: create_all(store, ["together"] * 5, Admission(queued_per_project=100))
    )

    assert [c.position for c in created] == [2, 3, 4, 5, 6]
    # Once for the call, not once a submit: the heads (each submit's head, then its position), the
    # head still on arq's set, the project's tasks counted against its limit; the heads are counted
    # first, as they are read only while few projects wait (lib/fair.lua's few_heads).
    assert [c.split()[0] for c in ran if c.split()[1:2] == [keys.heads("default")]] == ["HLEN", "HGETALL"]
    assert [c for c in ran if c.startswith("ZSCORE ")] == [f"ZSCORE {keys.queue('default')} {head}"]
    assert len([c for c in ran if c.startswith(f"SCARD {keys.project_active('together')}")]) == 1


async def test_a_submit_refused_among_submits_made_at_once_leaves_the_others_created(redis: Redis):
    store = TaskStore(redis, 3600)

    created = await create_all(store, ["full", "full", "other", "full"], Admission(queued_per_project=2))

    assert [type(c) for c in created] == [Created, Created, Created, RateLimited]
    assert await redis.zcard(keys.project("full")) == 2
    assert await redis.zcard(keys.project("other")) == 1
    assert await redis.hget(keys.METRICS, "total_tasks") == b"3"


@pytest.mark.parametrize("batch", [1, 3])
async def test_each_submit_of_a_call_gets_its_own_projects_expiry(redis: Redis, batch: int):
    store = TaskStore(redis, 3600)

    await create_all(store, [f"project-{n}" for n in range(batch)])

    for n in range(batch):
        assert 3500 < await redis.ttl(keys.project(f"project-{n}")) <= 3600
        assert 3500 < await redis.ttl(keys.project_active(f"project-{n}")) <= 3600


async def test_with_wait_replicas_each_submit_of_a_call_gets_the_count_one_wait_gave(redis: Redis):
    # No replica is attached: WAIT answers 0 at once (timeout 1 ms), short of the one asked for, so
    # each submit is answered 503 (stored, but a failover now could lose it).
    store = TaskStore(redis, 3600, wait_replicas=1, wait_timeout=0.001)

    created = await create_all(store, ["p", "q"])

    assert [type(c) for c in created] == [ServiceUnavailable, ServiceUnavailable]
    assert all("replica" in str(c) for c in created)
