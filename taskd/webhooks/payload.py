"""The JSON body of a task's webhook: the API document's success and failure payloads, and ours for cancel."""

from __future__ import annotations

from typing import Any

from taskd.model import TaskRecord, TaskStatus, iso


def event_id(record: TaskRecord) -> str:
    """The `webhook-id`: one per task and terminal status, the same on every attempt and redelivery."""
    return f"msg_{record.task_id}_{record.status.value}"


def build_payload(record: TaskRecord) -> dict[str, Any]:
    """The body for a terminal task; raises ValueError for a task that has not ended."""
    common = {"task_id": record.task_id, "project_id": record.project_id, "status": record.status.value}
    if record.status is TaskStatus.COMPLETED:
        return {
            **common,
            "result": record.result,
            "processing_time": record.processing_time,
            "completed_at": iso(record.completed_at),
            "metadata": record.metadata,
        }
    if record.status is TaskStatus.FAILED:
        return {
            **common,
            "error": record.error,
            "traceback": record.traceback,
            "failed_at": iso(record.completed_at),
            "metadata": record.metadata,
        }
    if record.status is TaskStatus.CANCELLED:
        return {
            **common,
            "previous_state": record.previous_state,
            "cancelled_at": iso(record.cancelled_at),
            "metadata": record.metadata,
        }
    raise ValueError(f"task {record.task_id} is {record.status.value}; only ended tasks have a webhook")
