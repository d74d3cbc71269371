"""Soak: N HTTP clients submit M tasks across every queue, with callbacks; every task must end once.

    python bench/soak.py --tasks 20000 --clients 32

Starts `taskd serve` (its own embedded Valkey, a temp data dir, the diagnostic task types) and a
webhook receiver, submits a mix of `noop`, `sleep` (default queue), `cpu` (cpu_intensive, in a job
process), `gpu_hold` (gpu_medium) and `gpu_hold_whole` (gpu_heavy) with a `callback_url`, then checks:
every submit got a 200 (no 5xx), every task `completed` on its first attempt, `completed_tasks`
equals M, every webhook arrived. Prints throughput, submit-latency percentiles, end-to-end time
and the peak RSS of every taskd process (psutil over the process tree). Exit status 0 = all held.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web

API_KEY = "soak-key-0123456789"
MIX = [
    ("noop", {}),
    ("sleep", {"seconds": 0.02, "steps": 1}),
    ("noop", {}),
    ("cpu", {"seconds": 0.01}),
    ("gpu_hold", {"seconds": 0.01}),
    ("gpu_hold_whole", {"seconds": 0.01}),
]


class Receiver:
    """Counts webhook-ids."""

    def __init__(self) -> None:
        self.ids: collections.Counter[str] = collections.Counter()
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.ids[request.headers.get("webhook-id", "")] += 1
        return web.Response(status=204)

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=1024).start()
        self.port = runner.addresses[0][1]
        return runner


class RssSampler:
    """Peak RSS of every process under `pid`, sampled every half second."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peaks: dict[int, tuple[str, int]] = {}

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for proc in procs:
            try:
                name = _describe(proc, self.root.pid)
                rss = proc.memory_info().rss
            except psutil.Error:
                continue
            previous = self.peaks.get(proc.pid, (name, 0))[1]
            self.peaks[proc.pid] = (name, max(previous, rss))

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.5)


def _describe(proc: psutil.Process, root: int) -> str:
    cmd = " ".join(proc.cmdline())
    if "valkey" in cmd:
        return "valkey-server (embedded)"
    if "taskd.engine.jobproc.template" in cmd:
        # Job processes are forks of the template, and keep its command line.
        return "job-process template" if proc.ppid() == root else "job process"
    if "-m taskd" in cmd:
        return "taskd serve"
    return proc.name()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="taskd-soak-"))
    receiver = Receiver()
    receiver_runner = await receiver.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    env.update(
        TASKD_DATA_DIR=str(data_dir),
        TASKD_HTTP__PORT="0",
        TASKD_AUTH__API_KEYS=API_KEY,
        TASKD_TASKS__MODULES="taskd.tasks.diagnostics",
        TASKD_LIMITS__SUBMIT_PER_MINUTE="0",
        TASKD_LIMITS__STATUS_PER_MINUTE="0",
        TASKD_LIMITS__CONCURRENT_PER_PROJECT="0",
        TASKD_LIMITS__MAX_QUEUE_LENGTH="0",
        TASKD_LIMITS__QUEUED_PER_PROJECT="0",
        TASKD_WEBHOOKS__ALLOW_PRIVATE="true",
        TASKD_LOGGING__LEVEL="WARNING",
        TASKD_GPU__SIMULATE="1",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskd", "serve"],
        env=env,
        cwd=data_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        base_url = _wait_listening(proc)
        return await _drive(args, base_url, proc.pid, receiver)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        await receiver_runner.cleanup()


def _wait_listening(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if match := re.search(r"listening on (http://\S+)", line):
            return match.group(1)
    raise SystemExit("taskd serve did not start")


async def _drive(args: argparse.Namespace, base_url: str, pid: int, receiver: Receiver) -> dict[str, Any]:
    sampler = RssSampler(pid)
    sampling = asyncio.create_task(sampler.run())
    headers = {"X-API-Key": API_KEY}
    callback = f"http://127.0.0.1:{receiver.port}/hook"
    statuses: collections.Counter[int] = collections.Counter()
    latencies: list[float] = []
    task_ids: list[str] = []
    counter = iter(range(args.tasks))
    connector = aiohttp.TCPConnector(limit=args.clients)
    deadline = time.monotonic() + args.timeout
    async with aiohttp.ClientSession(base_url, headers=headers, connector=connector) as session:

        async def client() -> None:
            for n in counter:
                task_type, data = MIX[n % len(MIX)]
                body = {"project_id": f"soak-{n % 8}", "task_type": task_type, "task_data": data}
                body["callback_url"] = callback
                started = time.monotonic()
                async with session.post("/api/v1/tasks/submit", json=body) as response:
                    reply = await response.json(content_type=None)
                latencies.append(time.monotonic() - started)
                statuses[response.status] += 1
                if response.status == 200:
                    task_ids.append(reply["task_id"])

        began = time.monotonic()
        await asyncio.gather(*(client() for _ in range(args.clients)))
        submitted_in = time.monotonic() - began
        expected = {f"msg_{task_id}_completed" for task_id in task_ids}
        while time.monotonic() < deadline and not expected <= set(receiver.ids):
            await asyncio.sleep(0.1)
        ended_in = time.monotonic() - began
        bodies = await _statuses(session, task_ids, args.clients)
        async with session.get("/api/v1/tasks/metrics") as response:
            metrics = (await response.json())["metrics"]
    sampling.cancel()
    sampler.sample()
    missing = expected - set(receiver.ids)
    not_completed = [b for b in bodies if b.get("status") != "completed"]
    rerun = [b for b in bodies if b.get("attempt") != 1]
    checks = {
        "every submit answered 200 (no 5xx)": statuses == collections.Counter({200: args.tasks}),
        "every task completed": not not_completed and len(bodies) == args.tasks,
        "every task ran once (attempt 1)": not rerun,
        "completed_tasks counter equals tasks": metrics["completed_tasks"] == args.tasks,
        "every webhook arrived": not missing,
        "no webhook arrived twice": all(count == 1 for count in receiver.ids.values()),
    }
    return {
        "tasks": args.tasks,
        "clients": args.clients,
        "http_statuses": dict(statuses),
        "submit_seconds": round(submitted_in, 2),
        "submits_per_second": round(args.tasks / submitted_in, 1),
        "all_webhooks_seconds": round(ended_in, 2),
        "tasks_per_second_end_to_end": round(args.tasks / ended_in, 1),
        "submit_latency_ms": {
            "p50": round(_percentile(latencies, 0.50) * 1000, 1),
            "p95": round(_percentile(latencies, 0.95) * 1000, 1),
            "p99": round(_percentile(latencies, 0.99) * 1000, 1),
            "max": round(max(latencies, default=0) * 1000, 1),
            "mean": round(statistics.fmean(latencies) * 1000, 1) if latencies else 0,
        },
        "peak_rss_mb": sorted(
            (
                {"pid": pid, "process": name, "mb": round(rss / 2**20, 1)}
                for pid, (name, rss) in sampler.peaks.items()
            ),
            key=lambda row: -row["mb"],
        ),
        "webhooks_missing": len(missing),
        "checks": checks,
        "ok": all(checks.values()),
    }


async def _statuses(session: aiohttp.ClientSession, task_ids: list[str], clients: int) -> list[dict]:
    pending = iter(task_ids)
    bodies: list[dict] = []

    async def reader() -> None:
        for task_id in pending:
            async with session.get(f"/api/v1/tasks/{task_id}/status") as response:
                bodies.append(await response.json(content_type=None))

    await asyncio.gather(*(reader() for _ in range(clients)))
    return bodies


def _print(report: dict[str, Any]) -> None:
    print(f"tasks {report['tasks']}, clients {report['clients']}, statuses {report['http_statuses']}")
    print(
        f"submitted in {report['submit_seconds']} s ({report['submits_per_second']}/s); "
        f"all completed and webhooks in {report['all_webhooks_seconds']} s "
        f"({report['tasks_per_second_end_to_end']} tasks/s)"
    )
    lat = report["submit_latency_ms"]
    print(f"submit latency ms: p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  max {lat['max']}")
    print("peak RSS:")
    for row in report["peak_rss_mb"]:
        print(f"  {row['mb']:8.1f} MB  {row['process']} (pid {row['pid']})")
    for name, held in report["checks"].items():
        print(f"  [{'ok' if held else 'FAILED'}] {name}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=300, help="seconds for everything to end")
    parser.add_argument("--json", help="also write the report to this file")
    args = parser.parse_args()
    report = asyncio.run(soak(args))
    _print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
