"""Submit, cancel and retry: the public operations on tasks, each a single atomic step in Redis."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import cast

import attrs
from redis.asyncio import Redis

from taskd import keys
from taskd.media import capacity
from taskd.media.capacity import MediaCapacity
from taskd.model import RETRYABLE, InvalidState, ServiceUnavailable, TaskRecord, TaskStatus, now
from taskd.queue.task_queue import TaskQueue
from taskd.shapes import WebhookEvent
from taskd.store import Admission, CancelOutcome, TaskStore
from taskd.submit.submission import Submission
from taskd.tasks.registry import Registry

_CANNOT_CANCEL = {
    TaskStatus.COMPLETED: "Task has already completed successfully and cannot be cancelled",
    TaskStatus.FAILED: "Task has already failed and cannot be cancelled",
}


@attrs.frozen
class Accepted:
    """A task that is in Redis and on its queue, with where it stands."""

    record: TaskRecord
    queue_position: int
    estimated_duration: int


class Dispatcher:
    """Creates tasks on their queues, revokes or stops them, and re-submits failed ones."""

    def __init__(
        self,
        redis: Redis,
        store: TaskStore,
        queue: TaskQueue,
        registry: Registry,
        admission: Admission | None = None,
        on_enqueued: Callable[[str], None] | None = None,
        media_capacity: MediaCapacity | None = None,
    ) -> None:
        self.redis = redis
        self.store = store
        self.queue = queue
        self.registry = registry
        self.admission = admission or Admission()
        # Wakes this process's own workers without waiting for the pub/sub round trip.
        self.on_enqueued = on_enqueued
        # Refuses task types that store media while the media disk is nearly full (None: never).
        self.media_capacity = media_capacity

    async def submit(self, submission: Submission, retry_of: str | None = None) -> Accepted:
        """Admit, store, index, count and enqueue the task in one Redis script: a 200 means it is in Redis."""
        task_type = self.registry.types[submission.task_type]
        if task_type.stores_media and self.media_capacity is not None and self.media_capacity.is_full():
            raise ServiceUnavailable(capacity.REFUSED, retry_after=capacity.RETRY_AFTER)
        record = TaskRecord(
            task_id=str(uuid.uuid4()),
            project_id=submission.project_id,
            task_type=submission.task_type,
            queue=task_type.queue,
            task_data=submission.task_data,
            priority=submission.priority,
            callback_url=submission.callback_url,
            metadata=submission.metadata,
            webhook_events=list(submission.webhook_events) if submission.webhook_events is not None else None,
            retry_of=retry_of,
            key_id=submission.key_id,
            enqueues=1,
        )
        job = self.queue.new_job(record.task_id, 1, record.priority, record.created_at)
        record.job_id = job.job_id
        record.updated_at = record.created_at
        created = await self.store.create(record, job, self.admission)
        if self.on_enqueued is not None:
            self.on_enqueued(record.queue)
        if created.duration_count:
            estimate = created.duration_sum / created.duration_count
        else:
            estimate = task_type.expected_duration
        return Accepted(record, created.position, max(1, round(estimate)))

    async def cancel(self, task_id: str) -> CancelOutcome:
        """Revoke a queued task or stop a running one; raise InvalidState for one that already ended."""
        record = await self.store.get(task_id)
        outcome = await self.store.cancel(record, keys.queue(record.queue), now())
        if outcome.was is TaskStatus.PROCESSING:
            # Every worker process listens; the one running the task stops it.
            await self.redis.publish(keys.CANCEL_CHANNEL, task_id)
        elif outcome.was in _CANNOT_CANCEL:
            raise InvalidState(_CANNOT_CANCEL[outcome.was])
        return outcome

    async def retry(self, task_id: str) -> Accepted:
        """Submit a failed or cancelled task again, with the same parameters, as a new task."""
        record = await self.store.get(task_id)
        if record.status not in RETRYABLE:
            raise InvalidState(
                f"Task is {record.status.value}; only failed or cancelled tasks can be retried"
            )
        if record.task_type not in self.registry.types:
            raise InvalidState(f"Task type '{record.task_type}' is no longer installed")
        submission = Submission(
            project_id=record.project_id,
            task_type=record.task_type,
            task_data=record.task_data,
            priority=record.priority,
            callback_url=record.callback_url,
            metadata=record.metadata,
            # Checked against WEBHOOK_EVENTS when first submitted.
            webhook_events=cast(list[WebhookEvent] | None, record.webhook_events),
            # The callback URL is the original submitter's, so its webhook stays signed with their secret.
            key_id=record.key_id,
        )
        return await self.submit(submission, retry_of=task_id)
