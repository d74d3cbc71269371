"""The `taskd` command: `serve` (API + workers) and `worker` (workers only)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from taskd.config import ConfigError, load_config
from taskd.service import run

DESCRIPTION = """\
taskd runs GPU-heavy and long-running work submitted over HTTP.

  taskd serve    the HTTP API and the workers of every queue, in one process;
                 with no redis.url it starts its own Valkey in the data dir
  taskd worker   workers only, joining the Redis of a `taskd serve` (redis.url,
                 or the embedded server of the same data dir on this host)

Config: --config FILE, then $TASKD_CONFIG, ./taskd.toml, /etc/taskd/taskd.toml;
every key can be set as TASKD_<SECTION>__<KEY>, e.g. TASKD_HTTP__PORT=8001.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskd", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="path of taskd.toml")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP API and the workers")
    serve.add_argument("--no-worker", action="store_true", help="run the API only (an API node)")
    serve.add_argument("--queues", help="comma-separated queues to work on (default: all)")

    worker = commands.add_parser("worker", help="run workers only, against the same Redis as a serve")
    worker.add_argument("--queues", help="comma-separated queues to work on, e.g. gpu_heavy,gpu_medium")
    return parser


def _queues(raw: str | None) -> list[str] | None:
    return [name.strip() for name in raw.split(",") if name.strip()] if raw else None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(args.config)
        if args.command == "serve":
            asyncio.run(run(config, http=True, workers=not args.no_worker, queues=_queues(args.queues)))
        else:
            asyncio.run(run(config, http=False, workers=True, queues=_queues(args.queues)))
    except ConfigError as exc:
        print(f"taskd: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
