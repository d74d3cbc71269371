"""Runs the `taskd` command with its Redis round trips counted: `python bench/redis_probe.py serve ...`.

bench/redis_cost.py starts the API and the worker through this wrapper. A round trip is one
request written to Redis and its replies read back: one call of redis-py's `execute_command` (a
single command, a script's EVALSHA, a blocking XREAD), or one pipeline or transaction sent as a
whole. They are counted in this process, by what was sent: the command's name, a script's name
(`script:<name>`, known from the `taskd.store.scripts.load` that registered it), or the names of a
pipeline's commands. Pub/sub reads are not requests and are not counted.

On SIGUSR2 the counts so far are written, as JSON, to `$BENCH_REDIS_PROBE_DIR/<pid>.json` (written
whole, then renamed); the benchmark reads them before and after what it measures.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from redis.asyncio.client import Pipeline, Redis

from taskd.store import scripts

COUNTS: collections.Counter[str] = collections.Counter()
_SCRIPT_NAMES: dict[str, str] = {}


def _label(args: tuple[Any, ...]) -> str:
    name = str(args[0]).upper() if args else "?"
    if name == "EVALSHA" and len(args) > 1:
        sha = args[1].decode() if isinstance(args[1], bytes) else str(args[1])
        return f"script:{_SCRIPT_NAMES.get(sha, sha[:8])}"
    return name


def _patch() -> None:
    load = scripts.load

    def counted_load(redis: Redis, name: str, package: str = scripts.STORE, **options: Any) -> scripts.Script:
        script = load(redis, name, package, **options)
        _SCRIPT_NAMES[script.registered.sha] = name
        return script

    scripts.load = counted_load  # type: ignore[assignment]  # the modules that load scripts call it late

    execute = Redis.execute_command

    async def counted_execute(self: Redis, *args: Any, **options: Any) -> Any:
        COUNTS[_label(args)] += 1
        return await execute(self, *args, **options)

    Redis.execute_command = counted_execute  # type: ignore[method-assign]

    # A pipeline queues its commands and sends them in one write: one round trip.
    for method in ("_execute_pipeline", "_execute_transaction"):
        original = getattr(Pipeline, method)

        async def counted_pipeline(
            self: Pipeline, connection: Any, commands: Any, raise_on_error: bool, _original: Any = original
        ) -> Any:
            names = sorted({_label(command[0]) for command in commands})
            kind = "transaction" if _original.__name__ == "_execute_transaction" else "pipeline"
            COUNTS[f"{kind}[{','.join(names)}]"] += 1
            return await _original(self, connection, commands, raise_on_error)

        setattr(Pipeline, method, counted_pipeline)

    # A pipeline's commands run at once after a WATCH (immediate mode) are single round trips.
    immediate = Pipeline.immediate_execute_command

    async def counted_immediate(self: Pipeline, *args: Any, **options: Any) -> Any:
        COUNTS[_label(args)] += 1
        return await immediate(self, *args, **options)

    Pipeline.immediate_execute_command = counted_immediate  # type: ignore[method-assign]


def _dump(*_: object) -> None:
    out = Path(os.environ["BENCH_REDIS_PROBE_DIR"]) / f"{os.getpid()}.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(COUNTS)))
    tmp.rename(out)


def main() -> int:
    _patch()
    signal.signal(signal.SIGUSR2, _dump)
    from taskd.cli import main as taskd_main

    return taskd_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
