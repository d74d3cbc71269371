"""One arq worker per queue in this event loop: woken on submit, restarted if it dies, stopped gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

import orjson
from arq.connections import ArqRedis
from arq.worker import Worker, func

from taskd import keys
from taskd.config import Config
from taskd.jobs.executor import Executor
from taskd.jobs.queue import JOB_FUNCTION
from taskd.jobs.registry import Registry

log = logging.getLogger("taskd.jobs")

# arq cancels a job at its own timeout and re-runs it once its lock expires; both must come
# well after taskd's own hard limit and cancel grace, which decide a task's fate.
ARQ_TIMEOUT_MARGIN = 60.0
RESTART_DELAY = 1.0
# Job ids are unique per enqueue, so arq's per-job try counter never matters.
ARQ_MAX_TRIES = 1_000_000


class _HandedBackJobs(logging.Filter):
    """arq logs a job cancelled at shutdown as a failure; taskd has handed that task back already."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.exc_info[0] is asyncio.CancelledError)


logging.getLogger("arq.worker").addFilter(_HandedBackJobs())


# arq's claim of a job (lock it unless it is locked, gone or not yet due), in one round trip
# instead of arq's WATCH/EXISTS/ZSCORE/MULTI.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[3])
return score
"""


class TaskdWorker(Worker):
    """arq's worker, woken by an event instead of sleeping a full poll delay between polls."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.wake = asyncio.Event()
        self.stopping = False
        self._claim = self.pool.register_script(_CLAIM)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Start each job this worker can claim, while it has free slots (arq's rules, one round trip each)."""
        for raw in job_ids:
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            job_id = raw.decode()
            score = await self._claim(
                keys=[keys.ARQ_IN_PROGRESS_PREFIX + job_id, self.queue_name],
                args=[job_id, int(time.time() * 1000), int(self.in_progress_timeout_s * 1000)],
            )
            if score is None:
                self.job_counter -= 1
                self.sem.release()
                continue
            task = self.loop.create_task(self.run_job(job_id, int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def main(self) -> None:
        """Poll, then wait for a wake-up (a submit, a finished job) or the poll delay; until stopped."""
        self.ctx["redis"] = self.pool
        while not self.stopping:
            self.wake.clear()
            await self._poll_iteration()
            # asyncio.timeout, unlike wait_for on 3.11, never swallows a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_delay_s):
                    await self.wake.wait()

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        # A slot is free: look for the next waiting job now.
        self.wake.set()


class WorkerPool:
    """Runs a TaskdWorker for each served queue and keeps it running."""

    def __init__(
        self, redis: ArqRedis, executor: Executor, registry: Registry, config: Config, queues: list[str]
    ) -> None:
        self.redis = redis
        self.executor = executor
        self.registry = registry
        self.config = config
        self.queues = queues
        self.workers: dict[str, TaskdWorker] = {}
        self._supervisors: list[asyncio.Task[None]] = []
        self._stopping = False

    def _arq_timeout(self, queue: str) -> float:
        limits = [t.hard_time_limit or 0.0 for t in self.registry.types.values() if t.queue == queue]
        longest = max([self.config.queues[queue].timeout, *limits])
        return longest + self.config.execution.cancel_grace + ARQ_TIMEOUT_MARGIN

    def _make_worker(self, queue: str) -> TaskdWorker:
        return TaskdWorker(
            functions=[func(self.executor.job_for(queue), name=JOB_FUNCTION)],
            queue_name=keys.queue(queue),
            redis_pool=self.redis,
            max_jobs=self.config.queues[queue].concurrency,
            job_timeout=self._arq_timeout(queue),
            keep_result=0,
            poll_delay=self.config.worker.poll_delay,
            handle_signals=False,
            retry_jobs=False,
            max_tries=ARQ_MAX_TRIES,
            job_serializer=orjson.dumps,
            job_deserializer=orjson.loads,
            log_results=False,
        )

    async def _supervise(self, queue: str) -> None:
        # arq's worker loop ends on the first Redis error; a new one takes over after a pause.
        while not self._stopping:
            worker = self._make_worker(queue)
            self.workers[queue] = worker
            try:
                await worker.main()
            except asyncio.CancelledError:
                if self._stopping:
                    return
                raise
            except Exception as exc:
                log.warning("worker for queue %s stopped (%s); restarting", queue, exc)
            await asyncio.sleep(RESTART_DELAY)

    def start(self) -> None:
        """Start a supervised worker for every queue."""
        for queue in self.queues:
            self._supervisors.append(asyncio.create_task(self._supervise(queue), name=f"worker:{queue}"))

    def wake(self, queue: str) -> None:
        """Make the worker of `queue` (if this process serves it) look for jobs now."""
        worker = self.workers.get(queue)
        if worker is not None:
            worker.wake.set()

    @property
    def running_jobs(self) -> int:
        """Jobs running in this process now."""
        return len(self.executor.running)

    async def stop(self, grace: float) -> None:
        """Stop taking jobs, give running ones `grace` seconds, then cancel (hand back) what is left."""
        self._stopping = True
        for worker in self.workers.values():
            worker.allow_pick_jobs = False
            worker.stopping = True
            worker.wake.set()
        running = [
            task for worker in self.workers.values() for task in worker.tasks.values() if not task.done()
        ]
        if running:
            log.info("waiting up to %.0f s for %d running jobs", grace, len(running))
            _, pending = await asyncio.wait(running, timeout=grace)
            if pending:
                log.info("handing %d unfinished jobs back to their queues", len(pending))
        for worker in self.workers.values():
            worker.handle_sig(signal.SIGUSR1)
        await asyncio.gather(*running, return_exceptions=True)
        for supervisor in self._supervisors:
            supervisor.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        self._supervisors.clear()
