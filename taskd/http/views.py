"""Task records rendered as the document's bodies (`taskd.shapes`)."""

from __future__ import annotations

from typing import Any

from taskd import shapes
from taskd.gpu.hosts import HostGpus, PublishedDevice
from taskd.model import TaskRecord, TaskStatus, iso
from taskd.webhooks.outbox import DeliveryState


def webhook_view(state: DeliveryState) -> shapes.Webhook:
    """The `webhook` field of a status: how the delivery of the task's webhook is going."""
    return shapes.Webhook(
        attempts=state.attempts,
        last_status=state.last_status,
        last_error=state.last_error,
        last_attempt_at=iso(state.last_attempt_at),
        delivered_at=iso(state.delivered_at),
        failed_at=iso(state.failed_at),
        next_attempt_at=iso(state.next_attempt_at),
    )


def status_view(
    record: TaskRecord, queue_position: int | None = None, webhook: DeliveryState | None = None
) -> shapes.TaskStatusBody:
    """The body of `GET /api/v1/tasks/{id}/status`: the document's fields, then taskd's extras."""
    cancelled = record.status is TaskStatus.CANCELLED
    return shapes.TaskStatusBody(
        task_id=record.task_id,
        project_id=record.project_id,
        status=record.status,
        progress=record.progress,
        current_step=record.current_step,
        result=record.result,
        error=record.error,
        started_at=iso(record.started_at),
        completed_at=iso(record.completed_at),
        processing_time=record.processing_time,
        task_type=record.task_type,
        priority=record.priority,
        attempt=record.attempt,
        last_error=record.last_error,
        next_retry_at=iso(record.next_retry_at),
        created_at=stamp(record.created_at),
        updated_at=iso(record.updated_at),
        traceback=shapes.ABSENT if record.traceback is None else record.traceback,
        previous_state=record.previous_state if cancelled else shapes.ABSENT,
        cancelled_at=iso(record.cancelled_at) if cancelled else shapes.ABSENT,
        retry_of=shapes.ABSENT if record.retry_of is None else record.retry_of,
        queue_position=shapes.ABSENT if queue_position is None else queue_position,
        depends_on=record.depends_on or shapes.ABSENT,
        waiting_for=record.waiting_for or shapes.ABSENT,
        scheduled_for=iso(record.scheduled_for) or shapes.ABSENT,
        webhook=webhook_view(webhook) if webhook is not None else None,
    )


def list_item_view(record: TaskRecord) -> shapes.TaskListItem:
    """One entry of a project's task list."""
    return shapes.TaskListItem(
        task_id=record.task_id,
        project_id=record.project_id,
        task_type=record.task_type,
        status=record.status,
        task_data=record.task_data,
        result=record.result,
        error=record.error,
        progress=record.progress,
        priority=record.priority,
        created_at=stamp(record.created_at),
        updated_at=iso(record.updated_at),
        depends_on=record.depends_on or shapes.ABSENT,
        waiting_for=record.waiting_for or shapes.ABSENT,
        scheduled_for=iso(record.scheduled_for) or shapes.ABSENT,
    )


def stamp(ts: float) -> str:
    """`iso` of a time that is always there (a field the document never sends as null)."""
    text = iso(ts)
    assert text is not None, "iso() answers None for None only"
    return text


def gpu_reading(host: HostGpus, device: PublishedDevice) -> dict[str, Any]:
    """The fields of `shapes.GpuReading` for a device a host published, as keyword arguments."""
    return {
        "host": host.host,
        "index": device.index,
        "name": device.name,
        "utilization": device.utilization,
        "memory_used": device.memory_used,
        "memory_total": device.memory_total,
        "temperature": device.temperature,
        "slots": device.slots,
        "last_heartbeat": stamp(host.heartbeat_at),
    }
