"""arq on Redis, as its documentation sets it up: `create_pool`, `enqueue_job` and a WorkerSettings class.

Run by bench/compare.py in its own virtualenv (bench/requirements/arq.txt); bench/peers/_peer.py
says what is measured. The worker is the `arq` command with its defaults (one process, 10 jobs at
once, the queue polled every 0.5 s); arq keeps a result for an hour. taskd's own worker is built on
arq (docs/development.md#arq-as-it-is), so this is also the library under taskd, used directly.
"""

from __future__ import annotations

import argparse
import time
from importlib.metadata import version
from typing import Any

from _peer import JobLost, Peer, main, redis_url
from arq import ArqRedis, create_pool
from arq.connections import RedisSettings
from arq.jobs import Job


async def noop(_: dict[str, Any]) -> float:
    """Return at once, saying when the handler started (wall clock)."""
    return time.time()


# The `arq` command logs every job's start and end at INFO unless given a logging config: at WARNING,
# like every other system here.
log_config = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"level": "WARNING", "class": "logging.StreamHandler"}},
    "loggers": {"arq": {"handlers": ["stderr"], "level": "WARNING"}},
}


class WorkerSettings:
    functions = [noop]
    redis_settings = RedisSettings.from_dsn(redis_url())


class Arq(Peer[Job]):
    name = "arq"

    def __init__(self, producers: int) -> None:
        self.producers = producers
        self.pool: ArqRedis | None = None

    @property
    def version(self) -> str:
        return version("arq")

    @property
    def worker_args(self) -> list[str]:
        return ["-m", "arq", "arq_peer.WorkerSettings", "--custom-log-dict", "arq_peer.log_config"]

    async def open(self) -> None:
        self.pool = await create_pool(WorkerSettings.redis_settings)

    async def enqueue(self) -> Job:
        assert self.pool is not None
        job = await self.pool.enqueue_job("noop")
        assert job is not None, "arq refused a job as a duplicate"
        return job

    async def started_at(self, handle: Job) -> float | None:
        info = await handle.result_info()
        if info is None:
            return None
        if not info.success:
            raise JobLost(str(info.result))
        result: float = info.result
        return result

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.aclose()


def make(args: argparse.Namespace) -> Arq:
    return Arq(args.producers)


if __name__ == "__main__":
    main(make)
