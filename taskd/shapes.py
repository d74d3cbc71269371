"""Every JSON body taskd sends, one attrs class each: the views render them, the OpenAPI document is
generated from them, the Python client reads them, and the events the store's Lua writes are checked
against `TaskEvent`. The one body taskd reads, the submission, is `SubmitRequest`, with its limits.

A field's `metadata` carries its description and the JSON Schema keywords the document publishes for
it (`meta`). A field whose default is `ABSENT` is left out of the body when it has no value; every
other field is always sent (as `null` when it has none), so the document lists it as required.
"""

from __future__ import annotations

import enum
import functools
import re
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Final, Literal

import attrs
import cattrs

from taskd import model


class Absent(enum.Enum):
    """The type of `ABSENT`: a field that is not in the body at all (unlike `None`, sent as null)."""

    ABSENT = "absent"


ABSENT: Final = Absent.ABSENT

# `2025-01-15T10:30:00Z`, as `taskd.model.iso` renders every time.
TIMESTAMP: Final = {"pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"}


def meta(description: str = "", **schema: Any) -> dict[str, Any]:
    """A field's metadata: its description and the JSON Schema keywords that hold for its values."""
    return {"description": description, "schema": schema}


# Values that render as themselves; the common case, so looked up first (bool is not an int here:
# the exact type is looked up, so an enum that is also a str still renders as its value).
_PLAIN: Final = frozenset({str, int, float, bool, type(None)})


@functools.cache
def _field_names(kind: type) -> tuple[str, ...] | None:
    # attrs.has and attrs.fields per value were a fifth of a submit's answer; a class's fields do not change.
    return tuple(field.name for field in attrs.fields(kind)) if attrs.has(kind) else None


def render(shape: Any) -> Any:
    """A shape as plain JSON data: attrs classes as objects without their `ABSENT` fields, enums as values."""
    kind: type = type(shape)
    if kind in _PLAIN:
        return shape
    # A plain value is taken as it is without a call of render for it: most of a body's values are
    # plain, and a call each was most of what rendering an answer cost (docs/performance.md).
    names = _field_names(kind)
    if names is not None:
        return {
            name: value if type(value) in _PLAIN else render(value)
            for name in names
            if (value := getattr(shape, name)) is not ABSENT
        }
    if isinstance(shape, enum.Enum):
        return shape.value
    if isinstance(shape, list | tuple):
        return [item if type(item) in _PLAIN else render(item) for item in shape]
    if isinstance(shape, dict):
        return {key: value if type(value) in _PLAIN else render(value) for key, value in shape.items()}
    return shape


def _absent_union(kind: Any) -> bool:
    return typing.get_origin(kind) in (types.UnionType, typing.Union) and Absent in typing.get_args(kind)


def make_converter(*, forbid_extra_keys: bool = False) -> cattrs.Converter:
    """A cattrs converter that reads these bodies back; strict about unknown fields when asked."""
    converter = cattrs.Converter(forbid_extra_keys=forbid_extra_keys)

    # A field that may be ABSENT holds, when the body has it, a value of the rest of its type.
    def absent_hook(kind: Any) -> Callable[[Any, Any], Any]:
        rest = tuple(arg for arg in typing.get_args(kind) if arg is not Absent)
        inner: Any = rest[0] if len(rest) == 1 else typing.Union[rest]  # noqa: UP007 (a union made at run time)
        return lambda value, _: converter.structure(value, inner)

    converter.register_structure_hook_factory(_absent_union, absent_hook)
    return converter


CONVERTER: Final = make_converter()
# For bodies taskd builds from dicts of its own: a key the shape lacks is a bug to see, not to drop.
STRICT_CONVERTER: Final = make_converter(forbid_extra_keys=True)


# ---- errors ----


@attrs.frozen
class Error:
    """Every refused request (and `internal_error`): what went wrong, per field where it can say."""

    error: str = attrs.field(
        metadata=meta("What kind of error", examples=["validation_error", "rate_limited"])
    )
    message: str = attrs.field(metadata=meta("What went wrong, for a person"))
    details: dict[str, str] | Absent = attrs.field(
        default=ABSENT, metadata=meta("`validation_error`: one message per bad field, by its path")
    )
    retry_after: int | Absent = attrs.field(
        default=ABSENT, metadata=meta("`rate_limited`, `service_unavailable`: seconds to wait", minimum=0)
    )


@attrs.frozen
class Detail:
    """A cancel or retry refused because of the task's state, in the document's `detail` shape."""

    detail: str


# ---- requests ----

# The limits of a submission: `taskd.submit.submission` checks them, the document publishes them.
PROJECT_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
CALLBACK_URL: Final = re.compile(r"^https?://[^\s/?#]+[^\s]*$")
MAX_CALLBACK_URL: Final = 2048
PRIORITIES: Final = (model.PRIORITY_HIGH, model.PRIORITY_NORMAL, model.PRIORITY_LOW)
# `keep_for`, seconds an ended task's record is kept: a minute at least, 30 days at most.
MIN_KEEP_FOR: Final = 60
MAX_KEEP_FOR: Final = 30 * 24 * 3600
MAX_DEPENDS_ON: Final = 20
# How far ahead `run_at`/`delay_seconds` may schedule a task by default (limits.max_schedule_ahead).
MAX_SCHEDULE_AHEAD: Final = 30 * 24 * 3600
# Submissions in one batch request.
MAX_BATCH: Final = 100
WebhookEvent = Literal["started", "progress", "completed", "failed", "cancelled"]
WEBHOOK_EVENTS: Final[tuple[str, ...]] = typing.get_args(WebhookEvent)


@attrs.frozen
class SubmitRequest:
    """`POST /api/v1/tasks/submit`: one task to run. Unknown top-level fields are ignored.

    The document publishes one variant per task type, with `task_data` that type's input class.
    No validators here: `taskd.submit.submission.parse_submission` checks a body against these
    limits with the document's messages, and `Submission` (this class and the submitting key) is
    also built from stored records, which it must not check again.
    """

    project_id: str = attrs.field(metadata=meta("Whose task it is", pattern=f"^{PROJECT_ID.pattern}$"))
    task_type: str = attrs.field(metadata=meta("An installed task type"))
    task_data: dict[str, Any] = attrs.field(metadata=meta("The task type's input"))
    priority: int = attrs.field(
        default=model.PRIORITY_NORMAL, metadata=meta("1 high, 2 normal, 3 low", enum=list(PRIORITIES))
    )
    callback_url: str | None = attrs.field(
        default=None,
        metadata=meta(
            "Where the webhook goes when the task ends",
            pattern=CALLBACK_URL.pattern,
            maxLength=MAX_CALLBACK_URL,
        ),
    )
    # `null` is as if left out, as for the optional fields typed `| None` (the document's own
    # clients send it); published so, as the parser takes it.
    metadata: dict[str, Any] = attrs.field(
        factory=dict,
        metadata=meta("Kept with the task and sent back in its webhook", type=["object", "null"]),
    )
    keep_for: int | None = attrs.field(
        default=None,
        metadata=meta(
            "Seconds the task's record and result are kept after it ends (default `storage.task_ttl`, 24 h)",
            minimum=MIN_KEEP_FOR,
            maximum=MAX_KEEP_FOR,
        ),
    )
    depends_on: list[str] = attrs.field(
        factory=list,
        metadata=meta(
            "Ids of tasks of the same project that must complete before this one queues; "
            'task_data may then hold {"$ref": "<task_id>#/<JSON pointer>"} objects, replaced by '
            "that part of the named task's result just before this one runs",
            type=["array", "null"],
            items={"minLength": 1},
            maxItems=MAX_DEPENDS_ON,
            uniqueItems=True,
        ),
    )
    run_at: str | None = attrs.field(
        default=None,
        metadata=meta(
            "When the task may start (RFC 3339, with its offset); it stays queued with `scheduled_for` "
            "until then. A past time runs it now; at most `limits.max_schedule_ahead` (30 days) ahead. "
            "Not with `delay_seconds`",
            format="date-time",
        ),
    )
    delay_seconds: float | None = attrs.field(
        default=None,
        metadata=meta(
            "Seconds from now before the task may start, like `run_at`: at most `limits.max_schedule_ahead` "
            "(30 days) ahead; not with `run_at`",
            minimum=0,
        ),
    )

    webhook_events: list[WebhookEvent] | None = attrs.field(
        default=None,
        metadata=meta(
            "Which events send a webhook to `callback_url`; absent: `completed`, `failed`, `cancelled`"
            " (`progress` at most once per `webhooks.progress_interval`)"
        ),
    )


@attrs.frozen
class BatchRequest:
    """`POST /api/v1/tasks/batch`: several submissions, stored all or none.

    An item may depend on an earlier item of the batch: `"@<index>"` in its `depends_on` and
    `{"$ref": "@<index>#/<JSON pointer>"}` in its `task_data` (checked by `taskd.submit.batch`).
    """

    tasks: list[SubmitRequest] = attrs.field(
        metadata=meta(
            'Submissions, in order; "@<index>" names an earlier one in depends_on and in a $ref',
            minItems=1,
            maxItems=MAX_BATCH,
        )
    )


# ---- tasks ----


Status = model.TaskStatus


@attrs.frozen
class SubmitResponse:
    """`POST /api/v1/tasks/submit`: the task as stored and queued."""

    task_id: str
    status: Status
    project_id: str
    estimated_duration: int = attrs.field(metadata=meta("Seconds the task is expected to run", minimum=1))
    queue_position: int = attrs.field(
        metadata=meta(
            "Tasks ahead of it on its queue; 0 while it waits for its dependencies or its `run_at`",
            minimum=0,
        )
    )
    created_at: str = attrs.field(metadata=meta(**TIMESTAMP))


@attrs.frozen
class BatchResponse:
    """`POST /api/v1/tasks/batch`: each task as stored and queued, in the order submitted."""

    tasks: list[SubmitResponse]


@attrs.frozen
class Webhook:
    """How the delivery of a task's webhook is going."""

    attempts: int = attrs.field(metadata=meta(minimum=0))
    last_status: int | None = attrs.field(metadata=meta("HTTP status of the last attempt"))
    last_error: str | None
    last_attempt_at: str | None = attrs.field(metadata=meta(**TIMESTAMP))
    delivered_at: str | None = attrs.field(metadata=meta(**TIMESTAMP))
    failed_at: str | None = attrs.field(metadata=meta(**TIMESTAMP))
    next_attempt_at: str | None = attrs.field(metadata=meta(**TIMESTAMP))


@attrs.frozen
class TaskStatusBody:
    """`GET /api/v1/tasks/{task_id}/status`: the document's fields, then taskd's extras."""

    schema_name: ClassVar[str] = "TaskStatus"  # the name the OpenAPI document has always given it

    task_id: str
    project_id: str
    status: Status
    progress: float = attrs.field(metadata=meta(minimum=0, maximum=1))
    current_step: str | None
    result: dict[str, Any] | None
    error: str | None
    started_at: str | None = attrs.field(metadata=meta(**TIMESTAMP))
    completed_at: str | None = attrs.field(metadata=meta(**TIMESTAMP))
    processing_time: float | None = attrs.field(metadata=meta("Seconds from start to end"))
    task_type: str
    priority: int
    attempt: int = attrs.field(metadata=meta("Runs started so far", minimum=0))
    last_error: str | None
    next_retry_at: str | None = attrs.field(metadata=meta(**TIMESTAMP))
    created_at: str = attrs.field(metadata=meta(**TIMESTAMP))
    updated_at: str | None = attrs.field(metadata=meta(**TIMESTAMP))
    traceback: str | Absent = attrs.field(default=ABSENT, metadata=meta("A failed task's traceback"))
    previous_state: str | Absent | None = attrs.field(default=ABSENT, metadata=meta("Cancelled tasks only"))
    cancelled_at: str | Absent | None = attrs.field(
        default=ABSENT, metadata=meta("Cancelled tasks only", **TIMESTAMP)
    )
    retry_of: str | Absent = attrs.field(default=ABSENT, metadata=meta("The task this one retries"))
    queue_position: int | Absent = attrs.field(
        default=ABSENT,
        metadata=meta("Queued tasks only; 0 while it waits for its dependencies or its time", minimum=0),
    )
    depends_on: list[str] | Absent = attrs.field(
        default=ABSENT, metadata=meta("Tasks submitted with `depends_on` only")
    )
    waiting_for: list[str] | Absent = attrs.field(
        default=ABSENT, metadata=meta("Queued tasks still waiting: the dependencies not yet completed")
    )
    scheduled_for: str | Absent = attrs.field(
        default=ABSENT,
        metadata=meta(
            "Queued tasks submitted with `run_at`/`delay_seconds` whose time has not come", **TIMESTAMP
        ),
    )
    webhook: Webhook | None = attrs.field(default=None, metadata=meta("Tasks with a `callback_url` only"))


@attrs.frozen
class WaitedTaskStatus(TaskStatusBody):
    """`POST /api/v1/tasks/submit` with `Prefer: wait=N`: the task's status when it ended or N s passed."""

    schema_name: ClassVar[str] = "WaitedTaskStatus"

    estimated_duration: int = attrs.field(
        kw_only=True, metadata=meta("Seconds the task is expected to run", minimum=1)
    )


@attrs.frozen
class TaskListItem:
    """One entry of a project's task list."""

    task_id: str
    project_id: str
    task_type: str
    status: Status
    task_data: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    progress: float = attrs.field(metadata=meta(minimum=0, maximum=1))
    priority: int
    created_at: str = attrs.field(metadata=meta(**TIMESTAMP))
    updated_at: str | None = attrs.field(metadata=meta(**TIMESTAMP))
    # taskd's extras, as in the status body: what a queued task still waits for (the dashboard shows them).
    depends_on: list[str] | Absent = attrs.field(
        default=ABSENT, metadata=meta("Tasks submitted with `depends_on` only")
    )
    waiting_for: list[str] | Absent = attrs.field(
        default=ABSENT, metadata=meta("Queued tasks still waiting: the dependencies not yet completed")
    )
    scheduled_for: str | Absent = attrs.field(
        default=ABSENT,
        metadata=meta(
            "Queued tasks submitted with `run_at`/`delay_seconds` whose time has not come", **TIMESTAMP
        ),
    )


@attrs.frozen
class Pagination:
    """Where a page is in a project's task list."""

    page: int = attrs.field(metadata=meta(minimum=1))
    limit: int = attrs.field(metadata=meta(minimum=1, maximum=100))
    total: int = attrs.field(metadata=meta(minimum=0))
    total_pages: int = attrs.field(metadata=meta(minimum=0))


@attrs.frozen
class ProjectTasks:
    """`GET /api/v1/projects/{project_id}/tasks`: one page, newest first."""

    tasks: list[TaskListItem]
    pagination: Pagination


@attrs.frozen
class CancelResponse:
    """`DELETE /api/v1/tasks/{task_id}`: cancelled now, or already."""

    task_id: str
    status: Literal["cancelled"]
    message: str
    previous_state: str | None
    cancelled_at: str | None = attrs.field(metadata=meta(**TIMESTAMP))


@attrs.frozen
class RetryResponse:
    """`POST /api/v1/tasks/{task_id}/retry`: the new task."""

    new_task_id: str
    original_task_id: str
    status: Status
    message: str


@attrs.frozen
class RedeliverResponse:
    """`POST /api/v1/tasks/{task_id}/webhook/redeliver`: a fresh delivery is scheduled."""

    task_id: str
    status: Status
    callback_url: str
    webhook_id: str
    scheduled_at: str = attrs.field(metadata=meta(**TIMESTAMP))
    message: str


# ---- health and metrics ----


@attrs.frozen
class Liveness:
    """`GET /health`: the process is up."""

    status: Literal["healthy"]
    service: Literal["taskd"]


@attrs.frozen
class Probe:
    """`GET /livez` (the process answers) and `GET /readyz` (it can take work): the probe passed."""

    status: Literal["alive", "ready"]


@attrs.frozen
class SystemLoad:
    """The answering node's CPU and memory, and the GPUs of every live worker host."""

    cpu_percent: float = attrs.field(metadata=meta(minimum=0))
    memory_percent: float = attrs.field(metadata=meta(minimum=0, maximum=100))
    gpu_utilization: list[float] = attrs.field(
        metadata=meta("Percent, per device of every live worker host: by host id, then device index")
    )


@attrs.frozen
class GpuReading:
    """What every view of a GPU shows: its host, what NVML read at the host's last heartbeat, its slots."""

    host: str = attrs.field(metadata=meta("The worker host's id (`worker.host_id`, else its hostname)"))
    index: int = attrs.field(metadata=meta(minimum=0))
    name: str
    utilization: float
    memory_used: int = attrs.field(metadata=meta("Bytes", minimum=0))
    memory_total: int = attrs.field(metadata=meta("Bytes", minimum=0))
    temperature: float | None = attrs.field(metadata=meta("Degrees Celsius; null without a sensor reading"))
    slots: int = attrs.field(metadata=meta("Jobs the device runs at once"))
    last_heartbeat: str = attrs.field(metadata=meta("When its host last published it", **TIMESTAMP))


@attrs.frozen
class GpuDevice(GpuReading):
    """One GPU of a worker host: what NVML reads and the slots taskd hands out."""

    slots_used: int = attrs.field(metadata=meta(minimum=0))
    running: dict[str, int] = attrs.field(metadata=meta("Slots held, by task id (tasks the key may see)"))


@attrs.frozen
class ServiceHealth:
    """`GET /api/v1/health`."""

    status: Literal["healthy", "degraded", "unhealthy"]
    redis_status: Literal["connected", "disconnected"]
    worker_count: int = attrs.field(metadata=meta(minimum=0))
    queue_sizes: dict[str, int] = attrs.field(metadata=meta("Waiting tasks, by queue"))
    system_load: SystemLoad
    uptime: int = attrs.field(metadata=meta("Seconds", minimum=0))
    gpus: list[GpuDevice] | Absent = attrs.field(
        default=ABSENT,
        metadata=meta(
            "Every device of every live worker host, in gpu_utilization's order; not when unhealthy"
        ),
    )
    gpu_note: str | Absent = attrs.field(default=ABSENT, metadata=meta("When no worker host has a GPU"))
    redis_note: str | Absent = attrs.field(
        default=ABSENT, metadata=meta("When Redis answers but refuses writes (status degraded)")
    )


@attrs.frozen
class Counters:
    """The cumulative task counters shared by every process."""

    total_tasks: int = attrs.field(metadata=meta(minimum=0))
    completed_tasks: int = attrs.field(metadata=meta(minimum=0))
    failed_tasks: int = attrs.field(metadata=meta(minimum=0))
    retried_tasks: int = attrs.field(metadata=meta(minimum=0))
    cancelled_tasks: int = attrs.field(metadata=meta(minimum=0))
    success_rate: float = attrs.field(metadata=meta("Percent", minimum=0, maximum=100))
    failure_rate: float = attrs.field(metadata=meta("Percent", minimum=0, maximum=100))
    average_durations: dict[str, float] = attrs.field(metadata=meta("Seconds, by task type"))
    currently_running: int = attrs.field(metadata=meta(minimum=0))
    webhooks_delivered: int = attrs.field(metadata=meta(minimum=0))
    webhooks_failed: int = attrs.field(metadata=meta(minimum=0))


@attrs.frozen
class TaskMetrics:
    """`GET /api/v1/tasks/metrics`."""

    metrics: Counters
    timestamp: str = attrs.field(metadata=meta(**TIMESTAMP))


@attrs.frozen
class QueueHealthMetrics:
    """The counters queue health is judged by."""

    total_tasks: int = attrs.field(metadata=meta(minimum=0))
    completed_tasks: int = attrs.field(metadata=meta(minimum=0))
    failed_tasks: int = attrs.field(metadata=meta(minimum=0))
    success_rate: float = attrs.field(metadata=meta("Percent", minimum=0, maximum=100))
    failure_rate: float = attrs.field(metadata=meta("Percent", minimum=0, maximum=100))
    currently_running: int = attrs.field(metadata=meta(minimum=0))


@attrs.frozen
class Alert:
    """One queue-health alert; the fields after `value` come with the metrics that name them."""

    severity: Literal["warning", "critical"]
    message: str
    metric: str = attrs.field(
        metadata=meta(
            examples=[
                "failure_rate",
                "task_duration",
                "memory_usage",
                "redis_memory",
                "redis_persistence",
                "redis_eviction",
                "queue_without_worker",
                "settings_mismatch",
            ]
        )
    )
    value: float
    task_id: str | Absent = attrs.field(default=ABSENT, metadata=meta("`task_duration`, `memory_usage`"))
    worker_id: str | Absent = attrs.field(default=ABSENT, metadata=meta("`memory_usage`"))
    used_memory: int | Absent = attrs.field(default=ABSENT, metadata=meta("`redis_memory`: bytes"))
    maxmemory: int | Absent = attrs.field(default=ABSENT, metadata=meta("`redis_memory`: bytes"))
    queue: str | Absent = attrs.field(default=ABSENT, metadata=meta("`queue_without_worker`"))
    setting: str | Absent = attrs.field(default=ABSENT, metadata=meta("`settings_mismatch`"))
    partition: int | Absent = attrs.field(
        default=ABSENT,
        metadata=meta(
            "`redis_*`, where partitions are on servers of their own: the server's lowest partition"
        ),
    )


QueueStatus = Literal["healthy", "warning", "critical"]


@attrs.frozen
class QueueHealth:
    """`GET /api/v1/tasks/health`: the worst alert's severity, the metrics and the alerts."""

    status: QueueStatus
    metrics: QueueHealthMetrics
    alerts: list[Alert]
    timestamp: str = attrs.field(metadata=meta(**TIMESTAMP))


# ---- dashboard ----


@attrs.frozen
class DashboardQueue:
    """One queue: what waits, what runs (every project's count; the ids the key may see)."""

    name: str
    waiting: int = attrs.field(metadata=meta(minimum=0))
    running: int = attrs.field(metadata=meta(minimum=0))
    running_tasks: list[str] = attrs.field(metadata=meta("The first running tasks the key may see"))
    concurrency: int | None = attrs.field(metadata=meta("Configured jobs at once per worker"))
    workers: int = attrs.field(metadata=meta("Live workers serving it", minimum=0))


@attrs.frozen
class DashboardWorker:
    """One live worker process and its last heartbeat."""

    worker_id: str
    host: str
    pid: int
    queues: list[str]
    running: int = attrs.field(metadata=meta(minimum=0))
    rss_bytes: int = attrs.field(metadata=meta(minimum=0))
    job_rss_bytes: int = attrs.field(metadata=meta("Its job processes together", minimum=0))
    started_at: str | None = attrs.field(metadata=meta(**TIMESTAMP))
    last_heartbeat: str | None = attrs.field(metadata=meta(**TIMESTAMP))
    heartbeat_age: float = attrs.field(metadata=meta("Seconds", minimum=0))


@attrs.frozen
class DashboardGpu(GpuReading):
    """One GPU of a worker host and the tasks holding its slots."""

    holders: list[str] = attrs.field(metadata=meta("Tasks holding a slot (those the key may see)"))


@attrs.frozen
class DashboardGpus:
    """Every live worker host's GPUs (by host, then index), or a note saying why there are none."""

    available: bool
    note: str | None
    devices: list[DashboardGpu]


@attrs.frozen
class DashboardOverview:
    """`GET /api/v1/dashboard/overview`: queues, live workers and GPUs, in one call."""

    queues: list[DashboardQueue]
    workers: list[DashboardWorker]
    gpus: DashboardGpus
    uptime: int = attrs.field(metadata=meta("Seconds", minimum=0))
    timestamp: str = attrs.field(metadata=meta(**TIMESTAMP))


# ---- events ----


@attrs.frozen
class TaskEvent:
    """The `data` of one server-sent event: the task's public fields after a change.

    Written by the store's Lua (`taskd/store/lua/lib/emit.lua`), atomically with the change.
    """

    type: Literal["status", "progress"]
    task_id: str
    project_id: str
    task_type: str
    status: Status
    progress: float = attrs.field(metadata=meta(minimum=0, maximum=1))
    current_step: str | None
    error: str | None
    attempt: int = attrs.field(metadata=meta(minimum=0))
    at: float | None = attrs.field(metadata=meta("Epoch seconds"))
    result: Any = attrs.field(default=ABSENT, metadata=meta("On the `completed` status event only"))
