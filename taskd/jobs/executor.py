"""Runs one task: claim the record, call the handler under its time limit, record how it ended."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis

from taskd import keys
from taskd.config import Config
from taskd.jobs.registry import Registry
from taskd.jobs.spec import TaskContext, TaskError
from taskd.model import TaskRecord, TaskStatus, ValidationError, now
from taskd.store import TaskStore

log = logging.getLogger("taskd.jobs")

ArqJob = Callable[[dict[str, Any], str], Awaitable[None]]


class Executor:
    """Runs tasks for the arq workers of one process and stops them when they are cancelled."""

    def __init__(
        self,
        store: TaskStore,
        registry: Registry,
        config: Config,
        http: aiohttp.ClientSession,
        worker_id: str,
    ) -> None:
        self.store = store
        self.registry = registry
        self.config = config
        self.http = http
        self.worker_id = worker_id
        self.running: dict[str, asyncio.Task[dict[str, Any]]] = {}

    def job_for(self, queue: str) -> ArqJob:
        """The arq job function for `queue`."""

        async def run_task(_: dict[str, Any], task_id: str) -> None:
            await self.run(queue, task_id)

        return run_task

    async def run(self, queue: str, task_id: str) -> None:
        """Run a task to its end; a task that was cancelled or is gone is skipped."""
        record = await self.store.start(task_id, queue, self.worker_id, now())
        if record is None:
            log.info("task %s is no longer queued; skipped", task_id)
            return
        task_type = self.registry.get(record.task_type)
        if task_type is None or task_type.handler is None:
            await self._fail(record, f"No handler is installed for task type '{record.task_type}'")
            return
        try:
            data = self.registry.parse_input(task_type, record.task_data)
        except ValidationError as exc:
            await self._fail(record, f"Invalid task data: {exc.details}")
            return
        context = TaskContext(
            task_id=task_id,
            project_id=record.project_id,
            attempt=record.attempt,
            config=self.config,
            http=self.http,
            metadata=record.metadata,
            sink=partial(self._report, task_id),
        )
        limit = task_type.hard_time_limit or self.config.queues[queue].timeout
        job = asyncio.create_task(task_type.handler(context, data))
        self.running[task_id] = job
        try:
            async with asyncio.timeout(limit):
                result = await job
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            log.info("task %s stopped: cancelled", task_id)
        except TimeoutError:
            await self._fail(record, f"Task exceeded its hard time limit of {limit:g} seconds")
        except TaskError as exc:
            await self._fail(record, str(exc), traceback.format_exc())
        except Exception as exc:
            await self._fail(
                record, f"Task execution failed: {type(exc).__name__}: {exc}", traceback.format_exc()
            )
        else:
            await self._complete(record, result)
        finally:
            self.running.pop(task_id, None)

    def cancel_local(self, task_id: str) -> bool:
        """Stop the handler of `task_id` if it runs in this process."""
        job = self.running.get(task_id)
        if job is None or job.done():
            return False
        job.cancel()
        return True

    async def listen_for_cancels(self, redis: Redis) -> None:
        """Stop local handlers whose tasks are cancelled from any taskd process; reconnects on errors."""
        while True:
            try:
                async with redis.pubsub() as pubsub:
                    await pubsub.subscribe(keys.CANCEL_CHANNEL)
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self.cancel_local(message["data"].decode())
            except Exception as exc:  # redis-py's errors do not share one base with OSError
                log.warning("cancel listener lost Redis (%s); reconnecting", exc)
                await asyncio.sleep(1.0)

    async def _report(self, task_id: str, progress: float, step: str | None) -> None:
        await self.store.progress(task_id, self.worker_id, progress, step, now())

    async def _complete(self, record: TaskRecord, result: Any) -> None:
        try:
            orjson.dumps(result)
        except TypeError as exc:
            await self._fail(record, f"Task returned a result that is not JSON: {exc}")
            return
        if not await self.store.finish(record, self.worker_id, TaskStatus.COMPLETED, now(), result=result):
            log.info("task %s finished after it was cancelled; result dropped", record.task_id)

    async def _fail(self, record: TaskRecord, error: str, trace: str | None = None) -> None:
        log.warning("task %s failed: %s", record.task_id, error)
        await self.store.finish(
            record, self.worker_id, TaskStatus.FAILED, now(), error=error, traceback=trace
        )
