"""Worker heartbeats in Redis: how `/api/v1/health` counts live workers across processes and hosts."""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence

import attrs
import cattrs
import orjson
import psutil
from redis.asyncio import Redis

from taskd import keys
from taskd.loops import every
from taskd.model import now
from taskd.redis_conn import refuses_writes

log = logging.getLogger("taskd.heartbeat")
# A field a newer version added is passed over; one this version needs must be there and readable.
_CONVERTER = cattrs.Converter(forbid_extra_keys=False)


@attrs.frozen
class WorkerInfo:
    """What a live worker process says about itself."""

    worker_id: str
    host: str
    pid: int
    queues: list[str]
    started_at: float
    rss_bytes: int = 0
    job_rss_bytes: int = 0
    running: int = 0
    # The task types this process can run (those with a handler): a worker that takes a task of a
    # type it lacks hands it on to one that has it (taskd.engine.executor). None: a heartbeat of a
    # version that did not say.
    task_types: list[str] | None = None


def new_worker_id(host: str | None = None) -> str:
    """A worker id that names the host (`worker.host_id`, else the hostname) and process, unique across restarts."""
    return f"{host or socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


class Heartbeat:
    """Publishes this process's WorkerInfo every `interval` seconds, expiring after `ttl`."""

    def __init__(
        self,
        redis: Redis,
        info: WorkerInfo,
        interval: float,
        ttl: float,
        running: Callable[[], int],
        job_rss: Callable[[], int] = lambda: 0,
        after_beat: Callable[[], Awaitable[None]] | None = None,
        partition_clients: Sequence[Redis] | None = None,
    ) -> None:
        self.redis = redis
        # The other partitions' clients (taskd.keys.partitions): each partition's scripts see that
        # this worker is alive by a mark in their own slot, written with every beat.
        self._partitions = list(enumerate(keys.client_per_partition(redis, partition_clients)))[1:]
        self.info = info
        self.interval = interval
        self.ttl = ttl
        self._running = running
        self._job_rss = job_rss
        self._after_beat = after_beat
        self._process = psutil.Process()
        self._rss = 0
        self._short_of_files = False

    async def beat(self) -> None:
        """Write one heartbeat now."""
        info = attrs.evolve(
            self.info,
            rss_bytes=self._read_rss(),
            job_rss_bytes=self._job_rss(),
            running=self._running(),
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.worker(info.worker_id), orjson.dumps(attrs.asdict(info)), px=int(self.ttl * 1000))
            pipe.zadd(keys.WORKERS, {info.worker_id: int(now() * 1000)})
            await pipe.execute()
        for partition, client in self._partitions:
            await client.set(keys.worker(info.worker_id, partition), b"1", px=int(self.ttl * 1000))

    def _read_rss(self) -> int:
        # The beat is the lease on every task this process runs. A process out of open files
        # (EMFILE) cannot read /proc: the beat goes out with the last reading rather than not at
        # all, which let other workers take its running tasks as a dead worker's.
        try:
            self._rss = self._process.memory_info().rss
        except psutil.Error:
            pass
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self._out_of_files(exc)
        else:
            self._files_again()
        return self._rss

    # The event loop closes the connections it cannot accept for want of a file and says nothing
    # (libuv, under uvloop): a beat's reading is where the shortage shows, so it is said here, once
    # when it begins and once when it ends.
    def _out_of_files(self, exc: OSError) -> None:
        if not self._short_of_files:
            log.warning(
                "out of open files (%s): new connections are closed unanswered until some close "
                "(docs/security.md, Connections)",
                exc,
            )
        self._short_of_files = True

    def _files_again(self) -> None:
        if self._short_of_files:
            log.info("open files are available again")
        self._short_of_files = False

    async def run(self) -> None:
        """Beat (then run `after_beat`) until cancelled; a Redis outage only delays the next beat."""
        await every(self.interval, self._beat_then_check, name="heartbeat", logger=log)

    async def _beat_then_check(self) -> None:
        await self.beat()
        if self._after_beat is not None:
            await self._after_beat()

    async def remove(self) -> None:
        """Say goodbye so this worker stops counting at once."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.worker(self.info.worker_id))
            pipe.zrem(keys.WORKERS, self.info.worker_id)
            await pipe.execute()
        for partition, client in self._partitions:
            await client.delete(keys.worker(self.info.worker_id, partition))


async def beating_within(redis: Redis, beats: str, ttl: float) -> list[bytes]:
    """The members of a sorted set of heartbeats (scored by the beat's epoch ms) that beat within
    `ttl`; older ones are pruned in the same round trip, when Redis takes writes."""
    cutoff = int((now() - ttl) * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrangebyscore(beats, f"({cutoff}", "+inf")
        pipe.zremrangebyscore(beats, "-inf", cutoff)
        members, pruned = await pipe.execute(raise_on_error=False)
    # A Redis that refuses writes for now (its disk or memory full) still tells who is alive: the
    # health reads and /metrics answer, and report it, rather than fail with the pruning. A later
    # read prunes.
    if isinstance(members, Exception):
        raise members
    if isinstance(pruned, Exception) and not refuses_writes(pruned):
        raise pruned
    return list(members)


async def live_workers(redis: Redis, ttl: float) -> list[WorkerInfo]:
    """Workers whose last heartbeat is younger than `ttl`; older entries are pruned."""
    members = await beating_within(redis, keys.WORKERS, ttl)
    if not members:
        return []
    raw = await redis.mget([keys.worker(member.decode()) for member in members])
    workers = []
    for member, value in zip(members, raw, strict=True):
        if not value:  # expired between the two reads: gone
            continue
        try:
            workers.append(_CONVERTER.structure(orjson.loads(value), WorkerInfo))
        except (ValueError, cattrs.BaseValidationError) as exc:
            # Another version's heartbeat (a rolling upgrade), or a damaged one: one worker unseen,
            # not every view of the workers (health, the dashboard, /metrics, `taskd workers`) a 500.
            log.warning("unreadable heartbeat of worker %s: %s", member.decode("utf-8", "replace"), exc)
    return workers


async def last_beats(redis: Redis) -> dict[str, float]:
    """Each worker id in the heartbeat index with the time (epoch seconds) of its last beat."""
    return {
        member.decode(): score / 1000
        for member, score in await redis.zrange(keys.WORKERS, 0, -1, withscores=True)
    }
