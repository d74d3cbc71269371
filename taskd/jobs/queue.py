"""taskd's queue on top of arq's storage: enqueue into a pipeline, revoke, measure.

Everything that depends on arq's key layout or job format lives here.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from arq.jobs import serialize_job
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from taskd import keys
from taskd.model import PRIORITY_LOW

JOB_FUNCTION = "run_task"
# arq drops a job that has not started within this long after its score.
JOB_EXPIRY_MS = 24 * 3600 * 1000


def job_score(enqueued_at: float, priority: int, aging_window: float) -> int:
    """arq's sort key: the enqueue time in ms, moved earlier by one aging window per priority step.

    A priority-1 task therefore runs before priority-2/3 tasks that arrived up to one (or two)
    windows earlier, and a low-priority task that has waited longer than that is not passed
    over any more: it cannot starve.
    """
    return int(enqueued_at * 1000) - int((PRIORITY_LOW - priority) * aging_window * 1000)


class TaskQueue:
    """Enqueues task ids as arq jobs on taskd's per-queue sorted sets."""

    def __init__(self, redis: Redis, aging_window: float = 300.0) -> None:
        self.redis = redis
        self.aging_window = aging_window

    def add_enqueue(self, pipe: Pipeline, task_id: str, queue: str, priority: int, at: float) -> None:
        """Queue on `pipe` the writes that put `task_id` on `queue`; then its rank and the queue's running count."""
        enqueue_ms = int(at * 1000)
        job = serialize_job(JOB_FUNCTION, (task_id,), {}, None, enqueue_ms, serializer=orjson.dumps)
        pipe.psetex(keys.arq_job(task_id), JOB_EXPIRY_MS, job)
        pipe.zadd(keys.queue(queue), {task_id: job_score(at, priority, self.aging_window)})
        pipe.zrank(keys.queue(queue), task_id)
        pipe.zcard(keys.running(queue))

    @staticmethod
    def position(rank: int | None, running: int) -> int:
        """1-based place among waiting tasks, from a rank in arq's set (which still holds running jobs)."""
        if rank is None:
            return 0
        return max(1, rank + 1 - running)

    async def position_of(self, task_id: str, queue: str) -> int:
        """Where a waiting task stands in its queue now (1 = next to start)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrank(keys.queue(queue), task_id)
            pipe.zcard(keys.running(queue))
            rank, running = await pipe.execute()
        return self.position(rank, running)

    @staticmethod
    def revoke_keys(task_id: str, queue: str) -> tuple[str, list[str]]:
        """The queue's sorted set and the job keys to delete so a queued task never starts."""
        return keys.queue(queue), [keys.arq_job(task_id)]

    async def waiting(self, queues: Iterable[str]) -> dict[str, int]:
        """Tasks waiting (not yet started) per queue."""
        names = list(queues)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcard(keys.queue(name))
                pipe.zcard(keys.running(name))
            counts = await pipe.execute()
        return {name: max(0, counts[2 * i] - counts[2 * i + 1]) for i, name in enumerate(names)}
