"""taskiq with taskiq-redis, as its documentation sets it up: a ListQueueBroker and a RedisAsyncResultBackend.

Run by bench/compare.py in its own virtualenv (bench/requirements/taskiq.txt); bench/peers/_peer.py
says what is measured. The worker is `taskiq worker` with its defaults (two worker processes under
a supervisor, up to 100 jobs at once each, uvloop).
"""

from __future__ import annotations

import argparse
import time
from importlib.metadata import version

from _peer import Peer, main, redis_url
from taskiq import AsyncTaskiqTask
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

# redis-py 8 times socket reads out after 5 s by default, and taskiq-redis 1.2.4 (which wants redis-py
# 8) waits on an empty queue with a BRPOP that never times out: left so, each worker process dies
# after 5 s idle and its supervisor starts a new one a second later. No read timeout on the broker.
broker = ListQueueBroker(url=redis_url(), socket_timeout=None).with_result_backend(
    RedisAsyncResultBackend(redis_url=redis_url())
)


# Named: this module is `__main__` where the jobs are sent and `taskiq_peer` in the worker.
@broker.task(task_name="noop")
async def noop() -> float:
    """Return at once, saying when the handler started (wall clock)."""
    return time.time()


class Taskiq(Peer[AsyncTaskiqTask[float]]):
    name = "taskiq"

    def __init__(self, producers: int) -> None:
        self.producers = producers

    @property
    def version(self) -> str:
        return version("taskiq")

    @property
    def worker_args(self) -> list[str]:
        return ["-m", "taskiq", "worker", "taskiq_peer:broker", "--log-level", "WARNING"]

    async def open(self) -> None:
        await broker.startup()

    async def enqueue(self) -> AsyncTaskiqTask[float]:
        return await noop.kiq()

    async def started_at(self, handle: AsyncTaskiqTask[float]) -> float | None:
        if not await handle.is_ready():
            return None
        return (await handle.get_result()).return_value

    async def close(self) -> None:
        await broker.shutdown()


def make(args: argparse.Namespace) -> Taskiq:
    return Taskiq(args.producers)


if __name__ == "__main__":
    main(make)
