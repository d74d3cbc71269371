"""How full Redis is: `INFO memory`'s used_memory against maxmemory (0 when the server sets none)."""

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
