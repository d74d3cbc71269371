"""The client commands of `taskd`: submit, run, status, wait, cancel, retry, tasks, health.

They talk to a running taskd over HTTP with `taskd.client.TaskClient`. The server is `--url`,
else `$TASKD_URL`, else the `http.host`/`http.port` of the config (http://127.0.0.1:8001 by
default). The key is `--api-key`, else `$TASKD_API_KEY`, else the first `auth.api_keys` of the
config, else the key a local `taskd serve` made in `<data_dir>/api_key`.

Exit codes: 0 ok; 1 the task (for `run`: any task) failed or was cancelled (or `health` is not
healthy); 2 usage or configuration error (a bad pipeline file too); 3 HTTP or API error (the error
body is printed); 4 `--timeout` ran out.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import orjson
import yarl

from taskd import wide_ints
from taskd.apikey import KEY_FILE
from taskd.config import ConfigError, load_config
from taskd.model import TaskStatus
from taskd.printable import printable, printable_json

if TYPE_CHECKING:
    from taskd.client import Task, TaskClient, TaskEvent

EXIT_OK, EXIT_TASK_FAILED, EXIT_USAGE, EXIT_API_ERROR, EXIT_TIMEOUT = 0, 1, 2, 3, 4
BAR_WIDTH = 30
# Seconds the status read after a `--timeout` that ran out may take (see _await_end).
LAST_LOOK_TIMEOUT = 2.0

Command = Callable[["TaskClient", argparse.Namespace], Awaitable[int]]


class UsageError(Exception):
    """Bad arguments or configuration: exit code 2."""


def _print_json(body: Any, out: TextIO | None = None) -> None:
    # A result or an error is the server's (and a caller's) text: printable_json writes out what
    # orjson leaves for a terminal to act on (C1 controls, bidirectional overrides).
    print(printable_json(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()), file=out or sys.stdout)


def _note(text: str) -> None:
    print(printable(text, lines=True), file=sys.stderr)


def _read_data(raw: str) -> dict[str, Any]:
    """`--data`: JSON text, `@file.json`, or `@-` for standard input."""
    source = "--data"
    text: str | bytes = raw
    if raw.startswith("@"):
        source = raw[1:]
        try:
            # Bytes, as they are: JSON's parser says what is not UTF-8, in the one error below.
            text = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {source}: {exc.strerror}") from None
    try:
        # orjson reads an integer past 64 bits as the nearest float, which would be sent changed.
        data = wide_ints.loads(text)
    except wide_ints.WideInteger as exc:
        raise UsageError(f"{source}: {exc}") from None
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{source} must be a JSON object")
    _check_sendable(data, source)
    return data


def _check_sendable(value: Any, source: str) -> None:
    """Refuse what the client could not encode as JSON (past orjson's 254 levels of nesting, an
    integer past 64 bits), in one line, before anything is sent: else a traceback and exit 1."""
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise UsageError(f"{source} cannot be sent as JSON: {exc}") from None


def _seconds(value: float) -> str:
    """A number of seconds as it was given: `1` for 1.0, every digit of 1.0000001 (`:g` keeps six)."""
    return str(int(value)) if value.is_integer() else str(value)


def _fraction(progress: float) -> float:
    """`progress` as the 0..1 a bar and a percentage can show: a server may send 1e9, -5 or inf."""
    return min(max(progress, 0.0), 1.0) if math.isfinite(progress) else 0.0


class ProgressView:
    """Shows a task's events: a redrawn bar on a terminal, one line per change otherwise."""

    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self.last: tuple[Any, ...] | None = None
        self.drawn = False

    def __call__(self, event: TaskEvent) -> None:
        # Clamped first: "#" * round(1e9 * BAR_WIDTH) would be a 30 GB string.
        progress = _fraction(event.progress)
        state = (event.status, round(progress, 3), event.current_step)
        if state == self.last:
            return
        self.last = state
        percent = f"{progress * 100:3.0f}%"
        step = printable(event.current_step or "")
        if self.tty:
            filled = round(progress * BAR_WIDTH)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            self.out.write(f"\r\x1b[2K[{bar}] {percent} {event.status.value:<10} {step}")
            self.drawn = True
        else:
            self.out.write(f"{event.status.value} {percent} {step}".rstrip() + "\n")
        self.out.flush()

    def finish(self) -> None:
        """End the bar's line."""
        if self.drawn:
            self.out.write("\n")
            self.out.flush()
            self.drawn = False


async def _await_end(
    client: TaskClient, task_id: str, timeout: float | None, json: bool, given: float | None = None
) -> Task | None:
    """Follow a task to its end, its progress on stderr; None when `timeout` ran out first.

    `given`: the --timeout to name when it runs out, where `timeout` is what was left of it (a
    pipeline's, spent in part on its earlier steps)."""
    view = ProgressView(sys.stderr, sys.stderr.isatty()) if not json else None
    try:
        return await client.wait(task_id, timeout=timeout, on_event=view, raise_on_failure=False)
    except TimeoutError:
        # The time may have run out before the first answer, not before the task's end (`--timeout
        # 0`, or a pipeline's deadline spent on an earlier step while this one ended): one read says.
        # A short one: a server that stopped answering may be why the time ran out, and the client's
        # own timeout (60 s) would keep `--timeout` waiting that much longer.
        from taskd.client import TaskdConnectionError

        try:
            async with asyncio.timeout(LAST_LOOK_TIMEOUT):
                task = await client.status(task_id)
        except (TimeoutError, TaskdConnectionError):
            task = None
        if task is not None and task.is_terminal:
            return task
        _note(f"taskd: task {printable(task_id)} did not end within {timeout if given is None else given} s")
        return None
    finally:
        if view is not None:
            view.finish()


def _note_unfinished(task: Task) -> None:
    if task.status is TaskStatus.FAILED:
        # The error is the task's text: its line breaks are written out too (only a traceback keeps them).
        _note(f"task {printable(task.task_id)} failed: {printable(task.error)}")
    elif task.status is TaskStatus.CANCELLED:
        # A cancel by a caller has no error; one by taskd says why ("Dependency '…' failed", a purge).
        why = f": {printable(task.error)}" if task.error else ""
        _note(f"task {printable(task.task_id)} was cancelled (it was {printable(task.previous_state)}){why}")


def _note_going_on(task_ids: list[str], why: str = "interrupted") -> None:
    """Ctrl-C (or a pipeline's --timeout) while following: the tasks go on, and with --json their ids
    were never printed."""
    shown = " ".join(printable(task_id) for task_id in task_ids)
    _note(f"taskd: {why}; the tasks go on (`taskd cancel ID` stops one): {shown}")


async def _follow(client: TaskClient, task_id: str, args: argparse.Namespace) -> int:
    try:
        task = await _await_end(client, task_id, args.timeout, args.json)
    except asyncio.CancelledError:  # asyncio.run's answer to Ctrl-C
        _note_going_on([task_id])
        raise
    if task is None:
        return EXIT_TIMEOUT
    if args.json:
        _print_json(task.raw)
    elif task.status is TaskStatus.COMPLETED:
        _print_json(task.result)
    else:
        _note_unfinished(task)
    return EXIT_OK if task.status is TaskStatus.COMPLETED else EXIT_TASK_FAILED


def _set_ref(data: dict[str, Any], field: str, ref: str) -> None:
    """Put {"$ref": ref} at `field`, a top-level key or a dotted path whose parents are objects."""
    *parents, last = field.split(".")
    target = data
    for name in parents:
        child = target.setdefault(name, {})
        if not isinstance(child, dict):
            raise UsageError(f"--ref {field}: {name} is not an object in --data")
        target = child
    target[last] = {"$ref": ref}


def _apply_refs(data: dict[str, Any], refs: list[str], after: list[str]) -> None:
    """`--ref FIELD=ID#/POINTER`; the server resolves a $ref only to a dependency, so ID must be in --after."""
    for raw in refs:
        field, _, ref = raw.partition("=")
        task_id, hash_sign, _pointer = ref.partition("#")
        if not field or not task_id or not hash_sign:
            raise UsageError(f"--ref {raw}: expected FIELD=TASK_ID#/POINTER")
        if task_id not in after:
            raise UsageError(f"--ref {raw}: {task_id} is not one of --after")
        _set_ref(data, field, ref)


async def cmd_submit(client: TaskClient, args: argparse.Namespace) -> int:
    """Submit a task; print its id (or the answer with --json); follow it with --wait."""
    data = _read_data(args.data)
    if args.idempotency_key is not None and not args.idempotency_key.isprintable():
        # A header cannot carry it: aiohttp would refuse it with a ValueError and a traceback.
        raise UsageError("--idempotency-key: it holds a line break or another control character")
    _apply_refs(data, args.ref, args.after)
    metadata = _read_data(args.metadata) if args.metadata else None
    submitted = await client.submit(
        args.project,
        args.type,
        data,
        priority=args.priority,
        callback_url=args.callback,
        metadata=metadata,
        keep_for=args.keep_for,
        idempotency_key=args.idempotency_key,
        depends_on=args.after or None,
        run_at=args.run_at,
        delay_seconds=args.delay,
        webhook_events=args.webhook_events.split(",") if args.webhook_events else None,
    )
    if args.json and not args.wait:
        _print_json(submitted.raw)
    elif not args.json:
        print(printable(submitted.task_id), flush=True)
        _note(f"queued: position {submitted.queue_position}, estimated {submitted.estimated_duration} s")
    if args.wait:
        return await _follow(client, submitted.task_id, args)
    return EXIT_OK


# What a pipeline file's [[task]] table may hold.
PIPELINE_KEYS = ("name", "project", "type", "data", "after", "priority", "callback")


class Pipeline:
    """A pipeline file's `[[task]]` tables as one batch: step names become "@<index>"."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            # utf-8-sig: the byte order mark some editors begin a file with is not TOML's to read.
            document = tomllib.loads(Path(path).read_bytes().decode("utf-8-sig"))
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{path} is not valid TOML: {exc}") from None
        except RecursionError:
            # tomllib parses nested arrays and inline tables recursively, with no limit of its own.
            raise UsageError(f"{path} is not valid TOML: nested too deeply") from None
        steps = document.get("task")
        if not isinstance(steps, list) or not steps:
            raise UsageError(f"{path}: no [[task]] tables")
        self.names: list[str] = []
        for index, step in enumerate(steps):
            if not isinstance(step, dict):
                raise self._error(index, "must be a table")
            name = step.get("name", str(index))
            if "name" not in step and name in self.names:
                # Its index stands for its name, and an earlier task is named so: `after` and `ref`
                # could not tell the two apart.
                raise self._error(
                    index, f"it has no name, and its index {name!r} is task {self.names.index(name)}'s name"
                )
            if not isinstance(name, str) or name in self.names:
                raise self._error(index, "name must be a string no other task has")
            self.names.append(name)
        self.tasks = [self._item(index, step) for index, step in enumerate(steps)]
        for index, task in enumerate(self.tasks):
            _check_sendable(task, f"{path}: task {index}")

    def _error(self, index: int, problem: str) -> UsageError:
        return UsageError(f"{self.path}: task {index}: {problem}")

    def _index(self, index: int, step: object) -> int:
        """An earlier step, named by its name or its index (the server reads only earlier ones)."""
        if isinstance(step, str) and step in self.names[:index]:
            return self.names.index(step)
        # ASCII digits only: str.isdigit() is true of "²" too, which int() refuses; and, leading
        # zeros aside ("00" is 0 at any step), no more of them than `index` has: past 4,300 int()
        # raises ValueError (a traceback), and any such number is not an earlier task anyway.
        if isinstance(step, str) and step.isascii() and step.isdigit():
            digits = step.lstrip("0") or "0"
            if len(digits) <= len(str(index)):
                step = int(digits)
        if isinstance(step, int) and not isinstance(step, bool) and 0 <= step < index:
            return step
        raise self._error(index, f"{step!r} is not an earlier task")

    def _item(self, index: int, step: dict[str, Any]) -> dict[str, Any]:
        # A key taskd does not read (the API's `depends_on`, a typo of `after`) would be dropped in
        # silence, and the task sent without the order or data its author meant.
        unknown = [key for key in step if key not in PIPELINE_KEYS]
        if unknown:
            raise self._error(index, f"unknown key {unknown[0]!r} (a task has {', '.join(PIPELINE_KEYS)})")
        for key in ("project", "type"):
            if not isinstance(step.get(key), str):
                raise self._error(index, f"{key} must be a string")
        after = step.get("after", [])
        if not isinstance(after, list):
            raise self._error(index, "after must be a list of task names or indexes")
        depends_on = [self._index(index, earlier) for earlier in after]
        data = step.get("data", {})
        if not isinstance(data, dict):
            raise self._error(index, "data must be a table")
        item: dict[str, Any] = {
            "project_id": step["project"],
            "task_type": step["type"],
            "task_data": self._refs(index, data, depends_on),
        }
        if depends_on:
            item["depends_on"] = [f"@{earlier}" for earlier in dict.fromkeys(depends_on)]
        if "priority" in step:
            item["priority"] = step["priority"]
        if "callback" in step:
            item["callback_url"] = step["callback"]
        return item

    def _refs(self, index: int, value: Any, depends_on: list[int]) -> Any:
        """`{ref = "name#/pointer"}` → {"$ref": "@<index>#/pointer"}; its task becomes a dependency,
        as the server resolves a $ref only to one."""
        if isinstance(value, dict) and set(value) == {"ref"} and isinstance(value["ref"], str):
            ref = value["ref"]
            # A name may hold "#" itself ("scene#2"): the longest earlier name the ref begins with,
            # followed by "#", is the task; else the ref's first "#" ends the name (an index).
            begun = [name for name in self.names[:index] if ref.startswith(name + "#")]
            # Beside "a", a task named "a#/b" makes "a#/b#/c" read as either, with a pointer after
            # it (one may hold "#"): refused, rather than one of them taken in silence.
            readings = [name for name in begun if ref[len(name) + 1 :][:1] in ("", "/")]
            if len(readings) > 1:
                raise self._error(
                    index, f"ref {ref!r} could read task {readings[0]!r} or task {readings[1]!r}: rename one"
                )
            named = max(begun, key=len, default=None)
            if named is None:
                name, hash_sign, pointer = ref.partition("#")
            else:
                name, hash_sign, pointer = named, "#", ref[len(named) + 1 :]
            if not hash_sign:
                raise self._error(index, f"ref {ref!r} is not name#/pointer")
            try:
                earlier = self._index(index, name)
            except UsageError:
                # Not "'scene' is not an earlier task" of "scene#2#/text" when the task named "scene#2"
                # is this one or a later one: the name the author wrote, whole.
                written = max(
                    (later for later in self.names[index:] if ref.startswith(later + "#")),
                    key=len,
                    default=None,
                )
                if written is None:
                    raise
                raise self._error(index, f"{written!r} is not an earlier task") from None
            depends_on.append(earlier)
            return {"$ref": f"@{earlier}#{pointer}"}
        if isinstance(value, dict):
            return {key: self._refs(index, item, depends_on) for key, item in value.items()}
        if isinstance(value, list):
            return [self._refs(index, item, depends_on) for item in value]
        if isinstance(value, float) and not math.isfinite(value):
            # TOML has inf and nan; JSON has neither (they would be sent as null).
            raise self._error(index, f"data holds {value}, which JSON cannot carry")
        return value


async def cmd_run(client: TaskClient, args: argparse.Namespace) -> int:
    """Submit a pipeline file as one batch; print the task ids; follow every task to its end."""
    pipeline = Pipeline(args.file)
    submitted = await client.submit_batch(pipeline.tasks)
    if args.json and args.no_wait:
        _print_json({"tasks": [answer.raw for answer in submitted]})
    elif not args.json:
        for name, answer in zip(pipeline.names, submitted, strict=True):
            print(printable(answer.task_id), flush=True)
            _note(f"{printable(name)}: {printable(answer.task_id)}")
    if args.no_wait:
        return EXIT_OK
    # --timeout bounds the whole pipeline: the tasks are followed one at a time in the file's order
    # (a later step has mostly ended by the time it is reached), all against one deadline.
    deadline = None if args.timeout is None else asyncio.get_running_loop().time() + args.timeout
    ended: list[Task] = []
    for index, (name, answer) in enumerate(zip(pipeline.names, submitted, strict=True)):
        if not args.json:
            _note(f"{printable(name)}:")
        left = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
        try:
            task = await _await_end(client, answer.task_id, left, args.json, args.timeout)
        except asyncio.CancelledError:
            _note_going_on([later.task_id for later in submitted[index:]])
            raise
        if task is None:
            # Those not yet followed may not have ended either; with --json no id was printed.
            _note_going_on(
                [later.task_id for later in submitted[index:]],
                f"--timeout {_seconds(args.timeout)} s ran out",
            )
            return EXIT_TIMEOUT
        if not args.json:
            _note_unfinished(task)
        ended.append(task)
    if args.json:
        _print_json({"tasks": [task.raw for task in ended]})
    everything_completed = all(task.status is TaskStatus.COMPLETED for task in ended)
    return EXIT_OK if everything_completed else EXIT_TASK_FAILED


STATUS_FIELDS = (
    "task_id",
    "project_id",
    "task_type",
    "status",
    "progress",
    "current_step",
    "queue_position",
    "waiting_for",
    "scheduled_for",
    "attempt",
    "priority",
    "created_at",
    "started_at",
    "completed_at",
    "processing_time",
    "previous_state",
    "cancelled_at",
    "retry_of",
    "last_error",
    "next_retry_at",
    "error",
)


def _fields(body: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(name, body[name]) for name in STATUS_FIELDS if body.get(name) is not None]


async def cmd_status(client: TaskClient, args: argparse.Namespace) -> int:
    """Print a task's status."""
    task = await client.status(args.task_id)
    if args.json:
        _print_json(task.raw)
        return EXIT_OK
    for name, value in _fields(task.raw):
        if name == "progress":  # the typed value: the raw one may be a string ("0.5")
            value = f"{task.progress * 100:.0f}%"
        print(f"{name + ':':<16} {printable(value)}")
    if task.result is not None:
        print("result:")
        _print_json(task.result)
    if task.traceback:
        print("traceback:\n" + printable(task.traceback.rstrip(), lines=True))
    if task.webhook:
        print("webhook:", printable_json(orjson.dumps(task.webhook).decode()))
    return EXIT_OK


async def cmd_wait(client: TaskClient, args: argparse.Namespace) -> int:
    """Follow a task to its end; exit 1 when it failed or was cancelled."""
    return await _follow(client, args.task_id, args)


async def cmd_cancel(client: TaskClient, args: argparse.Namespace) -> int:
    """Cancel a task."""
    outcome = await client.cancel(args.task_id)
    if args.json:
        _print_json(outcome.raw)
    else:
        print(f"{printable(outcome.task_id)}: {printable(outcome.message)}")
    return EXIT_OK


async def cmd_retry(client: TaskClient, args: argparse.Namespace) -> int:
    """Submit a failed or cancelled task again; print the new task's id."""
    retried = await client.retry(args.task_id)
    if args.json:
        _print_json(retried.raw)
    else:
        print(printable(retried.new_task_id))
        _note(printable(retried.message))  # the server's: one line, whatever it sent
    return EXIT_OK


async def cmd_tasks(client: TaskClient, args: argparse.Namespace) -> int:
    """List a project's tasks, newest first."""
    page = await client.list_tasks(
        args.project, status=args.status, task_type=args.type, page=args.page, limit=args.limit
    )
    if args.json:
        _print_json(page.raw)
        return EXIT_OK
    rows: list[tuple[str, ...]] = [("TASK ID", "TYPE", "STATUS", "PROGRESS", "CREATED")]
    for task in page.tasks:
        created = task.created_at.strftime("%Y-%m-%d %H:%M:%S") if task.created_at else ""
        cells = (task.task_id, task.task_type, task.status.value, f"{task.progress * 100:.0f}%", created)
        rows.append(tuple(printable(cell) for cell in cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(f"page {page.page} of {max(1, page.total_pages)}, {page.total} tasks")
    return EXIT_OK


async def cmd_health(client: TaskClient, args: argparse.Namespace) -> int:
    """Service health and queue alerts; exit 1 unless both are healthy."""
    health, queues = await client.health(), await client.queue_health()
    healthy = health.status == "healthy" and queues.status == "healthy"
    if args.json:
        _print_json({"health": health.raw, "queue_health": queues.raw})
        return EXIT_OK if healthy else EXIT_TASK_FAILED
    print(
        f"service:  {printable(health.status)} (redis {printable(health.redis_status)}, "
        f"{health.worker_count} workers, up {health.uptime} s)"
    )
    if health.redis_note:
        print(f"redis:    {printable(health.redis_note)}")
    queue_sizes = sorted(health.queue_sizes.items())
    print("queues:   " + ", ".join(f"{printable(name)} {size}" for name, size in queue_sizes))
    gpus = health.system_load.get("gpu_utilization") or []
    print("gpus:     " + (", ".join(map(_utilization, gpus)) if gpus else "none (NVML not available)"))
    print(f"alerts:   {printable(queues.status)}")
    for alert in queues.alerts:
        print(f"  {printable(alert.severity)}: {printable(alert.message)}")
    return EXIT_OK if healthy else EXIT_TASK_FAILED


def _utilization(value: object) -> str:
    """A GPU's utilization as `NN%`; what is not a number (not taskd's) written out as text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.0f}%"
    return printable(value)


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", help="taskd's base URL (default: $TASKD_URL, else http.host:http.port of the config)"
    )
    common.add_argument(
        "--api-key", help="API key (default: $TASKD_API_KEY, else auth.api_keys, else <data_dir>/api_key)"
    )
    common.add_argument("--json", action="store_true", help="print the API's JSON instead of text")
    return common


def _timeout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, help="give up waiting after this many seconds (exit 4)")


def add_commands(commands: Any) -> None:
    """Register the client commands on the `taskd` sub-command parser."""
    common = _connection_options()

    submit = commands.add_parser("submit", parents=[common], help="submit a task")
    submit.add_argument("--project", required=True, help="project id")
    submit.add_argument("--type", required=True, help="task type, e.g. generate_image")
    submit.add_argument("--data", required=True, help="task_data: JSON, @file.json or @- (stdin)")
    submit.add_argument("--priority", type=int, default=2, choices=(1, 2, 3), help="1 high, 2 normal, 3 low")
    submit.add_argument("--callback", help="callback_url for the webhook")
    submit.add_argument("--metadata", help="metadata: JSON, @file.json or @-")
    submit.add_argument(
        "--after", action="append", default=[], metavar="ID", help="run once this task completed (repeatable)"
    )
    submit.add_argument(
        "--ref",
        action="append",
        default=[],
        metavar="FIELD=ID#/POINTER",
        help='set task_data FIELD (a.b for nested) to {"$ref": "ID#/POINTER"}; ID must be an --after',
    )
    submit.add_argument("--run-at", metavar="RFC3339", help="start no earlier than this time")
    submit.add_argument("--delay", type=float, metavar="SECONDS", help="start no earlier than this from now")
    submit.add_argument(
        "--keep-for", type=int, metavar="SECONDS", help="keep the result this long once ended"
    )
    submit.add_argument(
        "--idempotency-key", metavar="KEY", help="a resend with this key makes no second task"
    )
    submit.add_argument(
        "--webhook-events",
        metavar="EVENTS",
        help="comma-separated: started,progress,completed,failed,cancelled",
    )
    submit.add_argument("--wait", action="store_true", help="follow the task until it ends")
    _timeout_option(submit)
    submit.set_defaults(client_command=cmd_submit)

    pipeline = commands.add_parser(
        "run", parents=[common], help="submit a pipeline file's tasks as one batch and follow them"
    )
    pipeline.add_argument("file", help="pipeline file: TOML with [[task]] tables")
    pipeline.add_argument("--no-wait", action="store_true", help="print the task ids and exit")
    _timeout_option(pipeline)
    pipeline.set_defaults(client_command=cmd_run)

    status = commands.add_parser("status", parents=[common], help="show a task's status")
    status.add_argument("task_id")
    status.set_defaults(client_command=cmd_status)

    wait = commands.add_parser(
        "wait", parents=[common], help="follow a task with a progress bar until it ends"
    )
    wait.add_argument("task_id")
    _timeout_option(wait)
    wait.set_defaults(client_command=cmd_wait)

    cancel = commands.add_parser("cancel", parents=[common], help="cancel a queued or running task")
    cancel.add_argument("task_id")
    cancel.set_defaults(client_command=cmd_cancel)

    retry = commands.add_parser("retry", parents=[common], help="submit a failed or cancelled task again")
    retry.add_argument("task_id")
    retry.set_defaults(client_command=cmd_retry)

    tasks = commands.add_parser("tasks", parents=[common], help="list a project's tasks, newest first")
    tasks.add_argument("project")
    tasks.add_argument("--status", choices=[status.value for status in TaskStatus])
    tasks.add_argument("--type", help="only this task type")
    tasks.add_argument("--page", type=int, default=1)
    tasks.add_argument("--limit", type=int, default=20)
    tasks.set_defaults(client_command=cmd_tasks)

    health = commands.add_parser("health", parents=[common], help="service health and queue alerts")
    health.set_defaults(client_command=cmd_health)


def _server(args: argparse.Namespace, config_path: str | None) -> tuple[str, str]:
    """The URL and key to use, from the options, the environment, then the config."""
    # Each check's error names where the value came from: "--url: …" for a $TASKD_URL sent the
    # user to look for an option they never gave.
    url, url_from = _given(args.url, "--url", "TASKD_URL")
    key, key_from = _given(args.api_key, "--api-key", "TASKD_API_KEY")
    if url and key:
        return _checked_url(url, url_from), _checked_key(key, key_from)
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if not url:
        host = config.http.host if config.http.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        url, url_from = f"http://{host}:{config.http.port}", "the config's http.host and http.port"
    if not key and config.auth.api_keys:
        key, key_from = config.auth.api_keys[0], "the config's auth.api_keys"
    key_file = config.data_path / KEY_FILE
    if not key and key_file.is_file():
        key, key_from = key_file.read_text().strip(), str(key_file)
    if not key:
        raise UsageError(f"no API key: pass --api-key, set TASKD_API_KEY, or run where {key_file} exists")
    return _checked_url(url, url_from), _checked_key(key, key_from)


def _given(option: str | None, flag: str, variable: str) -> tuple[str, str]:
    """The option's value, else the environment variable's ("" if neither), and which it was."""
    if option:
        return option, flag
    return os.environ.get(variable, ""), f"${variable}"


def _checked_url(url: str, given_as: str) -> str:
    # Checked here, so a typo is a usage error (exit 2), not a traceback from deep in aiohttp.
    try:
        parsed = yarl.URL(url)
        parsed.port  # noqa: B018 -- reading it raises for a port that is not a number in range
    except ValueError as exc:
        raise UsageError(f"{given_as}: not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UsageError(f"{given_as}: expected http(s)://host[:port]")
    return url


def _checked_key(key: str, given_as: str) -> str:
    if not key.isprintable():
        raise UsageError(f"{given_as}: it holds a line break or another control character")
    return key


def run(args: argparse.Namespace) -> int:
    """Run one client command; its exit code."""
    try:
        # Imported here, not at the top: `taskd serve` builds this module's parsers too, and the
        # client library is ~0.9 MiB of a server's idle memory that it never uses.
        from taskd.client import TaskdError
    except KeyboardInterrupt:
        # Ctrl-C while it loads (aiohttp: a few tenths of a second): the quiet end of one while
        # following, not a traceback of the import machinery.
        return 130

    try:
        url, key = _server(args, args.config)
        return asyncio.run(_run(args.client_command, url, key, args))
    except UsageError as exc:
        _note(f"taskd: {exc}")
        return EXIT_USAGE
    except TaskdError as exc:
        if args.json:
            # The body says all the text would (status, error, message, details); alone, so that a
            # script reading both streams as one (2>&1) still reads JSON.
            _print_json({"status": exc.status, **exc.body})
            return EXIT_API_ERROR
        # The error and message are the server's: one line, whatever it sent (a proxy's HTML page).
        error, message = printable(exc.error), printable(exc.message)
        _note(f"taskd: {exc.status} {error}: {message}" if exc.status else f"taskd: {message}")
        details = exc.body.get("details")
        if isinstance(details, dict):  # a server that is not taskd may send anything there
            for field, problem in details.items():
                _note(f"  {printable(field)}: {printable(problem)}")
        return EXIT_API_ERROR
    except KeyboardInterrupt:
        return 130


async def _run(command: Command, url: str, key: str, args: argparse.Namespace) -> int:
    from taskd.client import TaskClient

    async with TaskClient(url, key) as client:
        return await command(client, args)
