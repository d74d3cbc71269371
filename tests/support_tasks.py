"""Task types that only tests register (through `tasks.modules`)."""

from __future__ import annotations

import asyncio
import builtins
import enum
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs
import cattrs
import redis.asyncio

from taskd import proctree
from taskd.tasks.diagnostics import marker_path
from taskd.tasks.spec import (
    Cancelled,
    ProcessContext,
    SoftTimeLimitExceeded,
    TaskContext,
    TaskType,
    TransientError,
)
from taskd.validation import between

# A tool child: leaves a `child_started` marker with its pid (after touching `megabytes` of memory),
# a `child_sigterm` marker when SIGTERM comes (then exits, unless told to ignore it), and waits.
TOOL_CHILD = """
import os, signal, sys, time
started, sigterm, megabytes, ignore = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
def mark(path):
    with open(path + ".tmp", "w") as out:
        out.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
def on_sigterm(*_):
    mark(sigterm)
    if not ignore:
        sys.exit(0)
signal.signal(signal.SIGTERM, on_sigterm)
held = bytearray(megabytes * 1024 * 1024)
for i in range(0, len(held), 4096):
    held[i] = 1
mark(started)
while True:
    time.sleep(0.05)
"""


@attrs.frozen
class AnythingInput:
    pass


@attrs.frozen
class ShowWhatIGotInput:
    pass


@attrs.frozen
class CollectionsInput:
    """A field of each kind that a JSON list or object is read into, for tests of what each takes."""

    a_tuple: tuple[str, ...] = ()
    a_pair: tuple[str, int] = ("", 0)
    a_sequence: Sequence[str] = ()
    a_set: set[str] = attrs.field(factory=set)
    a_frozenset: frozenset[str] = frozenset({"b", "a"})
    a_mapping: Mapping[str, int] = attrs.field(factory=dict)
    a_deque: deque[str] = attrs.field(factory=deque)


def collections_taken(_: ProcessContext, data: CollectionsInput) -> dict[str, Any]:
    """What each field was read as, with its Python type."""
    return {
        name: [type(value).__name__, _listed(value)]
        for name, value in attrs.asdict(data, recurse=False).items()
    }


def _listed(value: Any) -> Any:
    # A result is JSON, which has neither sets (their items sorted here) nor deques.
    if isinstance(value, set | frozenset):
        return sorted(value)
    return list(value) if isinstance(value, deque) else value


class Speed(enum.IntEnum):
    SLOW = 1
    FAST = 24


class Mode(enum.StrEnum):
    DRAFT = "draft"


@attrs.frozen
class ChoiceInput:
    """Fields that take one of some values (a `Literal`, an `IntEnum`, a `StrEnum`), for tests of what
    each takes."""

    rate: Literal[1, 24] = 1
    speed: Speed = Speed.SLOW
    mode: Mode = Mode.DRAFT


async def choice_taken(_: TaskContext, data: ChoiceInput) -> dict[str, Any]:
    """Each field as the handler got it, with its Python type."""
    return {name: [type(value).__name__, value] for name, value in attrs.asdict(data, recurse=False).items()}


@attrs.frozen
class Shot:
    url: str
    seconds: float = attrs.field(default=1, validator=between(0, 10, "Seconds must be between 0 and 10"))


@attrs.frozen
class ShotsInput:
    """Objects in a tuple and in a mapping, for tests of what a submit checks beside a $ref in one."""

    in_a_tuple: tuple[Shot, ...] = ()
    by_name: Mapping[str, Shot] = attrs.field(factory=dict)


# The process that imported this module: in a job process, the template it was forked from.
IMPORTED_IN = os.getpid()


def show_what_i_got(ctx: ProcessContext, _: ShowWhatIGotInput) -> dict[str, Any]:
    """In a job process: its environment, the config it was sent, its parent, where this module was
    imported and what its stdin holds, for tests of what a job process is given."""
    return {
        "environ": dict(os.environ),
        "config": cattrs.unstructure(ctx.config),
        "pid": os.getpid(),
        "parent_pid": os.getppid(),
        "module_imported_in": IMPORTED_IN,
        "stdin": sys.stdin.read(100),
    }


def die_by_sigkill(_: ProcessContext, __: AnythingInput) -> None:
    """A job process that dies in the middle of its task."""
    os.kill(os.getpid(), signal.SIGKILL)


@attrs.frozen
class BigResultInput:
    characters: int = 0


def _filler(characters: int) -> dict[str, Any]:
    return {"filler": "x" * characters}


async def big_result(_: TaskContext, data: BigResultInput) -> dict[str, Any]:
    """A result of `characters` of filler (its JSON is 13 bytes longer), for the result size limit."""
    return _filler(data.characters)


def big_result_in_process(_: ProcessContext, data: BigResultInput) -> dict[str, Any]:
    """The same, returned from a job process."""
    return _filler(data.characters)


def not_json_result_in_process(_: ProcessContext, __: AnythingInput) -> dict[str, Any]:
    """A result JSON cannot hold (an object), from a job process."""
    return {"object": object()}


@attrs.frozen
class ToolChildInput:
    megabytes: int = 0
    ignore_sigterm: bool = False


async def tool_child(ctx: TaskContext, data: ToolChildInput) -> dict[str, Any]:
    """A coroutine handler that starts one tool child (taskd.proctree.spawn) and waits for it."""
    data_dir = ctx.config.data_path
    marker_path(data_dir, ctx.task_id, "any").parent.mkdir(parents=True, exist_ok=True)
    started, sigterm = (
        str(marker_path(data_dir, ctx.task_id, event)) for event in ("child_started", "child_sigterm")
    )
    flags = [str(data.megabytes), "1" if data.ignore_sigterm else "0"]
    child = await proctree.spawn(sys.executable, "-c", TOOL_CHILD, started, sigterm, *flags)
    try:
        return {"exit": await child.wait()}
    except asyncio.CancelledError:
        # A handler that waits on its child past the cancel: the tree's grace decides when it goes.
        await asyncio.shield(child.wait())
        raise
    finally:
        marker_path(data_dir, ctx.task_id, "cleanup").write_text("")


def leave_children(_: ProcessContext, __: AnythingInput) -> dict[str, Any]:
    """In a job process: start a child, and an orphan (its parent exits at once), then return
    without stopping either; their pids are the result."""
    child = subprocess.Popen(["sleep", "300"])
    parent = subprocess.Popen(
        ["sh", "-c", "sleep 300 >/dev/null & echo $!"], stdout=subprocess.PIPE, text=True
    )
    orphan = int(parent.communicate()[0])
    return {"child": child.pid, "orphan": orphan}


@attrs.frozen
class ProgressBurstInput:
    reports: int = 1


def progress_burst(ctx: ProcessContext, data: ProgressBurstInput) -> dict[str, Any]:
    """In a job process: report progress `reports` times as fast as it can, the last one 1.0 "last"."""
    for report in range(1, data.reports):
        ctx.progress(report / data.reports, f"step {report}")
    ctx.progress(1.0, "last")
    return {"reports": data.reports}


@attrs.frozen
class ReportStepInput:
    step: str
    seconds: float = 60.0


async def report_step(ctx: TaskContext, data: ReportStepInput) -> dict[str, Any]:
    """Report progress 0.5 with the caller's `step` as the current step, then wait `seconds`."""
    await ctx.progress(0.5, data.step)
    await asyncio.sleep(data.seconds)
    return {}


@attrs.frozen
class StubbornChildrenInput:
    # "wait" for a cancel or a limit, "ignore_sigterm": wait, deaf to a cancel's SIGTERM, or "die":
    # the job process exits at once.
    then: str = "wait"


def leave_stubborn_children(ctx: ProcessContext, data: StubbornChildrenInput) -> dict[str, Any]:
    """In a job process: start a child that ignores SIGTERM (in the job process's group) and one in
    a session of its own (out of the group), leave their pids in a `children` marker, then wait or
    let the job process die without stopping them."""
    ignores_sigterm = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)",
        ]
    )
    own_session = subprocess.Popen(["sleep", "300"], start_new_session=True)
    marker = marker_path(ctx.config.data_path, ctx.task_id, "children")
    marker.parent.mkdir(parents=True, exist_ok=True)
    part = marker.with_name(f".{marker.name}")
    part.write_text(f"{ignores_sigterm.pid} {own_session.pid}")
    part.rename(marker)
    if data.then == "die":
        os._exit(3)
    if data.then == "ignore_sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(300)
    return {}


@attrs.frozen
class RaiseInput:
    # The name of a BaseException that is not an Exception: SystemExit, KeyboardInterrupt,
    # GeneratorExit, BaseException, Cancelled (taskd's own, which a cancel raises in a job process)
    # or CancelledError (asyncio's, raised by the handler itself: nobody cancelled it).
    exception: str


def _base_exception(name: str) -> BaseException:
    if name == "CancelledError":
        return asyncio.CancelledError()
    return Cancelled() if name == "Cancelled" else getattr(builtins, name)()


async def raise_base_exception(_: TaskContext, data: RaiseInput) -> dict[str, Any]:
    """A coroutine handler that raises a BaseException that is not an Exception."""
    await asyncio.sleep(0)
    raise _base_exception(data.exception)


def raise_base_exception_in_process(_: ProcessContext, data: RaiseInput) -> dict[str, Any]:
    """The same, from a job process."""
    raise _base_exception(data.exception)


async def raise_soft_limit(_: TaskContext, __: AnythingInput) -> dict[str, Any]:
    """A coroutine handler of a type without a soft limit that raises SoftTimeLimitExceeded itself."""
    raise SoftTimeLimitExceeded("raised by the handler")


def raise_soft_limit_in_process(_: ProcessContext, __: AnythingInput) -> dict[str, Any]:
    """The same, from a job process."""
    raise SoftTimeLimitExceeded("raised by the handler")


class Unprintable(Exception):
    """An exception whose message cannot be had: its __str__ raises."""

    def __str__(self) -> str:
        raise ValueError("no message for you")


@attrs.frozen
class UnprintableInput:
    # 0: the exception's __str__ raises; else its message is this many MiB long.
    megabytes: int = 0


def _unprintable(data: UnprintableInput) -> Exception:
    return Unprintable() if not data.megabytes else RuntimeError("m" * data.megabytes * 1024 * 1024)


async def raise_unprintable(_: TaskContext, data: UnprintableInput) -> dict[str, Any]:
    """A coroutine handler raising an exception whose message cannot be had, or is huge."""
    raise _unprintable(data)


def raise_unprintable_in_process(_: ProcessContext, data: UnprintableInput) -> dict[str, Any]:
    """The same, from a job process."""
    raise _unprintable(data)


@attrs.frozen
class RedisCallInput:
    port: int  # a loopback port nothing listens on


async def call_a_redis_that_is_down(_: TaskContext, data: RedisCallInput) -> dict[str, Any]:
    """A coroutine handler whose Redis call fails, as one of taskd's (a provider gate, run_state)
    does while Redis is down: redis-py's own error, naming the server."""
    client = redis.asyncio.Redis(host="127.0.0.1", port=data.port)
    try:
        await client.ping()
    finally:
        await client.aclose()
    return {}


@attrs.frozen
class ChdirInput:
    path: str


async def chdir(_: TaskContext, data: ChdirInput) -> dict[str, Any]:
    """A coroutine handler that changes the worker's current directory and leaves it so."""
    os.chdir(data.path)
    return {"cwd": os.getcwd()}


@attrs.frozen
class ChangeStateInput:
    what: str  # environ | cwd | sigterm | stdout


def change_state_in_process(_: ProcessContext, data: ChangeStateInput) -> dict[str, Any]:
    """A plain handler that changes one piece of its job process's state and leaves it so."""
    if data.what == "environ":
        os.environ["LEFT_BY_A_TASK"] = "a secret of the last project"
    elif data.what == "cwd":
        os.chdir("/")
    elif data.what == "sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif data.what == "stdout":
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (left open: what a careless handler does)
    return {"pid": os.getpid()}


def show_state_in_process(_: ProcessContext, __: AnythingInput) -> dict[str, Any]:
    """The pieces of its job process's state that change_state_in_process changes."""
    from taskd.engine.jobproc import child

    return {
        "pid": os.getpid(),
        "environ": "LEFT_BY_A_TASK" in os.environ,
        "cwd": os.getcwd(),
        "sigterm": signal.getsignal(signal.SIGTERM) is child._on_sigterm,
        "stdout": sys.stdout is sys.__stdout__,
    }


@attrs.frozen
class BlockLoopInput:
    seconds: float


async def block_loop(_: TaskContext, data: BlockLoopInput) -> dict[str, Any]:
    """A coroutine handler that blocks the worker's event loop."""
    time.sleep(data.seconds)
    return {"ok": True}


def leave_a_thread_in_process(_: ProcessContext, __: AnythingInput) -> dict[str, Any]:
    """A plain handler that returns while a thread it started sleeps on."""
    threading.Thread(target=time.sleep, args=(3600,), name="left-by-a-task").start()
    return {"pid": os.getpid()}


def keep_a_daemon_thread_in_process(_: ProcessContext, __: AnythingInput) -> dict[str, Any]:
    """A plain handler whose library starts a daemon helper thread on first use and keeps it (as
    tqdm's monitor does) beside the model it caches in the job process."""
    global _HELPER
    if _HELPER is None:
        _HELPER = threading.Thread(target=time.sleep, args=(3600,), name="a-librarys-helper", daemon=True)
        _HELPER.start()
    return {"pid": os.getpid()}


_HELPER: threading.Thread | None = None


def report_from_a_daemon_thread_in_process(ctx: ProcessContext, __: AnythingInput) -> dict[str, Any]:
    """A plain handler that leaves a daemon thread reporting its progress every 10 ms for a minute,
    after the task has ended."""

    def report_on() -> None:
        for _ in range(6000):
            ctx.progress(0.5, "the task before")
            time.sleep(0.01)

    threading.Thread(target=report_on, name="reporting-on", daemon=True).start()
    time.sleep(0.05)  # it has reported while the task ran
    return {"pid": os.getpid()}


@attrs.frozen
class AppendInput:
    text: str
    suffix: str = "!"


async def append(_: TaskContext, data: AppendInput) -> dict[str, Any]:
    """Its text with the suffix added: a step whose result the next step's $ref can read."""
    return {"text": data.text + data.suffix, "length": len(data.text) + len(data.suffix)}


def _mark(ctx: TaskContext, event: str) -> None:
    path = marker_path(ctx.config.data_path, ctx.task_id, event)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(os.getpid()))


async def _child_task(ctx: TaskContext) -> None:
    # An asyncio task of the handler's: marks its start, then its end, however it comes.
    _mark(ctx, "child_started")
    try:
        await asyncio.sleep(3600)
    finally:
        _mark(ctx, "child_stopped")


async def task_group(ctx: TaskContext, __: AnythingInput) -> dict[str, Any]:
    """A handler waiting for an asyncio.TaskGroup's child that sleeps an hour."""
    async with asyncio.TaskGroup() as group:
        group.create_task(_child_task(ctx))
    return {"ok": True}


# The tasks a handler left behind, referenced (the loop keeps only weak references to tasks).
LEFT_BEHIND: set[asyncio.Task[None]] = set()


async def leave_a_task(ctx: TaskContext, __: AnythingInput) -> dict[str, Any]:
    """A handler that returns while an asyncio task it made still runs."""
    LEFT_BEHIND.add(asyncio.create_task(_child_task(ctx)))
    await asyncio.sleep(0)
    return {"ok": True}


async def clean_up_when_cancelled(ctx: TaskContext, __: AnythingInput) -> dict[str, Any]:
    """A handler whose cleanup awaits (a thread's work, a provider's answer), then marks it done."""
    _mark(ctx, "started")
    try:
        await asyncio.sleep(3600)
    finally:
        for _ in range(2):  # two turns of the loop
            await asyncio.sleep(0)
        _mark(ctx, "cleaned_up")
    return {"ok": True}


# While set, `swallow_cancels` handlers go on; a test clears it at its end, or the loop's close
# would wait for them for ever.
SWALLOWING = threading.Event()


async def swallow_cancels(ctx: TaskContext, __: AnythingInput) -> dict[str, Any]:
    """A handler that catches every CancelledError and goes on, while SWALLOWING is set."""
    _mark(ctx, "started")
    while SWALLOWING.is_set():
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            _mark(ctx, "cancel_swallowed")
    return {"ok": True}


async def ignore_cancels(ctx: TaskContext, __: AnythingInput) -> dict[str, Any]:
    """A handler that catches every CancelledError and goes on for ever (in a taskd child process,
    where no test can clear `SWALLOWING`)."""
    _mark(ctx, "started")
    while True:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            _mark(ctx, "cancel_swallowed")


async def long_first_run_then_transient(ctx: TaskContext, __: AnythingInput) -> dict[str, Any]:
    """Its first run waits to be cut short (a stop hands it back, a kill reclaims it); every later
    run fails with a transient error, reporting the attempt and whether it was the final one."""
    _mark(ctx, f"started.{ctx.attempt}")
    if ctx.attempt == 1:
        await asyncio.sleep(3600)
    raise TransientError(f"provider down (attempt {ctx.attempt}, final {ctx.final_attempt})")


@attrs.frozen
class RetryThenHoldInput:
    seconds: float = 30.0


async def retry_then_hold_gpu(ctx: TaskContext, data: RetryThenHoldInput) -> dict[str, Any]:
    """A GPU task whose first attempt fails transiently; the next holds its slot for `seconds`."""
    if ctx.attempt == 1:
        raise TransientError("the first attempt fails")
    await asyncio.sleep(data.seconds)
    return {"attempt": ctx.attempt}


TASKS = [
    TaskType(
        "retry_then_hold_gpu",
        RetryThenHoldInput,
        queue="gpu_medium",
        expected_duration=1.0,
        handler=retry_then_hold_gpu,
        gpu="slot",
    ),
    TaskType("append", AppendInput, queue="default", expected_duration=0.01, handler=append),
    TaskType(
        "long_first_run_then_transient",
        AnythingInput,
        queue="default",
        expected_duration=0.1,
        handler=long_first_run_then_transient,
    ),
    TaskType("declared_only", AnythingInput, queue="default", expected_duration=1.0),
    TaskType("shots", ShotsInput, queue="default", expected_duration=1.0),
    TaskType(
        "collections", CollectionsInput, queue="default", expected_duration=0.01, handler=collections_taken
    ),
    TaskType("choice", ChoiceInput, queue="default", expected_duration=0.01, handler=choice_taken),
    TaskType(
        "show_what_i_got", ShowWhatIGotInput, queue="default", expected_duration=0.1, handler=show_what_i_got
    ),
    TaskType("big_result", BigResultInput, queue="default", expected_duration=0.01, handler=big_result),
    TaskType(
        "big_result_in_process",
        BigResultInput,
        queue="default",
        expected_duration=0.1,
        handler=big_result_in_process,
    ),
    TaskType(
        "not_json_result_in_process",
        AnythingInput,
        queue="default",
        expected_duration=0.1,
        handler=not_json_result_in_process,
    ),
    TaskType("tool_child", ToolChildInput, queue="default", expected_duration=1.0, handler=tool_child),
    TaskType("die_by_sigkill", AnythingInput, queue="default", expected_duration=0.1, handler=die_by_sigkill),
    TaskType("leave_children", AnythingInput, queue="default", expected_duration=0.1, handler=leave_children),
    TaskType(
        "progress_burst", ProgressBurstInput, queue="default", expected_duration=0.1, handler=progress_burst
    ),
    TaskType("report_step", ReportStepInput, queue="default", expected_duration=1.0, handler=report_step),
    TaskType(
        "leave_stubborn_children",
        StubbornChildrenInput,
        queue="default",
        expected_duration=1.0,
        handler=leave_stubborn_children,
    ),
    TaskType(
        "raise_base_exception",
        RaiseInput,
        queue="default",
        expected_duration=0.1,
        handler=raise_base_exception,
    ),
    TaskType(
        "raise_base_exception_in_process",
        RaiseInput,
        queue="default",
        expected_duration=0.1,
        handler=raise_base_exception_in_process,
    ),
    TaskType("task_group", AnythingInput, queue="default", expected_duration=0.1, handler=task_group),
    TaskType("leave_a_task", AnythingInput, queue="default", expected_duration=0.1, handler=leave_a_task),
    TaskType(
        "clean_up_when_cancelled",
        AnythingInput,
        queue="default",
        expected_duration=0.1,
        handler=clean_up_when_cancelled,
    ),
    TaskType(
        "swallow_cancels", AnythingInput, queue="default", expected_duration=0.1, handler=swallow_cancels
    ),
    TaskType("ignore_cancels", AnythingInput, queue="default", expected_duration=0.1, handler=ignore_cancels),
    TaskType(
        "raise_unprintable",
        UnprintableInput,
        queue="default",
        expected_duration=0.1,
        handler=raise_unprintable,
    ),
    TaskType(
        "call_a_redis_that_is_down",
        RedisCallInput,
        queue="default",
        expected_duration=0.1,
        handler=call_a_redis_that_is_down,
    ),
    TaskType(
        "raise_unprintable_in_process",
        UnprintableInput,
        queue="default",
        expected_duration=0.1,
        handler=raise_unprintable_in_process,
    ),
    TaskType(
        "change_state_in_process",
        ChangeStateInput,
        queue="default",
        expected_duration=0.1,
        handler=change_state_in_process,
    ),
    TaskType(
        "show_state_in_process",
        AnythingInput,
        queue="default",
        expected_duration=0.1,
        handler=show_state_in_process,
    ),
    TaskType("block_loop", BlockLoopInput, queue="default", expected_duration=0.1, handler=block_loop),
    TaskType(
        "leave_a_thread_in_process",
        AnythingInput,
        queue="default",
        expected_duration=0.1,
        handler=leave_a_thread_in_process,
    ),
    TaskType(
        "keep_a_daemon_thread_in_process",
        AnythingInput,
        queue="default",
        expected_duration=0.1,
        handler=keep_a_daemon_thread_in_process,
    ),
    TaskType(
        "report_from_a_daemon_thread_in_process",
        AnythingInput,
        queue="default",
        expected_duration=0.1,
        handler=report_from_a_daemon_thread_in_process,
    ),
    TaskType("chdir", ChdirInput, queue="default", expected_duration=0.1, handler=chdir),
    TaskType(
        "raise_soft_limit", AnythingInput, queue="default", expected_duration=0.1, handler=raise_soft_limit
    ),
    TaskType(
        "raise_soft_limit_in_process",
        AnythingInput,
        queue="default",
        expected_duration=0.1,
        handler=raise_soft_limit_in_process,
    ),
]
