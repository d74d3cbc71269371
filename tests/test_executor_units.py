"""Small pieces of the execution engine, on their own."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from redis_probes import alive

from taskd import keys
from taskd.engine.executor import _Interruptible
from taskd.model import TaskStatus
from taskd.providers.llm import ProviderError
from taskd.queue.task_queue import job_score
from taskd.tasks.spec import SoftTimeLimitExceeded, TaskError, TransientError, is_transient


async def test_interruptible_delivers_soft_limit_at_the_current_await_and_cleanup_can_continue():
    events = []

    async def handler():
        try:
            await asyncio.sleep(10)
        except SoftTimeLimitExceeded:
            events.append("soft")
            await asyncio.sleep(0)  # cleanup may still await
            events.append("cleaned")
            return "partial result"

    wrapped = _Interruptible(handler())

    async def body():
        return await wrapped

    task = asyncio.create_task(body())
    await asyncio.sleep(0.01)
    wrapped.interrupt(task, SoftTimeLimitExceeded())

    assert await task == "partial result"
    assert events == ["soft", "cleaned"]


async def test_interruptible_passes_a_plain_cancel_through():
    async def handler():
        await asyncio.sleep(10)

    wrapped = _Interruptible(handler())

    async def body():
        return await wrapped

    task = asyncio.create_task(body())
    await asyncio.sleep(0.01)
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (TransientError("down"), True),
        (ProviderError("rate limited", transient=True, status=429), True),
        (ProviderError("bad key", transient=False, status=401), False),
        (aiohttp.ClientConnectionError(), True),
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (TaskError("bad input"), False),
        (ValueError("bug"), False),
        (KeyError("bug"), False),
    ],
)
def test_only_transient_errors_are_retried(exc, transient):
    assert is_transient(exc) is transient


def test_a_job_is_named_by_its_task_and_the_count_of_its_enqueues():
    assert keys.job_id("abc-123", 1) == "abc-123.1"


async def test_a_queued_task_keeps_its_job_in_its_record_and_no_arq_job_definition_is_written(
    start_service, redis
):
    api_only = await start_service(workers=False)
    task = await api_only.submit("noop", {})

    record = await redis.hgetall(keys.task(task["task_id"]))

    assert record[b"job_id"] == f"{task['task_id']}.1".encode()
    # When it could start, for the wait-time histogram: its creation.
    assert float(record[b"enqueued_ms"]) == pytest.approx(float(record[b"created_at"]) * 1000, abs=0.01)
    assert await redis.keys("*arq:job:*") == []


def test_priority_moves_the_score_by_whole_aging_windows():
    at = 1000.0

    assert job_score(at, 1, 300) == job_score(at, 3, 300) - 600_000
    assert job_score(at, 2, 300) == job_score(at, 3, 300) - 300_000


async def test_a_repeated_start_by_the_same_worker_is_answered_again_and_no_one_else_gets_it(
    start_service, redis
):
    from taskd.store import TaskStore

    api_only = await start_service(workers=False)
    task = await api_only.submit("noop", {})
    job_id = (await redis.hget(keys.task(task["task_id"]), "job_id")).decode()
    store = TaskStore(redis, 3600)

    at = time.time()
    first = await store.start(task["task_id"], job_id, "default", "worker-a", at, 60_000)
    again = await store.start(task["task_id"], job_id, "default", "worker-a", at + 1, 60_000)
    other = await store.start(task["task_id"], job_id, "default", "worker-b", at + 2, 60_000)

    assert (first.record.attempt, again.record.attempt) == (1, 1)
    assert not other.claimed


async def test_the_finish_of_a_claimed_job_drops_its_lock_and_its_place_on_arqs_set(start_service, redis):
    from taskd.store import TaskStore

    api_only = await start_service(workers=False)
    task = await api_only.submit("noop", {})
    job_id = (await redis.hget(keys.task(task["task_id"]), "job_id")).decode()
    store = TaskStore(redis, 3600)
    start = await store.start(task["task_id"], job_id, "default", "worker-a", time.time(), 60_000)
    assert start.record and await redis.exists(keys.arq_in_progress(job_id)) == 1

    await store.finish(start.record, "worker-a", TaskStatus.COMPLETED, time.time())

    assert await redis.exists(keys.arq_in_progress(job_id)) == 0
    assert await redis.zscore(keys.queue("default"), job_id) is None


async def test_the_finish_of_a_taken_job_touches_neither_a_lock_nor_arqs_set(start_service, redis):
    from taskd.store import TaskStore

    api_only = await start_service(workers=False)
    await api_only.submit("noop", {})
    store = TaskStore(redis, 3600)
    await alive(redis, "worker-a")
    (taken,) = (await store.take("default", "worker-a", time.time(), 1, 100)).started
    assert taken.record
    await redis.config_resetstat()

    await store.finish(taken.record, "worker-a", TaskStatus.COMPLETED, time.time())

    ran = await redis.info("commandstats")
    # The take took the job off arq's set and a take holds no lock: the one ZREM is the running set's.
    assert "cmdstat_del" not in ran
    assert ran["cmdstat_zrem"]["calls"] == 1


async def test_an_earlier_runs_progress_retry_and_end_are_refused_once_its_worker_started_the_task_again(
    start_service, redis
):
    from taskd.store import TaskStore
    from taskd.store.records import RunningTask

    api_only = await start_service(workers=False)
    task_id = (await api_only.submit("noop", {}))["task_id"]
    store = TaskStore(redis, 3600)
    await alive(redis, "worker-a")
    (first,) = (await store.take("default", "worker-a", time.time(), 1, 100)).started
    assert first.record and first.record.job_id
    # Queued again while that run goes on (as when worker-a's heartbeat lapsed), and taken again by it.
    lost = RunningTask(task_id, "default", 2, first.record.job_id, "worker-a", True)
    assert await store.reclaim(task_id, "default", time.time(), 0, 3, lost=lost) == "requeued"
    (again,) = (await store.take("default", "worker-a", time.time(), 1, 100)).started
    assert again.record and again.record.job_id != first.record.job_id
    at = time.time()

    assert not await store.progress(task_id, first.record.job_id, "worker-a", 0.5, "older", at)
    assert not await store.requeue(first.record, "worker-a", at, at * 1000, retry_error="older")
    assert not (
        await store.finish(first.record, "worker-a", TaskStatus.COMPLETED, at, result={"run": 1})
    ).written
    assert (await store.finish(again.record, "worker-a", TaskStatus.COMPLETED, at, result={"run": 2})).written
    record = await store.get(task_id)
    assert (record.status, record.attempt, record.result, record.current_step) == (
        TaskStatus.COMPLETED,
        2,
        {"run": 2},
        None,
    )


async def test_a_claimed_job_whose_task_ended_comes_back_without_a_record(start_service, redis):
    from taskd.store import TaskStore

    api_only = await start_service(workers=False)
    task = await api_only.submit("noop", {})
    job_id = (await redis.hget(keys.task(task["task_id"]), "job_id")).decode()
    await redis.hset(keys.task(task["task_id"]), "status", "cancelled")

    start = await TaskStore(redis, 3600).start(task["task_id"], job_id, "default", "w", time.time(), 60_000)

    assert start.claimed
    assert start.record is None


async def test_a_finished_task_leaves_no_arq_job_behind(taskd, redis):
    task = await taskd.submit("noop", {})
    await taskd.wait_terminal(task["task_id"])
    job_id = (await redis.hget(keys.task(task["task_id"]), "job_id")).decode()

    assert await redis.exists(keys.arq_in_progress(job_id)) == 0
    assert await redis.zscore(keys.queue("default"), job_id) is None
