"""A job process: runs plain-function handlers one at a time for its worker.

Forked from the worker's job-process template (template.py), which has the config and the task
types loaded already. The worker writes `run` frames on the process's task pipe; the process
answers `ready` once, then `progress` frames and one `done`/`error`/`cancelled` frame per task.
SIGTERM raises `Cancelled` inside the handler, SIGUSR1 raises `SoftTimeLimitExceeded`; the worker
sends SIGKILL for the hard limit and the memory limit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

import psutil

from taskd.config import Config
from taskd.engine.jobproc import frames
from taskd.errors import describe, message_of, result_refusal
from taskd.model import ValidationError
from taskd.tasks.registry import Registry
from taskd.tasks.spec import Cancelled, ProcessContext, SoftTimeLimitExceeded, TaskError, is_transient

REAP_TIMEOUT = 2.0  # SIGKILL is not refusable, only slow to take effect
# The most characters of each end of an error or a traceback sent to the worker (_bounded).
SENT_HALF = 256 * 1024
# The longest result, as JSON, that its `done` frame can carry (frames.MAX_FRAME, what the worker's
# reader takes), whatever execution.result_max_bytes allows.
MAX_RESULT = frames.MAX_FRAME - len(frames.encode({"op": "done", "result": 0})) + frames.HEADER_SIZE + 1
# How many of the threads a task left running, and how much of each name, the worker is told.
THREADS_NAMED = 10
THREAD_NAME_CHARS = 100


class _State:
    running = False
    cancelled = False  # SIGTERM came: the worker cancels the task


def _on_sigterm(_: int, __: FrameType | None) -> None:
    _State.cancelled = True
    raise Cancelled()


def _on_soft_limit(_: int, __: FrameType | None) -> None:
    # Only a running handler is interrupted; a late signal after it finished is ignored.
    if _State.running:
        raise SoftTimeLimitExceeded("soft time limit exceeded")


def _error(kind: str, message: str, trace: str | None = None) -> dict[str, Any]:
    return {"op": "error", "kind": kind, "error": _bounded(message), "traceback": _bounded(trace)}


def _bounded(text: str | None) -> str | None:
    """`text`'s start and end, at most 2 x SENT_HALF characters: an exception's message may be
    longer than a frame can carry (the job process then died writing it). The worker masks and
    cuts it to far less; a secret cut here lies in the middle, which that cut drops too."""
    if text is None or len(text) <= 2 * SENT_HALF:
        return text
    return text[:SENT_HALF] + text[-SENT_HALF:]


def _run_one(request: dict[str, Any], config: Config, registry: Registry, out: BinaryIO) -> dict[str, Any]:
    task_type = registry.get(request["task_type"])
    if task_type is None or task_type.handler is None:
        return _error("task", f"No handler is installed for task type '{request['task_type']}'")
    try:
        data = registry.parse_input(task_type, request["task_data"])
    except ValidationError as exc:
        return _error("task", f"Invalid task data: {exc.details}")
    progress = _Progress(out)
    context = ProcessContext(
        task_id=request["task_id"],
        project_id=request["project_id"],
        attempt=request["attempt"],
        max_attempts=request["max_attempts"],
        config=config,
        metadata=request["metadata"],
        device=request.get("device"),
        send=progress,
    )
    # A cancel of an earlier task that its handler caught and returned from is not this task's.
    _State.cancelled = False
    _State.running = True
    try:
        result = task_type.handler(context, data)
    except SoftTimeLimitExceeded as exc:
        # The worker names the limit; raised by a handler of a type without one, this is its error.
        return _error("soft_limit", describe(exc), traceback.format_exc())
    except TaskError as exc:
        return _error("transient" if exc.transient else "task", message_of(exc), traceback.format_exc())
    except Exception as exc:
        kind = "transient" if is_transient(exc) else "exception"
        return _error(kind, describe(exc), traceback.format_exc())
    except Cancelled:
        if _State.cancelled:
            raise
        # Raised by the handler itself, no cancel: answered "cancelled", the worker wrote nothing,
        # and the task, left `processing`, was queued again and again past its attempts.
        return _error("exception", "Cancelled raised by the handler (no cancel)", traceback.format_exc())
    except BaseException as exc:
        # SystemExit, KeyboardInterrupt and the like are the handler's failure too; left to end the
        # process, they fail the task as a crash ("exit status 1") and cost a new job process.
        return _error("exception", describe(exc), traceback.format_exc())
    finally:
        _State.running = False
        progress.end()
    return {"op": "done", "result": result}


class _Progress:
    """One task's progress frames, sent until its end and never after.

    A frame names no task: the worker takes it for whichever task this process runs. A thread the
    task left (a daemon keeps its process) that reported on after the end had its reports taken
    for the next task's, another project's maybe.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        # Held across the check and the write: a report under way when the task ends is written
        # before the task's answer, and none after it.
        self._lock = threading.Lock()
        self._ended = False

    def __call__(self, progress: float, step: str | None) -> None:
        with self._lock:
            if not self._ended:
                frames.write(self._out, {"op": "progress", "progress": progress, "step": step})

    def end(self) -> None:
        """No frame from now on."""
        with self._lock:
            self._ended = True


def _stop_leftovers() -> None:
    """Kill what the task's handler started and left running, before its answer is sent: a task's
    processes end with it. This process is their subreaper (template.py), so even one whose parent
    exited first is among its children; the killed are reaped here, so none stays a zombie."""
    if not _has_children():
        return  # as a rule: a scan of every process of the host is saved
    leftovers = psutil.Process().children(recursive=True)
    for leftover in leftovers:
        with contextlib.suppress(psutil.Error):
            leftover.kill()
    psutil.wait_procs(leftovers, timeout=REAP_TIMEOUT)
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _has_children() -> bool:
    # Linux lists each thread's children in /proc; elsewhere (or without it) look the slow way.
    try:
        return bool(children_of_self())
    except OSError:
        return True


def children_of_self() -> list[int]:
    """The pids of this process's children, from /proc (Linux; OSError elsewhere)."""
    return [
        int(pid)
        for thread in os.listdir("/proc/self/task")
        for pid in Path(f"/proc/self/task/{thread}/children").read_text().split()
    ]


_SIGNALS: dict[int, Any] = {
    signal.SIGTERM: _on_sigterm,
    signal.SIGUSR1: _on_soft_limit,
    signal.SIGINT: signal.SIG_IGN,
}


class _ProcessState:
    """What a handler may change in its job process that the next task, maybe another project's,
    would inherit: the environment (a key put there), the current directory, sys.stdout/stderr and
    taskd's signal handlers (with SIGTERM ignored, the next task's cancel skipped its cleanup and
    waited for SIGKILL; without SIGUSR1's, its soft limit killed the process). Put back after each
    task; each look is cheap, and nothing is done when nothing changed."""

    def __init__(self) -> None:
        self.environ = dict(os.environ)
        self.cwd = os.getcwd()
        self.streams = (sys.stdout, sys.stderr)

    def restore(self) -> None:
        """Undo what the last task changed."""
        if os.environ != self.environ:
            os.environ.clear()
            os.environ.update(self.environ)
        try:
            moved = os.getcwd() != self.cwd
        except OSError:  # its directory was removed under it
            moved = True
        if moved:
            with contextlib.suppress(OSError):
                os.chdir(self.cwd)
        sys.stdout, sys.stderr = self.streams
        for signum, handler in _SIGNALS.items():
            if signal.getsignal(signum) is not handler:
                signal.signal(signum, handler)


def serve(tasks: BinaryIO, out: BinaryIO, config: Config, registry: Registry) -> None:
    """Run tasks until the task pipe closes or SIGTERM arrives."""
    for signum, handler in _SIGNALS.items():
        signal.signal(signum, handler)
    state = _ProcessState()
    try:
        frames.write(out, {"op": "ready", "pid": os.getpid()})
        while (request := frames.read(tasks)) is not None:
            threads = set(threading.enumerate())
            try:
                answer = _run_one(request, config, registry, out)
            except (BrokenPipeError, OSError):
                return
            _stop_leftovers()
            state.restore()
            # A thread cannot be stopped from outside: one the task left running would go on beside
            # the next tasks of this process, under their limits. The process is replaced instead
            # (its exit ends them), and the worker names them.
            # A daemon thread is a library's helper by its own say (tqdm's monitor), started on first
            # use and kept with the model a handler caches here: replacing the process for it would
            # load that model again every task.
            left = sorted(
                thread.name[:THREAD_NAME_CHARS]
                for thread in threading.enumerate()
                if thread not in threads and not thread.daemon
            )
            if left:
                answer["threads_left"] = left[:THREADS_NAMED]
            if answer["op"] == "done":
                # Checked here, not only by the worker: a result that is not JSON could not be sent
                # (the process died of it), and one over the 64 MiB a frame may hold was refused by
                # the worker's reader, failing the run on taskd's side, so the task ran 4 times.
                limit = config.execution.result_max_bytes
                refusal = (
                    result_refusal(answer["result"], limit)
                    if limit <= MAX_RESULT
                    else result_refusal(answer["result"], MAX_RESULT, "the most a job process can send")
                )
                if refusal is not None:
                    answer = _error("task", refusal)
            frames.write(out, answer)
    except Cancelled:
        # Cleanup in the handler has run by now; the worker replaces this process.
        frames.write(out, {"op": "cancelled"})
    except SoftTimeLimitExceeded:
        pass
