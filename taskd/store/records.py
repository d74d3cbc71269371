"""The task store: records, the per-project index and the shared metrics, in Redis.

State changes that must not race (submit, start, progress, finish, requeue, reclaim, cancel) are
Lua scripts (taskd/store/lua/), one round trip each, so a cancelled task can never be overwritten
by a late `completed` from its worker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import orjson
from redis.asyncio import Redis

from taskd import keys
from taskd.model import (
    ACTIVE,
    IdempotencyKeyReused,
    Metrics,
    RateLimited,
    ServiceUnavailable,
    TaskNotFound,
    TaskRecord,
    TaskStatus,
    ValidationError,
)
from taskd.store import scripts
from taskd.store.coalesce import Coalesced, Reads
from taskd.store.codec import CorruptRecord, decode, encode_flat, encode_value

PROJECT_FULL_RETRY_AFTER = 10
# What submit.lua found wrong with a dependency, as the 400's `depends_on` detail. A dependency
# that already failed is refused rather than accepted and cancelled at once: the caller learns it now.
_BAD_DEPENDENCY = {
    "unknown": "Unknown task '{}'",
    "project": "Task '{}' belongs to another project",
    "failed": "Dependency '{}' failed",
    "cancelled": "Dependency '{}' was cancelled",
}
QUEUE_FULL_RETRY_AFTER = 30


def _project_full(project_id: str, waiting: int, admission: Admission) -> RateLimited:
    return RateLimited(
        f"Project '{project_id}' already has {waiting} tasks waiting to start; "
        f"at most {admission.queued_per_project} may wait at once (its running tasks do not count)",
        PROJECT_FULL_RETRY_AFTER,
    )


def _queue_full(queue: str, waiting: int) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"Queue '{queue}' is full ({waiting} tasks waiting), please try again later",
        retry_after=QUEUE_FULL_RETRY_AFTER,
    )


def _not_replicated(replicas: int) -> ServiceUnavailable:
    # Issue 9: not yet on enough replicas, so a failover now could lose it; the caller may retry.
    return ServiceUnavailable(
        f"Task storage could not copy the task to {replicas} replica(s) in time, please try again later",
        retry_after=5,
    )


@attrs.frozen
class QueuedJob:
    """The arq job that will run a new task: its id, serialised form, queue score and expiry."""

    job_id: str
    payload: bytes
    score: int
    expiry_ms: int


@attrs.frozen
class Start:
    """What a worker's claim of a job found: whether it holds the job, and the task it may run."""

    claimed: bool
    score: int = 0
    record: TaskRecord | None = None
    # Not claimed because its project already runs limits.concurrent_per_project tasks.
    throttled: bool = False


@attrs.frozen
class Taken:
    """A job a worker's take started (take.lua): its id, its score, and the started task's record
    (None when the record is corrupt: logged, and not run)."""

    job_id: str
    score: int
    record: TaskRecord | None


@attrs.frozen
class Takes:
    """What one take (take.lua) started, and whether the worker should take again when a slot frees:
    False when it found no more due jobs and waits in the idle set, where the next job wakes it."""

    started: list[Taken]
    look_when_freed: bool


@attrs.frozen
class Admission:
    """Limits a submit must pass; 0 = unlimited."""

    queued_per_project: int = 0
    max_queue_length: int = 0


@attrs.frozen
class Idempotency:
    """A submit's Idempotency-Key: where the first request with it is remembered, and what it asked."""

    # {taskd}:idempotency:{key id}:{hash} (taskd.keys.idempotency).
    key: str
    # A digest of the route and body: the same key with another fingerprint is refused.
    fingerprint: str


@attrs.frozen
class Spent:
    """What spending a unit of a per-key rate limit found (lib/window.lua's reply)."""

    allowed: bool
    remaining: int
    retry_after_ms: int
    reset_ms: int


@attrs.frozen
class Quota:
    """A per-key rate limit that the submit script spends one unit of before it stores anything.

    Spending it in the script that stores the task saves the separate round trip a check would
    cost. `report` gets what was spent before the script's outcome is read, whatever it is; it
    raises to refuse the request when `allowed` is false (the wording of a refusal is the caller's).
    """

    # {taskd}:ratelimit:{policy}:{key hash} (taskd.keys.rate_limit).
    key: str
    limit: int
    window_ms: int
    # Unique to the request: two requests may share a millisecond (lib/window.lua).
    nonce: str
    report: Callable[[Spent], None]


@attrs.frozen
class Created:
    """Where a new task stands: its 1-based queue position under fair turns, and its type's past durations.

    A replay (an Idempotency-Key seen before) gives the first request's task and the figures it got.
    """

    position: int
    duration_sum: float
    duration_count: int
    task_id: str
    created_at: float
    replayed: bool = False


@attrs.frozen
class CancelOutcome:
    """What a cancel found: the status before (`was`) and, once cancelled, when and from which state."""

    was: TaskStatus
    previous_state: str | None
    cancelled_at: float | None

    @property
    def cancelled_now(self) -> bool:
        """True if this call did the cancelling."""
        return self.was in ACTIVE


@attrs.frozen
class Finished:
    """What a finish wrote: whether it ended the task (not when it was cancelled or taken over
    meanwhile) and, when the caller's sender now holds the end's webhook, its lease (ms) and the
    record as it ended, which that webhook carries."""

    written: bool
    webhook_lease: int | None = None
    # Only with a lease: building it for every finish was a tenth of a drained no-op task's finish.
    ended: TaskRecord | None = None


class TaskStore:
    """Reads and writes task records, project indexes and metrics."""

    def __init__(
        self,
        redis: Redis,
        task_ttl: int,
        wait_replicas: int = 0,
        wait_timeout: float = 2.0,
        *,
        concurrent_per_project: int = 0,
        aging_window: float = 300.0,
        progress_interval: float = 5.0,
    ) -> None:
        self.redis = redis
        self.task_ttl = task_ttl
        # The throttle start.lua applies: processing tasks of one project at once (0 = no limit).
        self.concurrent_per_project = concurrent_per_project
        # execution.priority_aging: where a project's next job goes when its head starts (lib/fair.lua).
        self.aging_ms = int(aging_window * 1000)
        # webhooks.progress_interval: the least time between two progress webhooks of a task.
        self.progress_interval_ms = int(progress_interval * 1000)
        # Replicas that must have a new task before its submit is acknowledged (redis.wait_replicas).
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = int(wait_timeout * 1000)
        self._submit = scripts.load(redis, "submit")
        # Submits made at once share a round trip (coalesce.py).
        self._submit_together = Coalesced(redis, self._submit, wait_replicas, self.wait_timeout_ms)
        self._batch = scripts.load(redis, "batch")
        self._start = scripts.load(redis, "start")
        self._take = scripts.load(redis, "take")
        self._progress = scripts.load(redis, "progress")
        self._finish = scripts.load(redis, "finish")
        # Runs that end at once (a worker's batch from one take) share a round trip too.
        self._finish_together = Coalesced(redis, self._finish)
        self._requeue = scripts.load(redis, "requeue")
        self._reclaim = scripts.load(redis, "reclaim")
        self._cancel = scripts.load(redis, "cancel")
        # A status read of a queued task: its record and its place, each shared with the reads made at once.
        self._reads = Reads(redis)
        self._position = Coalesced(redis, scripts.load(redis, "position"))
        self._due = scripts.load(redis, "due")
        self._progress_again = scripts.load(redis, "progress_again")

    async def create(
        self,
        record: TaskRecord,
        job: QueuedJob,
        admission: Admission,
        idempotency: Idempotency | None = None,
        quota: Quota | None = None,
    ) -> Created:
        """Admit, store, index, count and enqueue `record` in one script; a return means it is in Redis.

        Raises RateLimited when the project has too many tasks waiting, ServiceUnavailable when the
        queue is full; nothing is written then. With an `idempotency` key seen before, nothing is
        written either: the first request's task comes back (`replayed`), or IdempotencyKeyReused
        when that request had another fingerprint. With a `quota`, one unit of it is spent first
        and reported to it; over the limit, nothing else is written.
        """
        outcome, replicated = await self._create(
            key_names={
                "task": keys.task(record.task_id),
                "project": keys.project(record.project_id),
                "metrics": keys.METRICS,
                "waiting": keys.waiting(record.queue),
                "job": keys.arq_job(job.job_id),
                "active": keys.project_active(record.project_id),
                "processing": keys.project_processing(record.project_id),
                "idempotency": idempotency.key if idempotency else keys.NO_KEY,
                "ratelimit": quota.key if quota else keys.NO_KEY,
            },
            args={
                "task_id": record.task_id,
                "created_ms": int(record.created_at * 1000),
                "ttl": self.task_ttl,
                "score": job.score,
                "job_id": job.job_id,
                # arq's job is JSON (orjson), so UTF-8 text.
                "job": job.payload.decode(),
                "job_expiry_ms": job.expiry_ms,
                "queued_limit": admission.queued_per_project,
                "queue_limit": admission.max_queue_length,
                "queue": record.queue,
                "task_type": record.task_type,
                "aging_ms": self.aging_ms,
                "fingerprint": idempotency.fingerprint if idempotency else "",
                "idempotency_ttl": keys.IDEMPOTENCY_TTL,
                "depends_on": orjson.dumps(record.depends_on or []),
                "scheduled_ms": int(record.scheduled_for * 1000) if record.scheduled_for else 0,
                "rate_limit": quota.limit if quota else 0,
                "rate_window": quota.window_ms if quota else 0,
                "rate_nonce": quota.nonce if quota else "",
                "fields": orjson.dumps(encode_flat(record)),
            },
        )
        reply, spent = outcome
        if quota is not None:
            allowed, remaining, retry_ms, reset_ms = spent
            quota.report(Spent(bool(allowed), int(remaining), int(retry_ms), int(reset_ms)))
        verdict = reply[0].decode()
        if verdict == "rate_limited":
            raise RuntimeError("a submit over its rate limit was refused, yet Quota.report let it through")
        if verdict == "idempotency_key_reused":
            raise IdempotencyKeyReused()
        if verdict == "bad_dependency":
            raise ValidationError(
                {"depends_on": _BAD_DEPENDENCY[reply[2].decode()].format(reply[1].decode())},
                "Invalid dependencies",
            )
        if verdict == "ok" and replicated is not None and replicated < self.wait_replicas:
            raise _not_replicated(self.wait_replicas)
        if verdict == "project_full":
            raise _project_full(record.project_id, int(reply[1]), admission)
        if verdict == "queue_full":
            raise _queue_full(record.queue, int(reply[1]))
        if verdict == "replayed":
            _, position, duration_sum, duration_count, task_id, created_ms = reply
            return Created(
                position=int(position),
                duration_sum=float(duration_sum),
                duration_count=int(duration_count),
                task_id=task_id.decode(),
                created_at=int(created_ms) / 1000,
                replayed=True,
            )
        _, position, duration_sum, duration_count = reply
        return Created(
            position=int(position),
            duration_sum=float(duration_sum),
            duration_count=int(duration_count),
            task_id=record.task_id,
            created_at=record.created_at,
        )

    async def create_batch(
        self,
        batch: Sequence[tuple[TaskRecord, QueuedJob]],
        admission: Admission,
        idempotency: Idempotency | None = None,
    ) -> list[Created]:
        """Admit, store, index, count and enqueue every record of a batch in one script, all or nothing.

        As `create` for each record, its refusals naming the first record refused (`tasks[i]`); a
        record's dependencies may name the batch's earlier records. A replay gives the first
        request's tasks, in order.
        """
        tasks = [
            {
                "id": record.task_id,
                "project": record.project_id,
                "queue": record.queue,
                "task_type": record.task_type,
                "created_ms": str(int(record.created_at * 1000)),
                "score": str(job.score),
                "job_id": job.job_id,
                # arq's job is JSON (orjson), so UTF-8 text.
                "job": job.payload.decode(),
                "job_expiry_ms": str(job.expiry_ms),
                "depends_on": record.depends_on or [],
                "scheduled_ms": int(record.scheduled_for * 1000) if record.scheduled_for else 0,
                "fields": encode_flat(record),
            }
            for record, job in batch
        ]
        reply, replicated = await self._run(
            self._batch,
            key_names={
                "metrics": keys.METRICS,
                "idempotency": idempotency.key if idempotency else keys.NO_KEY,
            },
            args={
                "ttl": self.task_ttl,
                "queued_limit": admission.queued_per_project,
                "queue_limit": admission.max_queue_length,
                "aging_ms": self.aging_ms,
                "fingerprint": idempotency.fingerprint if idempotency else "",
                "idempotency_ttl": keys.IDEMPOTENCY_TTL,
                "tasks": orjson.dumps(tasks),
            },
        )
        verdict = reply[0].decode()
        if verdict == "idempotency_key_reused":
            raise IdempotencyKeyReused()
        if verdict == "bad_dependency":
            _, index, task_id, why = reply
            raise ValidationError(
                {f"tasks[{int(index)}].depends_on": _BAD_DEPENDENCY[why.decode()].format(task_id.decode())},
                "Invalid dependencies",
            )
        if verdict == "project_full":
            raise _project_full(batch[int(reply[1])][0].project_id, int(reply[2]), admission)
        if verdict == "queue_full":
            raise _queue_full(batch[int(reply[1])][0].queue, int(reply[2]))
        if verdict == "replayed":
            results, task_ids, created_ms = (orjson.loads(part) for part in reply[1:])
            return [
                Created(
                    int(position),
                    float(duration_sum),
                    int(duration_count),
                    task_id,
                    int(created) / 1000,
                    True,
                )
                for (position, duration_sum, duration_count), task_id, created in zip(
                    results, task_ids, created_ms, strict=True
                )
            ]
        if replicated is not None and replicated < self.wait_replicas:
            raise _not_replicated(self.wait_replicas)
        return [
            Created(
                int(position), float(duration_sum), int(duration_count), record.task_id, record.created_at
            )
            for (position, duration_sum, duration_count), (record, _) in zip(
                orjson.loads(reply[1]), batch, strict=True
            )
        ]

    async def _create(self, key_names: Mapping[str, str], args: Mapping[str, Any]) -> tuple[Any, int | None]:
        return await self._submit_together(key_names, args)

    async def _run(
        self, script: scripts.Script, key_names: Mapping[str, str], args: Mapping[str, Any]
    ) -> tuple[Any, int | None]:
        # WAIT counts the writes of its own connection, so it follows the script in one pipeline.
        if not self.wait_replicas:
            return await script(keys=key_names, args=args), None
        async with self.redis.pipeline(transaction=False) as pipe:
            await script(keys=key_names, args=args, client=pipe)
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
            reply, replicated = await pipe.execute()
        return reply, int(replicated)

    async def get(self, task_id: str) -> TaskRecord:
        """The record of `task_id`; raises TaskNotFound."""
        fields = await self._reads("HGETALL", keys.task(task_id))
        if not fields:
            raise TaskNotFound(task_id)
        return decode(fields)

    async def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord]:
        """Records of the ids that still exist, in the given order."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hgetall(keys.task(task_id))
            rows = await pipe.execute()
        records = []
        for fields in rows:
            if fields:
                with contextlib.suppress(CorruptRecord):  # logged by decode; a list shows the rest
                    records.append(decode(fields))
        return records

    async def start(
        self, task_id: str, job_id: str, queue: str, worker_id: str, at: float, lock_ms: int
    ) -> Start:
        """Claim arq job `job_id` for `worker_id` and mark its task processing, in one script.

        `claimed` is False when the job is another worker's or not due; a claimed job whose task
        may not run (ended, cancelled, stale, running elsewhere) comes back without a record.
        """
        reply = await self._start(
            keys={
                "task": keys.task(task_id),
                "running": keys.running(queue),
                "lock": keys.arq_in_progress(job_id),
                "queue": keys.queue(queue),
                "outbox": keys.WEBHOOKS_DUE,
                "started_state": keys.webhook(keys.webhook_member(task_id, "started")),
                "metrics": keys.METRICS,
            },
            args={
                "now": repr(at),
                "worker_id": worker_id,
                "task_id": task_id,
                "job_id": job_id,
                "now_ms": int(at * 1000),
                "lock_ms": lock_ms,
                "project_limit": self.concurrent_per_project,
                "aging_ms": self.aging_ms,
            },
        )
        if not isinstance(reply, list):
            return Start(claimed=False, throttled=reply == b"throttled")
        score = int(float(reply[0]))
        if reply[1] != b"started":
            return Start(claimed=True, score=score)
        fields = reply[2:]
        return Start(
            claimed=True, score=score, record=decode(dict(zip(fields[::2], fields[1::2], strict=True)))
        )

    async def take(
        self, queue: str, worker_id: str, at: float, count: int, scan: int, *, recover: bool = False
    ) -> Takes:
        """Start up to `count` due jobs of `queue` for `worker_id` in fair order, in one script (take.lua).

        With `recover`, the tasks of `queue` that `worker_id` runs come back too: a call whose reply
        was lost may have started some.
        """
        reply = await self._take(
            keys={
                "queue": keys.queue(queue),
                "running": keys.running(queue),
                "outbox": keys.WEBHOOKS_DUE,
                "idle": keys.idle(queue),
                "metrics": keys.METRICS,
            },
            args={
                "now": repr(at),
                "worker_id": worker_id,
                "now_ms": int(at * 1000),
                "count": count,
                "scan": scan,
                "project_limit": self.concurrent_per_project,
                "aging_ms": self.aging_ms,
                "queue_name": queue,
                "recover": "1" if recover else "0",
            },
        )
        look, *entries = reply
        taken = []
        for job, score, *fields in entries:
            record = None
            with contextlib.suppress(CorruptRecord):  # logged by decode
                record = decode(dict(zip(fields[::2], fields[1::2], strict=True)))
            taken.append(Taken(job.decode(), int(float(score)), record))
        return Takes(taken, bool(look))

    async def position(self, record: TaskRecord) -> int:
        """Where a queued task stands in its queue now: 1 = next to start, counting the turns of other
        projects' tasks (lib/fair.lua's place); 0 when it is not waiting."""
        if record.job_id is None:
            return 0
        place, _ = await self._position({"task": keys.task(record.task_id)}, {"job_id": record.job_id})
        return int(place)

    async def queue_due(self, at: float, batch: int) -> int:
        """Queue up to `batch` scheduled tasks whose time is `at` or earlier; returns how many were queued."""
        return int(
            await self._due(
                keys={"scheduled": keys.SCHEDULED},
                args={
                    "now_ms": int(at * 1000),
                    "aging_ms": self.aging_ms,
                    "batch": batch,
                    "ttl": self.task_ttl,
                },
            )
        )

    async def progress(
        self, task_id: str, worker_id: str, progress: float, step: str | None, at: float
    ) -> bool:
        """Record progress of a task this worker runs; False if the task is no longer its to run."""
        written = await self._progress(
            keys={
                "task": keys.task(task_id),
                "outbox": keys.WEBHOOKS_DUE,
                "progress_state": keys.webhook(keys.webhook_member(task_id, "progress")),
            },
            args={
                "progress": repr(progress),
                "step": step or "",
                "now": repr(at),
                "worker_id": worker_id,
                "task_id": task_id,
                "now_ms": int(at * 1000),
                "interval_ms": self.progress_interval_ms,
            },
        )
        return bool(written)

    async def progress_again(self, record: TaskRecord, at: float) -> bool:
        """Queue another progress webhook if the task's progress changed since `record` was read."""
        queued = await self._progress_again(
            keys={
                "task": keys.task(record.task_id),
                "outbox": keys.WEBHOOKS_DUE,
                "progress_state": keys.webhook(keys.webhook_member(record.task_id, "progress")),
            },
            args={
                "task_id": record.task_id,
                "sent": repr(record.updated_at or 0.0),
                "now_ms": int(at * 1000),
                "interval_ms": self.progress_interval_ms,
            },
        )
        return bool(queued)

    async def task_type(self, task_id: str) -> str | None:
        """The type of a task (None when it has no record)."""
        raw = await self.redis.hget(keys.task(task_id), "task_type")
        return None if raw is None else str(raw.decode())

    async def statuses(self, task_ids: list[str]) -> list[str | None]:
        """The status of each task in its record (None where there is no record), in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hget(keys.task(task_id), "status")
            raw = await pipe.execute()
        return [None if value is None else value.decode() for value in raw]

    async def finish(
        self,
        record: TaskRecord,
        worker_id: str,
        status: TaskStatus,
        at: float,
        *,
        webhook_lease: int | None = None,
        **fields: Any,
    ) -> Finished:
        """End a processing task as completed or failed, dropping its arq job; not written if it was
        cancelled or taken over meanwhile.

        With `webhook_lease` (ms), the end's webhook, if the task wants one, is queued already leased
        until then to the caller's sender, which is then to send it (finish.lua).
        """
        processing_time = round(at - (record.started_at or at), 3)
        values: dict[str, Any] = {
            "updated_at": at,
            "completed_at": at,
            "processing_time": processing_time,
            **fields,
        }
        if status is TaskStatus.COMPLETED:
            values["progress"] = 1.0
        flat: list[bytes | str] = ["status", status.value]
        for name, value in values.items():
            if value is not None:
                flat += [name, encode_value(name, value)]
        counter = "completed_tasks" if status is TaskStatus.COMPLETED else "failed_tasks"
        # The script's status reply (bytes), or None for a Lua false: the record is gone.
        outcome: bytes | None
        outcome, _ = await self._finish_together(
            {
                "task": keys.task(record.task_id),
                "running": keys.running(record.queue),
                "metrics": keys.METRICS,
                "outbox": keys.WEBHOOKS_DUE,
                "queue": keys.queue(record.queue),
            },
            {
                "worker_id": worker_id,
                "counter": counter,
                "task_type": record.task_type,
                "duration": repr(processing_time),
                "ttl": self.task_ttl,
                "task_id": record.task_id,
                "now_ms": int(at * 1000),
                "aging_ms": self.aging_ms,
                "webhook_lease": "" if webhook_lease is None else webhook_lease,
                "fields": flat,
            },
        )
        if outcome == b"leased":
            return Finished(True, webhook_lease, attrs.evolve(record, status=status, **values))
        return Finished(outcome == b"ok")

    async def requeue(
        self, record: TaskRecord, worker_id: str, at: float, score: int, *, retry_error: str | None = None
    ) -> bool:
        """Put a task this worker runs back on its queue at `score` (ms): a retry if `retry_error` is given."""
        # The script's status reply (bytes), or None for a Lua false: the record is gone.
        outcome: bytes | None = await self._requeue(
            keys={
                "task": keys.task(record.task_id),
                "running": keys.running(record.queue),
                "metrics": keys.METRICS,
            },
            args={
                "worker_id": worker_id,
                "task_id": record.task_id,
                "now": repr(at),
                "now_ms": int(at * 1000),
                "queue": record.queue,
                "score": score,
                "retried": "1" if retry_error is not None else "0",
                "last_error": retry_error or "",
                "aging_ms": self.aging_ms,
            },
        )
        return outcome == b"ok"

    async def orphans(self, queues: Iterable[str]) -> list[tuple[str, str, int]]:
        """Processing tasks whose worker's heartbeat is gone: (task id, queue, priority) each."""
        candidates: list[tuple[str, str]] = []
        for queue in queues:
            candidates += [
                (raw.decode(), queue) for raw in await self.redis.zrange(keys.running(queue), 0, -1)
            ]
        if not candidates:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id, _ in candidates:
                pipe.hmget(keys.task(task_id), "worker_id", "priority")
            owners = await pipe.execute()
        async with self.redis.pipeline(transaction=False) as pipe:
            for worker_id, _ in owners:
                pipe.exists(keys.worker(worker_id.decode() if worker_id else "?"))
            alive = await pipe.execute()
        return [
            (task_id, queue, int(priority) if (priority or b"").isdigit() else 2)
            for (task_id, queue), (_, priority), live in zip(candidates, owners, alive, strict=True)
            if not live
        ]

    async def reclaim(self, task_id: str, queue: str, at: float, score: int, max_deaths: int) -> str:
        """Requeue (or, past `max_deaths`, fail) a task whose worker died; says which it did."""
        outcome = await self._reclaim(
            keys={
                "task": keys.task(task_id),
                "running": keys.running(queue),
                "metrics": keys.METRICS,
                "outbox": keys.WEBHOOKS_DUE,
            },
            args={
                "task_id": task_id,
                "now": repr(at),
                "now_ms": int(at * 1000),
                "queue": queue,
                "score": score,
                "max_deaths": max_deaths,
                "ttl": self.task_ttl,
                "worker_prefix": keys.worker(""),
                "aging_ms": self.aging_ms,
            },
        )
        return outcome.decode() if isinstance(outcome, bytes) else "gone"

    async def cancel(self, record: TaskRecord, queue_key: str, at: float) -> CancelOutcome:
        """Cancel a queued or processing task atomically, removing its queued job; report what was there."""
        return await self._cancel_script(record, queue_key, at, error="", queued_only=False)

    async def cancel_queued(self, record: TaskRecord, at: float, error: str) -> bool:
        """Cancel the task with `error` if it is still queued (not if it started meanwhile); True if it was."""
        outcome = await self._cancel_script(
            record, keys.queue(record.queue), at, error=error, queued_only=True
        )
        # A processing task left alone is reported as processing: only a cancel here was queued.
        return outcome.was is TaskStatus.QUEUED

    async def _cancel_script(
        self, record: TaskRecord, queue_key: str, at: float, *, error: str, queued_only: bool
    ) -> CancelOutcome:
        reply = await self._cancel(
            keys={
                "task": keys.task(record.task_id),
                "running": keys.running(record.queue),
                "metrics": keys.METRICS,
                "outbox": keys.WEBHOOKS_DUE,
                "queue": queue_key,
            },
            args={
                "now": repr(at),
                "ttl": self.task_ttl,
                "task_id": record.task_id,
                "now_ms": int(at * 1000),
                "aging_ms": self.aging_ms,
                "error": error,
                "queued_only": "1" if queued_only else "",
            },
        )
        if reply is None:
            raise TaskNotFound(record.task_id)
        if isinstance(reply, bytes):
            return CancelOutcome(TaskStatus(reply.decode()), None, None)
        status, previous, cancelled_at = (part.decode() for part in reply)
        was = TaskStatus(previous) if status == "cancelled_now" else TaskStatus(status)
        return CancelOutcome(was, previous or None, float(cancelled_at) if cancelled_at else None)

    async def project_task_ids(self, project_id: str) -> list[str]:
        """Ids of a project's tasks, newest first, pruning ids whose record has expired."""
        index = keys.project(project_id)
        ids = [raw.decode() for raw in await self.redis.zrevrange(index, 0, -1)]
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.exists(keys.task(task_id))
            alive = await pipe.execute()
        expired = [task_id for task_id, exists in zip(ids, alive, strict=True) if not exists]
        if expired:
            await self.redis.zrem(index, *expired)
        return [task_id for task_id, exists in zip(ids, alive, strict=True) if exists]

    async def list_project(
        self,
        project_id: str,
        *,
        status: str | None,
        task_type: str | None,
        offset: int,
        limit: int,
    ) -> tuple[list[TaskRecord], int]:
        """One page of a project's tasks (newest first) matching the filters, and how many match in all."""
        ids = await self.project_task_ids(project_id)
        if status or task_type:
            async with self.redis.pipeline(transaction=False) as pipe:
                for task_id in ids:
                    pipe.hmget(keys.task(task_id), "status", "task_type")
                rows = await pipe.execute()
            ids = [
                task_id
                for task_id, (st, tt) in zip(ids, rows, strict=True)
                if (not status or st == status.encode()) and (not task_type or tt == task_type.encode())
            ]
        return await self.get_many(ids[offset : offset + limit]), len(ids)

    async def metrics(self, queues: Iterable[str]) -> Metrics:
        """The shared counters, with the running count and average durations per task type."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.METRICS)
            for queue in queues:
                pipe.zcard(keys.running(queue))
            counters, *running = await pipe.execute()
        raw = {name.decode(): value.decode() for name, value in counters.items()}
        averages = {}
        for name, value in raw.items():
            if name.startswith("duration_sum:"):
                task_type = name.removeprefix("duration_sum:")
                count = int(raw.get(f"duration_count:{task_type}", 0))
                if count:
                    averages[task_type] = round(float(value) / count, 3)
        return Metrics(
            total_tasks=int(raw.get("total_tasks", 0)),
            completed_tasks=int(raw.get("completed_tasks", 0)),
            failed_tasks=int(raw.get("failed_tasks", 0)),
            retried_tasks=int(raw.get("retried_tasks", 0)),
            cancelled_tasks=int(raw.get("cancelled_tasks", 0)),
            currently_running=sum(running),
            average_durations=averages,
        )

    async def running_since(self, queues: Iterable[str]) -> dict[str, float]:
        """Processing task ids with the time each started."""
        started: dict[str, float] = {}
        for queue in queues:
            for member, score in await self.redis.zrange(keys.running(queue), 0, -1, withscores=True):
                started[member.decode()] = score / 1000
        return started

    async def note_memory_recycle(self, event: Mapping[str, Any], at: float) -> None:
        """Remember a job process killed over the memory limit, for the memory alert."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(keys.MEMORY_EVENTS, {orjson.dumps(dict(event)): int(at * 1000)})
            pipe.zremrangebyscore(keys.MEMORY_EVENTS, "-inf", int((at - keys.MEMORY_EVENT_TTL) * 1000))
            await pipe.execute()

    async def memory_recycles(self, at: float) -> list[dict[str, Any]]:
        """Job processes killed over the memory limit in the last ten minutes."""
        since = int((at - keys.MEMORY_EVENT_TTL) * 1000)
        return [
            orjson.loads(raw) for raw in await self.redis.zrangebyscore(keys.MEMORY_EVENTS, since, "+inf")
        ]
