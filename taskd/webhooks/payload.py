"""The JSON body of a task's webhook: the API document's success and failure payloads, ours for cancel,
and those of the `started` and `progress` events a submitter may also ask for (`webhook_events`).

Every body names its `event`: the end's status, `started` or `progress`.
"""

from __future__ import annotations

from typing import Any

from taskd.model import TaskRecord, TaskStatus, iso

STARTED = "started"
PROGRESS = "progress"


def event_id(record: TaskRecord, event: str | None = None) -> str:
    """The `webhook-id`, the same on every attempt and redelivery of one message.

    The end's: one per task and terminal status. `started`: one per take of the task by a worker
    (`attempt` and the ms it started): a take by a host without the task's type (tasks.modules
    differs between hosts) starts it and hands it on without counting an attempt, so the run that
    follows has that take's `attempt`, and with an id of `attempt` alone a receiver that drops
    repeats dropped the real start as a repeat of the take's. `progress`: one per progress written,
    so a receiver that drops repeats never drops a newer progress.
    """
    if event == STARTED:
        return f"msg_{record.task_id}_started_{record.attempt}_{round((record.started_at or 0) * 1000)}"
    if event == PROGRESS:
        return f"msg_{record.task_id}_progress_{round((record.updated_at or 0) * 1000)}"
    return f"msg_{record.task_id}_{record.status.value}"


def build_payload(record: TaskRecord, event: str | None = None) -> dict[str, Any]:
    """The body of the task's `event` webhook (None: its end's); raises ValueError for an end not reached."""
    common = {"task_id": record.task_id, "project_id": record.project_id}
    if event == STARTED:
        # Status `processing` whatever the task has done since: this message reports the start.
        return {
            **common,
            "event": STARTED,
            "status": TaskStatus.PROCESSING.value,
            "attempt": record.attempt,
            "started_at": iso(record.started_at),
            "metadata": record.metadata,
        }
    if event == PROGRESS:
        return {
            **common,
            "event": PROGRESS,
            "status": record.status.value,
            # The run it reports: one of an earlier run sent as a later one started can arrive after
            # that run's `started` (docs/webhooks.md).
            "attempt": record.attempt,
            "progress": record.progress,
            "current_step": record.current_step,
            "updated_at": iso(record.updated_at),
            "metadata": record.metadata,
        }
    common |= {"event": record.status.value, "status": record.status.value}
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
        # A cancel taskd made (a dependency that failed or was cancelled) says why, as the status
        # and the event stream do; a caller's cancel has no error.
        why = {} if record.error is None else {"error": record.error}
        return {
            **common,
            "previous_state": record.previous_state,
            **why,
            "cancelled_at": iso(record.cancelled_at),
            "metadata": record.metadata,
        }
    raise ValueError(f"task {record.task_id} is {record.status.value}; only ended tasks have a webhook")
