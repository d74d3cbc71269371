"""Redis cost per task: the commands Valkey runs and the round trips taskd makes, per no-op task.

Starts `taskd serve --no-worker` (the API, its embedded Valkey as a child) and one `taskd worker`,
each through bench/redis_probe.py, which counts the process's Redis round trips. After a warm-up:

1. idle: `CONFIG RESETSTAT`, a few seconds with nothing submitted, then `INFO commandstats` and the
   round trips: what the service's own loops (polls, heartbeats, the reclaimer) cost per second;
2. load: `CONFIG RESETSTAT`, N no-op tasks submitted over HTTP by a few concurrent clients, until
   the worker has completed all of them, then the same readings.

Commands per task = (the load's commands by name - this benchmark's own polling of the completed
count - the idle rate over the load's duration) / N. Valkey counts the commands run inside a Lua
script under their own names, besides the EVALSHA that ran them, so a script's work shows command
by command; EVALSHA itself is counted as one command too. Round trips per task are counted the
same way (load - idle rate x duration) / N, per process, by what was sent (bench/redis_probe.py).
Valkey's CPU per task (INFO cpu) and the part of it spent inside scripts (INFO commandstats'
microseconds of EVALSHA, and of the commands the scripts ran) likewise; those microseconds are
wall-clock time in the command, CPU time only while the machine leaves Valkey a core.

    .venv/bin/python bench/redis_cost.py                   # 1,000 tasks; writes bench/results/redis_cost.json
    .venv/bin/python bench/redis_cost.py --tasks 20 --no-write   # a quick check (tests do this)
    .venv/bin/python bench/redis_cost.py --projects 30 --no-write  # the tasks spread over 30 projects
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import API_KEY, ROOT, SUBMIT_BODY, SUBMIT_PATH, python, spawn, stop, wait_for_line

PROBE = Path(__file__).resolve().parent / "redis_probe.py"
RESULTS = Path(__file__).resolve().parent / "results" / "redis_cost.json"
COMPLETED = ("{taskd}:metrics", "completed_tasks")  # taskd.keys.METRICS
# Commands of the measurement itself, not of the service: never counted.
OWN = {"config|resetstat", "info", "config"}


def _env(data_dir: Path, probe_dir: Path) -> dict[str, str]:
    return {
        "TASKD_DATA_DIR": str(data_dir),
        "TASKD_HTTP__HOST": "127.0.0.1",
        "TASKD_HTTP__PORT": "0",
        "TASKD_AUTH__API_KEYS": API_KEY,
        "TASKD_TASKS__MODULES": "taskd.tasks.diagnostics",
        "TASKD_LOGGING__LEVEL": "WARNING",
        # As in compare.py: no per-key limits (a load test is not a client to protect from).
        "TASKD_LIMITS__SUBMIT_PER_MINUTE": "0",
        "TASKD_LIMITS__STATUS_PER_MINUTE": "0",
        "TASKD_LIMITS__CONCURRENT_PER_PROJECT": "0",
        "TASKD_LIMITS__MAX_QUEUE_LENGTH": "0",
        "BENCH_REDIS_PROBE_DIR": str(probe_dir),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


async def commandstats(redis: Redis) -> tuple[dict[str, int], dict[str, int]]:
    """Calls and microseconds per command since the last RESETSTAT, by lower-case name (subcommands
    as `config|get`). A script's EVALSHA counts its whole run, the commands it ran included."""
    info = await redis.info("commandstats")
    ours = {
        name.removeprefix("cmdstat_"): stats
        for name, stats in info.items()
        if name.removeprefix("cmdstat_") not in OWN
    }
    return (
        {name: int(stats["calls"]) for name, stats in ours.items()},
        {name: int(stats["usec"]) for name, stats in ours.items()},
    )


async def cpu_seconds(redis: Redis) -> float:
    """The CPU time (user and system) the Valkey process has used since it started."""
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _valkey_time(
    load_cpu: float,
    idle_cpu: float,
    load_usec: dict[str, int],
    idle_usec: dict[str, int],
    idle_s: float,
    load_s: float,
    tasks: int,
) -> dict[str, float]:
    """Valkey's CPU µs per task, how much of it ran inside scripts (EVALSHA's own time, the commands
    it ran included) and how much the commands the scripts ran took themselves; the idle rate
    subtracted as for the commands. What is in scripts and not in their commands is the scripts'
    Lua and each call's way from Lua to the command and back (arguments, reply, propagation to the
    append-only file)."""

    def per_task(load: float, idle: float) -> float:
        return round((load - idle / idle_s * load_s) / tasks, 1)

    def commands(usec: dict[str, int]) -> int:
        return sum(value for name, value in usec.items() if name != "evalsha")

    return {
        "cpu_us_per_task": per_task(load_cpu * 1e6, idle_cpu * 1e6),
        "in_scripts_us_per_task": per_task(load_usec.get("evalsha", 0), idle_usec.get("evalsha", 0)),
        "script_commands_us_per_task": per_task(commands(load_usec), commands(idle_usec)),
    }


class Probes:
    """The round-trip counts of the probed processes, read by signalling them."""

    def __init__(self, directory: Path, pids: dict[str, int]) -> None:
        self.directory = directory
        self.pids = pids

    async def read(self) -> dict[str, dict[str, int]]:
        counts = {}
        for role, pid in self.pids.items():
            out = self.directory / f"{pid}.json"
            out.unlink(missing_ok=True)
            os.kill(pid, signal.SIGUSR2)
            deadline = time.monotonic() + 10
            while not out.exists():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {role} process did not write its round-trip counts")
                await asyncio.sleep(0.01)
            counts[role] = json.loads(out.read_text())
        return counts


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}


async def _completed(redis: Redis, polls: collections.Counter[str]) -> int:
    polls["hget"] += 1
    return int(await redis.hget(*COMPLETED) or 0)


async def _submit_all(base_url: str, tasks: int, clients: int, projects: int = 1) -> None:
    remaining = iter(range(tasks))
    # As bench/loadgen.py spreads them: the n-th task to `bench_project_<n mod projects>`.
    bodies = (
        [SUBMIT_BODY]
        if projects <= 1
        else [{**SUBMIT_BODY, "project_id": f"bench_project_{n}"} for n in range(projects)]
    )

    async def client(session: aiohttp.ClientSession) -> None:
        for n in remaining:
            async with session.post(base_url + SUBMIT_PATH, json=bodies[n % len(bodies)]) as response:
                if response.status != 200:
                    raise RuntimeError(f"submit refused: {response.status} {await response.text()}")

    async with aiohttp.ClientSession(headers={"X-API-Key": API_KEY}) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))


async def _wait_completed(redis: Redis, target: int, polls: collections.Counter[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (done := await _completed(redis, polls)) < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{done} of {target} tasks completed in {timeout:.0f} s")
        await asyncio.sleep(0.05)


def _per_task(
    load: dict[str, int], idle: dict[str, int], idle_s: float, load_s: float, own: dict[str, int], tasks: int
) -> dict[str, float]:
    """(load - own - idle rate x load duration) / tasks, by name.

    Names under 0.01 per task either way are left out: what the service's loops do in one window
    and not quite as often in the other (the subtraction's noise) or a connection's set-up.
    """
    names = set(load) | set(idle)
    out = {}
    for name in names:
        net = (load.get(name, 0) - own.get(name, 0) - idle.get(name, 0) / idle_s * load_s) / tasks
        if abs(net) >= 0.01:
            out[name] = round(net, 3)
    return dict(sorted(out.items(), key=lambda item: (-item[1], item[0])))


async def measure(tasks: int, clients: int, idle_s: float, warm_up: int, projects: int = 1) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, probe_dir = Path(tmp) / "data", Path(tmp) / "probes"
        probe_dir.mkdir()
        env = _env(data_dir, probe_dir)
        api = spawn([python(), str(PROBE), "serve", "--no-worker"], env)
        worker = None
        redis = None
        try:
            base_url = (await asyncio.to_thread(wait_for_line, api, r"listening on (http://\S+)")).group(1)
            from taskd.embedded import EmbeddedValkey

            url = EmbeddedValkey.running_url(data_dir)
            assert url, "taskd's embedded Valkey is not running"
            redis = Redis.from_url(url)
            worker = spawn([python(), str(PROBE), "worker"], env)
            probes = Probes(probe_dir, {"api": api.pid, "worker": worker.pid})
            polls: collections.Counter[str] = collections.Counter()

            # Warm-up: connections, scripts loaded, job processes started.
            await _submit_all(base_url, warm_up, 1)
            await _wait_completed(redis, warm_up, polls, 120)

            trips_before = await probes.read()
            await redis.config_resetstat()
            started, cpu_started = time.monotonic(), await cpu_seconds(redis)
            await asyncio.sleep(idle_s)
            idle_commands, idle_usec = await commandstats(redis)
            idle_cpu = await cpu_seconds(redis) - cpu_started
            trips_idle = await probes.read()
            idle_elapsed = time.monotonic() - started

            polls.clear()
            await redis.config_resetstat()
            started, cpu_started = time.monotonic(), await cpu_seconds(redis)
            await _submit_all(base_url, tasks, clients, projects)
            await _wait_completed(redis, warm_up + tasks, polls, 120 + tasks / 10)
            load_commands, load_usec = await commandstats(redis)
            load_cpu = await cpu_seconds(redis) - cpu_started
            load_elapsed = time.monotonic() - started
            trips_load = await probes.read()
        finally:
            if redis is not None:
                await redis.aclose()
            for proc in (worker, api):
                if proc is not None:
                    await asyncio.to_thread(stop, proc)

    commands = _per_task(load_commands, idle_commands, idle_elapsed, load_elapsed, dict(polls), tasks)
    trips = {
        role: _per_task(
            _diff(trips_load[role], trips_idle[role]),
            _diff(trips_idle[role], trips_before[role]),
            idle_elapsed,
            load_elapsed,
            {},
            tasks,
        )
        for role in ("api", "worker")
    }
    return {
        "tasks": tasks,
        "clients": clients,
        "projects": projects,
        "load_s": round(load_elapsed, 3),
        "idle_s": round(idle_elapsed, 3),
        "idle_commands_per_s": round(sum(idle_commands.values()) / idle_elapsed, 1),
        "commands_per_task": round(sum(commands.values()), 2),
        "commands": commands,
        "round_trips_per_task": round(sum(sum(by_role.values()) for by_role in trips.values()), 2),
        "round_trips": trips,
        "valkey": _valkey_time(load_cpu, idle_cpu, load_usec, idle_usec, idle_elapsed, load_elapsed, tasks),
    }


def table(result: dict[str, Any]) -> str:
    valkey = result["valkey"]
    lines = [
        f"Redis cost per no-op task, over {result['tasks']} tasks of {result['projects']} project(s) "
        f"({result['clients']} HTTP clients, "
        f"{result['load_s']:.1f} s; idle service: {result['idle_commands_per_s']} commands/s, subtracted)",
        "",
        f"commands per task: {result['commands_per_task']}",
        "| command | per task |",
        "|---|---:|",
        *(f"| {name} | {value:g} |" for name, value in result["commands"].items()),
        "",
        f"round trips per task: {result['round_trips_per_task']}",
        "| process | request | per task |",
        "|---|---|---:|",
        *(
            f"| {role} | {name} | {value:g} |"
            for role, by_name in result["round_trips"].items()
            for name, value in by_name.items()
        ),
        "",
        f"Valkey's CPU per task: {valkey['cpu_us_per_task']:g} µs; inside scripts "
        f"{valkey['in_scripts_us_per_task']:g} µs, of which the commands they ran "
        f"{valkey['script_commands_us_per_task']:g} µs",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=10, help="concurrent HTTP clients submitting")
    parser.add_argument(
        "--projects", type=int, default=1, help="spread the tasks over this many projects (default 1)"
    )
    parser.add_argument("--idle", type=float, default=3.0, help="seconds the idle service is measured")
    parser.add_argument("--warm-up", type=int, default=20, help="tasks run before measuring")
    parser.add_argument(
        "--json", type=Path, default=RESULTS, help=f"where to write the figures (default {RESULTS})"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    result = asyncio.run(measure(args.tasks, args.clients, args.idle, args.warm_up, args.projects))
    print(table(result))
    if not args.no_write:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
