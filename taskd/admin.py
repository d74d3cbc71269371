"""What the operator commands (`taskd workers|queues|purge|retry-failed`) work on: a deployment's Redis.

They talk to Redis directly, as `taskd worker` does, not to the HTTP API: they work while the API
is down or overloaded (when an operator needs them most), need no API key (whoever can read the
config and reach Redis can already do all of this), and add no route to the API. They find
Redis as `taskd worker` does: `redis.url`, else the embedded server of the same data dir on this
host. Nothing here starts one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import attrs
from redis.asyncio import Redis

from taskd import keys
from taskd.clock import RedisClock
from taskd.config import Config
from taskd.embedded import EmbeddedValkey
from taskd.heartbeat import WorkerInfo, last_beats, live_workers
from taskd.media.capacity import MediaCapacity
from taskd.model import TaskRecord
from taskd.queue.task_queue import TaskQueue
from taskd.redis_conn import CONNECT_TIMEOUT, connect, connect_partitions
from taskd.store import Admission, TaskStore, layout
from taskd.store.overview import QueueState, RunningTask, queue_states, running_tasks
from taskd.submit import bulk
from taskd.submit.dispatch import Dispatcher
from taskd.tasks.registry import default_registry
from taskd.webhooks.signing import own_secret_ids


class NoRedis(Exception):
    """No Redis to talk to: no `redis.url`, and no embedded server runs for the data dir."""


@attrs.frozen
class WorkerView:
    """A live worker process: what its heartbeat says, when it last beat, and the tasks it runs."""

    info: WorkerInfo
    last_beat: float
    tasks: list[RunningTask]


def redis_url(config: Config) -> str:
    """`redis.url`, else the URL of the embedded server running for the data dir; NoRedis if neither."""
    if config.redis.url:
        return config.redis.url
    running = EmbeddedValkey.running_url(config.data_path)
    if running is None:
        raise NoRedis(
            f"no redis.url is set and no embedded server runs for data_dir {config.data_path}: "
            "run this where `taskd serve` runs, with its config, or set TASKD_REDIS__URL"
        )
    return running


class Operator:
    """The store, queues and task types of the deployment that `config` describes, on one Redis client."""

    def __init__(
        self, config: Config, redis: Redis, partition_clients: Sequence[Redis] | None = None
    ) -> None:
        self.config = config
        self.redis = redis
        self.registry = default_registry(config.tasks)
        self.store = TaskStore(
            redis,
            config.storage.task_ttl,
            concurrent_per_project=config.limits.concurrent_per_project,
            aging_window=config.execution.priority_aging,
            progress_interval=config.webhooks.progress_interval,
            partition_clients=partition_clients,
        )

    @property
    def queues(self) -> list[str]:
        """Every queue: the configured ones and those the task types route to."""
        return sorted(set(self.config.queues) | self.registry.queues())

    async def workers(self) -> list[WorkerView]:
        """The live workers, by host and pid, each with the tasks it runs now."""
        infos = await live_workers(self.redis, self.config.worker.heartbeat_ttl)
        beats = await last_beats(self.redis)
        running = await running_tasks(self.store.clients, await self.queues_in_use())
        views = [
            WorkerView(
                info,
                beats.get(info.worker_id, info.started_at),
                [task for task in running if task.worker_id == info.worker_id],
            )
            for info in infos
        ]
        return sorted(views, key=lambda view: (view.info.host, view.info.pid))

    async def serving(self) -> dict[str, int]:
        """Each queue's live worker processes that serve it."""
        infos = await live_workers(self.redis, self.config.worker.heartbeat_ttl)
        return {queue: sum(queue in info.queues for info in infos) for queue in await self.queues_in_use()}

    async def queues_in_use(self) -> list[str]:
        """`queues`, and every other queue with tasks waiting or running: one no config names any
        more, or another node's (TaskStore.queues_in_use)."""
        return await self.store.queues_in_use(self.queues)

    async def queues_known(self) -> list[str]:
        """`queues`, and every other queue a task may wait on (TaskStore.known_queues), whether or
        not one waits there now: a queue no config names any more may hold only tasks scheduled
        for later, which a purge cancels too."""
        return sorted(set(self.queues).union(await self.store.known_queues()))

    async def queue_states(self) -> list[QueueState]:
        """Each queue's waiting and running counts and its oldest waiting job, those of every queue
        in use included."""
        return await queue_states(
            self.store.clients, await self.queues_in_use(), self.config.execution.priority_aging
        )

    async def waiting_on(self, queue: str) -> list[TaskRecord]:
        """The tasks queued on `queue` (bulk.waiting_on)."""
        return await bulk.waiting_on(self.store, queue)

    async def purge(self, queue: str) -> list[str]:
        """Cancel the tasks queued on `queue` (bulk.purge); the ids cancelled."""
        return await bulk.purge(self.store, queue)

    async def retry_failed(self, project: str, since: float | None) -> list[bulk.Retried]:
        """Retry the project's failed tasks (bulk.retry_failed), with the API's admission limits."""
        limits = self.config.limits
        dispatcher = Dispatcher(
            self.redis,
            self.store,
            TaskQueue(self.redis, self.config.execution.priority_aging, self.store.clients),
            self.registry,
            Admission(limits.queued_per_project, limits.max_queue_length, limits.stored_bytes_per_project),
            media_capacity=MediaCapacity.from_config(self.config),
            # A retry of a record from before webhook secret ids gets its key's, as the API's does.
            webhook_secret_ids=own_secret_ids(self.config),
            result_max_bytes=self.config.execution.result_max_bytes,
        )
        return await bulk.retry_failed(dispatcher, project, since)


@contextlib.asynccontextmanager
async def operator(config: Config, url: str) -> AsyncIterator[Operator]:
    """An Operator on the Redis at `url` (redis_url), checked with a PING; closed on exit."""
    keys.configure_partitions(config.redis.partitions)
    timeout = config.redis.socket_timeout or CONNECT_TIMEOUT
    redis = connect(url, socket_timeout=timeout)
    clients = connect_partitions(url, redis, socket_timeout=timeout)
    try:
        await redis.ping()
        await layout.check_partitions(redis)
        # What the operator's commands stamp (a retry's submit) and compare (a worker's last beat)
        # is on the services' clock, Redis's, whatever this host's says.
        await RedisClock(redis).follow()
        yield Operator(config, redis, clients)
    finally:
        for client in dict.fromkeys(clients):
            await client.aclose()
