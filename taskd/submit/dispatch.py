"""Submit, cancel and retry: the public operations on tasks, each a single atomic step in Redis."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import attrs
from redis.asyncio import Redis

from taskd import keys
from taskd.media import capacity
from taskd.media.capacity import MediaCapacity
from taskd.model import RETRYABLE, InvalidState, ServiceUnavailable, TaskRecord, TaskStatus, now
from taskd.queue.task_queue import TaskQueue
from taskd.store import Admission, CancelOutcome, Idempotency, TaskStore
from taskd.submit.submission import Submission
from taskd.tasks.registry import Registry

_CANNOT_CANCEL = {
    TaskStatus.COMPLETED: "Task has already completed successfully and cannot be cancelled",
    TaskStatus.FAILED: "Task has already failed and cannot be cancelled",
}


@attrs.frozen
class Accepted:
    """A task that is in Redis and on its queue, with where it stands.

    `replayed`: an Idempotency-Key seen before; the task, position and estimate are its first request's.
    """

    record: TaskRecord
    queue_position: int
    estimated_duration: int
    replayed: bool = False


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

    async def submit(
        self, submission: Submission, retry_of: str | None = None, idempotency: Idempotency | None = None
    ) -> Accepted:
        """Admit, store, index, count and enqueue the task in one Redis script: a 200 means it is in Redis.

        With an `idempotency` key seen before, the same script creates nothing and answers with the
        first request's task (or raises IdempotencyKeyReused for another request under that key).
        """
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
            retry_of=retry_of,
            depends_on=submission.depends_on or None,
            key_id=submission.key_id,
            keep_for=submission.keep_for,
            scheduled_for=submission.scheduled_for,
            enqueues=1,
        )
        job = self.queue.new_job(record.task_id, 1, record.priority, record.created_at)
        record.job_id = job.job_id
        record.updated_at = record.created_at
        created = await self.store.create(record, job, self.admission, idempotency)
        if created.replayed:
            # The record as the first request made it, from the same submission.
            record = attrs.evolve(record, task_id=created.task_id, created_at=created.created_at)
        elif self.on_enqueued is not None:
            self.on_enqueued(record.queue)
        if created.duration_count:
            estimate = created.duration_sum / created.duration_count
        else:
            estimate = task_type.expected_duration
        return Accepted(record, created.position, max(1, round(estimate)), created.replayed)

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

    async def retry(self, task_id: str, idempotency: Idempotency | None = None) -> Accepted:
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
            keep_for=record.keep_for,
            # Its $refs, if any, read the same dependencies; one that failed refuses the retry (400).
            depends_on=record.depends_on or [],
            # The callback URL is the original submitter's, so its webhook stays signed with their secret.
            key_id=record.key_id,
        )
        return await self.submit(submission, retry_of=task_id, idempotency=idempotency)
