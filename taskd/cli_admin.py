"""The operator commands of `taskd`: workers, queues, purge, retry-failed, config show|check.

`workers`, `queues`, `purge` and `retry-failed` read and change the deployment's Redis directly,
as `taskd worker` does (taskd.admin says why), so they need the `server` extra; `config show` and
`config check` read the config only. The config is `taskd --config FILE`, else the usual search
(docs/configuration.md).

Exit codes: 0 done; 1 `purge` not confirmed, or `retry-failed` had a task refused; 2 usage or
configuration error (`config check`: the config is not valid); 3 Redis could not be reached or
refused us (down, wrong address or password, not running for this data dir).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs
import orjson

from taskd import model
from taskd.config import Config, ConfigError, find_config_file, load_config
from taskd.logs import SECRET_FIELD, mask_url, names_settings
from taskd.model import iso
from taskd.printable import printable, printable_json

if TYPE_CHECKING:
    from taskd.admin import Operator

EXIT_OK, EXIT_NOT_DONE, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
COMMANDS = frozenset({"workers", "queues", "purge", "retry-failed", "config"})
MASK = "********"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

OperatorCommand = Callable[["Operator", argparse.Namespace], Awaitable[int]]


class UsageError(Exception):
    """Bad arguments: exit code 2."""


def _print_json(body: Any) -> None:
    print(printable_json(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()))


# What comes from Redis (hosts, worker and task ids, queue names, errors) is shown through
# `printable`: whoever can write there must not reach the operator's terminal.
def _note(text: str) -> None:
    print(printable(text, lines=True), file=sys.stderr)


def _ago(at: float | None, now: float) -> str:
    if at is None:
        return "-"
    seconds = max(0.0, now - at)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _table(rows: list[list[str]]) -> None:
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


async def cmd_workers(ops: Operator, args: argparse.Namespace) -> int:
    """The live workers: host, pid, queues, running tasks, last heartbeat."""
    views, now = await ops.workers(), model.now()
    if args.json:
        _print_json(
            {
                "workers": [
                    {
                        **attrs.asdict(view.info),
                        "started_at": iso(view.info.started_at),
                        "last_heartbeat": iso(view.last_beat),
                        "last_heartbeat_age": round(now - view.last_beat, 3),
                        "tasks": [
                            {**attrs.asdict(task), "started_at": iso(task.started_at)} for task in view.tasks
                        ],
                    }
                    for view in views
                ]
            }
        )
        return EXIT_OK
    if not views:
        _note("no live workers (no heartbeat within worker.heartbeat_ttl)")
        return EXIT_OK
    rows = [["HOST", "PID", "QUEUES", "RUNNING", "RSS", "UP", "LAST HEARTBEAT", "WORKER"]]
    for view in views:
        info = view.info
        rows.append(
            [
                info.host,
                str(info.pid),
                ",".join(info.queues),
                str(info.running),
                f"{info.rss_bytes / 2**20:.0f} MiB",
                _ago(info.started_at, now),
                _ago(view.last_beat, now) + " ago",
                info.worker_id,
            ]
        )
    _table(rows)
    for view in views:
        for task in view.tasks:
            print(
                printable(
                    f"  {view.info.host}:{view.info.pid} runs {task.task_id} {task.task_type} "
                    f"(project {task.project_id}, queue {task.queue}) for {_ago(task.started_at, now)}"
                )
            )
    return EXIT_OK


async def cmd_queues(ops: Operator, args: argparse.Namespace) -> int:
    """Each queue: tasks waiting, running, the live workers serving it, and how long the oldest
    waiting task has waited."""
    states, serving, now = await ops.queue_states(), await ops.serving(), model.now()
    if args.json:
        _print_json(
            {
                "queues": [
                    {
                        "queue": state.name,
                        "waiting": state.waiting,
                        "running": state.running,
                        "workers": serving.get(state.name, 0),
                        "oldest_waiting_since": iso(state.oldest_waiting_since),
                        "oldest_waiting_seconds": (
                            None
                            if state.oldest_waiting_since is None
                            else round(now - state.oldest_waiting_since, 3)
                        ),
                    }
                    for state in states
                ]
            }
        )
        return EXIT_OK
    rows = [["QUEUE", "WAITING", "RUNNING", "WORKERS", "OLDEST WAITING"]]
    rows += [
        [
            state.name,
            str(state.waiting),
            str(state.running),
            str(serving.get(state.name, 0)),
            _ago(state.oldest_waiting_since, now),
        ]
        for state in states
    ]
    _table(rows)
    unserved = [state.name for state in states if state.waiting and not serving.get(state.name)]
    if unserved:
        # On stderr, as every note: the table stays what a script reads.
        _note(f"no live worker serves {', '.join(unserved)}: tasks waiting there do not start")
    return EXIT_OK


def _confirmed(question: str) -> bool:
    """Ask on stderr, read one line from stdin; only y or yes is a yes (end of input is a no)."""
    print(question + " [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


async def cmd_purge(ops: Operator, args: argparse.Namespace) -> int:
    """Cancel every task waiting on a queue, after a confirmation (or --yes)."""
    # A queue no config names any more is purged as well (docs/guarantees.md), its tasks scheduled
    # for later included: with only those it has none waiting or running, and was refused.
    known = await ops.queues_known()
    if args.queue not in known:
        raise UsageError(f"unknown queue {args.queue!r}; known: {', '.join(known)}")
    count = len(await ops.waiting_on(args.queue))
    if count == 0:
        _note(f"queue {printable(args.queue)}: nothing queued")
        cancelled: list[str] = []
    elif not args.yes and not _confirmed(
        f"Cancel the {count} queued task(s) of queue {printable(args.queue)}? Running tasks are left alone."
    ):
        _note("taskd: not purged")
        return EXIT_NOT_DONE
    else:
        cancelled = await ops.purge(args.queue)
        _note(
            f"queue {printable(args.queue)}: {len(cancelled)} task(s) cancelled as purged; their webhooks are queued"
        )
    if args.json:
        _print_json({"queue": args.queue, "cancelled": cancelled})
    else:
        for task_id in cancelled:
            print(printable(task_id))
    return EXIT_OK


def parse_since(raw: str, now: float) -> float:
    """`--since`: a duration back from now (90s, 15m, 2h, 3d, 1w) or an ISO 8601 time with its zone."""
    match = _DURATION.match(raw.strip())
    if match:
        return now - float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        when = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{raw!r}: expected a duration (90s, 15m, 2h, 3d, 1w) or a time like 2026-01-15T10:30:00Z"
        ) from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{raw!r}: give the time zone (Z or +hh:mm)")
    return when.timestamp()


def _since(raw: str) -> str:
    # Only checked here: argparse runs before the operator follows Redis's clock, and a duration
    # counted back from this host's clock would miss (or take in) failures by the hosts' difference.
    parse_since(raw, 0.0)
    return raw


async def cmd_retry_failed(ops: Operator, args: argparse.Namespace) -> int:
    """Retry a project's failed tasks (those that failed since --since); one line per task."""
    since = None if args.since is None else parse_since(args.since, model.now())
    outcomes = await ops.retry_failed(args.project, since)
    if args.json:
        _print_json({"project_id": args.project, "tasks": [attrs.asdict(outcome) for outcome in outcomes]})
    for outcome in outcomes:
        if outcome.refused is not None:
            # One line: the refusal may quote the record (its task type), which is Redis's.
            _note(printable(f"{outcome.task_id}: not retried: {outcome.refused}"))
        elif not args.json:
            again = " (retried before: the same new task)" if outcome.replayed else ""
            print(printable(f"{outcome.task_id} -> {outcome.new_task_id}{again}"))
    refused = sum(outcome.refused is not None for outcome in outcomes)
    before = sum(outcome.refused is None and outcome.replayed for outcome in outcomes)
    retried = len(outcomes) - refused - before
    _note(f"project {args.project}: {retried} retried, {before} retried before, {refused} refused")
    return EXIT_NOT_DONE if refused else EXIT_OK


def masked(value: Any, secret: bool = False, *, settings: bool = True) -> Any:
    """A config tree as plain data with every secret replaced by MASK: the fields taskd's logs
    mask (named like a key, secret, password or token, and such entries of a table of settings:
    not of one keyed by task type, logs.names_settings), the password of every URL and its query
    values named like a credential (?api-key=…)."""
    if attrs.has(type(value)):
        return {
            field.name: masked(
                getattr(value, field.name),
                secret or bool(SECRET_FIELD.search(field.name)),
                settings=names_settings(field),
            )
            for field in attrs.fields(type(value))
        }
    if isinstance(value, dict):
        return {
            name: masked(item, secret or (settings and bool(SECRET_FIELD.search(str(name)))))
            for name, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [masked(item, secret) for item in value]
    if isinstance(value, str) and value:
        if secret:
            return MASK
        if "://" in value:
            return mask_url(value, MASK)
    return value


def cmd_config_show(config: Config, args: argparse.Namespace) -> int:
    """The effective config (file, environment, defaults) as JSON, secrets masked."""
    source = find_config_file(args.config, os.environ)
    _note(f"config: {source or 'no file: defaults'}, with the TASKD_* environment")
    _print_json(masked(config))
    return EXIT_OK


def cmd_config_check(config: Config, args: argparse.Namespace) -> int:
    """Load the config and the task types it names and check their queues; exit 0 or 2."""
    try:
        from taskd.service import served_queues
        from taskd.tasks.registry import check_names, default_registry
    except ModuleNotFoundError as exc:
        raise UsageError(f"{exc.name} is not installed: pip install 'taskd[server]'") from None
    try:
        registry = default_registry(config.tasks)
        check_names(config, registry)
        served_queues(config, registry, None)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    source = find_config_file(args.config, os.environ)
    for warning in [
        *config.webhooks.idle_caps(),
        *config.auth.shared_webhook_secrets(config.webhooks),
    ]:
        print(f"warning: {warning}")
    print(f"config OK: {source or 'no file: defaults'}, with the TASKD_* environment")
    return EXIT_OK


def add_commands(commands: Any) -> None:
    """Register the operator commands on the `taskd` sub-command parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON instead of text")

    workers = commands.add_parser(
        "workers", parents=[common], help="live workers: hosts, processes, queues, running tasks, heartbeats"
    )
    workers.set_defaults(operator_command=cmd_workers)

    queues = commands.add_parser(
        "queues", parents=[common], help="each queue: waiting, running, oldest waiting"
    )
    queues.set_defaults(operator_command=cmd_queues)

    purge = commands.add_parser(
        "purge", parents=[common], help="cancel every task waiting on a queue (asks first)"
    )
    purge.add_argument("queue", help="the queue, e.g. gpu_heavy")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.set_defaults(operator_command=cmd_purge)

    retry = commands.add_parser("retry-failed", parents=[common], help="retry a project's failed tasks")
    retry.add_argument("--project", required=True, help="project id")
    retry.add_argument(
        "--since",
        type=_since,
        metavar="DURATION|TIME",
        help="only tasks that failed since: 2h, 3d, or 2026-01-15T10:30:00Z",
    )
    retry.set_defaults(operator_command=cmd_retry_failed)

    config = commands.add_parser("config", help="show or check the effective config")
    actions = config.add_subparsers(dest="config_action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="the effective config as JSON, secrets masked")
    show.set_defaults(config_command=cmd_config_show)
    check = actions.add_parser("check", help="validate the config and its task types; exit 0 or 2")
    check.set_defaults(config_command=cmd_config_check)


def _where(url: str) -> str:
    """A Redis URL fit to print: its password masked, and the query options that carry one
    (`?password=`, a Sentinel URL's `?sentinel_password=`)."""
    return mask_url(url, MASK)


def run(args: argparse.Namespace) -> int:
    """Run one operator command; its exit code. Every failure is one line on stderr."""
    try:
        config = load_config(args.config)
        if getattr(args, "config_command", None) is not None:
            code: int = args.config_command(config, args)
            return code
        return _run_operator(config, args)
    except (UsageError, ConfigError) as exc:
        _note(f"taskd: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _run_operator(config: Config, args: argparse.Namespace) -> int:
    try:
        # Here, not at the top: the client commands run on the base install, without these.
        from redis.exceptions import RedisError

        from taskd.admin import NoRedis, operator, redis_url
        from taskd.redis_conn import tls_hint
    except ModuleNotFoundError as exc:
        raise UsageError(f"{exc.name} is not installed: pip install 'taskd[server]'") from None
    try:
        url = redis_url(config)
    except NoRedis as exc:
        _note(f"taskd: {exc}")
        return EXIT_UNREACHABLE

    async def main() -> int:
        async with contextlib.AsyncExitStack() as stack:
            try:
                ops = await stack.enter_async_context(operator(config, url))
            except ValueError as exc:
                # redis-py's refusal of an option of the URL it reads that load_config does not
                # check: a usage error, like any other bad config.
                raise UsageError(f"redis.url {_where(url)}: {exc}") from None
            code: int = await args.operator_command(ops, args)
            return code

    try:
        return asyncio.run(main())
    except BrokenPipeError:
        # stdout's reader went away (`taskd queues | head -1`), not Redis (redis-py raises its own
        # ConnectionError for its sockets): cli.main ends quietly with the SIGPIPE status. Taken for
        # Redis, a `purge --yes | head` that had cancelled its tasks said Redis had failed.
        raise
    except (RedisError, OSError) as exc:
        # Down, unreachable, a wrong password (WRONGPASS/NOAUTH), a timeout: one line, no traceback.
        _note(f"taskd: Redis at {_where(url)}: {type(exc).__name__}: {exc}{tls_hint(url, exc)}")
    return EXIT_UNREACHABLE
