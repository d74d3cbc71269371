"""Submit, cancel and retry: the public operations on tasks, each a single atomic step in Redis."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import attrs
from redis.asyncio import Redis

from taskd import keys, refs, tracing
from taskd.media import capacity
from taskd.media.capacity import MediaCapacity
from taskd.model import (
    RETRYABLE,
    InvalidState,
    ServiceUnavailable,
    TaskRecord,
    TaskStatus,
    ValidationError,
    now,
)
from taskd.queue.task_queue import TaskQueue
from taskd.shapes import WebhookEvent
from taskd.store import Admission, CancelOutcome, Created, Idempotency, QueuedJob, Quota, Taker, TaskStore
from taskd.store.run_state import stored_media
from taskd.submit.batch import batch_ref, check_within_limits
from taskd.submit.idempotency import unless_remembered
from taskd.submit.submission import Submission, stored_problems
from taskd.tasks.registry import Registry
from taskd.tasks.spec import TaskType

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


# What a cancel ended, rather than refused.
_ENDED_BY_CANCEL = (TaskStatus.QUEUED, TaskStatus.PROCESSING)


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
        hold: Callable[[str], Awaitable[Taker | None]] | None = None,
        webhook_secret_ids: Mapping[str, str] | None = None,
        withdraw_media: Callable[[list[tuple[str, str]]], None] | None = None,
        *,
        result_max_bytes: int,
    ) -> None:
        self.redis = redis
        self.store = store
        self.queue = queue
        self.registry = registry
        self.admission = admission or Admission()
        # Wakes this process's own workers without waiting for the pub/sub round trip.
        self.on_enqueued = on_enqueued
        # Refuses task types that store media while the media or scratch disk is nearly full (None: never).
        self.media_capacity = media_capacity
        # Begins deleting files from the media store, not waited for (taskd.media.publish.withdraw_later);
        # None: this process leaves them to the worker and the media sweeper.
        self.withdraw_media = withdraw_media
        # A free slot of this process's worker of a queue, held for a submit whose script may then
        # start the task for it: no wake-up and no take before it starts (TaskStore.create).
        self.hold = hold
        # The id of each key's own webhook secret by the key's id (taskd.webhooks.signing.own_secret_ids):
        # kept in its tasks' records, so that they are signed with it after the key is rotated away.
        self.webhook_secret_ids = webhook_secret_ids or {}
        # execution.result_max_bytes: the most any result holds, reserved for one whose estimate needs
        # a field that a $ref fills (_result_estimate).
        self.result_max_bytes = result_max_bytes

    async def submit(
        self,
        submission: Submission,
        retry_of: str | None = None,
        idempotency: Idempotency | None = None,
        quota: Quota | None = None,
        first_retry: bool = False,
    ) -> Accepted:
        """Admit, store, index, count and enqueue the task in one Redis script: a 200 means it is in Redis.

        With an `idempotency` key seen before, the same script creates nothing and answers with the
        first request's task (or raises IdempotencyKeyReused for another request under that key).
        With a `quota`, the script spends one unit of the caller's rate limit first (TaskStore.create).
        When this process's worker of the queue waits for jobs, the script starts the task for it.
        """
        idempotency = unless_remembered(self._media_refusal([submission]), idempotency)
        # A request a check refused is only ever replayed (unless_remembered): its record is not
        # stored, and its data may be what the check refused, which no estimate can read.
        replay_only = idempotency is not None and idempotency.refused is not None
        record, job = self._new(
            submission, keys.new_task_id(submission.project_id), retry_of, estimate=not replay_only
        )
        taker = None if self.hold is None else await self.hold(record.queue)
        created = await self.store.create(record, job, self.admission, idempotency, quota, taker, first_retry)
        if created.replayed:
            # The record as the first request made it, from the same submission.
            record = attrs.evolve(record, task_id=created.task_id, created_at=created.created_at)
        elif self.on_enqueued is not None:
            self.on_enqueued(record.queue)
        return self._accepted(record, created)

    async def submit_batch(
        self, submissions: Sequence[Submission], idempotency: Idempotency | None = None
    ) -> list[Accepted]:
        """Store a batch in one Redis script, all or nothing; answers in the submissions' order.

        Each task's id is chosen first, so an `"@<index>"` in depends_on and in a $ref (an earlier
        submission of the batch: taskd.submit.batch checked that) becomes that task's id before
        anything is stored.
        """
        try:
            check_within_limits(
                submissions,
                self.admission.queued_per_project,
                self.admission.max_queue_length,
                lambda submission: self.registry.types[submission.task_type].queue,
            )
        except ValidationError as refused:
            # A resend of a batch stored under a higher limit (another node's, or this one's before it
            # was lowered) gets that batch from the script, as before this check; told to send the
            # tasks again in smaller batches, the caller would store them twice.
            idempotency = unless_remembered(refused, idempotency)
        idempotency = unless_remembered(self._media_refusal(submissions), idempotency)
        ids = [keys.new_task_id(submission.project_id) for submission in submissions]
        batch_ids = {batch_ref(index): task_id for index, task_id in enumerate(ids)}
        # One millisecond apart, the last now: a job's score is its creation in ms, and items of one
        # project created in the same millisecond would leave their order in its line to chance.
        last = now()
        new = [
            self._new(
                attrs.evolve(
                    submission,
                    depends_on=[batch_ids.get(id_, id_) for id_ in submission.depends_on],
                    task_data=refs.rename(submission.task_data, batch_ids),
                ),
                task_id,
                created_at=last - (len(submissions) - 1 - index) / 1000,
            )
            for index, (submission, task_id) in enumerate(zip(submissions, ids, strict=True))
        ]
        created = await self.store.create_batch(new, self.admission, idempotency)
        if not created[0].replayed and self.on_enqueued is not None:
            for queue in dict.fromkeys(record.queue for record, _ in new):
                self.on_enqueued(queue)
        return [
            self._accepted(attrs.evolve(record, task_id=made.task_id, created_at=made.created_at), made)
            for (record, _), made in zip(new, created, strict=True)
        ]

    def _media_refusal(self, submissions: Sequence[Submission]) -> ServiceUnavailable | None:
        """A 503 while a type of the submissions that stores media could not store it (None: room).

        Not for an Idempotency-Key already remembered (unless_remembered): a resend of a request
        that was stored gets that task whatever the disk holds now.
        """
        if self.media_capacity is None or not any(
            self.registry.types[submission.task_type].stores_media for submission in submissions
        ):
            return None
        refused = self.media_capacity.refusal()
        return None if refused is None else ServiceUnavailable(refused, retry_after=capacity.RETRY_AFTER)

    def _new(
        self,
        submission: Submission,
        task_id: str,
        retry_of: str | None = None,
        created_at: float | None = None,
        estimate: bool = True,
    ) -> tuple[TaskRecord, QueuedJob]:
        """The record and first job of a new task (without its result estimate unless `estimate`)."""
        task_type = self.registry.types[submission.task_type]
        record = TaskRecord(
            task_id=task_id,
            project_id=submission.project_id,
            task_type=submission.task_type,
            queue=task_type.queue,
            task_data=submission.task_data,
            priority=submission.priority,
            callback_url=submission.callback_url,
            metadata=submission.metadata,
            webhook_events=list(submission.webhook_events) if submission.webhook_events is not None else None,
            retry_of=retry_of,
            depends_on=submission.depends_on or None,
            key_id=submission.key_id,
            webhook_secret_id=submission.webhook_secret_id
            or (self.webhook_secret_ids.get(submission.key_id) if submission.key_id else None),
            keep_for=submission.keep_for,
            scheduled_for=submission.scheduled_for,
            # The submitting request's span: the task's runs and webhooks are its children.
            trace_context=tracing.carrier(),
            result_estimate=self._result_estimate(task_type, submission.task_data) if estimate else None,
            enqueues=1,
            retries=0,
            created_at=now() if created_at is None else created_at,
        )
        job = self.queue.new_job(record.task_id, 1, record.priority, record.created_at)
        record.job_id = job.job_id
        record.updated_at = record.created_at
        return record, job

    def _result_estimate(self, task_type: TaskType, task_data: dict[str, Any]) -> int | None:
        """What the type expects its result to hold (TaskType.result_estimate); None for a type that
        estimates nothing. Its input was checked at submit; its $refs are None here, as they were then.

        A $ref in a field that its type refuses as None (test_prompt's `prompt_template`, or its
        whole `test_parameters`) leaves no input to estimate from: the submit set those errors aside
        (input_problems), and what the field will hold is known only when the task runs. Such a task
        reserves execution.result_max_bytes, the most any result may hold; and no estimate is more:
        a larger result fails its task, and is not stored.
        """
        if task_type.result_estimate is None:
            return None
        if not any(refs.find(task_data)):
            data = self.registry.parse_input(task_type, task_data)
        else:
            try:
                data = self.registry.parse_input(task_type, refs.blank(task_data))
            except ValidationError:
                return self.result_max_bytes
        return min(task_type.result_estimate(data), self.result_max_bytes)

    def _accepted(self, record: TaskRecord, created: Created) -> Accepted:
        if created.duration_count:
            estimate = created.duration_sum / created.duration_count
        else:
            estimate = self.registry.types[record.task_type].expected_duration
        return Accepted(record, created.position, max(1, round(estimate)), created.replayed)

    async def cancel(self, task_id: str) -> CancelOutcome:
        """Revoke a queued task or stop a running one; raise InvalidState for one that already ended."""
        record = await self.store.get(task_id)
        earlier = await self._stored_media(record)
        outcome = await self.store.cancel(record, now())
        if earlier and self.withdraw_media is not None and outcome.was in _ENDED_BY_CANCEL:
            # Run again after a run that stored its output (its worker killed after the copy, or
            # the store's answer lost): its end just dropped the run state that named it. Queued,
            # no worker runs it again to delete it; running, its run may not have read the names
            # yet (the cancel came between its start and its registration on the worker), and a
            # second delete of what it did read changes nothing. What the running one stores
            # itself is the worker's. The answer does not wait for the store: the file is gone a
            # moment later.
            self.withdraw_media(earlier)
        if outcome.was is TaskStatus.PROCESSING:
            # Every worker process listens; the one running the task stops it.
            await self.redis.publish(keys.CANCEL_CHANNEL, task_id)
        elif outcome.was in _CANNOT_CANCEL:
            raise InvalidState(_CANNOT_CANCEL[outcome.was])
        return outcome

    async def _stored_media(self, record: TaskRecord) -> list[tuple[str, str]]:
        """What the earlier runs of a queued or running task stored in the media store (none for a
        task that has had no earlier run or whose type stores none, or without a way to delete them
        here)."""
        task_type = self.registry.types.get(record.task_type)
        # A queued task's `attempt` is its last run's; a running one's, the run now going.
        earlier_runs = {TaskStatus.QUEUED: record.attempt, TaskStatus.PROCESSING: record.attempt - 1}
        if (
            self.withdraw_media is None
            or earlier_runs.get(record.status, 0) < 1
            or task_type is None
            or not task_type.stores_media
        ):
            return []
        return await stored_media(self.store.clients[keys.task_partition(record.task_id)], record.task_id)

    async def retry(
        self, task_id: str, idempotency: Idempotency | None = None, *, first_retry: bool = False
    ) -> Accepted:
        """Submit a failed or cancelled task again, with the same parameters, as a new task; with
        `first_retry`, only if it has no retry yet (else AlreadyRetried, storing nothing)."""
        record = await self.store.get(task_id)
        if record.status not in RETRYABLE:
            raise InvalidState(
                f"Task is {record.status.value}; only failed or cancelled tasks can be retried"
            )
        if record.task_type not in self.registry.types:
            raise InvalidState(f"Task type '{record.task_type}' is no longer installed")
        # Stored by a version whose checks were laxer (a string for a list, an input URL no download
        # can request), the data fails every run at its start, and such a callback URL every
        # webhook: the retry would be a task that fails at once, or whose webhooks never arrive. A
        # resend of a retry that was stored still gets that retry (unless_remembered).
        problems = stored_problems(
            self.registry,
            self.registry.types[record.task_type],
            record.task_data,
            record.callback_url,
            record.depends_on or [],
        )
        # The fields are named in `details` alone, as a submit's are (the message said them again).
        refused = (
            ValidationError(
                problems, "The task as stored no longer passes a submit's checks; submit it corrected"
            )
            if problems
            else None
        )
        idempotency = unless_remembered(refused, idempotency)
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
            # Checked against WEBHOOK_EVENTS when first submitted.
            webhook_events=cast(list[WebhookEvent] | None, record.webhook_events),
            # The callback URL is the original submitter's, so its webhook stays signed with their secret.
            key_id=record.key_id,
            webhook_secret_id=record.webhook_secret_id,
        )
        return await self.submit(
            submission, retry_of=task_id, idempotency=idempotency, first_retry=first_retry
        )
