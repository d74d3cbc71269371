"""One arq worker per queue in this event loop, restarted if one dies, stopped gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal

import orjson
from arq.connections import ArqRedis
from arq.worker import Worker, func

from taskd import keys
from taskd.config import Config
from taskd.jobs.executor import Executor
from taskd.jobs.queue import JOB_FUNCTION

log = logging.getLogger("taskd.jobs")

# arq cancels a job at its own timeout; ours (the task type's hard limit) must fire first.
ARQ_TIMEOUT_MARGIN = 30.0
RESTART_DELAY = 1.0


class WorkerPool:
    """Runs an arq worker for each served queue and keeps it running."""

    def __init__(self, redis: ArqRedis, executor: Executor, config: Config, queues: list[str]) -> None:
        self.redis = redis
        self.executor = executor
        self.config = config
        self.queues = queues
        self.workers: dict[str, Worker] = {}
        self._supervisors: list[asyncio.Task[None]] = []
        self._stopping = False

    def _make_worker(self, queue: str) -> Worker:
        settings = self.config.queues[queue]
        return Worker(
            functions=[func(self.executor.job_for(queue), name=JOB_FUNCTION)],
            queue_name=keys.queue(queue),
            redis_pool=self.redis,
            max_jobs=settings.concurrency,
            job_timeout=settings.timeout + ARQ_TIMEOUT_MARGIN,
            keep_result=0,
            poll_delay=self.config.worker.poll_delay,
            handle_signals=False,
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

    @property
    def running_jobs(self) -> int:
        """Jobs running in this process now."""
        return len(self.executor.running)

    async def stop(self, grace: float) -> None:
        """Stop taking jobs, give running ones `grace` seconds, then cancel what is left."""
        self._stopping = True
        for worker in self.workers.values():
            worker.allow_pick_jobs = False
        running = [
            task for worker in self.workers.values() for task in worker.tasks.values() if not task.done()
        ]
        if running:
            log.info("waiting up to %.0f s for %d running jobs", grace, len(running))
            await asyncio.wait(running, timeout=grace)
        for worker in self.workers.values():
            worker.handle_sig(signal.SIGUSR1)
        for supervisor in self._supervisors:
            supervisor.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        self._supervisors.clear()
