"""A job process: runs plain-function handlers one at a time for its worker (`python -m taskd.engine.jobproc.child`).

The worker writes one `init` frame (the config) and then `run` frames on stdin; this process
answers on its original stdout with `progress` frames and one `done`/`error`/`cancelled` frame per
task. SIGTERM raises `Cancelled` inside the handler, SIGUSR1 raises `SoftTimeLimitExceeded`; the
worker sends SIGKILL for the hard limit and the memory limit.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from types import FrameType
from typing import Any, BinaryIO

import cattrs

from taskd.config import Config
from taskd.engine.jobproc import frames
from taskd.model import ValidationError
from taskd.tasks.registry import Registry, default_registry
from taskd.tasks.spec import Cancelled, ProcessContext, SoftTimeLimitExceeded, TaskError, is_transient


class _State:
    running = False


def _on_sigterm(_: int, __: FrameType | None) -> None:
    raise Cancelled()


def _on_soft_limit(_: int, __: FrameType | None) -> None:
    # Only a running handler is interrupted; a late signal after it finished is ignored.
    if _State.running:
        raise SoftTimeLimitExceeded("soft time limit exceeded")


def _error(kind: str, message: str, trace: str | None = None) -> dict[str, Any]:
    return {"op": "error", "kind": kind, "error": message, "traceback": trace}


def _run_one(request: dict[str, Any], config: Config, registry: Registry, out: BinaryIO) -> dict[str, Any]:
    task_type = registry.get(request["task_type"])
    if task_type is None or task_type.handler is None:
        return _error("task", f"No handler is installed for task type '{request['task_type']}'")
    try:
        data = registry.parse_input(task_type, request["task_data"])
    except ValidationError as exc:
        return _error("task", f"Invalid task data: {exc.details}")
    context = ProcessContext(
        task_id=request["task_id"],
        project_id=request["project_id"],
        attempt=request["attempt"],
        max_attempts=request["max_attempts"],
        config=config,
        metadata=request["metadata"],
        device=request.get("device"),
        send=lambda progress, step: frames.write(out, {"op": "progress", "progress": progress, "step": step}),
    )
    _State.running = True
    try:
        result = task_type.handler(context, data)
    except SoftTimeLimitExceeded:
        return _error("soft_limit", "soft time limit exceeded", traceback.format_exc())
    except TaskError as exc:
        return _error("transient" if exc.transient else "task", str(exc), traceback.format_exc())
    except Exception as exc:
        kind = "transient" if is_transient(exc) else "exception"
        return _error(kind, f"{type(exc).__name__}: {exc}", traceback.format_exc())
    finally:
        _State.running = False
    return {"op": "done", "result": result}


def main() -> None:
    """Serve `run` requests until stdin closes or SIGTERM arrives."""
    # Handlers that print must not corrupt the protocol: fd 1 becomes stderr, frames use a dup.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    stdin = sys.stdin.buffer
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGUSR1, _on_soft_limit)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        init = frames.read(stdin)
        if init is None:
            return
        config = cattrs.Converter().structure(init["config"], Config)
        # Every built-in type has a coroutine handler, which never runs here; leaving them out spares
        # each job process importing aiohttp, ffmpeg's helpers and the providers.
        registry = default_registry(config.tasks, builtin=False)
        frames.write(out, {"op": "ready", "pid": os.getpid()})
        while (request := frames.read(stdin)) is not None:
            try:
                answer = _run_one(request, config, registry, out)
            except (BrokenPipeError, OSError):
                return
            frames.write(out, answer)
    except Cancelled:
        # Cleanup in the handler has run by now; the worker replaces this process.
        frames.write(out, {"op": "cancelled"})
    except SoftTimeLimitExceeded:
        pass


if __name__ == "__main__":
    main()
