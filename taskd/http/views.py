"""Task records rendered as the document's JSON bodies."""

from __future__ import annotations

from typing import Any

from taskd.model import TaskRecord, TaskStatus, iso


def status_view(record: TaskRecord, queue_position: int | None = None) -> dict[str, Any]:
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
