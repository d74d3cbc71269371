"""What the queues hold now, for operators (`taskd queues`, `taskd workers`): read-only, from the store's keys."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs
from redis.asyncio import Redis

from taskd import keys
from taskd.model import PRIORITY_HIGH, PRIORITY_LOW, now


@attrs.frozen
class QueueState:
    """One queue: its waiting and processing tasks, and since when its longest-waiting job has waited."""

    name: str
    waiting: int
    running: int
    # Epoch seconds; None when nothing waits, or every waiting job waits for its time (a back-off).
    oldest_waiting_since: float | None


@attrs.frozen
class RunningTask:
    """A processing task: where it runs and since when."""

    task_id: str
    queue: str
    task_type: str
    project_id: str
    worker_id: str | None
    started_at: float


async def queue_states(
    partition_clients: Sequence[Redis], queues: Iterable[str], aging_window: float
) -> list[QueueState]:
    """Each queue's waiting and running counts and its oldest waiting job, over every partition
    (`partition_clients`: one client per partition, taskd.keys.partitions).

    A waiting job's score is the time it was queued moved earlier by its priority (one
    `aging_window` per step, taskd.queue.task_queue.job_score), so the job queued longest ago is
    among those scored within two windows of the lowest score: only those records are read.
    """
    states = []
    for name in queues:
        waiting = running = 0
        oldest: list[float] = []
        for partition, redis in enumerate(partition_clients):
            async with redis.pipeline(transaction=False) as pipe:
                pipe.zcard(keys.waiting(name, partition))
                pipe.zcard(keys.running(name, partition))
                pipe.zrange(keys.waiting(name, partition), 0, 0, withscores=True)
                waits, runs, first = await pipe.execute()
            waiting, running = waiting + int(waits), running + int(runs)
            if (
                first
                and (since := await _oldest(redis, name, partition, first[0][1], aging_window)) is not None
            ):
                oldest.append(since)
        states.append(QueueState(name, waiting, running, min(oldest, default=None)))
    return states


async def _oldest(
    redis: Redis, queue: str, partition: int, lowest: float, aging_window: float
) -> float | None:
    """Since when the partition's longest-waiting due job has waited (epoch seconds); None when
    every job waits for its time (a retry's back-off).

    A job is due from its enqueue (`enqueued_ms`) or its score, whichever is later: a fresh job's
    score is its enqueue time moved earlier by its priority (taskd.queue.task_queue.job_score), a
    retry's (and a hand-on's) the end of its back-off, unmoved. Every score is within two aging
    windows before its job's due time, so the earliest due job is within two windows of `lowest`.
    """
    window_ms = (PRIORITY_LOW - PRIORITY_HIGH) * aging_window * 1000
    candidates = await redis.zrangebyscore(
        keys.waiting(queue, partition), lowest, lowest + window_ms, withscores=True
    )
    async with redis.pipeline(transaction=False) as pipe:
        for job, _ in candidates:
            pipe.hmget(keys.task(_task_id(job.decode())), "enqueued_ms", "priority")
        fields = await pipe.execute()
    due_ms = []
    for (_, score), (enqueued_ms, priority) in zip(candidates, fields, strict=True):
        if enqueued_ms is None:  # a record of a version before enqueued_ms: the score and its priority
            due_ms.append(score + (PRIORITY_LOW - int(priority or PRIORITY_LOW)) * aging_window * 1000)
        else:
            due_ms.append(max(float(enqueued_ms), score))
    now_ms = now() * 1000
    due = [at for at in due_ms if at <= now_ms]
    return min(due) / 1000 if due else None


def _task_id(job: str) -> str:
    """The task of an arq job id, `<task id>.<n>` (taskd.keys.job_id)."""
    return job.rpartition(".")[0] or job


async def running_tasks(partition_clients: Sequence[Redis], queues: Iterable[str]) -> list[RunningTask]:
    """Every processing task of `queues` in every partition, longest running first."""
    tasks: list[RunningTask] = []
    names = list(queues)
    for partition, redis in enumerate(partition_clients):
        tasks += await _running_in(redis, partition, names)
    return sorted(tasks, key=lambda task: task.started_at)


async def _running_in(redis: Redis, partition: int, queues: list[str]) -> list[RunningTask]:
    started: list[tuple[str, str, float]] = []
    for name in queues:
        for member, score in await redis.zrange(keys.running(name, partition), 0, -1, withscores=True):
            started.append((member.decode(), name, score / 1000))
    async with redis.pipeline(transaction=False) as pipe:
        for task_id, _, _ in started:
            pipe.hmget(keys.task(task_id), "task_type", "project_id", "worker_id")
        rows = await pipe.execute()
    return [
        RunningTask(
            task_id,
            queue,
            (task_type or b"?").decode(),
            (project or b"?").decode(),
            worker.decode() if worker else None,
            at,
        )
        for (task_id, queue, at), (task_type, project, worker) in zip(started, rows, strict=True)
    ]
