"""Taking back the tasks of dead workers: a running task is held only while its worker's heartbeat
lives, and while that worker still runs it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from taskd import keys
from taskd.config import Config
from taskd.loops import every
from taskd.media.publish import withdraw_later
from taskd.model import now
from taskd.queue.task_queue import TaskQueue
from taskd.store import TaskStore
from taskd.store.records import RunningTask
from taskd.store.run_state import stored_media

log = logging.getLogger("taskd.engine")
# Seconds a task of this worker must stay not held before it is taken back: far past the moment
# from a start's script to its run here, even on a loaded machine, and at least two looks.
LOST_AFTER = 10.0


class Reclaimer:
    """Requeues tasks whose worker stopped beating; fails those that killed `max_worker_deaths` workers.

    With `worker_id` and `holds` (this process's workers), it also requeues a task Redis says this
    worker runs and that it does not hold: its end, written to a primary that a failover then
    replaced, was lost, and with this worker's heartbeat alive nothing else would take it back.
    Such a task must be found so on every look for LOST_AFTER seconds, with the same job: one look
    could see a start whose reply has not reached the worker yet, or whose run has not begun.
    """

    def __init__(
        self,
        store: TaskStore,
        queue: TaskQueue,
        config: Config,
        queues: list[str],
        worker_id: str = "",
        holds: Callable[[str], bool] | None = None,
    ) -> None:
        self.store = store
        self.queue = queue
        self.config = config
        self.queues = queues
        self.worker_id = worker_id
        self.holds = holds
        # This worker's tasks it has not held at any look since: task id -> (job id, first seen).
        self._not_held: dict[str, tuple[str, float]] = {}
        # When (monotonic) Redis first took this process's write after refusing one; None: it took
        # them for a heartbeat TTL since.
        self._writes_taken_since: float | None = None
        # A process that starts knows nothing of the refusals before (it was not running, or it
        # waited for Redis at start, as after an outage), in which live workers' heartbeats may
        # have expired: it counts as having just met one, and leaves missing heartbeats alone for a
        # heartbeat TTL from its first look. Before, its first look took every running task of
        # those workers back while they ran it. The cost: a worker that died just before this
        # process started has its tasks taken back by it up to that TTL later.
        self._refused = True

    async def once(self) -> int:
        """One look; returns how many tasks were taken back."""
        if not await self._heartbeats_could_go_in():
            return 0
        # With the queues no config here names any more (the store's known queues): a dead
        # worker's task there was left `processing` for ever, its worker gone and nobody looking.
        known = await self.store.known_queues()
        running = await self.store.running_tasks(sorted(set(self.queues).union(known)))
        taken = 0
        for task in running:
            if not task.alive and (outcome := await self._take_back(task, None)):
                taken += 1
                log.warning("task %s of a dead worker: %s", task.task_id, outcome)
        for task in self._lost(running):
            if await self._take_back(task, task):
                taken += 1
                log.warning(
                    "task %s: Redis says this worker runs it, but it does not (its end was lost, as "
                    "with a failover); queued again",
                    task.task_id,
                )
        return taken

    async def _heartbeats_could_go_in(self) -> bool:
        """Whether every live worker has had a heartbeat TTL, since Redis last refused a write of this
        process, to beat: a missing heartbeat is then a dead worker's.

        A Redis that refuses writes for a while (full, its disk failing, a replica, busy with a
        script, unreachable) refuses every worker's heartbeat alike; once their keys expired, a look
        the moment it took writes again found every running task's worker dead and queued each task
        again, while the first run went on: every task ran twice, and each such spell counted a
        death against `execution.max_worker_deaths`. Redis says nothing of a refusal that has passed,
        so each look first writes a key of its own (a write Redis refuses as it would a heartbeat).
        """
        # Written where the heartbeats are (partition 0, whose key a live worker's beat writes first
        # and the look reads): only a refusal there lets them lapse. A refusal in another partition
        # (a full shard of a cluster) lapses none, and stopped every look, in every partition, for
        # as long as it lasted.
        try:
            await self.store.redis.set(
                keys.WRITES_TAKEN, self.worker_id or "api", px=keys.WRITES_TAKEN_TTL_MS
            )
        except RedisError:
            self._refused = True
            raise  # the loop logs it
        at = time.monotonic()
        if self._refused:
            self._refused, self._writes_taken_since = False, at
        if self._writes_taken_since is None:
            return True
        if at - self._writes_taken_since < self.config.worker.heartbeat_ttl:
            return False
        self._writes_taken_since = None
        return True

    def _lost(self, running: list[RunningTask]) -> list[RunningTask]:
        if self.holds is None:
            return []
        at = now()
        seen: dict[str, tuple[str, float]] = {}
        lost = []
        for task in running:
            if not task.alive or task.worker_id != self.worker_id or self.holds(task.task_id):
                continue
            job_id, since = self._not_held.get(task.task_id, (task.job_id, at))
            if job_id != task.job_id:  # another run of it since: watched afresh
                since = at
            seen[task.task_id] = (task.job_id, since)
            if at - since >= max(LOST_AFTER, self.config.execution.reclaim_interval):
                lost.append(task)
        self._not_held = seen
        return lost

    async def _take_back(self, task: RunningTask, lost: RunningTask | None) -> str | None:
        """'requeued' or 'failed' when the task was taken back; None when it was not."""
        at = now()
        # Read before the reclaim: failing the task drops the run state that names them.
        stored = await stored_media(self.store.clients[keys.task_partition(task.task_id)], task.task_id)
        outcome = await self.store.reclaim(
            task.task_id,
            task.queue,
            at,
            self.queue.score(at, task.priority),
            self.config.execution.max_worker_deaths,
            lost=lost,
        )
        if outcome == "failed" and stored:
            # No run of it will end it without a result now, and delete what its runs stored. Not
            # waited for: a store out of reach held the look, and every other dead worker's task.
            log.info("task %s failed; deleting the media its runs stored", task.task_id)
            withdraw_later(self.config, stored)
        return outcome if outcome in ("requeued", "failed") else None

    async def run(self) -> None:
        """Look every `execution.reclaim_interval` seconds until cancelled; a Redis outage only delays the next look."""
        interval = self.config.execution.reclaim_interval
        await every(
            interval, self.once, name="looking for tasks of dead workers", wait_first=True, logger=log
        )
