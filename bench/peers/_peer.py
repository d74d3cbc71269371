"""What every peer script of bench/compare.py shares: the measurements, the worker process, the JSON line.

A peer script (`<library>_peer.py` beside this file) runs in its library's own virtualenv
(bench/venvs.py), so it imports neither taskd nor taskd's dependencies: the standard library,
psutil, bench/_common.py and its library only. It configures its library at import from
BENCH_REDIS_URL (its worker imports the same module), defines a `Peer` and calls `main`. The
measurements, on the fresh Valkey that bench/compare.py started for it:

  enqueue       N no-op jobs sent with no worker running, `producers` at a time: jobs/s
  drain         the library's own worker (its CLI, its defaults) started on those N queued jobs:
                jobs/s from the first handler start until the last result is seen stored
  idle memory   PSS of the worker's processes and the Valkey server, a second after the drain
  start latency sequential jobs on the idle worker (as many as fit in 30 s): job sent -> handler
                started (the handler returns time.time() as it starts; read from the stored result)
  end to end    N more jobs sent while the worker runs: jobs/s from the first one sent until the
                last result is seen stored

and one JSON line on stdout with every figure.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

PEERS = Path(__file__).resolve().parent
sys.path.insert(0, str(PEERS.parent))

from _common import memory_mb, percentile, stop, tree  # noqa: E402

REDIS_URL_ENV = "BENCH_REDIS_URL"
# How often a stored result is looked for: as often as bench/compare.py polls taskd's counters
# (end to end) and statuses (start latency).
POLL_LAST_S = 0.005
POLL_LATENCY_S = 0.01
# Sequential jobs on a worker that polls its queue (arq every 0.5 s) take that long each: the start
# latency takes as many jobs as fit in this time, up to the number asked for.
LATENCY_BUDGET_S = 30.0

Handle = TypeVar("Handle")


class JobLost(Exception):
    """The library ended the job without a result (failed it, aborted it)."""


def redis_url() -> str:
    """The URL of the Valkey that bench/compare.py started for this peer."""
    return os.environ[REDIS_URL_ENV]


class Peer(abc.ABC, Generic[Handle]):
    """A task library as a user would use it: send a no-op job, read its stored result, run its worker."""

    name = ""
    # Jobs sent at once: the async libraries as many as the HTTP load's clients, a synchronous one 1.
    producers = 1

    @property
    @abc.abstractmethod
    def version(self) -> str:
        """The library's version."""

    @property
    @abc.abstractmethod
    def worker_args(self) -> list[str]:
        """The worker's command line after `python`, as the library's documentation starts it."""

    @abc.abstractmethod
    async def enqueue(self) -> Handle:
        """Send one no-op job; what identifies it for `started_at`."""

    @abc.abstractmethod
    async def started_at(self, handle: Handle) -> float | None:
        """The wall-clock time the job's handler started, from its stored result; None until stored.

        Raises JobLost where the library says the job ended without a result.
        """

    async def open(self) -> None:
        """Connect the client, where the library wants that done before the first job."""

    async def close(self) -> None:
        """Release the client's connections."""


class _Worker:
    """The library's worker as a child process in its own process group, its output in a file."""

    def __init__(self, peer: Peer[Any], workdir: Path) -> None:
        self.log = workdir / "worker.log"
        env = {**os.environ, "PYTHONPATH": str(PEERS)}
        with self.log.open("w") as out:
            self.proc: subprocess.Popen[str] = subprocess.Popen(
                [sys.executable, *peer.worker_args],
                env=env,
                cwd=workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"the worker exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
            )


async def _enqueue_many(peer: Peer[Handle], count: int) -> list[Handle]:
    handles: list[Handle] = []
    remaining = count

    async def producer() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            handles.append(await peer.enqueue())

    await asyncio.gather(*(producer() for _ in range(peer.producers)))
    return handles


async def _wait_one(
    peer: Peer[Handle], handle: Handle, worker: _Worker, poll: float, deadline: float
) -> float | None:
    """The job's handler start once its result is stored; None if the library ended it without one."""
    try:
        while (started := await peer.started_at(handle)) is None:
            worker.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{peer.name}: a job's result was not stored in time")
            await asyncio.sleep(poll)
    except JobLost:
        return None
    return started


async def _wait_all(
    peer: Peer[Handle], handles: list[Handle], worker: _Worker, timeout: float
) -> tuple[float, list[float]]:
    """When the last result was seen stored, and the handler start of every job that has one."""
    deadline = time.monotonic() + timeout
    # The queues are first in, first out: the last job sent is (about) the last done. Watching it
    # alone keeps the watching from loading what it measures; then every other result is read,
    # and one not stored yet moves the end to when it is.
    await _wait_one(peer, handles[-1], worker, POLL_LAST_S, deadline)
    done_at = time.time()
    starts = []
    for handle in handles:
        try:
            started = await peer.started_at(handle)
        except JobLost:
            continue
        if started is None:
            started = await _wait_one(peer, handle, worker, POLL_LAST_S, deadline)
            done_at = time.time()
        if started is not None:
            starts.append(started)
    return done_at, starts


async def measure(peer: Peer[Any], jobs: int, latency_jobs: int, valkey_pid: int) -> dict[str, Any]:
    """Every measurement of the module docstring, in that order, on one start of the worker."""
    timeout = 120 + jobs / 20
    sent = time.perf_counter()
    handles = await _enqueue_many(peer, jobs)
    enqueue_s = time.perf_counter() - sent
    with tempfile.TemporaryDirectory(prefix=f"bench-{peer.name}-") as workdir:
        worker = _Worker(peer, Path(workdir))
        try:
            done_at, starts = await _wait_all(peer, handles, worker, timeout)
            drained = len(starts)
            drain_s = done_at - min(starts)
            await asyncio.sleep(1.0)
            idle_mb = memory_mb([worker.proc.pid, valkey_pid])
            processes = len(tree([worker.proc.pid]))
            latencies = []
            asked = 0
            budget_end = time.monotonic() + LATENCY_BUDGET_S
            while asked < latency_jobs and time.monotonic() < budget_end:
                asked += 1
                sent_at = time.time()
                handle = await peer.enqueue()
                started = await _wait_one(peer, handle, worker, POLL_LATENCY_S, time.monotonic() + 60)
                if started is not None:
                    latencies.append((started - sent_at) * 1000)
            first_sent = time.time()
            handles = await _enqueue_many(peer, jobs)
            e2e_done_at, starts = await _wait_all(peer, handles, worker, timeout)
        finally:
            await asyncio.to_thread(stop, worker.proc)
    return {
        "peer": peer.name,
        "version": peer.version,
        "worker": " ".join(["python", *peer.worker_args]),
        "worker_processes": processes,
        "producers": peer.producers,
        "jobs": jobs,
        # Jobs the library ended without a result; the rates count only those with one.
        "lost": {"drain": jobs - drained, "start_latency": asked - len(latencies), "e2e": jobs - len(starts)},
        "enqueue_per_s": jobs / enqueue_s,
        "drain_tasks_per_s": drained / drain_s,
        "idle_memory_mb": idle_mb,
        "start_latency": {
            "tasks": len(latencies),
            "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99),
        },
        "e2e_tasks_per_s": len(starts) / (e2e_done_at - first_sent),
    }


def main(make_peer: Callable[[argparse.Namespace], Peer[Any]]) -> None:
    """Parse the arguments bench/compare.py passes, measure, print the JSON line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--valkey-pid", type=int, required=True, help="counted in the idle memory")
    parser.add_argument("--jobs", type=int, default=3000, help="jobs enqueued, drained, then end to end")
    parser.add_argument("--latency-jobs", type=int, default=300, help="sequential jobs for start latency")
    parser.add_argument("--producers", type=int, default=50, help="jobs sent at once by an async client")
    args = parser.parse_args()

    async def run() -> dict[str, Any]:
        peer = make_peer(args)
        await peer.open()
        try:
            return await measure(peer, args.jobs, args.latency_jobs, args.valkey_pid)
        finally:
            await peer.close()

    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run())
    else:
        result = uvloop.run(run())
    print(json.dumps(result), flush=True)
