"""The fair line's invariants hold after every script, whatever the mix of submits, takes of any
size, ends, cancels and records expiring while queued (lib/fair.lua, lib/take.lua): a take that
starts a project's jobs straight from its line, reads it ahead or writes its removals at its end
leaves Redis as one start after another would."""

from __future__ import annotations

import random
import time

import pytest
from redis.asyncio import Redis

from taskd import keys
from taskd.model import PRIORITY_HIGH, PRIORITY_LOW, PRIORITY_NORMAL, TaskRecord, TaskStatus
from taskd.queue.task_queue import job_score
from taskd.store import TaskStore
from taskd.store.records import Admission, QueuedJob

PROJECTS = "abc"
QUEUE = "default"


def new_task(project: str, priority: int, at: float) -> tuple[TaskRecord, QueuedJob]:
    """A noop task of `project` and its first job, as the dispatcher makes them."""
    task_id = keys.new_task_id(project)
    job = QueuedJob(f"{task_id}.1", job_score(at, priority, 0.2))
    record = TaskRecord(
        task_id=task_id,
        project_id=project,
        task_type="noop",
        queue=QUEUE,
        task_data={},
        enqueues=1,
        job_id=job.job_id,
        created_at=at,
        updated_at=at,
        priority=priority,
    )
    return record, job


async def decoded_set(redis: Redis, key: str) -> set[str]:
    return {member.decode() for member in await redis.smembers(key)}


async def check_the_lines(redis: Redis, limit: int) -> None:
    """Every waiting job is in its project's line and the queue's line; each project with a line has
    one head, its line's first job, on arq's set, and arq's set holds nothing else; a started task
    is in no line; a project runs no more than its limit."""
    heads = {p.decode(): job.decode() for p, job in (await redis.hgetall(keys.heads(QUEUE))).items()}
    on_arq = {job.decode() for job in await redis.zrange(keys.queue(QUEUE), 0, -1)}
    waiting = {job.decode() for job in await redis.zrange(keys.waiting(QUEUE), 0, -1)}
    in_lines: set[str] = set()
    for project in PROJECTS:
        line = [job.decode() for job in await redis.zrange(keys.project_waiting(QUEUE, project), 0, -1)]
        in_lines |= set(line)
        assert heads.get(project) == (line[0] if line else None), project
        for job in line:
            status, job_id = await redis.hmget(keys.task(job.rsplit(".", 1)[0]), "status", "job_id")
            # A record that expired while it waited stays in line until a take reaches it.
            assert status is None or (status, job_id) == (b"queued", job.encode()), job
        processing = await decoded_set(redis, keys.project_processing(project))
        for task_id in processing:
            assert await redis.hget(keys.task(task_id), "status") == b"processing"
        if limit:
            assert len(processing) <= limit
    assert on_arq == set(heads.values())
    assert waiting == in_lines


@pytest.mark.parametrize("limit", [0, 2])
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_the_fair_lines_hold_after_every_submit_take_end_cancel_and_expiry(
    redis: Redis, seed: int, limit: int
):
    rnd = random.Random(seed)
    store = TaskStore(redis, 3600, concurrent_per_project=limit)
    await redis.set(keys.worker("w"), "{}", ex=600)  # a live worker: the reclaimer's view
    queued: list[TaskRecord] = []
    running: list[TaskRecord] = []
    at = time.time()
    for _ in range(150):
        at += rnd.choice([0.0, 0.0005, 0.01])
        op = rnd.random()
        if op < 0.55:
            priority = rnd.choice([PRIORITY_HIGH, PRIORITY_NORMAL, PRIORITY_NORMAL, PRIORITY_LOW])
            record, job = new_task(rnd.choice(PROJECTS), priority, at)
            await store.create(record, job, Admission())
            queued.append(record)
        elif op < 0.8:
            takes = await store.take(QUEUE, "w", at, rnd.randint(1, 8), 100)
            running += [taken.record for taken in takes.started if taken.record]
        elif op < 0.92 and running:
            ended = running.pop(rnd.randrange(len(running)))
            await store.finish(ended, "w", TaskStatus.COMPLETED, at)
        elif op < 0.96 and queued:
            await store.cancel(queued.pop(rnd.randrange(len(queued))), at)
        elif queued:
            gone = queued.pop(rnd.randrange(len(queued)))
            if await redis.hget(keys.task(gone.task_id), "status") == b"queued":
                await redis.delete(keys.task(gone.task_id))  # its TTL ran out while it waited
        await check_the_lines(redis, limit)


async def throttled_heads_and_one_more(
    store: TaskStore, projects: int, at: float
) -> tuple[list[str], TaskRecord]:
    """`projects` projects each running one task (the limit) with one more waiting, its head; then
    one task of another project, submitted last."""
    heads = []
    for index in range(projects):
        for second in range(2):
            record, job = new_task(f"busy{index}", PRIORITY_NORMAL, at + 0.001 * index + 0.0005 * second)
            await store.create(record, job, Admission())
        heads.append(job.job_id)
    for index in range(projects):
        takes = await store.take(QUEUE, "w", at + 0.001 * projects, 1, 100)
        assert [taken.record.project_id for taken in takes.started if taken.record] == [f"busy{index}"]
    victim, job = new_task("victim", PRIORITY_NORMAL, at + 0.001 * projects)
    await store.create(victim, job, Admission())
    return heads, victim


async def test_a_take_reaches_a_job_behind_more_throttled_heads_than_it_scans(redis: Redis):
    store = TaskStore(redis, 3600, concurrent_per_project=1, aging_window=0.2)
    at = time.time()
    _, victim = await throttled_heads_and_one_more(store, 5, at)

    # Each take passes over at most 3 heads; the 5 throttled ones must not hold that place for ever.
    started = []
    for turn in range(1, 4):
        takes = await store.take(QUEUE, "w", at + 0.1 * turn, 1, 3)
        started += [taken.record.task_id for taken in takes.started if taken.record]

    assert started == [victim.task_id]


async def test_a_claim_refused_by_the_throttle_puts_the_head_behind_the_waiting_heads(redis: Redis):
    store = TaskStore(redis, 3600, concurrent_per_project=1, aging_window=0.2)
    at = time.time()
    heads, victim = await throttled_heads_and_one_more(store, 2, at)

    # A worker that claims one job at a time (a host with GPUs) asks for the first due job.
    start = await store.start(heads[0].rsplit(".", 1)[0], heads[0], QUEUE, "w", at + 0.1, 60_000)

    assert start.throttled
    due = [job.decode() for job in await redis.zrangebyscore(keys.queue(QUEUE), "-inf", (at + 0.1) * 1000)]
    assert due == [heads[1], victim.job_id, heads[0]]
