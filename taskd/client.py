"""`TaskClient`: an async Python client of the taskd API (aiohttp), with typed results and errors.

    async with TaskClient("http://127.0.0.1:8001", api_key) as client:
        submitted = await client.submit("detective_series_001", "test_prompt", {"prompt_template": "Hi"})
        task = await client.wait(submitted.task_id, on_event=print)
        print(task.result)

`wait` follows the task's server-sent events (resuming with `Last-Event-ID` when the connection
drops) and falls back to polling the status when the stream is not available. A 429 or 503 is
tried again (`retries` times, waiting what its `Retry-After` says, else a growing backoff): taskd
stores nothing when it answers either, so a submit is safe to send again. Every other refused
request, and one still refused after the retries, raises a `TaskdError` subclass carrying the
documented error body. `taskd.sync_client.SyncTaskClient` is the same client for code without an
event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Self, TypeVar, overload
from urllib.parse import quote

import aiohttp
import attrs
import cattrs
import orjson
import yarl

from taskd.backoff import exponential_delay, retry_after_seconds
from taskd.model import TaskStatus

# What a caller imports from here. TaskStatus, the type of every result's `status`, among them:
# without it in `__all__`, `from taskd.client import TaskStatus` ran, but a caller's mypy --strict
# refused it ("does not explicitly export attribute").
__all__ = [
    "DEFAULT_URL",
    "MAX_RESPONSE_BYTES",
    "TERMINAL",
    "Alert",
    "AuthenticationFailed",
    "Cancellation",
    "EventsLost",
    "Health",
    "IdempotencyKeyReused",
    "InvalidResponse",
    "InvalidState",
    "Metrics",
    "QueueHealth",
    "RateLimited",
    "Retried",
    "ServiceUnavailable",
    "StreamGap",
    "Submitted",
    "Task",
    "TaskCancelled",
    "TaskClient",
    "TaskEnded",
    "TaskEvent",
    "TaskFailed",
    "TaskNotFoundError",
    "TaskPage",
    "TaskStatus",
    "TaskSummary",
    "TaskdConnectionError",
    "TaskdError",
    "ValidationFailed",
    "error_for",
    "retry_after_seconds",
]

DEFAULT_URL = "http://127.0.0.1:8001"
TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
_STREAM_READ_TIMEOUT = 45.0  # the server sends a keep-alive every 15 s
_STREAM_RETRIES = 5  # consecutive failed stream connections before falling back to polling
_STREAM_RETRY_FIRST, _STREAM_RETRY_CAP = 0.4, 2.0  # seconds before reconnecting the stream
# Refusals of a stream's (re)connection that pass: taskd without Redis for a moment (503), rate
# limited (429), or a proxy whose taskd is restarting (502, 504). wait reconnects after them.
_STREAM_PASSING = frozenset({429, 502, 503, 504})
# The largest answer (or event) read: well above what taskd sends (a list of 100 tasks with results
# of execution.result_max_bytes, 1 MiB by default), and a bound on what a wrong server can make
# this process hold.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
# Between tries of a request refused with 429/503 and no Retry-After: 0.5, 1, 2 s ... up to 8 s,
# each up to half shorter at random, so that clients refused together do not come back together.
_REFUSED_RETRY_FIRST, _REFUSED_RETRY_CAP, _REFUSED_RETRY_JITTER = 0.5, 8.0, 0.5
# What a proxy answers when the taskd behind it died or went away while answering (an API node
# killed behind a load balancer): the request may have been carried out, its answer is lost.
_ANSWER_LOST = frozenset({502, 504})


# ---- errors ----


_Error = TypeVar("_Error", bound=BaseException)


def _rebuilt(cls: type[_Error], args: tuple[Any, ...], state: dict[str, Any]) -> _Error:
    """An error as pickle and copy make it again: its attributes as they were. The default calls
    `cls(*args)`, and these errors' `args` (their message) are not what their __init__ takes, so a
    TaskFailed raised in a ProcessPoolExecutor's worker broke the pool when the parent unpickled it."""
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class TaskdError(Exception):
    """A request taskd refused (or could not answer): HTTP `status` and the error `body` as sent."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        self.error: str = str(body.get("error", "invalid_state" if "detail" in body else "http_error"))
        self.message: str = str(body.get("message") or body.get("detail") or f"HTTP {status}")
        super().__init__(self.message)

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuilt, (type(self), self.args, self.__dict__)


class TaskdConnectionError(TaskdError):
    """taskd could not be reached at all (status 0)."""

    def __init__(self, message: str, *, dropped: bool = False) -> None:
        super().__init__(0, {"error": "connection_error", "message": message})
        # The connection ended after the request went out and before its answer came back: taskd
        # may have carried it out. Not after a refused connection (nothing reached taskd), nor a
        # timeout (a resend would take the timeout once more per try).
        self.dropped = dropped


class InvalidResponse(TaskdError):
    """An answer that is not taskd's: not JSON, or without the documented fields (a proxy's page,
    another service at that URL); `status` is the HTTP status it came with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, {"error": "invalid_response", "message": message})


class AuthenticationFailed(TaskdError):
    """401 `authentication_failed`: the API key is missing or wrong."""


class TaskNotFoundError(TaskdError):
    """404 `task_not_found`."""


class ValidationFailed(TaskdError):
    """400 `validation_error`; `details` maps each bad field to what is wrong with it."""

    @property
    def details(self) -> dict[str, str]:
        """Per-field messages."""
        details = self.body.get("details")
        return (
            {str(field): str(problem) for field, problem in details.items()}
            if isinstance(details, dict)
            else {}
        )


class InvalidState(TaskdError):
    """400 with a `detail`: the task cannot be cancelled or retried in its state."""

    @property
    def detail(self) -> str:
        """The document's `detail` text."""
        return str(self.body.get("detail", self.message))


class IdempotencyKeyReused(TaskdError):
    """422 `idempotency_key_reused`: the idempotency key was already used with a different request."""


class RateLimited(TaskdError):
    """429 `rate_limited`; `retry_after` seconds."""

    def __init__(self, status: int, body: dict[str, Any], retry_after_header: int | None = None) -> None:
        super().__init__(status, body)
        self._retry_after_header = retry_after_header

    @property
    def retry_after(self) -> int | None:
        """Seconds to wait before trying again: the body's `retry_after`, else the Retry-After header."""
        value = self.body.get("retry_after")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return math.ceil(value)
        return self._retry_after_header


class ServiceUnavailable(RateLimited):
    """503 `service_unavailable` (storage unreachable, queue full); `retry_after` seconds."""


class EventsLost(TaskdError):
    """A project's event stream told of events it no longer kept (a `gap`): whole tasks' events,
    their ends among them, may be missing; `gap` says after which id. List the project's tasks
    again, or follow it with `project_events(…, gaps=True)`, which hands the gap over instead."""

    def __init__(self, gap: StreamGap) -> None:
        message = f"events after {gap.after} were trimmed before they were sent (kept from {gap.kept_from})"
        super().__init__(200, {"error": "events_lost", "message": message})
        self.gap = gap


class TaskEnded(Exception):
    """`wait` found the task ended without completing; `task` is its final status."""

    def __init__(self, task: Task) -> None:
        self.task = task
        super().__init__(f"Task {task.task_id} {task.status.value}: {task.error or 'no error given'}")

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuilt, (type(self), self.args, self.__dict__)


class TaskFailed(TaskEnded):
    """The task failed."""


class TaskCancelled(TaskEnded):
    """The task was cancelled."""


def _answer_lost(failed: TaskdError) -> bool:
    """Whether the request may have been carried out with its answer lost on the way back."""
    if isinstance(failed, TaskdConnectionError):
        return failed.dropped
    return failed.status in _ANSWER_LOST


def error_for(status: int, body: Any, retry_after_header: str | None = None) -> TaskdError:
    """The TaskdError subclass for an error response (`retry_after_header`: its Retry-After, if any)."""
    if not isinstance(body, dict):
        body = {"error": "http_error", "message": str(body) or f"HTTP {status}"}
    kind = body.get("error")
    if status == 401:
        return AuthenticationFailed(status, body)
    if status == 404 and kind == "task_not_found":
        return TaskNotFoundError(status, body)
    if status == 400 and kind == "validation_error":
        return ValidationFailed(status, body)
    if status == 400 and "detail" in body:
        return InvalidState(status, body)
    if status == 422 and kind == "idempotency_key_reused":
        return IdempotencyKeyReused(status, body)
    if status == 429:
        return RateLimited(status, body, retry_after_seconds(retry_after_header))
    if status == 503:
        return ServiceUnavailable(status, body, retry_after_seconds(retry_after_header))
    return TaskdError(status, body)


# ---- results ----


def _timestamp(value: Any, _: type) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


_converter = cattrs.Converter()
_converter.register_structure_hook(datetime, _timestamp)


_Shape = TypeVar("_Shape", bound=attrs.AttrsInstance)


@contextlib.contextmanager
def _taskd_answer(what: str, status: int = 200) -> Iterator[None]:
    """Raise InvalidResponse for an answer that cannot be read as `what`, rather than the parser's
    own error (KeyError, cattrs' ClassValidationError...), which a caller catching TaskdError misses."""
    try:
        yield
    except cattrs.BaseValidationError as exc:
        raise InvalidResponse(status, f"not a {what}: {'; '.join(cattrs.transform_error(exc))}") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidResponse(status, f"not a {what}: {type(exc).__name__} {exc}") from exc


def _structure(cls: type[_Shape], body: Any) -> _Shape:
    with _taskd_answer(cls.__name__):
        known = {field.name for field in attrs.fields(cls)}
        fields = {k: v for k, v in body.items() if k in known}
        if "raw" in known:
            fields["raw"] = body
        return _converter.structure(fields, cls)


def _as_json(value: Any) -> Any:
    """`value` as the encoder takes it: a Mapping that is not a dict (a MappingProxyType) as a dict,
    a Sequence that is not a list or tuple as a list. Anything else is sent as it is, for taskd to
    refuse with its ValidationFailed: dict() and list() of every value made a caller's mistake a
    local TypeError (None), a task stored (a list of pairs as task_data), or a ValidationFailed about
    other ids (a str for depends_on: each of its characters sent as an id)."""
    if isinstance(value, Mapping) and not isinstance(value, dict):
        return dict(value)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray | list | tuple):
        return list(value)
    return value


def _encoded(body: Any) -> bytes:
    """`body` as JSON; a ValueError naming the field of a NaN or an infinity, which orjson would send
    as null (the stored task_data then held null where the caller passed a number)."""
    data = orjson.dumps(body)
    # orjson writes them as null: where no null was written there is none to look for.
    if b"null" in data and (path := _non_finite(body, "")) is not None:
        raise ValueError(f"{path or 'the body'} is not a finite number, which JSON cannot carry")
    return data


def _non_finite(value: Any, path: str) -> str | None:
    # The path of the first NaN or infinity in `value`, or None.
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, dict):
        children: Any = ((f"{path}.{key}" if path else str(key), item) for key, item in value.items())
    elif isinstance(value, list | tuple):
        children = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for child_path, child in children:
        if (found := _non_finite(child, child_path)) is not None:
            return found
    return None


def _segment(value: str) -> str:
    """An id as one segment of a path: "/", "?", "#", "%" and every dot percent-encoded, so that
    whatever a caller passed ("../x", "a/b") names that id and no other route."""
    return quote(value, safe="").replace(".", "%2E")


@attrs.frozen
class Submitted:
    """The answer to a submit."""

    task_id: str
    status: TaskStatus
    project_id: str
    estimated_duration: int | None = None
    queue_position: int | None = None
    created_at: datetime | None = None
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False, eq=False)
    # With `submit(wait=…)` honoured: the task's status when it ended or the wait was up.
    task: Task | None = None


@attrs.frozen
class Task:
    """A task's status: the document's fields and taskd's extras."""

    task_id: str
    project_id: str
    status: TaskStatus
    progress: float = 0.0
    current_step: str | None = None
    result: Any = None
    error: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    processing_time: float | None = None
    task_type: str | None = None
    priority: int | None = None
    attempt: int = 0
    last_error: str | None = None
    next_retry_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    queue_position: int | None = None
    traceback: str | None = None
    previous_state: str | None = None
    cancelled_at: datetime | None = None
    retry_of: str | None = None
    depends_on: list[str] | None = None
    waiting_for: list[str] | None = None
    scheduled_for: datetime | None = None
    webhook: dict[str, Any] | None = None
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @property
    def is_terminal(self) -> bool:
        """True once the task can change no more."""
        return self.status in TERMINAL


@attrs.frozen
class TaskSummary:
    """One entry of a project's task list."""

    task_id: str
    project_id: str
    task_type: str
    status: TaskStatus
    task_data: dict[str, Any] = attrs.Factory(dict)
    result: Any = None
    error: str | None = None
    progress: float = 0.0
    priority: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    depends_on: list[str] | None = None
    waiting_for: list[str] | None = None
    scheduled_for: datetime | None = None


@attrs.frozen
class TaskPage:
    """One page of a project's tasks, newest first."""

    tasks: list[TaskSummary]
    page: int
    limit: int
    total: int
    total_pages: int
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False, eq=False)


@attrs.frozen
class Cancellation:
    """The answer to a cancel."""

    task_id: str
    status: TaskStatus
    message: str
    previous_state: str | None = None
    cancelled_at: datetime | None = None
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False, eq=False)


@attrs.frozen
class Retried:
    """The answer to a retry: the new task's id."""

    new_task_id: str
    original_task_id: str
    status: TaskStatus
    message: str
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False, eq=False)


@attrs.frozen
class Health:
    """`GET /api/v1/health` (also when it answers 503 unhealthy)."""

    status: str
    redis_status: str
    worker_count: int
    queue_sizes: dict[str, int]
    system_load: dict[str, Any]
    uptime: int
    redis_note: str | None = None  # Redis answers but refuses writes: which partition, and why
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False, eq=False)


@attrs.frozen
class Alert:
    """One queue-health alert."""

    severity: str
    message: str
    metric: str
    value: float
    task_id: str | None = None
    worker_id: str | None = None
    queue: str | None = None  # `queue_without_worker`
    setting: str | None = None  # `settings_mismatch`
    partition: int | None = None  # `redis_*` on a cluster: the lowest partition of the shard


@attrs.frozen
class QueueHealth:
    """`GET /api/v1/tasks/health`: the worst alert's severity, the metrics and the alerts."""

    status: str
    metrics: dict[str, Any]
    alerts: list[Alert]
    timestamp: datetime | None = None
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False, eq=False)


@attrs.frozen
class Metrics:
    """`GET /api/v1/tasks/metrics`."""

    total_tasks: int
    completed_tasks: int
    failed_tasks: int
    retried_tasks: int
    cancelled_tasks: int
    success_rate: float
    failure_rate: float
    average_durations: dict[str, float]
    currently_running: int
    timestamp: datetime | None = None
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False, eq=False)


# The event types taskd sends about a task; `gap` is the stream's own (StreamGap), and any other
# type is skipped.
_EVENT_TYPES = frozenset({"status", "progress"})
_GAP = "gap"
# What a stream's reader does with a `gap`: skip it, raise EventsLost, or yield a StreamGap.
_GapMode = Literal["skip", "raise", "yield"]


@attrs.frozen
class StreamGap:
    """A stream's `gap` event: events after `after` (`0-0`: from the first) were trimmed before the
    stream sent them; `kept_from` is the oldest id it still kept. Not a task's event: no id."""

    after: str
    kept_from: str


@attrs.frozen
class TaskEvent:
    """One server-sent event of a task: `type` is `status` or `progress`; `id` resumes a stream."""

    id: str | None
    type: str
    task_id: str
    project_id: str
    status: TaskStatus
    progress: float = 0.0
    current_step: str | None = None
    error: str | None = None
    attempt: int = 0
    task_type: str | None = None
    at: float | None = None
    result: Any = None

    @property
    def is_terminal(self) -> bool:
        """True for the status event that ends the task."""
        return self.type == "status" and self.status in TERMINAL

    @classmethod
    def from_task(cls, task: Task) -> TaskEvent:
        """The event a poll stands for (no id)."""
        return cls(
            None,
            "status",
            task.task_id,
            task.project_id,
            task.status,
            task.progress,
            task.current_step,
            task.error,
            task.attempt,
            task.task_type,
            time.time(),
            task.result,
        )


class _StreamUnavailable(Exception):
    """The server has no event stream for this (an older taskd, or a proxy that refuses it);
    `answered`: whether taskd answered in this wait before (not a URL where nothing ever answers)."""

    def __init__(self, what: str, *, answered: bool = True) -> None:
        super().__init__(what)
        self.answered = answered


def _passing(refusal: TaskdError) -> bool:
    """Whether a refusal is one a restart or a moment without Redis gives, that wait rides out."""
    return isinstance(refusal, TaskdConnectionError) or refusal.status in _STREAM_PASSING


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _too_large(status: int, what: str, limit: int) -> InvalidResponse:
    return InvalidResponse(status, f"{what} over {limit} bytes (the client's max_response_bytes)")


async def _lines(content: aiohttp.StreamReader, limit: int) -> AsyncIterator[str]:
    """The stream's lines (LF or CRLF ended), up to `limit` bytes each.

    aiohttp's own line reading gives up on a line past twice its read buffer (128 KiB) with
    LineTooLong, and a `completed` event carries the task's result, up to the server's
    execution.result_max_bytes (1 MiB by default), in one line: so chunks are split here. The
    pieces of a long line are kept in a list and joined once, so reading one is linear in its size.
    """
    pieces: list[bytes] = []
    size = 0
    async for chunk in content.iter_any():
        *ended, rest = chunk.split(b"\n")
        for end in ended:
            pieces.append(end)
            # As the SSE standard decodes: a byte that is not UTF-8 is U+FFFD, not an error.
            yield b"".join(pieces).removesuffix(b"\r").decode("utf-8", errors="replace")
            pieces, size = [], 0
        if rest:
            pieces.append(rest)
            size += len(rest)
            if size > limit:  # a line that never ends would otherwise be held whole
                raise _too_large(200, "an event stream line", limit)


async def _sse(response: aiohttp.ClientResponse, limit: int) -> AsyncIterator[tuple[str | None, str, str]]:
    """(id, event, data) of each event of a text/event-stream response, up to `limit` bytes each."""
    event_id: str | None = None
    name, data = "message", list[str]()
    size = 0
    async for line in _lines(response.content, limit):
        if not line:
            if data:
                yield event_id, name, "\n".join(data)
            name, data, size = "message", [], 0
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "id" and not _CONTROL.search(value):
            # An id is sent back as the Last-Event-ID header, which cannot carry a control
            # character (aiohttp refuses it with ValueError); SSE ignores an id holding NUL too.
            event_id = value or None
        elif field == "event":
            name = value
        elif field == "data":
            data.append(value)
            size += len(value)
            if size > limit:  # data lines that never end their event
                raise _too_large(200, "an event", limit)


def _stream_item(
    event_id: str | None, name: str, data: str, on_gap: _GapMode
) -> TaskEvent | StreamGap | None:
    """What the stream's reader yields for one event: None for one it skips."""
    if name == _GAP and on_gap != "skip":
        with _taskd_answer("StreamGap"):
            gap = _structure(StreamGap, orjson.loads(data))
        if on_gap == "raise":
            raise EventsLost(gap)
        return gap
    if name not in _EVENT_TYPES:
        # A type a later taskd may add: skipped, as an EventSource skips a type it has no listener
        # for, rather than ending every wait of an older client.
        return None
    with _taskd_answer("TaskEvent"):
        fields = {**orjson.loads(data), "id": event_id, "type": name}
    return _structure(TaskEvent, fields)


async def _deliver(on_event: Callable[[TaskEvent], Any], event: TaskEvent) -> None:
    """Give `event` to wait's `on_event`, awaiting what it returns if that is awaitable."""
    outcome = on_event(event)
    if inspect.isawaitable(outcome):
        await outcome


class TaskClient:
    """An async client of one taskd server; use `async with` (or call `close`).

    `retries`: how many more times a request refused with 429 or 503 is sent; `max_retry_wait`:
    the longest Retry-After waited for (a longer one raises at once, as the last refusal does);
    `max_response_bytes`: the largest answer, or event of a stream, read (a larger one raises
    InvalidResponse).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str = "",
        *,
        timeout: float = 60.0,
        session: aiohttp.ClientSession | None = None,
        retries: int = 3,
        max_retry_wait: float = 60.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        if retries < 0 or max_retry_wait < 0:
            raise ValueError("retries and max_retry_wait must not be negative")
        self.url = url.rstrip("/")
        # The base as sent (percent-encoded once), that the paths' encoded segments are appended to.
        base = yarl.URL(self.url)
        self._base = str(base)
        # How errors name it: a password in the URL is not repeated in them.
        self._shown = str(base.with_password("***")) if base.password else self.url
        if base.scheme not in ("http", "https") or not base.host:
            # Else each call raised TaskdConnectionError "cannot reach taskd at 127.0.0.1:8001:
            # 127.0.0.1:8001/api/v1/health", as though taskd were down, for a URL without its scheme.
            raise ValueError(f"url must be http(s)://host[:port], not {self._shown!r}")
        if not api_key.isprintable():
            # Else each request raised aiohttp's "Forbidden control character detected in headers"
            # from deep inside it: a key read from a file with its line break, say. Not repeated.
            raise ValueError("api_key holds a line break or another control character")
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self.max_response_bytes = max_response_bytes
        self._session = session
        self._own_session = session is None
        self._streams: aiohttp.ClientSession | None = None
        # The event loop its own sessions were made in: they work in that loop only.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session this client made; the client cannot be used after. One given the
        caller's `session` closes nothing and stays usable, as it always was (`async with` around
        each use of a long-lived client): that session is the caller's to close."""
        self._closed = self._own_session
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None
        if self._streams is not None:
            await self._streams.close()
            self._streams = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session (made on first use)."""
        if self._closed:
            # Rather than a session made again, which nothing would close: aiohttp printed
            # "Unclosed client session" at the program's exit (SyncTaskClient refuses the same way).
            raise RuntimeError("this TaskClient is closed")
        self._check_loop()
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    def _check_loop(self) -> None:
        """Refuse a call from an event loop other than the one this client's sessions were made in.

        A client used again in a second `asyncio.run` raised aiohttp's "Event loop is closed" from
        deep inside a request (its connections belong to the first loop, gone with it).
        """
        if not self._own_session:
            return  # the caller's session: the caller's loop
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # `session` read outside any loop: aiohttp says what it says
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError(
                "this TaskClient was first used in another event loop (an earlier asyncio.run?); "
                "a TaskClient works in one event loop only: make one in each"
            )

    @property
    def _stream_session(self) -> aiohttp.ClientSession:
        """The session event streams are read with: a pool of their own, without a size limit (each
        open stream holds its connection whatever the pool). In the requests' pool, 100 open streams
        (aiohttp's limit) left every request waiting for a connection until a stream ended, and then
        raising TaskdConnectionError after `timeout` without taskd ever being asked. A caller's
        `session` is used for both."""
        if not self._own_session or self._closed:
            return self.session
        self._check_loop()
        if self._streams is None:
            self._streams = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._streams

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"X-API-Key": self.api_key, **(extra or {})}

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        ok: tuple[int, ...] = (200,),
        idempotency_key: str | None = None,
        extra_headers: dict[str, str] | None = None,
        extra_time: float = 0.0,
        creates: bool = False,
    ) -> Any:
        """Send a request, again after a 429 or 503 (up to `retries` times); the JSON body of the answer.

        A request that `creates` tasks is sent with an `Idempotency-Key` of its own when the caller
        gave none and it may be sent again: a 503 can come after the task was stored (Redis answered
        too late), and taskd answers the resend with that task instead of storing another. A request
        with an `Idempotency-Key` is also sent again when its answer was lost (the connection
        dropped after it went out, or a proxy's 502 or 504: the API node died while answering): a load balancer
        takes the resend to another node, which answers with what the first one stored, if it did.
        """
        if creates and idempotency_key is None and self.retries:
            idempotency_key = str(uuid.uuid4())
        tries = 0
        while True:
            try:
                return await self._send(
                    method, path, json, params, ok, idempotency_key, extra_headers, extra_time
                )
            except RateLimited as refused:
                tries += 1
                delay = self._retry_delay(refused, tries)
                if delay is None:
                    raise
                await asyncio.sleep(delay)
            except TaskdError as failed:
                tries += 1
                if idempotency_key is None or not _answer_lost(failed) or tries > self.retries:
                    raise
                if extra_time:
                    # A held answer (Prefer: wait) is lost when a proxy gives up before the wait is
                    # up: nginx's 504, a Google load balancer's 502, an idle timeout's close. One
                    # that waits again is lost again, each try one more wait and one more submit of
                    # the key's quota. Without the wait, the resend answers at once with what the
                    # first stored (the server did not wait), wherever the first one was lost.
                    extra_headers = {k: v for k, v in (extra_headers or {}).items() if k != "Prefer"}
                    extra_time = 0.0
                await asyncio.sleep(self._backoff(tries))

    def _retry_delay(self, refused: RateLimited, tries: int) -> float | None:
        """Seconds before sending again after the `tries`-th refusal; None: give up and raise it."""
        if tries > self.retries:
            return None
        if refused.retry_after is None:
            return self._backoff(tries)
        return float(refused.retry_after) if refused.retry_after <= self.max_retry_wait else None

    @staticmethod
    def _backoff(tries: int) -> float:
        """Seconds before sending again after the `tries`-th failure that named no wait."""
        return exponential_delay(
            tries, _REFUSED_RETRY_FIRST, cap=_REFUSED_RETRY_CAP, jitter=_REFUSED_RETRY_JITTER
        )

    async def _send(
        self,
        method: str,
        path: str,
        json: Any,
        params: dict[str, Any] | None,
        ok: tuple[int, ...],
        idempotency_key: str | None,
        extra_headers: dict[str, str] | None,
        extra_time: float,
    ) -> Any:
        data = _encoded(json) if json is not None else None
        headers = self._headers({"Content-Type": "application/json"} if data is not None else None)
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        headers.update(extra_headers or {})
        # Always given: aiohttp reads timeout=None as "no limit at all", not as the session's. A
        # request the server holds on purpose (Prefer: wait) may take that much longer.
        timeout = aiohttp.ClientTimeout(total=self.timeout + extra_time)
        try:
            async with self.session.request(
                method,
                self._url(path),
                data=data,
                params=params,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                self._refuse_redirect(response)
                raw = await self._read(response)
                try:
                    body = orjson.loads(raw) if raw else {}
                except orjson.JSONDecodeError:
                    if response.status in ok:
                        raise InvalidResponse(
                            response.status,
                            f"taskd at {self._shown} answered {response.status} with "
                            f"{response.content_type}, not JSON",
                        ) from None
                    body = {"error": "http_error", "message": raw.decode(errors="replace")[:500]}
                if response.status not in ok:
                    raise error_for(response.status, body, response.headers.get("Retry-After"))
                return body
        except aiohttp.ClientError as exc:
            # Ended after the request went out (a reset or a close mid-answer): not a refused
            # connection, nor a URL or redirect aiohttp would not send to.
            dropped = isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError) or (
                isinstance(exc, aiohttp.ClientOSError) and not isinstance(exc, aiohttp.ClientConnectorError)
            )
            raise TaskdConnectionError(
                f"cannot reach taskd at {self._shown}: {exc}", dropped=dropped
            ) from exc
        except TimeoutError as exc:
            raise TaskdConnectionError(f"taskd at {self._shown} did not answer in {self.timeout} s") from exc

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """The answer's body; InvalidResponse past max_response_bytes, before holding more."""
        limit = self.max_response_bytes
        if (response.content_length or 0) > limit:
            raise _too_large(response.status, "an answer", limit)
        pieces, size = [], 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > limit:  # sent without a Content-Length, or longer than it said
                raise _too_large(response.status, "an answer", limit)
            pieces.append(chunk)
        return b"".join(pieces)

    def _refuse_redirect(self, response: aiohttp.ClientResponse) -> None:
        """Raise for a redirect rather than follow it: aiohttp would send the X-API-Key (and a
        submit's body) along to whatever host the Location names, whoever answered with it."""
        if 300 <= response.status < 400:
            location = response.headers.get("Location", "nowhere")
            raise TaskdError(
                response.status,
                {
                    "error": "redirected",
                    "message": f"taskd at {self._shown} redirected to {location} (not followed: "
                    "the API key would go along); give the client the URL taskd answers at",
                },
            )

    async def submit(
        self,
        project_id: str,
        task_type: str,
        task_data: Mapping[str, Any],
        *,
        priority: int = 2,
        callback_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        keep_for: int | None = None,
        idempotency_key: str | None = None,
        depends_on: Sequence[str] | None = None,
        run_at: datetime | str | None = None,
        delay_seconds: float | None = None,
        webhook_events: Sequence[str] | None = None,
        wait: int | None = None,
    ) -> Submitted:
        """Submit a task; raises ValidationFailed with per-field `details` when it is refused.

        `keep_for`: seconds the task's record and result are kept once it ends (default: the
        server's, 24 h). `idempotency_key`: the same key with the same call within 24 h answers
        with the first call's task instead of making another (so a call that timed out can be sent
        again); with a different call it raises IdempotencyKeyReused. With `depends_on` it queues
        once those tasks have completed, and its task_data may read their results through
        `{"$ref": "<task_id>#/<JSON pointer>"}` objects. With `run_at` (an aware datetime or an
        RFC 3339 string) or `delay_seconds` (not both) it stays queued, its `scheduled_for` set,
        until then; a past time runs it now. `webhook_events`: which events POST to
        `callback_url` (default the three ends). `wait` (1..60 s): `Prefer: wait`, the answer
        comes when the task ends or the time is up, with its status in `task` (None where the
        server did not wait).
        """
        if isinstance(run_at, datetime):
            offset = run_at.utcoffset()
            if offset is None:
                # A naive time would be read in the server's zone, or refused: say so here.
                raise ValueError("run_at must be timezone-aware (e.g. datetime.now(UTC) + ...)")
            # RFC 3339's offsets are whole minutes; isoformat writes an offset's seconds too (a
            # zone's local mean time before its standard time, a timezone(timedelta(seconds=…))),
            # which the server refuses: such a time is sent as the same instant in UTC.
            run_at = (run_at if not offset % timedelta(minutes=1) else run_at.astimezone(UTC)).isoformat()
        body: dict[str, Any] = {
            "project_id": project_id,
            "task_type": task_type,
            "task_data": _as_json(task_data),
            "priority": priority,
            "metadata": _as_json(metadata or {}),
        }
        if callback_url:
            body["callback_url"] = callback_url
        if keep_for is not None:
            body["keep_for"] = keep_for
        if depends_on:
            body["depends_on"] = _as_json(depends_on)
        if run_at is not None:
            body["run_at"] = run_at
        if delay_seconds is not None:
            body["delay_seconds"] = delay_seconds
        if webhook_events is not None:
            body["webhook_events"] = list(webhook_events)
        answer = await self._request(
            "POST",
            "/api/v1/tasks/submit",
            json=body,
            idempotency_key=idempotency_key,
            extra_headers={"Prefer": f"wait={wait}"} if wait is not None else None,
            extra_time=wait or 0,
            creates=True,
        )
        submitted = _structure(Submitted, answer)
        if "progress" in answer:  # a status, which the plain submit answer never is
            return attrs.evolve(submitted, task=_structure(Task, answer))
        return submitted

    async def submit_batch(
        self, tasks: Sequence[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> list[Submitted]:
        """Submit up to 100 tasks at once, stored all or none; the answers are in the same order.

        Each item is a submit's body (`project_id`, `task_type`, `task_data`, and any of the
        optional fields); an item names an earlier one as `"@<index>"` in its `depends_on` and in
        `{"$ref": "@<index>#/<JSON pointer>"}`. One bad item raises ValidationFailed with details
        named `tasks[<index>].<field>`, and nothing is stored. `idempotency_key`: as for `submit`.
        """
        sent = _as_json(tasks)
        answer = await self._request(
            "POST",
            "/api/v1/tasks/batch",
            json={"tasks": [_as_json(task) for task in sent] if isinstance(sent, list | tuple) else sent},
            idempotency_key=idempotency_key,
            creates=True,
        )
        with _taskd_answer("batch answer"):
            submitted = [_structure(Submitted, item) for item in answer["tasks"]]
        if len(submitted) != len(tasks):  # the answers are matched to the tasks by their order
            raise InvalidResponse(200, f"not a batch answer: {len(submitted)} answers for {len(tasks)} tasks")
        return submitted

    async def status(self, task_id: str) -> Task:
        """A task's status; raises TaskNotFoundError."""
        return _structure(Task, await self._request("GET", f"/api/v1/tasks/{_segment(task_id)}/status"))

    async def cancel(self, task_id: str) -> Cancellation:
        """Cancel a queued or running task; raises InvalidState for one that already ended."""
        return _structure(Cancellation, await self._request("DELETE", f"/api/v1/tasks/{_segment(task_id)}"))

    async def retry(self, task_id: str, *, idempotency_key: str | None = None) -> Retried:
        """Submit a failed or cancelled task again; the answer holds the new task's id.

        `idempotency_key`: as for `submit`, the same key again answers with the first retry's task.
        """
        answer = await self._request(
            "POST", f"/api/v1/tasks/{_segment(task_id)}/retry", idempotency_key=idempotency_key, creates=True
        )
        return _structure(Retried, answer)

    async def list_tasks(
        self,
        project_id: str,
        *,
        status: str | None = None,
        task_type: str | None = None,
        page: int = 1,
        limit: int = 20,
    ) -> TaskPage:
        """One page of a project's tasks, newest first."""
        params: dict[str, Any] = {"page": page, "limit": limit}
        if status:
            params["status"] = status
        if task_type:
            params["task_type"] = task_type
        body = await self._request("GET", f"/api/v1/projects/{_segment(project_id)}/tasks", params=params)
        with _taskd_answer("TaskPage"):
            listed = _structure(
                TaskPage,
                {
                    "tasks": body["tasks"],
                    **{name: body["pagination"][name] for name in ("page", "limit", "total", "total_pages")},
                },
            )
        return attrs.evolve(listed, raw=body)

    async def health(self) -> Health:
        """Service health; an unhealthy service (503) is an answer too, not an error."""
        return _structure(Health, await self._request("GET", "/api/v1/health", ok=(200, 503)))

    async def queue_health(self) -> QueueHealth:
        """Queue health: alerts at the document's thresholds."""
        return _structure(QueueHealth, await self._request("GET", "/api/v1/tasks/health"))

    async def metrics(self) -> Metrics:
        """The cumulative task metrics."""
        body = await self._request("GET", "/api/v1/tasks/metrics")
        with _taskd_answer("Metrics"):
            metrics = _structure(Metrics, {**body["metrics"], "timestamp": body.get("timestamp")})
        return attrs.evolve(metrics, raw=body)

    @overload
    def events(
        self, task_id: str, *, last_event_id: str | None = None, gaps: Literal[False] = False
    ) -> AsyncIterator[TaskEvent]: ...
    @overload
    def events(
        self, task_id: str, *, last_event_id: str | None = None, gaps: Literal[True]
    ) -> AsyncIterator[TaskEvent | StreamGap]: ...
    @overload
    def events(
        self, task_id: str, *, last_event_id: str | None = None, gaps: bool = False
    ) -> AsyncIterator[TaskEvent | StreamGap]: ...
    async def events(
        self, task_id: str, *, last_event_id: str | None = None, gaps: bool = False
    ) -> AsyncIterator[TaskEvent | StreamGap]:
        """A task's events as they happen (from the first, or after `last_event_id`); ends after the last.

        A `gap` (progress events trimmed before they were sent) is skipped: every event carries the
        task's whole state and its end is never trimmed. With `gaps=True` it is yielded as a StreamGap.
        """
        path = f"/api/v1/tasks/{_segment(task_id)}/events"
        async for event in self._stream(path, last_event_id, "yield" if gaps else "skip"):
            yield event

    @overload
    def project_events(
        self, project_id: str, *, last_event_id: str | None = None, gaps: Literal[False] = False
    ) -> AsyncIterator[TaskEvent]: ...
    @overload
    def project_events(
        self, project_id: str, *, last_event_id: str | None = None, gaps: Literal[True]
    ) -> AsyncIterator[TaskEvent | StreamGap]: ...
    @overload
    def project_events(
        self, project_id: str, *, last_event_id: str | None = None, gaps: bool = False
    ) -> AsyncIterator[TaskEvent | StreamGap]: ...
    async def project_events(
        self, project_id: str, *, last_event_id: str | None = None, gaps: bool = False
    ) -> AsyncIterator[TaskEvent | StreamGap]:
        """Events of every task of a project from now (or after `last_event_id`); never ends by itself.

        A `gap` means whole tasks' events, their ends among them, were lost: it raises EventsLost,
        unless `gaps=True`, which yields it as a StreamGap (then list the project's tasks again).
        """
        path = f"/api/v1/projects/{_segment(project_id)}/events"
        async for event in self._stream(path, last_event_id, "yield" if gaps else "raise"):
            yield event

    def _url(self, path: str) -> yarl.URL:
        # Sent as built: parsing it again would decode the segments' dots and resolve them.
        return yarl.URL(self._base + path, encoded=True)

    async def _stream(
        self, path: str, last_event_id: str | None, on_gap: _GapMode
    ) -> AsyncIterator[TaskEvent | StreamGap]:
        headers = self._headers({"Accept": "text/event-stream"})
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=_STREAM_READ_TIMEOUT)
        try:
            async with self._stream_session.get(
                self._url(path), headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                self._refuse_redirect(response)
                if response.status == 204:
                    return
                if response.status != 200:
                    raw = await self._read(response)
                    try:
                        body = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        body = {"error": "http_error", "message": raw.decode(errors="replace")[:500]}
                    if response.status in (404, 405) and (
                        not isinstance(body, dict) or body.get("error") != "task_not_found"
                    ):
                        raise _StreamUnavailable(path)
                    raise error_for(response.status, body, response.headers.get("Retry-After"))
                if not response.content_type.startswith("text/event-stream"):
                    raise _StreamUnavailable(path)
                async for event_id, name, data in _sse(response, self.max_response_bytes):
                    event = _stream_item(event_id, name, data, on_gap)
                    if event is not None:
                        yield event
        except aiohttp.ClientError as exc:
            raise TaskdConnectionError(f"event stream from {self._shown} broke: {exc}") from exc
        except TimeoutError as exc:
            raise TaskdConnectionError(f"event stream from {self._shown} went silent") from exc

    async def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,
        on_event: Callable[[TaskEvent], Any] | None = None,
        poll_interval: float = 1.0,
        raise_on_failure: bool = True,
    ) -> Task:
        """Follow a task until it ends and return its final status.

        Events come over SSE (resumed with `Last-Event-ID` after a dropped connection); when the
        stream is not available, the status is polled every `poll_interval` seconds instead.
        `on_event` is called with each TaskEvent (and awaited when it returns an awaitable: the
        stream is then read no faster than it takes them). Raises TaskFailed / TaskCancelled (with `.task`)
        unless `raise_on_failure` is false, and TimeoutError after `timeout` seconds.
        """
        async with asyncio.timeout(timeout):
            try:
                await self._follow_stream(task_id, on_event)
            except _StreamUnavailable as unavailable:
                # Once taskd has answered, a taskd that cannot be reached is one restarting (the old
                # process drains its jobs for up to 30 s): polled through for `self.timeout` seconds.
                ride_out = self.timeout if unavailable.answered else 0.0
                await self._poll(task_id, on_event, poll_interval, ride_out)
            task = await self.status(task_id)
        if raise_on_failure and task.status is TaskStatus.FAILED:
            raise TaskFailed(task)
        if raise_on_failure and task.status is TaskStatus.CANCELLED:
            raise TaskCancelled(task)
        return task

    async def _follow_stream(self, task_id: str, on_event: Callable[[TaskEvent], Any] | None) -> None:
        """Return once the terminal event was seen, or the task has ended; reconnect in between."""
        last_id: str | None = None
        failures = early_ends = 0
        answered = False
        while True:
            try:
                async for event in self.events(task_id, last_event_id=last_id):
                    failures, answered = 0, True
                    last_id = event.id or last_id
                    if on_event is not None:
                        await _deliver(on_event, event)
                    if event.is_terminal:
                        return
                # The stream ended early (a server restart) or had nothing more to send (204). Asked
                # within this try: a taskd that is restarting refuses this request as it refuses a
                # stream, and that is one more failed connection, not the end of the wait.
                if (await self.status(task_id)).is_terminal:
                    return
                answered = True
            except TaskdError as exc:
                if not _passing(exc):
                    raise
                failures += 1
                if failures >= _STREAM_RETRIES:
                    raise _StreamUnavailable(task_id, answered=answered) from None
                delay = exponential_delay(failures, _STREAM_RETRY_FIRST, cap=_STREAM_RETRY_CAP)
                if isinstance(exc, RateLimited) and exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, self.max_retry_wait))
                await asyncio.sleep(delay)
                continue
            # A pause growing to 2 s before reconnecting: a server or proxy that ends every stream
            # after an event or none would otherwise be asked again as fast as it answers.
            early_ends += 1
            await asyncio.sleep(exponential_delay(early_ends, _STREAM_RETRY_FIRST, cap=_STREAM_RETRY_CAP))

    async def _poll(
        self, task_id: str, on_event: Callable[[TaskEvent], Any] | None, interval: float, ride_out: float
    ) -> None:
        """Ask the status every `interval` s until the task ends; a refusal that passes (`_passing`)
        is asked again until none was answered for `ride_out` seconds, then raised."""
        seen: tuple[Any, ...] | None = None
        unanswered_since: float | None = None
        while True:
            try:
                task = await self.status(task_id)
            except TaskdError as exc:
                now = time.monotonic()
                unanswered_since = now if unanswered_since is None else unanswered_since
                if not _passing(exc) or now - unanswered_since >= ride_out:
                    raise
                await asyncio.sleep(interval)
                continue
            unanswered_since = None
            if on_event is not None and (task.status, task.progress, task.current_step) != seen:
                seen = (task.status, task.progress, task.current_step)
                await _deliver(on_event, TaskEvent.from_task(task))
            if task.is_terminal:
                return
            await asyncio.sleep(interval)
