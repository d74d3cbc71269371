"""What keeping live tasks' records costs Valkey (taskd.engine.keeper, store/lua/live.lua).

Fills an embedded Valkey with N queued tasks (their records, event streams and waiting-set
entries, written directly: the keeper reads nothing else), then runs P keepers, as P taskd
processes would (each its own client), for a few of the keeper's intervals, and reads from Valkey
itself what they cost: `INFO commandstats` (calls and microseconds, the commands the scripts ran
counted under their own names; a look reads each live record with one HMGET, so HMGETs / tasks
is how many looks ran) and `SLOWLOG` with every command over SLOW_US logged (how long each live.lua
call held Valkey; Valkey logs the commands a script runs too, each of a few µs, and with every
command logged they filled the log and pushed out all but the last look's calls). Wall-clock
throughput is not measured: the machine is shared.

    .venv/bin/python bench/keeper_cost.py --tasks 25000 --processes 1 2 4
    .venv/bin/python bench/keeper_cost.py --tasks 100000 --processes 1 --partitions 4
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taskd import keys
from taskd.embedded import EmbeddedValkey
from taskd.engine import keeper
from taskd.store import TaskStore

QUEUE = "default"
TTL = 24 * 3600
# Valkey's own commands of this measurement, never counted.
OWN = {"config|resetstat", "config|set", "info", "slowlog|get", "slowlog|reset", "config"}
# A live.lua call of 500 ids holds Valkey milliseconds; the commands it runs, microseconds each.
SLOW_US = 200


async def fill(redis: Redis, tasks: int, projects: int) -> None:
    """`tasks` queued tasks, each with under half the TTL left on nothing (a fresh submit's)."""
    for start in range(0, tasks, 2000):
        pipe = redis.pipeline(transaction=False)
        for n in range(start, min(start + 2000, tasks)):
            project = f"p{n % projects}"
            task_id = keys.new_task_id(project)
            partition = keys.task_partition(task_id)
            pipe.hset(
                keys.task(task_id), mapping={"status": "queued", "project_id": project, "dependents": "0"}
            )
            pipe.expire(keys.task(task_id), TTL)
            pipe.xadd(keys.task_events(task_id), {"event": "{}"})
            pipe.expire(keys.task_events(task_id), TTL)
            pipe.zadd(keys.waiting(QUEUE, partition), {keys.job_id(task_id, 1): n})
        await pipe.execute()


async def measure(url: str, tasks: int, processes: int, intervals: float) -> dict[str, Any]:
    admin = Redis.from_url(url)
    clients = [Redis.from_url(url) for _ in range(processes)]
    await admin.config_set("slowlog-log-slower-than", SLOW_US)
    await admin.config_set("slowlog-max-len", 100000)
    # Each run starts as a deployment whose processes all start at once: with the last run's turn
    # resting, its first look came up to 13/16 of an interval late, and a run looked fewer times
    # than the same run made first.
    keepers = [
        keeper.LiveRecords(TaskStore(client, TTL), [QUEUE], f"process-{n}")
        for n, client in enumerate(clients)
    ]
    await admin.delete(*(keepers[0].turn_key(p) for p in keys.partitions()))
    live_sha = TaskStore(admin, TTL)._live.registered.sha.encode()
    await admin.slowlog_reset()
    await admin.config_resetstat()
    loops = [asyncio.create_task(each.run()) for each in keepers]
    await asyncio.sleep(keeper.KEEP_EVERY_MAX_S * intervals)
    for loop in loops:
        loop.cancel()
    await asyncio.gather(*loops, return_exceptions=True)
    stats = await admin.info("commandstats")
    slow = await admin.slowlog_get(100000)
    for client in clients:
        await client.aclose()
    await admin.aclose()
    commands = {
        name.removeprefix("cmdstat_"): (int(row["calls"]), int(row["usec"]))
        for name, row in stats.items()
        if name.removeprefix("cmdstat_") not in OWN
    }
    # live.lua's calls (turn.lua's, as many, are counted outside them).
    scripts = [
        entry["duration"] for entry in slow if entry["command"].split(b" ")[:2] == [b"EVALSHA", live_sha]
    ]
    evalsha = commands.get("evalsha", (0, 0))
    return {
        "looks": commands.get("hmget", (0, 0))[0] / tasks,
        "calls_by_command": commands,
        "commands": sum(calls for calls, _ in commands.values()),
        "script_calls": len(scripts),
        "script_usec": sum(scripts),
        # Outside live.lua: the waiting sets' ZSCAN pages, and the turn's script.
        "outside_usec": commands.get("zscan", (0, 0))[1] + evalsha[1] - sum(scripts),
        "script_call_max_usec": max(scripts, default=0),
        "script_call_p50_usec": sorted(scripts)[len(scripts) // 2] if scripts else 0,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=25000)
    parser.add_argument("--projects", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--interval", type=float, default=6.0, help="the keeper's interval here, seconds")
    parser.add_argument("--intervals", type=float, default=3.0, help="how many intervals each run lasts")
    args = parser.parse_args()
    keys.configure_partitions(args.partitions)
    keeper.KEEP_EVERY_MAX_S = args.interval
    with tempfile.TemporaryDirectory() as data:
        server = EmbeddedValkey(Path(data))
        url = await server.start()
        try:
            redis = Redis.from_url(url)
            await fill(redis, args.tasks, args.projects)
            await redis.aclose()
            for processes in args.processes:
                result = await measure(url, args.tasks, processes, args.intervals)
                per_interval = {
                    name: result[name] / args.intervals
                    for name in ("commands", "script_calls", "script_usec")
                }
                looks = result["looks"]
                print(
                    f"tasks={args.tasks} partitions={args.partitions} processes={processes}: "
                    f"{looks:.1f} looks in {args.intervals:g} intervals; per look "
                    f"{result['commands'] / looks:.0f} commands, {result['script_usec'] / looks / 1000:.1f} ms "
                    f"in scripts ({result['script_usec'] / looks / args.tasks:.2f} µs per live task); "
                    f"per interval {per_interval['commands']:.0f} commands, "
                    f"{per_interval['script_calls']:.1f} script calls, "
                    f"{per_interval['script_usec'] / 1000:.1f} ms in scripts "
                    f"({per_interval['script_usec'] / args.tasks:.2f} µs per live task), "
                    f"{result['outside_usec'] / args.intervals / 1000:.1f} ms outside; "
                    f"one call held Valkey p50 {result['script_call_p50_usec'] / 1000:.2f} ms, "
                    f"max {result['script_call_max_usec'] / 1000:.2f} ms; "
                    f"by command {sorted(result['calls_by_command'].items(), key=lambda kv: -kv[1][0])[:6]}",
                    flush=True,
                )
        finally:
            await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
