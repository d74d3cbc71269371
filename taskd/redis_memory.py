"""How full Redis is: `INFO memory`'s used_memory against maxmemory (0 when the server sets none);
and whether it can write to its disk: `INFO persistence`."""

from __future__ import annotations

import asyncio
import logging

import attrs
from redis.asyncio import Redis

log = logging.getLogger("taskd")

READ_TIMEOUT_S = 2.0


@attrs.frozen
class RedisMemory:
    """Bytes Redis uses and its maxmemory (0: unbounded)."""

    used: int
    limit: int

    @property
    def share(self) -> float | None:
        """used / maxmemory, or None without a maxmemory."""
        return self.used / self.limit if self.limit > 0 else None


async def read_memory(redis: Redis) -> RedisMemory | None:
    """The server's memory figures; None when it cannot tell (INFO refused, unreachable, odd reply)."""
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            info = await redis.info("memory")
        return RedisMemory(int(info["used_memory"]), int(info.get("maxmemory", 0)))
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
