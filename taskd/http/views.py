"""Task records rendered as the document's JSON bodies."""

from __future__ import annotations

from typing import Any

from taskd.model import TaskRecord, TaskStatus, iso
from taskd.webhooks.outbox import DeliveryState


def webhook_view(state: DeliveryState) -> dict[str, Any]:
    """The `webhook` field of a status: how the delivery of the task's webhook is going."""
    return {
        "attempts": state.attempts,
        "last_status": state.last_status,
        "last_error": state.last_error,
        "last_attempt_at": iso(state.last_attempt_at),
        "delivered_at": iso(state.delivered_at),
        "failed_at": iso(state.failed_at),
        "next_attempt_at": iso(state.next_attempt_at),
    }


def status_view(
    record: TaskRecord, queue_position: int | None = None, webhook: DeliveryState | None = None
) -> dict[str, Any]:
    """The body of `GET /api/v1/tasks/{id}/status`: the document's fields, then taskd's extras."""
    body: dict[str, Any] = {
        "task_id": record.task_id,
        "project_id": record.project_id,
        "status": record.status.value,
        "progress": record.progress,
        "current_step": record.current_step,
        "result": record.result,
        "error": record.error,
        "started_at": iso(record.started_at),
        "completed_at": iso(record.completed_at),
        "processing_time": record.processing_time,
        "task_type": record.task_type,
        "priority": record.priority,
        "attempt": record.attempt,
        "last_error": record.last_error,
        "next_retry_at": iso(record.next_retry_at),
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
    }
    if record.traceback is not None:
        body["traceback"] = record.traceback
    if record.status is TaskStatus.CANCELLED:
        body["previous_state"] = record.previous_state
        body["cancelled_at"] = iso(record.cancelled_at)
    if record.retry_of is not None:
        body["retry_of"] = record.retry_of
    if queue_position is not None:
        body["queue_position"] = queue_position
    body["webhook"] = webhook_view(webhook) if webhook is not None else None
    return body


def list_item_view(record: TaskRecord) -> dict[str, Any]:
    """One entry of a project's task list."""
    return {
        "task_id": record.task_id,
        "project_id": record.project_id,
        "task_type": record.task_type,
        "status": record.status.value,
        "task_data": record.task_data,
        "result": record.result,
        "error": record.error,
        "progress": record.progress,
        "priority": record.priority,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
    }
