"""The errors a task's code raises, at the bottom floor: media, providers and the engine all use them.

`taskd.tasks.spec` re-exports them, so task modules that import them from there keep working.
"""

from __future__ import annotations

from typing import Any

import orjson


class TaskError(Exception):
    """A failure the handler understands; its message becomes the task's `error` as written."""

    transient = False


class TransientError(TaskError):
    """A failure worth retrying later (a provider that is down, rate-limited or timing out)."""

    transient = True


class SoftTimeLimitExceeded(Exception):
    """Raised inside a handler at its soft time limit: clean up, then re-raise (or return a result)."""


class Cancelled(BaseException):
    """Raised inside a job process when its task is cancelled (SIGTERM); `finally` blocks still run."""


def message_of(exc: BaseException) -> str:
    """`str(exc)`, or what stands for it when that fails: a handler's exception is the handler's
    code, and its `__str__` may raise (it failed the whole run on taskd's side, or ended the job
    process, and the handler's own error was lost)."""
    try:
        return str(exc)
    except Exception as failure:
        return f"<str() of the exception failed: {type(failure).__name__}>"


def describe(exc: BaseException) -> str:
    """`Type: message` of an exception, whatever its `__str__` does (message_of)."""
    return f"{type(exc).__name__}: {message_of(exc)}"


def result_refusal(result: Any, limit: int, bound: str = "execution.result_max_bytes") -> str | None:
    """Why a handler's result is not stored, as its task's error: it is not JSON, or longer than
    `limit` bytes as JSON (`bound` names where that limit comes from); None when it is fine."""
    try:
        size = len(orjson.dumps(result))
    except TypeError as exc:
        return f"Task returned a result that is not JSON: {exc}"
    if size > limit:
        return f"Task returned a result of {size} bytes of JSON, over the limit of {limit} bytes ({bound})"
    return None
