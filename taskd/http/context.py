"""The objects every HTTP handler shares, under one typed AppKey."""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs
from aiohttp import web
from redis.asyncio import Redis

from taskd.config import Config
from taskd.gpu.scheduler import GpuScheduler
from taskd.http.cpu_load import CpuLoad
from taskd.http.keytable import KeyTable
from taskd.queue.task_queue import TaskQueue
from taskd.store import TaskStore
from taskd.submit.dispatch import Dispatcher
from taskd.tasks.registry import Registry


def no_workers() -> list[str]:
    """What an API-only node's `unready_queues` says: it runs no worker, so none is missing."""
    return []


@attrs.define
class Api:
    """What the handlers need: storage, the queue and the settings."""

    config: Config
    redis: Redis
    store: TaskStore
    queue: TaskQueue
    registry: Registry
    dispatcher: Dispatcher
    # Every valid key, with the projects of those limited to some (auth.keys).
    keys: KeyTable
    gpu: GpuScheduler
    started_at: float = attrs.Factory(time.monotonic)
    # This node's CPU use, sampled by the service (taskd.http.cpu_load).
    cpu_load: CpuLoad = attrs.Factory(CpuLoad)
    # The queues this node serves whose worker is not polling its queue (`GET /readyz`).
    unready_queues: Callable[[], list[str]] = no_workers

    @property
    def queue_names(self) -> list[str]:
        """Every queue the service knows: configured ones and those task types route to."""
        return sorted(set(self.config.queues) | self.registry.queues())

    async def queues_in_use(self) -> list[str]:
        """`queue_names`, and every other queue with tasks waiting or running (one no config here
        names any more, another node's): TaskStore.queues_in_use."""
        return await self.store.queues_in_use(self.queue_names)


API = web.AppKey("api", Api)
