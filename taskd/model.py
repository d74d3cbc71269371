"""The task model: statuses, the task record and the errors the API renders.

Nothing here knows about Redis, aiohttp or arq.
"""

from __future__ import annotations

import enum
import functools
import math
import time
from datetime import UTC, datetime
from typing import Any

import attrs


class TaskStatus(enum.StrEnum):
    """Every state a task can be in, as the API document names them."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = frozenset({TaskStatus.QUEUED, TaskStatus.PROCESSING})
TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
RETRYABLE = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED})

PRIORITY_HIGH, PRIORITY_NORMAL, PRIORITY_LOW = 1, 2, 3


# Seconds this host's wall clock is behind Redis's (negative: ahead), as taskd.clock measured it.
_clock_offset = 0.0


def now() -> float:
    """Seconds since the epoch on Redis's clock (this host's, corrected by taskd.clock): the one
    clock every taskd process stamps and compares times on; one place so tests and records agree."""
    return time.time() + _clock_offset


def set_clock_offset(seconds: float) -> None:
    """How far this host's wall clock is behind Redis's, from now on (taskd.clock)."""
    global _clock_offset
    _clock_offset = seconds


def iso(ts: float | None) -> str | None:
    """Render an epoch timestamp the way the API document does: `2025-01-15T10:30:00Z`."""
    if ts is None:
        return None
    return _iso_second(math.floor(ts))


# Whole seconds only: a task's stamps, and every task's in the same second, render the same text,
# which building a datetime for each (~2 µs) would make again a few times a submit and a finish.
@functools.lru_cache(maxsize=64)
def _iso_second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.define
class TaskRecord:
    """Everything taskd knows about one task; stored as one Redis hash."""

    task_id: str
    project_id: str
    task_type: str
    queue: str
    task_data: dict[str, Any]
    status: TaskStatus = TaskStatus.QUEUED
    priority: int = PRIORITY_NORMAL
    callback_url: str | None = None
    metadata: dict[str, Any] = attrs.Factory(dict)
    # The events that send a webhook (taskd.shapes.WEBHOOK_EVENTS); None: the three ends.
    webhook_events: list[str] | None = None
    progress: float = 0.0
    current_step: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    traceback: str | None = None
    attempt: int = 0
    # Automatic retries made (requeue.lua): what `retry.max_retries` bounds. Not `attempt`, which
    # also counts the runs that taskd cut short (a stop's hand-back, a worker's death: `deaths`),
    # not the task's failures. Stored from the submit on (0); None: a record of a version that did
    # not count them, until its first start here sets it from `attempt` (lib/begin.lua).
    retries: int | None = None
    deaths: int = 0
    enqueues: int = 0
    # Times a worker without its type handed it on (taskd.engine.executor): each doubles the wait
    # before the next take; not counted in `attempt`, as no handler ran. None: never (not stored).
    hand_ons: int | None = None
    job_id: str | None = None
    last_error: str | None = None
    next_retry_at: float | None = None
    retry_of: str | None = None
    # The tasks that must complete before this one queues (`depends_on`), and those of them that
    # have not yet completed while it waits (None once it no longer waits: the store's Lua keeps it).
    depends_on: list[str] | None = None
    waiting_for: list[str] | None = None
    # When a task submitted with `run_at`/`delay_seconds` may queue; None once it has (the store's
    # Lua keeps it), and for every other task.
    scheduled_for: float | None = None
    # The id of the API key that submitted it (taskd.webhooks.signing.key_id), never the key itself:
    # its webhooks are signed with that key's secret. None on records from before key ids.
    key_id: str | None = None
    # The id of that key's own webhook secret (taskd.webhooks.signing.secret_id), never the secret;
    # None when it had none (the global secret signs). Once the key is removed from the config, its
    # tasks are signed with this secret where another key has it (a rotated key), else not at all.
    webhook_secret_id: str | None = None
    # Seconds the record is kept once the task ends (`keep_for`); None: storage.task_ttl.
    keep_for: int | None = None
    # The W3C trace context (`traceparent`) of the request that submitted it, when
    # tracing is on (taskd.tracing): its runs and webhooks join that trace. None when tracing is off.
    trace_context: dict[str, str] | None = None
    # The bytes its task type expects its result to hold as JSON, from its input at submit
    # (taskd.tasks.spec.TaskType.result_estimate): counted towards its project's storage budget, as a
    # result, until it ends (lib/stored.lua). None for types that estimate nothing.
    result_estimate: int | None = None
    previous_state: str | None = None
    worker_id: str | None = None
    created_at: float = attrs.Factory(now)
    updated_at: float | None = None
    started_at: float | None = None
    completed_at: float | None = None
    cancelled_at: float | None = None
    processing_time: float | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the task can change no more."""
        return self.status in TERMINAL

    @property
    def retries_made(self) -> int:
        """The automatic retries made so far; for a record that does not count them yet (a version
        before, not started since), every run but this one, as they were counted then."""
        return self.retries if self.retries is not None else max(0, self.attempt - 1)


class ApiError(Exception):
    """An error with the documented body; raised where the cause is known, rendered by the HTTP layer."""

    # True where the rest of the request cannot be read: the connection is closed after the answer.
    close_connection = False

    def __init__(self, status: int, error: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"error": error, "message": message, **extra}


class ValidationError(ApiError):
    """400 `validation_error` with per-field `details`."""

    def __init__(self, details: dict[str, str], message: str = "Invalid task data") -> None:
        super().__init__(400, "validation_error", message, details=details)
        self.details = details


class TaskNotFound(ApiError):
    """404 `task_not_found` in the document's words."""

    def __init__(self, task_id: str) -> None:
        super().__init__(404, "task_not_found", f"Task with ID '{task_id}' not found")


class InvalidState(ApiError):
    """400 with only a `detail`, the shape the document shows for cancel and retry refusals."""

    def __init__(self, detail: str) -> None:
        super().__init__(400, "invalid_state", detail)
        self.body = {"detail": detail}


class ForeignDependency(ValidationError):
    """400: a dependency is another project's task. `unknown` is the same refusal worded as for a
    task that does not exist, for a caller that may not know of that project's tasks."""

    def __init__(self, details: dict[str, str], unknown: dict[str, str]) -> None:
        super().__init__(details, "Invalid dependencies")
        self.unknown = ValidationError(unknown, "Invalid dependencies")


class IdempotencyKeyReused(ApiError):
    """422 `idempotency_key_reused`: an Idempotency-Key sent again with another request."""

    def __init__(self) -> None:
        super().__init__(
            422,
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different request; use a new key for a new request",
        )


class RateLimited(ApiError):
    """429 `rate_limited` with `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(429, "rate_limited", message, retry_after=retry_after)
        self.retry_after = retry_after


class TooManyBodies(RateLimited):
    """429 `rate_limited`: the key is sending `limits.open_bodies` request bodies at once in this process.

    The body is not read: the connection is closed after the answer.
    """

    close_connection = True
    RETRY_AFTER = 5

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"Too many request bodies arriving at once: at most {limit} per API key on each taskd "
            f"process; retry in {self.RETRY_AFTER} s",
            self.RETRY_AFTER,
        )


class UnreadableBody(ValidationError):
    """400 `validation_error`: the body's Content-Encoding or Transfer-Encoding is broken."""

    close_connection = True

    def __init__(self) -> None:
        super().__init__(
            {"body": "Request body could not be read: its Content-Encoding or Transfer-Encoding is broken"},
            "Invalid request body",
        )


class BodyCutOff(ValidationError):
    """400 `validation_error`: the client closed the connection before its body had all arrived.

    Nobody reads the answer; it is the caller's doing, so it is answered (and traced) as a 4xx,
    never as a storage outage.
    """

    def __init__(self) -> None:
        super().__init__(
            {"body": "Request body could not be read: the connection closed before all of it arrived"},
            "Invalid request body",
        )


class RequestTimeout(ApiError):
    """408 `request_timeout`: the request's body did not arrive in time."""

    close_connection = True

    def __init__(self, seconds: float) -> None:
        super().__init__(408, "request_timeout", f"The request body did not arrive within {seconds:g} s")


class ServiceUnavailable(ApiError):
    """503 `service_unavailable` with `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(503, "service_unavailable", message, retry_after=retry_after)
        self.retry_after = retry_after


@attrs.frozen
class Metrics:
    """The cumulative counters of `/api/v1/tasks/metrics`; rates are derived, never stored."""

    total_tasks: int = 0
    completed_tasks: int = 0
    failed_tasks: int = 0
    retried_tasks: int = 0
    cancelled_tasks: int = 0
    currently_running: int = 0
    average_durations: dict[str, float] = attrs.Factory(dict)
    webhooks_delivered: int = 0
    webhooks_failed: int = 0

    def _percent(self, part: int) -> float:
        return round(100.0 * part / self.total_tasks, 1) if self.total_tasks else 0.0

    @property
    def success_rate(self) -> float:
        """Completed tasks as a percentage of all submitted, one decimal."""
        return self._percent(self.completed_tasks)

    @property
    def failure_rate(self) -> float:
        """Failed tasks as a percentage of all submitted, one decimal."""
        return self._percent(self.failed_tasks)
