"""How full Redis is: `INFO memory`'s used_memory against maxmemory (0 when the server sets none),
and what it does when full (its maxmemory-policy); and whether it can write to its disk: `INFO
persistence`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import attrs
from redis.asyncio import Redis

from taskd.redis_conn import distinct_partitions

log = logging.getLogger("taskd")

READ_TIMEOUT_S = 2.0


# The one maxmemory-policy that keeps every key: a full Redis refuses writes (OOM) instead.
NO_EVICTION = "noeviction"


@attrs.frozen
class RedisMemory:
    """Bytes Redis uses, its maxmemory (0: unbounded) and its maxmemory-policy."""

    used: int
    limit: int
    policy: str = NO_EVICTION

    @property
    def share(self) -> float | None:
        """used / maxmemory, or None without a maxmemory."""
        return self.used / self.limit if self.limit > 0 else None

    @property
    def evicts(self) -> bool:
        """True when Redis drops keys to make room once at maxmemory. Every policy but noeviction
        may drop taskd's: the volatile-* ones too, as task records, queues' keys and the webhook
        state carry expiries."""
        return self.limit > 0 and self.policy != NO_EVICTION


def eviction_risk(memory: RedisMemory, who: str = "Redis") -> str | None:
    """What taskd loses to Redis's maxmemory-policy, or None when Redis never drops a key; `who`
    names the server (`redis_of`)."""
    if not memory.evicts:
        return None
    return (
        f"{who} maxmemory-policy is {memory.policy}: once at its maxmemory it drops keys, and tasks, "
        "queued jobs and webhooks are lost without a word; set maxmemory-policy noeviction "
        "(docs/production.md, Redis)"
    )


async def read_memory(redis: Redis) -> RedisMemory | None:
    """The server's memory figures; None when it cannot tell (INFO refused, unreachable, odd reply)."""
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            info = await redis.info("memory")
        return RedisMemory(
            int(info["used_memory"]),
            int(info.get("maxmemory", 0)),
            str(info.get("maxmemory_policy", NO_EVICTION)),
        )
    except Exception as exc:  # health must still answer: a managed Redis may refuse INFO
        log.debug("reading redis memory failed: %s", exc)
        return None


# INFO persistence's fields of a failed write, and what each failed to write.
_PERSISTENCE_FAILURES = (
    ("aof_last_write_status", "its append-only file"),
    ("rdb_last_bgsave_status", "its last snapshot"),
)


async def read_persistence_failure(redis: Redis) -> str | None:
    """What Redis last failed to write to its disk (its disk full or failing), or None when it
    wrote or cannot tell. Until such a write succeeds it refuses writes (MISCONF), unless it is
    configured not to (`stop-writes-on-bgsave-error no`, for snapshots)."""
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            info = await redis.info("persistence")
    except Exception as exc:  # health must still answer: a managed Redis may refuse INFO
        log.debug("reading redis persistence failed: %s", exc)
        return None
    return next((what for field, what in _PERSISTENCE_FAILURES if info.get(field) == "err"), None)


@attrs.frozen
class NodeState:
    """What one server of taskd's partitions says of its memory and its disk."""

    # None on one server (every partition there); else the lowest partition the server holds.
    partition: int | None
    memory: RedisMemory | None
    persistence_failure: str | None


async def read_every_node(clients: Sequence[Redis]) -> list[NodeState]:
    """`read_memory` and `read_persistence_failure` of the server of each partition (one read on one
    server): on a cluster each shard has its own memory and disk, and one that is full or cannot
    persist refuses the writes of its partitions alone, unseen from partition 0's."""
    nodes = await _distinct_servers(distinct_partitions(clients))
    named = len(nodes) > 1

    async def read(partition: int, client: Redis) -> NodeState:
        memory, failure = await asyncio.gather(read_memory(client), read_persistence_failure(client))
        return NodeState(partition if named else None, memory, failure)

    return list(await asyncio.gather(*(read(partition, client) for partition, client in nodes)))


async def _distinct_servers(nodes: list[tuple[int, Redis]]) -> list[tuple[int, Redis]]:
    """`nodes` (partition, client), one per server, the lowest partition of each: a cluster with more
    partitions than primaries (`redis.partitions` a multiple of them, as cluster.md advises) has the
    clients of several partitions on one server, which raised one alert per partition and read its
    INFO as many times. Told apart by INFO server's run_id; a server that does not say (INFO refused)
    counts once per partition."""
    if len(nodes) == 1:
        return nodes
    servers = await asyncio.gather(*(_server_id(client) for _, client in nodes))
    distinct: dict[int | str, tuple[int, Redis]] = {}
    for (partition, client), server in zip(nodes, servers, strict=True):
        distinct.setdefault(partition if server is None else server, (partition, client))
    return list(distinct.values())


async def _server_id(redis: Redis) -> str | None:
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            info = await redis.info("server")
        return str(info["run_id"])
    except Exception as exc:  # health must still answer: a managed Redis may refuse INFO
        log.debug("reading redis run_id failed: %s", exc)
        return None


def fullest(states: Sequence[NodeState]) -> RedisMemory | None:
    """The memory figures of the server nearest its maxmemory (without one anywhere: the one that
    uses most), for the gauges that have one value; None when no server answered INFO."""
    read = [state.memory for state in states if state.memory is not None]
    return max(read, key=lambda memory: (memory.share or 0.0, memory.used), default=None)
