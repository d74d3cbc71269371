"""Helpers that read or stand in for what taskd keeps in Redis, shared by the store and worker tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from taskd import keys
from taskd.engine.keeper import LiveRecords
from taskd.store import TaskStore

# A URL of each kind taskd opens (taskd.redis_conn.connect), none reachable: what a connection made
# for it is can be looked at without a server.
EVERY_KIND_OF_URL = [
    "redis://127.0.0.1:1/0",
    "rediss://127.0.0.1:1/0",
    "unix:///tmp/valkey.sock",
    "redis+sentinel://127.0.0.1:1/main",
    "redis+cluster://127.0.0.1:1",
]


def counting_writes(redis: Redis) -> list[int]:
    """A one-item list that counts the client's writes to its sockets (a pipeline is one write)."""
    writes = [0]
    base = redis.connection_pool.connection_class

    class Counting(base):  # type: ignore[misc,valid-type]
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            writes[0] += 1
            await super().send_packed_command(command, check_health)

    redis.connection_pool.connection_class = Counting
    return writes


async def alive(redis: Redis, *worker_ids: str) -> None:
    """Heartbeat keys, as a live worker process keeps them (the reclaimer leaves their tasks alone)."""
    for worker_id in worker_ids:
        await redis.set(keys.worker(worker_id), "{}", ex=60)


async def statuses(redis: Redis, task_ids: list[str]) -> list[str]:
    """Each task's stored status, in order ('' for a record that is gone)."""
    return [(await redis.hget(keys.task(task_id), "status") or b"").decode() for task_id in task_ids]


async def idle_worker(redis: Redis, serve: Any, partition: int = 0) -> str:
    """The in-process service's worker id, once its worker of the default queue waits in the idle set
    (of `partition`) and knows it does (the reply of the take that left it there is back), with no
    look of its own pending: its pub/sub listener has subscribed, which wakes it for one look."""
    worker_id: str = serve.service.worker_id
    worker = serve.service._pool.workers["default"]
    async with asyncio.timeout(10):
        while (await redis.pubsub_numsub(keys.wake_worker(worker_id)))[0][1] == 0:
            await asyncio.sleep(0.02)
        while (
            not worker.idle
            or worker.wake.is_set()
            or await redis.zscore(keys.idle("default", partition), worker_id) is None
        ):
            await asyncio.sleep(0.02)
    return worker_id


async def monitored(redis: Redis, during: Callable[[], Awaitable[Any]]) -> tuple[Any, list[str], list[str]]:
    """What `during()` returned, the commands clients sent Valkey meanwhile and those its scripts ran,
    from MONITOR."""
    sentinel = f"end-of-{time.monotonic_ns()}"
    sent: list[str] = []
    ran: list[str] = []
    async with redis.monitor() as monitor:
        returned = await during()
        # On another connection than MONITOR's, after whatever `during` sent: where the reading stops.
        await redis.echo(sentinel)
        while sentinel not in (command := await monitor.next_command())["command"]:
            (ran if command["client_type"] == "lua" else sent).append(command["command"])
    return returned, sent, ran


async def sent_to_valkey(
    redis: Redis, during: Callable[[], Awaitable[Any]], *, by_scripts: bool = False
) -> list[str]:
    """The commands clients sent Valkey while `during()` ran, from MONITOR: not those its scripts ran,
    or with `by_scripts` only those."""
    _, sent, ran = await monitored(redis, during)
    return ran if by_scripts else sent


async def keeper_looked(redis: Redis, task_ttl: int = 24 * 3600, partition: int = 0) -> None:
    """Once a service's keeper has ended its look at `partition` (it looks as it starts): its turn
    rests, held longer than a look holds it, so the test's own changes come after that look."""
    holds_ms = LiveRecords(TaskStore(redis, task_ttl), []).ask_every * 1000

    async def rests() -> bool:
        # The service's turn, whatever its group (its TTL and queues: taskd.engine.keeper).
        turns = [key async for key in redis.scan_iter(match=keys.keeper_turn(partition, "*"))]
        return any([await redis.pttl(key) > holds_ms for key in turns])

    async with asyncio.timeout(30):
        while not await rests():
            await asyncio.sleep(0.02)


async def project_quiet(redis: Redis, project_id: str = "p") -> None:
    """Once the project's newest event is LIST_QUIET_MS old by Valkey's clock: a listing that
    counts the project then keeps its counts (list_look.lua)."""
    async with asyncio.timeout(30):
        while True:
            newest = await redis.xrevrange(keys.project_events(project_id), count=1)
            seconds, micros = await redis.time()
            at_ms = int(newest[0][0].split(b"-")[0]) if newest else 0
            if seconds * 1000 + micros // 1000 - at_ms >= keys.LIST_QUIET_MS:
                return
            await asyncio.sleep(0.05)
