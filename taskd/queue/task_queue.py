"""taskd's queue on top of arq's storage: enqueue into a pipeline, measure, order by priority.

Everything that depends on arq's key layout lives here and in the store's Lua: a job is its id
on arq's sorted set of the queue (its score the due time moved by priority); arq's job definition
is not written, as taskd's worker never reads it (the record holds the job's id and enqueue time).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from redis.asyncio import Redis

from taskd import keys
from taskd.model import PRIORITY_LOW
from taskd.store import QueuedJob

JOB_FUNCTION = "run_task"


def job_score(enqueued_at: float, priority: int, aging_window: float) -> float:
    """arq's sort key: the enqueue time in ms, moved earlier by one aging window per priority step.

    A priority-1 task therefore runs before priority-2/3 tasks that arrived up to one (or two)
    windows earlier, and a low-priority task that has waited longer than that is not passed
    over any more: it cannot starve.

    The time keeps its microseconds, so that tasks of one project enqueued within one millisecond
    keep their order in its line (equal scores sort by job id, which is random), and is moved one
    millisecond earlier, so that a job is due (score <= now in whole ms) within the millisecond it
    was enqueued, as with whole milliseconds.
    """
    return round(enqueued_at * 1000 - 1, 3) - int((PRIORITY_LOW - priority) * aging_window * 1000)


class TaskQueue:
    """Puts task ids on taskd's per-queue arq sorted sets and tells where they stand."""

    def __init__(
        self, redis: Redis, aging_window: float = 300.0, partition_clients: Sequence[Redis] | None = None
    ) -> None:
        self.redis = redis
        self.aging_window = aging_window
        # One client per partition (taskd.keys.partitions; all `redis` but on a cluster).
        self.clients = keys.client_per_partition(redis, partition_clients)

    def score(self, at: float, priority: int) -> float:
        """The queue score of a task of `priority` enqueued at `at`."""
        return job_score(at, priority, self.aging_window)

    def new_job(self, task_id: str, enqueues: int, priority: int, at: float) -> QueuedJob:
        """The arq job that puts a task on its queue for the `enqueues`-th time."""
        return QueuedJob(job_id=keys.job_id(task_id, enqueues), score=self.score(at, priority))

    async def score_of(self, job: str, queue: str) -> int | None:
        """A waiting job's score on arq's set of its queue (None when it is not there)."""
        partition = keys.task_partition(job.rpartition(".")[0])
        score = await self.clients[partition].zscore(keys.queue(queue, partition), job)
        return None if score is None else int(score)

    async def waiting(self, queues: Iterable[str]) -> dict[str, int]:
        """Tasks waiting (not yet started) per queue, in every partition: its whole line, not only the
        projects' heads on arq's set."""
        names = list(queues)
        waiting = dict.fromkeys(names, 0)
        for partition, client in enumerate(self.clients):
            async with client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.zcard(keys.waiting(name, partition))
                counts = await pipe.execute()
            for name, count in zip(names, counts, strict=True):
                waiting[name] += int(count)
        return waiting
