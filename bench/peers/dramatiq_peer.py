"""dramatiq with its Redis broker and the Results middleware on a Redis backend, as its documentation sets them up.

Run by bench/compare.py in its own virtualenv (bench/requirements/dramatiq.txt); bench/peers/_peer.py
says what is measured. dramatiq's client is synchronous: one producer sends the jobs, one after the
other. The worker is the `dramatiq` command with its defaults (a process per CPU, 8 threads each;
an idle consumer polls Redis with a backoff of up to 1 s).
"""

from __future__ import annotations

import argparse
import time
from importlib.metadata import version

import dramatiq
from _peer import Peer, main, redis_url
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import ResultMissing, Results
from dramatiq.results.backends.redis import RedisBackend

backend = RedisBackend(url=redis_url())
broker = RedisBroker(url=redis_url())
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True)
def noop() -> float:
    """Return at once, saying when the handler started (wall clock)."""
    return time.time()


class Dramatiq(Peer[dramatiq.Message[float]]):
    name = "dramatiq"

    @property
    def version(self) -> str:
        return version("dramatiq")

    @property
    def worker_args(self) -> list[str]:
        return ["-m", "dramatiq", "dramatiq_peer"]

    async def enqueue(self) -> dramatiq.Message[float]:
        return noop.send()

    async def started_at(self, handle: dramatiq.Message[float]) -> float | None:
        try:
            return handle.get_result(backend=backend)
        except ResultMissing:
            return None

    async def close(self) -> None:
        broker.close()


def make(_: argparse.Namespace) -> Dramatiq:
    return Dramatiq()


if __name__ == "__main__":
    main(make)
