"""taskd's idle memory alone, per process: the "memory idle" row of bench/compare.py, broken down;
and the CPU the idle service uses.

    .venv/bin/python bench/memory.py              # three starts of `taskd serve`, each warmed up as compare.py does
    .venv/bin/python bench/memory.py --runs 1 --json out.json

Each run starts `taskd serve` the way bench/compare.py does (same environment, same warm-up of a
few no-op tasks, same settle time), then reads the PSS of every process in its tree with the same
function (`_common.memory_mb`), one process at a time, and their sum. The figures are what
docs/performance.md's "what changed" table for idle memory quotes. Then, still idle, the CPU time
(user and system) each process uses over `--cpu-window` seconds, in ms a second: what the
service's own loops (polls, heartbeats, sweeps) cost while nothing is submitted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import memory_mb, tree
from compare import Sizes, Taskd, warm_up


def _role(proc: psutil.Process) -> str:
    """A short name for a process of taskd's tree: what its command line says it is."""
    with contextlib.suppress(psutil.Error):
        cmdline = proc.cmdline()
        joined = " ".join(cmdline)
        if "valkey" in joined:
            return "valkey"
        if "taskd" in joined and "serve" in cmdline:
            return "taskd serve"
        return " ".join(cmdline[:4])[:60] or proc.name()
    return "?"


async def one_run(tmp: Path, settle: float, cpu_window: float) -> dict[str, Any]:
    """Start, warm up, settle, measure: the PSS of each process and the total, in MiB; then each
    process's CPU over `cpu_window` seconds, in ms a second."""
    system = Taskd(tmp)
    await system.start()
    try:
        await warm_up(system)
        await asyncio.sleep(settle)
        processes: dict[str, float] = {}
        for proc in tree(system.pids()):
            role = _role(proc)
            processes[role] = processes.get(role, 0.0) + memory_mb([proc.pid]) - _children_mb(proc)
        total = memory_mb(system.pids())
        cpu = await _cpu_ms_per_s(tree(system.pids()), cpu_window)
        return {"total_mib": total, "processes_mib": processes, "cpu_ms_per_s": cpu}
    finally:
        await system.stop()
        if system.redis is not None:
            await system.redis.aclose()


async def _cpu_ms_per_s(processes: list[psutil.Process], window: float) -> dict[str, float]:
    def used() -> dict[str, float]:
        seconds: dict[str, float] = {}
        for proc in processes:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                role = _role(proc)
                seconds[role] = seconds.get(role, 0.0) + times.user + times.system
        return seconds

    before = used()
    await asyncio.sleep(window)
    after = used()
    return {role: round((after[role] - before.get(role, 0.0)) / window * 1000, 1) for role in after}


def _children_mb(proc: psutil.Process) -> float:
    # memory_mb counts descendants too; a process's own share is its figure less its children's.
    with contextlib.suppress(psutil.Error):
        return memory_mb([child.pid for child in proc.children()])
    return 0.0


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="starts of `taskd serve` to measure (default 3)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--cpu-window",
        type=float,
        default=10.0,
        help="seconds of idle CPU measured after the memory (default 10)",
    )
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="taskd-memory-") as tmp:
        for _ in range(args.runs):
            runs.append(await one_run(Path(tmp), Sizes().settle, args.cpu_window))
            parts = ", ".join(f"{role} {mib:.1f}" for role, mib in runs[-1]["processes_mib"].items())
            cpu = ", ".join(f"{role} {ms:g}" for role, ms in runs[-1]["cpu_ms_per_s"].items())
            print(f"idle PSS {runs[-1]['total_mib']:.1f} MiB ({parts}); idle CPU ms/s: {cpu}", flush=True)
    print(f"median of {len(runs)}: {statistics.median(run['total_mib'] for run in runs):.1f} MiB")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
