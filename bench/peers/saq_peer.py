"""saq on Redis, as its documentation sets it up: a Queue from the URL and a worker settings dict.

Run by bench/compare.py in its own virtualenv (bench/requirements/saq.txt); bench/peers/_peer.py
says what is measured. The worker is the `saq` command with its defaults (one process, 10 jobs at
once); saq keeps a finished job, its result included, for 600 s. A worker started on a backlog
sweeps at once, and aborts the jobs it finds moved to its active list but not yet marked active
(its first dequeues, racing the sweep): the output counts them as lost from when the abort starts.
"""

from __future__ import annotations

import argparse
import time
from importlib.metadata import version
from typing import Any

from _peer import JobLost, Peer, main, redis_url
from saq import Job, Queue, Status

queue = Queue.from_url(redis_url())


async def noop(_: dict[str, Any]) -> float:
    """Return at once, saying when the handler started (wall clock)."""
    return time.time()


settings = {"queue": queue, "functions": [noop]}


class Saq(Peer[Job]):
    name = "saq"

    def __init__(self, producers: int) -> None:
        self.producers = producers

    @property
    def version(self) -> str:
        return version("saq")

    @property
    def worker_args(self) -> list[str]:
        return ["-m", "saq", "saq_peer.settings", "--quiet"]

    async def open(self) -> None:
        await queue.connect()

    async def enqueue(self) -> Job:
        job = await queue.enqueue("noop")
        assert job is not None, "saq refused a job as a duplicate"
        return job

    async def started_at(self, handle: Job) -> float | None:
        job = await queue.job(handle.key)
        if job is None or job.status in (Status.QUEUED, Status.ACTIVE):
            return None
        if job.status != Status.COMPLETE:
            raise JobLost(f"{job.status}: {job.error}")
        result: float = job.result
        return result

    async def close(self) -> None:
        await queue.disconnect()


def make(args: argparse.Namespace) -> Saq:
    return Saq(args.producers)


if __name__ == "__main__":
    main(make)
