"""Taking back the tasks of dead workers: a running task is held only while its worker's heartbeat lives."""

from __future__ import annotations

import logging

from taskd.config import Config
from taskd.loops import every
from taskd.model import now
from taskd.queue.task_queue import TaskQueue
from taskd.store import TaskStore

log = logging.getLogger("taskd.engine")


class Reclaimer:
    """Requeues tasks whose worker stopped beating; fails those that killed `max_worker_deaths` workers."""

    def __init__(self, store: TaskStore, queue: TaskQueue, config: Config, queues: list[str]) -> None:
        self.store = store
        self.queue = queue
        self.config = config
        self.queues = queues

    async def once(self) -> int:
        """One look; returns how many tasks were taken back."""
        taken = 0
        for task_id, queue, priority in await self.store.orphans(self.queues):
            at = now()
            score = self.queue.score(at, priority)
            outcome = await self.store.reclaim(
                task_id, queue, at, score, self.config.execution.max_worker_deaths
            )
            if outcome in ("requeued", "failed"):
                taken += 1
                log.warning("task %s of a dead worker: %s", task_id, outcome)
        return taken

    async def run(self) -> None:
        """Look every `execution.reclaim_interval` seconds until cancelled; a Redis outage only delays the next look."""
        interval = self.config.execution.reclaim_interval
        await every(
            interval, self.once, name="looking for tasks of dead workers", wait_first=True, logger=log
        )
