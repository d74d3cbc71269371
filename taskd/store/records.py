"""The task store: records, the per-project index and the shared metrics, in Redis.

State changes that must not race (submit, start, progress, finish, requeue, reclaim, cancel) are
Lua scripts (taskd/store/lua/), one round trip each, so a cancelled task can never be overwritten
by a late `completed` from its worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import attrs
import orjson
from redis.asyncio import Redis

from taskd import keys
from taskd.model import (
    ACTIVE,
    ApiError,
    ForeignDependency,
    IdempotencyKeyReused,
    Metrics,
    RateLimited,
    ServiceUnavailable,
    TaskNotFound,
    TaskRecord,
    TaskStatus,
    ValidationError,
    now,
)
from taskd.store import scripts
from taskd.store.coalesce import Merged, Reads
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
# A heavy task that would not fit a project's storage budget even once the project's other heavy
# records are gone (it alone is over the budget): no wait makes it fit, so an hour, not a busy loop.
STORED_FULL_RETRY_AFTER = 3600
T = TypeVar("T")


def _bad_dependency(field: str, why: str, task_id: str) -> ValidationError:
    """The 400 for a refused dependency; another project's task is a ForeignDependency, which the
    HTTP layer words as an unknown task for a key scoped to other projects."""
    details = {field: _BAD_DEPENDENCY[why].format(task_id)}
    if why == "project":
        return ForeignDependency(details, {field: _BAD_DEPENDENCY["unknown"].format(task_id)})
    return ValidationError(details, "Invalid dependencies")


def added_up(hashes: Iterable[Mapping[bytes, bytes]]) -> dict[str, str]:
    """Counter hashes of several partitions (keys.metrics) as one, each field the sum of its values,
    decoded; one hash is only decoded."""
    parts = list(hashes)
    if len(parts) == 1:
        return {name.decode(): value.decode() for name, value in parts[0].items()}
    sums: dict[str, int | float] = {}
    for part in parts:
        for name, value in part.items():
            number: int | float
            try:
                number = int(value)
            except ValueError:
                try:
                    number = float(value)
                except ValueError:  # not a counter taskd writes: not added
                    continue
            sums[name.decode()] = sums.get(name.decode(), 0) + number
    return {name: repr(value) for name, value in sums.items()}


def _cross_partition_batch() -> ValidationError:
    return ValidationError(
        {
            "tasks": "With redis.partitions above 1, a batch stores its tasks all or none only within "
            "one partition: submit the tasks of projects in different partitions in separate batches"
        },
        "Invalid batch",
    )


def _project_full(project_id: str, waiting: int, admission: Admission, in_batch: str = "") -> RateLimited:
    return RateLimited(
        f"Project '{project_id}' already has {waiting} tasks waiting to start{in_batch}; "
        f"at most {admission.queued_per_project} may wait at once (its running tasks do not count)",
        PROJECT_FULL_RETRY_AFTER,
    )


def _size(size: int) -> str:
    """Bytes as a person reads them: 256.0 MiB, 24.4 KiB."""
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 1024:.1f} KiB"


def _queue_full(queue: str, waiting: int, in_batch: str = "") -> ServiceUnavailable:
    return ServiceUnavailable(
        f"Queue '{queue}' is full ({waiting} tasks waiting{in_batch}), please try again later",
        retry_after=QUEUE_FULL_RETRY_AFTER,
    )


def batch_fills_queue(index: int, ours: int, queue: str, limit: int) -> ValidationError:
    """The 400 for a batch whose task `index` comes after `ours` of its own tasks queued at once on
    `queue`, `limit` or more: batch.lua refuses it on an empty queue too, so a 503's Retry-After would
    invite the same refusal for ever."""
    return ValidationError(
        {
            "tasks": f"tasks[{index}] comes after {ours} tasks of this batch to queue at once on queue "
            f"'{queue}', which holds {limit} at most: send them in smaller batches"
        },
        "Invalid batch",
    )


def _batch_queue_full(queue: str, index: int, waiting: int, ours: int, limit: int) -> ApiError:
    # The batch's own tasks that queue at once include those whose dependencies have completed,
    # which taskd.submit.batch.check_within_limits cannot count: alone they fill it, a 400.
    if ours >= limit:
        return batch_fills_queue(index, ours, queue, limit)
    return _queue_full(queue, waiting, _in_batch(index, ours))


def _in_batch(index: int, ours: int) -> str:
    # A batch's earlier items count as stored: say so, or a batch into an empty project reads false.
    return f", counting the {ours} of this batch before tasks[{index}]" if ours else ""


def _not_replicated(replicas: int) -> ServiceUnavailable:
    # Issue 9: not yet on enough replicas, so a failover now could lose it; the caller may retry.
    return ServiceUnavailable(
        f"Task storage could not copy the task to {replicas} replica(s) in time, please try again later",
        retry_after=5,
    )


@attrs.frozen
class QueuedJob:
    """The arq job that will run a new task: its id and queue score (ms, taskd.queue.task_queue.job_score)."""

    job_id: str
    score: float


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
class RunningTask:
    """A processing task as the reclaim reads it: its queue's running set and its record."""

    task_id: str
    queue: str
    priority: int
    job_id: str
    worker_id: str
    # Whether that worker's heartbeat lives.
    alive: bool


@attrs.frozen
class Takes:
    """What one take (take.lua) started, and whether the worker should take again when a slot frees:
    False when it found no more due jobs and waits in the idle set, where the next job wakes it."""

    started: list[Taken]
    look_when_freed: bool


# The most jobs one take passes over (throttled projects' heads, jobs held by a worker that claims
# one at a time) before it gives up until the next poll: arq's own poll reads 100 at most.
TAKE_SCAN = 100
# Ids of a project's index read by one call of list.lua: a listing of a project of 10,000 tasks is
# ten calls, each holding Valkey ~1-3 ms.
LIST_STRETCH = 1000
# Ids of waiting or running tasks passed to one call of live.lua: each costs a TTL read, and a few
# more commands when renewed (at most once per half of storage.task_ttl).
LIVE_BATCH = 500


def _filter_key(status: str | None, task_type: str | None) -> str:
    """The name list.lua's census counts a listing's filter under."""
    if status and task_type:
        return f"b:{status}\n{task_type}"
    if status:
        return f"s:{status}"
    if task_type:
        return f"t:{task_type}"
    return "a"


def _per_filter(counts: Mapping[str, int]) -> dict[str, int]:
    """A census's counts ('<status>\n<task_type>' -> tasks) added up under every filter key."""
    per: Counter[str] = Counter()
    for both, count in counts.items():
        status, _, task_type = both.partition("\n")
        for name in ("a", f"s:{status}", f"t:{task_type}", f"b:{both}"):
            per[name] += int(count)
    return dict(per)


class _Stretch:
    """A listing's walk down its project's index, a call of list.lua (one stretch) at a time, with
    what a census of it counted: how many tasks match each filter before each stretch."""

    def __init__(self, client: Redis, index: str, status: str, task_type: str, *, census: bool) -> None:
        self.client, self.index, self.status, self.task_type, self.census = (
            client,
            index,
            status,
            task_type,
            census,
        )
        self.matched = 0
        # Per stretch read, its census counts (filter key -> tasks of the stretch it matches).
        self.stretches: list[dict[str, int]] = []
        # When the first record counted expires (ms of Valkey's clock), None for none.
        self.soonest: int | None = None

    async def read(
        self, script: scripts.Script, *, below: bytes, seen: int, offset: int, limit: int, whole: bool
    ) -> list[str]:
        """The ids of the page `offset` matches down from (`below`, `seen`); on to the index's end
        when `whole` (for the count), else only until the page is full."""
        page: list[str] = []
        while True:
            reply = await script(
                client=self.client,
                keys={"index": self.index},
                args={
                    "below": below,
                    "seen": seen,
                    "count": LIST_STRETCH,
                    "status": self.status,
                    "task_type": self.task_type,
                    "skip": offset - self.matched,
                    "want": limit - len(page),
                    "census": "1" if self.census else "",
                },
            )
            found, read, below, seen = int(reply[0]), int(reply[1]), reply[2], int(reply[3])
            if self.census:
                # cjson passes a record's bytes through as they are: one not UTF-8 (a record broken
                # by hand) would fail the whole listing. Such a record's status or type is counted
                # under its replacement characters, a filter no listing of a real task asks for.
                counted = orjson.loads(reply[4].decode(errors="replace"))
                self.stretches.append(_per_filter(counted["counts"]))
                soonest = int(counted["soonest"])
                if soonest >= 0 and (self.soonest is None or soonest < self.soonest):
                    self.soonest = soonest
            page.extend(raw.decode() for raw in reply[5:])
            self.matched += found
            if read < LIST_STRETCH or (not whole and len(page) >= limit):
                return page

    def kept_fields(self) -> list[str | int]:
        """list_keep.lua's fields: each filter's count (`c:`) and its matches before each stretch (`k:`)."""
        fields: list[str | int] = []
        for name in sorted({name for counts in self.stretches for name in counts} | {"a"}):
            before, running = [], 0
            for counts in self.stretches:
                before.append(str(running))
                running += counts.get(name, 0)
            fields += [f"c:{name}", running, f"k:{name}", ",".join(before)]
        return fields


@attrs.frozen
class KeeperTurn:
    """A process's claim to look at a partition's live tasks (taskd.engine.keeper): taken only
    where no other process's is held (SET NX), held `hold_ms` at a time while it looks, and kept
    `rest_ms` from the look's end, during which no process looks there again."""

    holder: str
    # The processes that keep records alike, taking turns among themselves (taskd.engine.keeper).
    group: str
    hold_ms: int
    rest_ms: int

    def key(self, partition: int) -> str:
        """The turn at `partition`."""
        return keys.keeper_turn(partition, self.group)


class AlreadyRetried(Exception):
    """A retry asked for only if the task had none yet (`first_retry`) found one: `retry_id`."""

    def __init__(self, retry_id: str) -> None:
        super().__init__(f"retried already as {retry_id}")
        self.retry_id = retry_id


class Taker(Protocol):
    """A free slot of the submitting process's worker of the task's queue, held for one submit
    (taskd.queue.workers.TaskdWorker.hold): if that worker waits in the queue's idle set, the
    submit script starts the queue's next job for it, as its own take would, one round trip sooner."""

    @property
    def worker_id(self) -> str:
        """The worker's id."""
        ...

    @property
    def room(self) -> int:
        """Its free slots, the held one included."""
        ...

    def handed(self, takes: Takes | None) -> None:
        """What the script started for the worker (None: it tried nothing, the worker was not idle)."""
        ...

    def lost(self) -> None:
        """The script's reply never came: it may have started a job for the worker."""
        ...


@attrs.frozen
class Admission:
    """Limits a submit must pass; 0 = unlimited."""

    queued_per_project: int = 0
    max_queue_length: int = 0
    # The bytes a project's heavy records may hold (limits.stored_bytes_per_project, lib/stored.lua).
    stored_bytes_per_project: int = 0


@attrs.frozen
class Idempotency:
    """A submit's Idempotency-Key: where the first request with it is remembered, and what it asked."""

    # {taskd}:idempotency:{key id}:{hash} (taskd.keys.idempotency).
    key: str
    # A digest of the route and body: the same key with another fingerprint is refused.
    fingerprint: str
    # What a check of the moment answered the request (taskd.submit.idempotency.unless_remembered):
    # only a replay may answer it then, so the script stores nothing, and it is raised when the key
    # is not remembered. Decided in the script, a key that expires after a look of its own would
    # let a new request through the check.
    refused: ApiError | None = attrs.field(default=None, eq=False)


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
        partition_clients: Sequence[Redis] | None = None,
    ) -> None:
        # The client of the state every task shares (partition 0's, on a cluster the primary of {taskd}).
        self.redis = redis
        # One client per partition (taskd.keys.partitions): on a cluster, each talks to the primary
        # that serves its partition's slot; otherwise they are all `redis`.
        self.clients = keys.client_per_partition(redis, partition_clients)
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
        # A script is registered once and run on the client of the partition it is called for; the
        # event streams the scripts write live no longer than the records (keys.events_ttl).
        load = functools.partial(scripts.load, redis, events_ttl=keys.events_ttl(task_ttl))
        submit = load("submit")
        # Submits made at once are one call of submit.lua (coalesce.py), one per partition.
        self._submit_together = [
            Merged(
                client,
                submit,
                {"metrics": keys.metrics(partition)},
                {
                    "ttl": self.task_ttl,
                    "aging_ms": self.aging_ms,
                    "idempotency_ttl": keys.IDEMPOTENCY_TTL,
                    "scan": TAKE_SCAN,
                    "project_limit": self.concurrent_per_project,
                },
                wait_replicas,
                self.wait_timeout_ms,
            )
            for partition, client in enumerate(self.clients)
        ]
        self._batch = load("batch")
        self._start = load("start")
        self._take = load("take")
        self._waiting_heads = load("waiting_heads")
        self._progress = load("progress")
        finish = load("finish")
        # Runs that end at once (a worker's batch from one take) end in one call of finish.lua.
        self._finish_together = [
            Merged(
                client,
                finish,
                {"metrics": keys.metrics(partition), "outbox": keys.webhooks_due(partition)},
                {"ttl": self.task_ttl, "aging_ms": self.aging_ms},
            )
            for partition, client in enumerate(self.clients)
        ]
        self._requeue = load("requeue")
        self._reclaim = load("reclaim")
        self._cancel = load("cancel")
        # A status read of a queued task: its record and its place, each shared with the reads made at once.
        self._reads = [Reads(client) for client in self.clients]
        position = load("position")
        # Status reads of queued tasks made at once are one call of position.lua, one per partition.
        self._position = [
            Merged(client, position, {"partition": keys.no_key(partition)}, {})
            for partition, client in enumerate(self.clients)
        ]
        self._due = load("due")
        self._live = load("live")
        self._keeper_turn = load("turn")
        self._list = load("list")
        self._list_look = load("list_look")
        self._list_keep = load("list_keep")
        self._progress_again = load("progress_again")
        self._trimmed = load("trimmed")
        # Where each queue's next take starts among the partitions whose first due jobs are equally
        # old (none due in either, most often), so that none is always last.
        self._take_turns: dict[str, itertools.cycle[int]] = {}
        # Per queue, the partitions whose idle set this process's worker may be waiting in (take).
        self._idle_in: dict[str, set[int]] = {}

    async def kept_from(self, stream: str) -> str:
        """The id of event stream `stream`'s oldest entry when its cap trimmed some off ("0-0" when none)."""
        client = self.client(keys.partition_of_key(stream))
        kept: bytes = await self._trimmed(keys={"stream": stream}, args={}, client=client)
        return kept.decode()

    def client(self, partition: int) -> Redis:
        """The client of one partition's keys."""
        return self.clients[partition]

    def _of_task(self, task_id: str) -> Redis:
        return self.clients[keys.task_partition(task_id)]

    async def _each_partition(self, read: Callable[[Redis, int], Awaitable[T]]) -> list[T]:
        """`read` of every partition, at once (on a cluster, each on its own primary)."""
        if len(self.clients) == 1:
            return [await read(self.redis, 0)]
        return list(await asyncio.gather(*(read(client, p) for p, client in enumerate(self.clients))))

    async def _per_task(self, task_ids: Sequence[str], command: Callable[[Any, str], None]) -> list[Any]:
        """`command(pipe, task_id)` for each id, one pipeline per partition; replies in the ids' order."""
        by_partition: dict[int, list[int]] = {}
        for index, task_id in enumerate(task_ids):
            by_partition.setdefault(keys.task_partition(task_id), []).append(index)

        async def run(partition: int, indexes: list[int]) -> list[Any]:
            async with self.clients[partition].pipeline(transaction=False) as pipe:
                for index in indexes:
                    command(pipe, task_ids[index])
                return list(await pipe.execute())

        replies: list[Any] = [None] * len(task_ids)
        parts = list(by_partition.items())
        for (_, indexes), rows in zip(
            parts, await asyncio.gather(*(run(p, indexes) for p, indexes in parts)), strict=True
        ):
            for index, row in zip(indexes, rows, strict=True):
                replies[index] = row
        return replies

    async def name_queues(self, queues: Iterable[str]) -> None:
        """Add `queues` (those this process's config names) to every partition's known queues
        ({taskd}:queues), so that their tasks stay kept and shown by every process once a later
        config names them no more."""
        names = sorted(set(queues))
        if names:
            await self._each_partition(lambda client, p: client.sadd(keys.queues(p), *names))

    async def known_queues(self) -> list[str]:
        """Every queue some process named or put a job on (`name_queues`, lib/enqueue.lua), in
        every partition: one SMEMBERS each."""
        parts = await self._each_partition(lambda client, p: client.smembers(keys.queues(p)))
        return sorted(set[str]().union(*({name.decode() for name in part} for part in parts)))

    async def queues_in_use(self, queues: Iterable[str]) -> list[str]:
        """`queues` (this process's), and each other known queue (`known_queues`) with a task
        waiting or running now: one no config here names (renamed, removed, its types routed
        elsewhere), or another node's that no worker here serves. Its tasks wait for a worker of
        it as any queue's do; the health, `/metrics` and `taskd queues` must show them."""
        names = set(queues)
        others = [name for name in await self.known_queues() if name not in names]
        if others:

            async def count(client: Redis, p: int) -> list[int]:
                async with client.pipeline(transaction=False) as pipe:
                    for name in others:
                        pipe.exists(keys.waiting(name, p), keys.running(name, p))
                    return list(await pipe.execute())

            counts = await self._each_partition(count)
            names.update(name for i, name in enumerate(others) if any(row[i] for row in counts))
        return sorted(names)

    async def _waiting_elsewhere(self, queues: Iterable[str], partition: int, limit: int) -> dict[str, int]:
        """The tasks waiting on each queue in the partitions other than `partition` (all 0 with one
        partition, or without a queue limit, which is all they are counted for)."""
        names = list(dict.fromkeys(queues))
        if len(self.clients) == 1 or not limit:
            return dict.fromkeys(names, 0)

        async def count(client: Redis, p: int) -> list[int]:
            if p == partition:
                return [0] * len(names)
            async with client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.zcard(keys.waiting(name, p))
                return list(await pipe.execute())

        counts = await self._each_partition(count)
        return {name: sum(row[i] for row in counts) for i, name in enumerate(names)}

    async def create(
        self,
        record: TaskRecord,
        job: QueuedJob,
        admission: Admission,
        idempotency: Idempotency | None = None,
        quota: Quota | None = None,
        taker: Taker | None = None,
        first_retry: bool = False,
    ) -> Created:
        """Admit, store, index, count and enqueue `record` in one script; a return means it is in Redis.

        Raises RateLimited when the project has too many tasks waiting, ServiceUnavailable when the
        queue is full; nothing is written then. With an `idempotency` key seen before, nothing is
        written either: the first request's task comes back (`replayed`), or IdempotencyKeyReused
        when that request had another fingerprint. With a `quota`, one unit of it is spent first
        and reported to it; over the limit, nothing else is written. With a `taker`, the script may
        start the queue's next job for it (submit.lua), and tells it what it started, or that the
        reply was lost, before anything is raised. With `first_retry`, a retry of a task that has one
        already stores nothing and raises AlreadyRetried.
        """
        partition = self._partition_of(record)
        elsewhere = 0
        if len(self.clients) > 1:
            try:
                elsewhere = await self._checked_elsewhere(record, partition, admission, idempotency, quota)
            except BaseException:
                if taker is not None:
                    taker.handed(None)
                raise
        try:
            outcome, replicated = await self._submit_together[partition](
                # In submit.lua's order (its SUBMIT list).
                [
                    record.task_id,
                    # Fractional: tasks of one project created in one millisecond list in order.
                    repr(record.created_at * 1000),
                    job.score,
                    job.job_id,
                    admission.queued_per_project,
                    admission.max_queue_length,
                    admission.stored_bytes_per_project,
                    record.queue,
                    record.task_type,
                    idempotency.fingerprint if idempotency else "",
                    orjson.dumps(record.depends_on or []),
                    int(record.scheduled_for * 1000) if record.scheduled_for else 0,
                    quota.limit if quota else 0,
                    quota.window_ms if quota else 0,
                    quota.nonce if quota else "",
                    orjson.dumps(encode_flat(record)),
                    elsewhere,
                    taker.worker_id if taker else "",
                    taker.room if taker else 0,
                    repr(now()) if taker else "",
                    keys.in_partition(idempotency.key, partition) if idempotency else "",
                    quota.key if quota else "",
                    "1" if first_retry else "",
                    "1" if idempotency is not None and idempotency.refused is not None else "",
                ]
            )
        except BaseException:
            if taker is not None:
                taker.lost()
            raise
        reply, spent, handed = outcome
        if taker is not None:
            takes = self._takes(handed) if handed else None
            if takes is not None and takes.look_when_freed:
                # The script took the worker out of the partition's idle set (as take() notes).
                self._idle_in.get(record.queue, set()).discard(partition)
            taker.handed(takes)
        if quota is not None:
            allowed, remaining, retry_ms, reset_ms = spent
            quota.report(Spent(bool(allowed), int(remaining), int(retry_ms), int(reset_ms)))
        return self._created(reply, replicated, record, admission, idempotency)

    def _created(
        self,
        reply: list[Any],
        replicated: int | None,
        record: TaskRecord,
        admission: Admission,
        idempotency: Idempotency | None,
    ) -> Created:
        """submit.lua's outcome for `record`: what it created or replayed, or the error it refused with."""
        verdict = reply[0].decode()
        if verdict == "not_remembered" and idempotency is not None and idempotency.refused is not None:
            raise idempotency.refused
        if verdict == "rate_limited":
            raise RuntimeError("a submit over its rate limit was refused, yet Quota.report let it through")
        if verdict == "idempotency_key_reused":
            raise IdempotencyKeyReused()
        if verdict == "retried_before":
            raise AlreadyRetried(reply[1].decode())
        if verdict == "bad_dependency":
            raise _bad_dependency("depends_on", reply[2].decode(), reply[1].decode())
        if verdict == "ok" and replicated is not None and replicated < self.wait_replicas:
            raise _not_replicated(self.wait_replicas)
        if verdict == "project_full":
            raise _project_full(record.project_id, int(reply[1]), admission)
        if verdict == "queue_full":
            raise _queue_full(record.queue, int(reply[1]))
        if verdict == "stored_full":
            total, size, wait = (int(part) for part in reply[1:])
            raise self._stored_full(record.project_id, total, size, wait, admission)
        if verdict == "replayed":
            _, position, duration_sum, duration_count, task_id, created_ms = reply
            return Created(
                position=int(position),
                duration_sum=float(duration_sum),
                duration_count=int(duration_count),
                task_id=task_id.decode(),
                created_at=float(created_ms) / 1000,
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

    async def _checked_elsewhere(
        self,
        record: TaskRecord,
        partition: int,
        admission: Admission,
        idempotency: Idempotency | None,
        quota: Quota | None,
    ) -> int:
        """What a submit in `partition` reads of the other partitions before its script (docs/cluster.md):
        raises if a dependency or the Idempotency-Key is another partition's; the tasks waiting on the
        queue elsewhere."""
        if quota is not None:
            raise ValueError("with partitions, a submit's quota is spent before it (taskd.http.ratelimit)")
        await self._refuse_foreign_dependency(record, partition, "depends_on")
        await self._refuse_key_used_elsewhere(idempotency, partition)
        counts = await self._waiting_elsewhere([record.queue], partition, admission.max_queue_length)
        return counts[record.queue]

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
        partitions = {self._partition_of(record) for record, _ in batch}
        if len(partitions) > 1:
            raise _cross_partition_batch()
        (partition,) = partitions
        for index, (record, _) in enumerate(batch):
            await self._refuse_foreign_dependency(record, partition, f"tasks[{index}].depends_on")
        await self._refuse_key_used_elsewhere(idempotency, partition)
        elsewhere = await self._waiting_elsewhere(
            (record.queue for record, _ in batch), partition, admission.max_queue_length
        )
        tasks = [
            {
                "id": record.task_id,
                "project": record.project_id,
                "queue": record.queue,
                "task_type": record.task_type,
                "created_ms": repr(record.created_at * 1000),
                "score": str(job.score),
                "job_id": job.job_id,
                "depends_on": record.depends_on or [],
                "scheduled_ms": int(record.scheduled_for * 1000) if record.scheduled_for else 0,
                "fields": encode_flat(record),
                "elsewhere": elsewhere[record.queue],
            }
            for record, job in batch
        ]
        reply, replicated = await self._run(
            self._batch,
            self.clients[partition],
            key_names={
                "metrics": keys.metrics(partition),
                "idempotency": (
                    keys.in_partition(idempotency.key, partition) if idempotency else keys.no_key(partition)
                ),
            },
            args={
                "ttl": self.task_ttl,
                "queued_limit": admission.queued_per_project,
                "queue_limit": admission.max_queue_length,
                "aging_ms": self.aging_ms,
                "fingerprint": idempotency.fingerprint if idempotency else "",
                "idempotency_ttl": keys.IDEMPOTENCY_TTL,
                "tasks": orjson.dumps(tasks),
                "stored_limit": admission.stored_bytes_per_project,
                "replay_only": "1" if idempotency is not None and idempotency.refused is not None else "",
            },
        )
        verdict = reply[0].decode()
        if verdict == "not_remembered" and idempotency is not None and idempotency.refused is not None:
            raise idempotency.refused
        if verdict == "idempotency_key_reused":
            raise IdempotencyKeyReused()
        if verdict == "retried_before":
            raise AlreadyRetried(reply[1].decode())
        if verdict == "bad_dependency":
            _, index, task_id, why = reply
            raise _bad_dependency(f"tasks[{int(index)}].depends_on", why.decode(), task_id.decode())
        if verdict == "project_full":
            index, waiting, ours = (int(part) for part in reply[1:])
            raise _project_full(batch[index][0].project_id, waiting, admission, _in_batch(index, ours))
        if verdict == "queue_full":
            index, waiting, ours = (int(part) for part in reply[1:])
            raise _batch_queue_full(batch[index][0].queue, index, waiting, ours, admission.max_queue_length)
        if verdict == "stored_full":
            index, total, ours, size, wait = (int(part) for part in reply[1:])
            in_batch = f", counting this batch's tasks before tasks[{index}]" if ours else ""
            raise self._stored_full(batch[index][0].project_id, total, size, wait, admission, in_batch, ours)
        if verdict == "replayed":
            results, task_ids, created_ms = (orjson.loads(part) for part in reply[1:])
            return [
                Created(
                    int(position),
                    float(duration_sum),
                    int(duration_count),
                    task_id,
                    float(created) / 1000,
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

    def _stored_full(
        self,
        project_id: str,
        total: int,
        size: int,
        wait: int,
        admission: Admission,
        in_batch: str = "",
        ours: int = 0,
    ) -> RateLimited:
        """The 429 of a heavy task over its project's budget; `ours`: the batch's heavy tasks before it."""
        limit = admission.stored_bytes_per_project
        alone = ""
        if size > limit:
            alone = f"; this task alone ({_size(size)}) is over that"
        elif ours + size > limit:
            # No expiry makes room for them all (the script's wait is 0): sent again whole, the
            # batch is refused again, so the caller is told to split it, not only to wait.
            alone = (
                f"; this batch's large or long-kept tasks together ({_size(ours + size)}) are over that: "
                "send them in smaller batches"
            )
        return RateLimited(
            f"Project '{project_id}' stores {_size(total)} of large or long-kept tasks{in_batch}; at most "
            f"{_size(limit)} may be stored at once{alone} (a task counts when its task_data and metadata, "
            f"or its result or the result its task type expects from its task_data, are over "
            f"{keys.STORED_FREE_BYTES // 1024} KiB, or when it is kept longer than "
            f"{self.task_ttl} s by keep_for or run_at; the space is given back as those tasks expire)",
            wait or STORED_FULL_RETRY_AFTER,
        )

    async def _refuse_foreign_dependency(self, record: TaskRecord, partition: int, field: str) -> None:
        """A dependency in another partition is another project's task (a project's tasks share its
        partition), or no task: the same 400 the script gives for one in its own partition."""
        for task_id in record.depends_on or []:
            elsewhere = keys.task_partition(task_id)
            if elsewhere != partition:
                why = "project" if await self.clients[elsewhere].exists(keys.task(task_id)) else "unknown"
                raise _bad_dependency(field, why, task_id)

    async def _refuse_key_used_elsewhere(self, idempotency: Idempotency | None, partition: int) -> None:
        """An Idempotency-Key is remembered in the partition of the request's project. A request
        with the same fingerprint names the same project, so one remembered in another partition
        was another request: IdempotencyKeyReused, as the script answers in its own partition.
        Unlike there, two such requests at the same moment may both pass (this read and the
        script are two round trips)."""
        if idempotency is None or len(self.clients) == 1:
            return
        for other, client in enumerate(self.clients):
            if other != partition and await client.exists(keys.in_partition(idempotency.key, other)):
                raise IdempotencyKeyReused()

    @staticmethod
    def _partition_of(record: TaskRecord) -> int:
        partition = keys.task_partition(record.task_id)
        if partition != keys.project_partition(record.project_id):
            # A programming error: taskd.keys.new_task_id makes every id its project's.
            raise ValueError(f"task {record.task_id} is not in the partition of project {record.project_id}")
        return partition

    async def _run(
        self, script: scripts.Script, client: Redis, key_names: Mapping[str, str], args: Mapping[str, Any]
    ) -> tuple[Any, int | None]:
        # WAIT counts the writes of its own connection, so it follows the script in one pipeline.
        if not self.wait_replicas:
            return await script(keys=key_names, args=args, client=client), None
        async with client.pipeline(transaction=False) as pipe:
            await script(keys=key_names, args=args, client=pipe)
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
            reply, replicated = await pipe.execute()
        return reply, int(replicated)

    async def get(self, task_id: str) -> TaskRecord:
        """The record of `task_id`; raises TaskNotFound."""
        fields = await self._reads[keys.task_partition(task_id)]("HGETALL", keys.task(task_id))
        if not fields:
            raise TaskNotFound(task_id)
        return decode(fields)

    async def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord]:
        """Records of the ids that still exist, in the given order."""
        rows = await self._per_task(task_ids, lambda pipe, task_id: pipe.hgetall(keys.task(task_id)))
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
        partition = keys.task_partition(task_id)
        reply = await self._start(
            client=self.clients[partition],
            keys={
                "task": keys.task(task_id),
                "running": keys.running(queue, partition),
                "lock": keys.arq_in_progress(job_id),
                "queue": keys.queue(queue, partition),
                "outbox": keys.webhooks_due(partition),
                "started_state": keys.webhook(keys.webhook_member(task_id, "started")),
                "metrics": keys.metrics(partition),
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
        self,
        queue: str,
        worker_id: str,
        at: float,
        count: int,
        scan: int,
        *,
        recover: bool = False,
        where: Collection[int] | None = None,
    ) -> Takes:
        """Start up to `count` due jobs of `queue` for `worker_id` in fair order, in one script (take.lua).

        With `recover`, the tasks of `queue` that `worker_id` runs come back too: a call whose reply
        was lost may have started some.

        With several partitions, one script per partition, the partition whose first due job has
        waited longest first, each for its share of the `count` longest-waiting due jobs of the
        queue (`_longest_waiting_first`), then for the slots left over, until `count` are started; only in the
        partitions `where` when given (those whose jobs woke the worker: it still waits in the idle
        sets of the others, whose next job wakes it). The worker is to look again when a slot frees unless every partition it looked in found
        nothing more and put it in its idle set. A worker filled up is taken out of every idle set it
        may still be in, so that their next job wakes a worker with room.
        """
        if len(self.clients) == 1:
            return await self._take_from(0, queue, worker_id, at, count, scan, recover)
        turns = self._take_turns.setdefault(queue, itertools.cycle(range(len(self.clients))))
        first = next(turns)
        order = [(first + step) % len(self.clients) for step in range(len(self.clients))]
        if where is not None and not recover:
            order = [partition for partition in order if partition in where]
        # How many of the jobs to start each partition holds among the queue's longest-waiting heads.
        shares: Counter[int] | None = None
        if len(order) > 1:
            order, shares = await self._longest_waiting_first(queue, order, at, count)
        # The partitions whose idle set this process's worker of the queue may be in.
        idle_in = self._idle_in.setdefault(queue, set())
        started: list[Taken] = []
        filled = False
        # Per partition, whether its last take said to look again when a slot frees.
        looks: dict[int, bool] = {}
        # First each partition's share, then the slots left over (a share not taken: its heads'
        # projects were throttled, or another worker took them) from every partition in order.
        passes = (shares, None) if shares is not None and not recover else (None,)
        for share in passes:
            for partition in order:
                if len(started) >= count and not recover:
                    filled = True
                    break
                want = max(0, count - len(started))
                if share is not None:
                    want = min(want, share[partition])
                    if want == 0:
                        continue
                elif looks.get(partition) is False:
                    continue  # it found nothing more in this call
                takes = await self._take_from(partition, queue, worker_id, at, want, scan, recover)
                started += takes.started
                looks[partition] = takes.look_when_freed
                # take.lua leaves the worker in the idle set when it found nothing more, else out of it.
                (idle_in.discard if takes.look_when_freed else idle_in.add)(partition)
        look = filled or any(looks.values())
        if look and idle_in:
            for partition in sorted(idle_in):
                await self.clients[partition].zrem(keys.idle(queue, partition), worker_id)
            idle_in.clear()
        return Takes(started, look)

    async def _longest_waiting_first(
        self, queue: str, order: list[int], at: float, count: int
    ) -> tuple[list[int], Counter[int]]:
        """The partitions by the score of their first due job on arq's set waiting to start (a
        project's head, whose score is when its turn began, moved earlier by its priority; not a job
        running on a worker that claims one at a time: waiting_heads.lua), those with none due last, ties
        kept in `order`; and how many of the `count` due jobs with the lowest scores of all the
        partitions together each holds.

        Each partition's heads take turns among themselves (lib/fair.lua); taken in rotation, each
        take filling its slots from one partition, the partitions took turns instead of the projects:
        a project alone in its partition got one start in two with two partitions, whatever the
        number of projects in the other (and a project's partition is a public hash of its id, so a
        tenant can pick one). Taken by their heads' scores, the next starts go to the heads that
        have waited longest in any partition, as on one.
        """
        firsts = await asyncio.gather(
            *(
                self._waiting_heads(
                    client=self.clients[partition],
                    keys={"queue": keys.queue(queue, partition)},
                    args={"now_ms": int(at * 1000), "count": max(count, 1)},
                )
                for partition in order
            )
        )
        due = {
            partition: [float(score) for score in first]
            for partition, first in zip(order, firsts, strict=True)
        }
        longest = heapq.nsmallest(
            count, ((score, partition) for partition, scores in due.items() for score in scores)
        )
        shares = Counter(partition for _, partition in longest)
        return sorted(order, key=lambda partition: due[partition][0] if due[partition] else math.inf), shares

    async def _take_from(
        self, partition: int, queue: str, worker_id: str, at: float, count: int, scan: int, recover: bool
    ) -> Takes:
        reply = await self._take(
            client=self.clients[partition],
            keys={
                "queue": keys.queue(queue, partition),
                "running": keys.running(queue, partition),
                "outbox": keys.webhooks_due(partition),
                "idle": keys.idle(queue, partition),
                "metrics": keys.metrics(partition),
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
        return self._takes(reply)

    @staticmethod
    def _takes(reply: list[Any]) -> Takes:
        """take.lua's reply (or submit.lua's start for its taker): {look, entry, ...}."""
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
        place, _ = await self._position[keys.task_partition(record.task_id)](
            [record.task_id, record.job_id, int(now() * 1000)]
        )
        return int(place)

    async def queue_due(self, at: float, batch: int) -> int:
        """Queue every scheduled task whose time is `at` or earlier, `batch` at a time (one due.lua
        call each, so that no one script runs long); returns how many were queued. Each partition
        is called again while its last call took a full batch: whether more are due is each
        partition's own to say (a sum over partitions, or a count of only the tasks queued, which
        leaves out those still waiting for dependencies, said "no more" while some were due)."""

        async def due(client: Redis, partition: int) -> int:
            queued = 0
            while True:
                done, taken = await self._due(
                    client=client,
                    keys={"scheduled": keys.scheduled(partition)},
                    args={
                        "now_ms": int(at * 1000),
                        "aging_ms": self.aging_ms,
                        "batch": batch,
                        "ttl": self.task_ttl,
                    },
                )
                queued += int(done)
                if int(taken) < batch:
                    return queued

        return sum(await self._each_partition(due))

    async def keep_live(
        self, queues: Iterable[str], at: float, below: float, turn: KeeperTurn | None = None
    ) -> list[int | None]:
        """Renew, to `storage.task_ttl` from `at`, the record of every task waiting or running on
        `queues`, or on a queue of the partition's known queues that no config names any more
        (`known_queues`), that has less than `below` seconds left (live.lua), with what lives as long as it;
        returns how many were renewed, per partition. With a `turn`, only in the partitions where
        it is `turn.holder`'s (None for the others: another process looked there recently or
        looks now)."""
        names = list(queues)

        async def keep(client: Redis, partition: int) -> int | None:
            if turn is not None and not await client.set(
                turn.key(partition), turn.holder, nx=True, px=turn.hold_ms
            ):
                return None
            renewed = 0
            seen: set[str] = set()
            # A task waiting on a queue that no process's config names any more (renamed, removed,
            # its type routed elsewhere) is kept too, until a worker serves it or it is purged:
            # nothing else renews it, and it expired while `queued`, never run and never told.
            known = {name.decode() for name in await client.smembers(keys.queues(partition))}
            for queue in [*names, *sorted(known.difference(names))]:
                # The waiting set holds job ids ({task id}.{n}), the running set task ids. ZSCAN
                # returns every member there from its start to its end, in pages.
                waiting = [
                    raw.decode().rpartition(".")[0]
                    async for raw, _ in client.zscan_iter(keys.waiting(queue, partition), count=LIVE_BATCH)
                ]
                running = [
                    raw.decode()
                    async for raw, _ in client.zscan_iter(keys.running(queue, partition), count=LIVE_BATCH)
                ]
                # The tasks waiting for these (depends_on) are in no queue: each call returns those
                # of its live tasks, passed on in later calls (with those waiting for them in turn),
                # so that no call handles more than a batch, whatever a task's dependents number.
                ids = [task_id for task_id in waiting + running if task_id not in seen]
                seen.update(ids)
                done = 0
                while done < len(ids):
                    # Still looking: the turn is this process's a while more, unless another took
                    # it while this look stalled (its look read the sets afresh, and covers these).
                    if turn is not None and not await self._still_mine(client, partition, turn, turn.hold_ms):
                        return renewed
                    batch = ids[done : done + LIVE_BATCH]
                    done += len(batch)
                    reply = await self._live(
                        client=client,
                        keys={"partition": keys.no_key(partition)},
                        args={
                            "ttl": self.task_ttl,
                            "below": math.ceil(below),
                            "now_s": repr(at),
                            "ids": batch,
                        },
                    )
                    renewed += int(reply[0])
                    for raw in reply[1:]:
                        waiting_for = raw.decode()
                        if waiting_for not in seen:
                            seen.add(waiting_for)
                            ids.append(waiting_for)
            if turn is not None:
                await self._still_mine(client, partition, turn, turn.rest_ms)
            return renewed

        return await self._each_partition(keep)

    async def _still_mine(self, client: Redis, partition: int, turn: KeeperTurn, ms: int) -> bool:
        """Whether `turn` at `partition` is still its holder's (or lapsed: it is again), now for `ms`
        (turn.lua). Set, not renewed (PEXPIRE): one that lapsed during a stall (a long scan of the
        waiting set) would stay gone, and with it the rest after the look, so that every ask looked
        again."""
        reply = await self._keeper_turn(
            client=client, keys={"turn": turn.key(partition)}, args={"holder": turn.holder, "ms": ms}
        )
        return bool(reply)

    async def progress(
        self, task_id: str, job_id: str, worker_id: str, progress: float, step: str | None, at: float
    ) -> bool:
        """Record progress of a task this worker runs under `job_id`; False if the task is no longer
        that run's."""
        partition = keys.task_partition(task_id)
        written = await self._progress(
            client=self.clients[partition],
            keys={
                "task": keys.task(task_id),
                "outbox": keys.webhooks_due(partition),
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
                "job_id": job_id,
            },
        )
        return bool(written)

    async def progress_again(self, record: TaskRecord, at: float) -> bool:
        """Queue another progress webhook if the task's progress changed since `record` was read."""
        partition = keys.task_partition(record.task_id)
        queued = await self._progress_again(
            client=self.clients[partition],
            keys={
                "task": keys.task(record.task_id),
                "outbox": keys.webhooks_due(partition),
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
        raw = await self._of_task(task_id).hget(keys.task(task_id), "task_type")
        return None if raw is None else str(raw.decode())

    async def field_of_each(self, task_ids: Sequence[str], name: str) -> list[bytes | None]:
        """One field of each task's record, raw (None where there is no record): a round trip a partition."""
        return await self._per_task(task_ids, lambda pipe, task_id: pipe.hget(keys.task(task_id), name))

    async def statuses(self, task_ids: list[str]) -> list[str | None]:
        """The status of each task in its record (None where there is no record), in one round trip."""
        raw = await self.field_of_each(task_ids, "status")
        return [None if value is None else value.decode() for value in raw]

    async def runners(self, task_ids: list[str]) -> list[tuple[str | None, str | None, str | None]]:
        """The status, worker and job of each task in its record (Nones where there is no record), in
        one round trip: whose run the record holds, as the scripts that write a run's end check it."""
        raw = await self._per_task(
            task_ids, lambda pipe, task_id: pipe.hmget(keys.task(task_id), "status", "worker_id", "job_id")
        )
        decoded = [[None if value is None else value.decode() for value in row] for row in raw]
        return [(status, worker_id, job_id) for status, worker_id, job_id in decoded]

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
        cancelled or taken over meanwhile, or started again since under a newer job than `record`'s.

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
        # The end's reply (bytes), or None for a Lua false: the record is gone.
        outcome: bytes | None
        outcome, _ = await self._finish_together[keys.task_partition(record.task_id)](
            # In finish.lua's order (its header's `ends`).
            [
                record.task_id,
                record.queue,
                worker_id,
                record.job_id or "",
                counter,
                record.task_type,
                repr(processing_time),
                int(at * 1000),
                "" if webhook_lease is None else webhook_lease,
                len(flat),
                *flat,
            ]
        )
        if outcome == b"leased":
            return Finished(True, webhook_lease, attrs.evolve(record, status=status, **values))
        return Finished(outcome == b"ok")

    async def requeue(
        self,
        record: TaskRecord,
        worker_id: str,
        at: float,
        score: float,
        *,
        retry_error: str | None = None,
        not_run: bool = False,
    ) -> bool:
        """Put a task this worker runs under `record`'s job back on its queue at `score` (ms): a retry
        if `retry_error` is given; with `not_run`, a task handed on before its handler ran (its
        attempt not counted)."""
        # The script's status reply (bytes), or None for a Lua false: the record is gone.
        partition = keys.task_partition(record.task_id)
        outcome: bytes | None = await self._requeue(
            client=self.clients[partition],
            keys={
                "task": keys.task(record.task_id),
                "running": keys.running(record.queue, partition),
                "metrics": keys.metrics(partition),
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
                "not_run": "1" if not_run else "0",
                "job_id": record.job_id or "",
            },
        )
        return outcome == b"ok"

    async def running_tasks(self, queues: Iterable[str]) -> list[RunningTask]:
        """The processing tasks of `queues` (their running sets), each with its worker and whether
        that worker's heartbeat lives."""
        names = list(queues)

        async def running(client: Redis, partition: int) -> list[tuple[str, str]]:
            found = []
            for queue in names:
                found += [
                    (raw.decode(), queue)
                    for raw in await client.zrange(keys.running(queue, partition), 0, -1)
                ]
            return found

        candidates = [found for part in await self._each_partition(running) for found in part]
        if not candidates:
            return []
        fields = await self._per_task(
            [task_id for task_id, _ in candidates],
            lambda pipe, task_id: pipe.hmget(keys.task(task_id), "worker_id", "priority", "job_id"),
        )
        owners = [worker_id.decode() if worker_id else "?" for worker_id, _, _ in fields]
        async with self.redis.pipeline(transaction=False) as pipe:
            for owner in owners:
                pipe.exists(keys.worker(owner))
            alive = await pipe.execute()
        return [
            RunningTask(
                task_id,
                queue,
                int(priority) if (priority or b"").isdigit() else 2,
                job_id.decode() if job_id else "",
                owner,
                bool(live),
            )
            for (task_id, queue), (_, priority, job_id), owner, live in zip(
                candidates, fields, owners, alive, strict=True
            )
        ]

    async def reclaim(
        self,
        task_id: str,
        queue: str,
        at: float,
        score: float,
        max_deaths: int,
        lost: RunningTask | None = None,
    ) -> str:
        """Requeue (or, past `max_deaths`, fail) a task whose worker died; says which it did.

        With `lost`, a task its live worker (`lost.worker_id`, this process) no longer runs, though
        Redis says it does (its end was lost with a failed-over primary): it is requeued if the
        record still names that worker and job, as a death would, but not counted as one."""
        partition = keys.task_partition(task_id)
        outcome = await self._reclaim(
            client=self.clients[partition],
            keys={
                "task": keys.task(task_id),
                "running": keys.running(queue, partition),
                "metrics": keys.metrics(partition),
                "outbox": keys.webhooks_due(partition),
            },
            args={
                "task_id": task_id,
                "now": repr(at),
                "now_ms": int(at * 1000),
                "queue": queue,
                "score": score,
                "max_deaths": max_deaths,
                "ttl": self.task_ttl,
                "worker_prefix": keys.worker("", partition),
                "aging_ms": self.aging_ms,
                "lost_by": "" if lost is None else lost.worker_id,
                "job_id": "" if lost is None else lost.job_id,
            },
        )
        return outcome.decode() if isinstance(outcome, bytes) else "gone"

    async def cancel(self, record: TaskRecord, at: float) -> CancelOutcome:
        """Cancel a queued or processing task atomically, removing its queued job; report what was there."""
        return await self._cancel_script(record, at, error="", queued_only=False)

    async def cancel_queued(self, record: TaskRecord, at: float, error: str) -> bool:
        """Cancel the task with `error` if it is still queued (not if it started meanwhile); True if it was."""
        outcome = await self._cancel_script(record, at, error=error, queued_only=True)
        # A processing task left alone is reported as processing: only a cancel here was queued.
        return outcome.was is TaskStatus.QUEUED

    async def _cancel_script(
        self, record: TaskRecord, at: float, *, error: str, queued_only: bool
    ) -> CancelOutcome:
        partition = keys.task_partition(record.task_id)
        reply = await self._cancel(
            client=self.clients[partition],
            keys={
                "task": keys.task(record.task_id),
                "running": keys.running(record.queue, partition),
                "metrics": keys.metrics(partition),
                "outbox": keys.webhooks_due(partition),
                "queue": keys.queue(record.queue, partition),
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

    async def list_project(
        self,
        project_id: str,
        *,
        status: str | None,
        task_type: str | None,
        offset: int,
        limit: int,
        spend: Callable[[int], Awaitable[None]] | None = None,
    ) -> tuple[list[TaskRecord], int]:
        """One page of a project's tasks (newest first) matching the filters, and how many match in
        all: `list_project_ids`' page read whole."""
        page, total = await self.list_project_ids(
            project_id, status=status, task_type=task_type, offset=offset, limit=limit, spend=spend
        )
        return await self.get_many(page), total

    async def list_project_ids(
        self,
        project_id: str,
        *,
        status: str | None,
        task_type: str | None,
        offset: int,
        limit: int,
        spend: Callable[[int], Awaitable[None]] | None = None,
    ) -> tuple[list[str], int]:
        """The ids of one page of a project's tasks (newest first) matching the filters, and how many
        match in all; their records are read by the caller (`get_many`), as many at once as it holds.

        `spend` is given how many calls of list_look.lua/list.lua the listing makes (what it costs
        Valkey) once that is known, after its first call and before the others: the API spends
        the caller's quota there, and a refusal it raises reads nothing more.

        The count is kept (list_look.lua): while the project's tasks are as the last listing that
        read the whole index found them (its status events: lib/listed.lua), the listing reads only its page (one call for an unfiltered
        one, the stretches its page spans for a filtered one). Otherwise list.lua reads the whole
        index a stretch of LIST_STRETCH ids per call, drops the ids whose record expired, and
        answers how many matched and the page's ids: the count stays exact, no call holds Valkey
        for more than one stretch, and this process decodes only the page's records (it read and
        parsed a reply per task of the project before: ~90 ms of its CPU a request for a project
        of 10,000 tasks, ~190 ms with a filter); unless the project changed within LIST_QUIET_MS,
        that reading counts the tasks under every filter as it goes, and keeps the counts for the
        listings after it (list_keep.lua). Each stretch
        starts where the one before ended, by score (`below`, and `seen` for the ids of that very
        score already read): tasks submitted meanwhile, newer, are not read, and none is read twice.
        """
        client = self.clients[keys.project_partition(project_id)]
        index, events = keys.project(project_id), keys.project_events(project_id)
        look = await self._list_look(
            client=client,
            keys={"index": index, "events": events, "counts": keys.project_counts(project_id)},
            args={
                "key": _filter_key(status, task_type),
                "offset": offset,
                "limit": limit,
                "count": LIST_STRETCH,
            },
        )
        kept = int(look[0])
        if kept == 1:
            total = int(look[1])
            if spend is not None:
                await spend(1)
            return [raw.decode() for raw in look[2:]], total
        if kept == 2:
            total, below, seen, skip, calls = int(look[1]), look[2], int(look[3]), int(look[4]), int(look[5])
            if spend is not None:
                await spend(calls)
            cursor = _Stretch(client, index, status or "", task_type or "", census=False)
            # The page ends at the count's last match: a last page not full would otherwise read
            # on to the index's end for matches the counts say are not there, past the stretches
            # `calls` spent for (a thousand at a million tasks, for a filter matching few).
            page = await cursor.read(
                self._list, below=below, seen=seen, offset=skip, limit=min(limit, total - offset), whole=False
            )
            return page, total
        version, size, census = look[1], int(look[2]), bool(int(look[3]))
        if spend is not None:
            await spend(size // LIST_STRETCH + 1)
        cursor = _Stretch(client, index, status or "", task_type or "", census=census)
        page = await cursor.read(self._list, below=b"+inf", seen=0, offset=offset, limit=limit, whole=True)
        if not census:
            return page, cursor.matched
        await self._list_keep(
            client=client,
            keys={"events": events, "counts": keys.project_counts(project_id)},
            args={
                "version": version,
                "until": "" if cursor.soonest is None else cursor.soonest,
                "most_ms": keys.LIST_COUNTS_MAX_MS,
                "fields": cursor.kept_fields(),
            },
        )
        return page, cursor.matched

    async def metrics(self, queues: Iterable[str]) -> Metrics:
        """The shared counters (every partition's added up), with the running count and average
        durations per task type."""
        names = list(queues)

        async def read(client: Redis, partition: int) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hgetall(keys.metrics(partition))
                for queue in names:
                    pipe.zcard(keys.running(queue, partition))
                return list(await pipe.execute())

        parts = await self._each_partition(read)
        raw = added_up(part[0] for part in parts)
        running = [count for part in parts for count in part[1:]]
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
            webhooks_delivered=int(raw.get("webhooks_delivered", 0)),
            webhooks_failed=int(raw.get("webhooks_failed", 0)),
        )

    async def counters(self) -> dict[str, str]:
        """The metrics hash, every partition's added up."""
        return added_up(await self._each_partition(lambda client, p: client.hgetall(keys.metrics(p))))

    async def webhooks_due(self) -> int:
        """Webhooks waiting in the outbox (every partition's), leased ones included."""
        return sum(await self._each_partition(lambda client, p: client.zcard(keys.webhooks_due(p))))

    async def running_first(
        self, queues: Iterable[str], first: int | None
    ) -> dict[str, tuple[int, list[tuple[str, float]]]]:
        """Each queue's processing count and its `first` longest-running tasks (id, start in epoch
        seconds; None: all of them, as many as its workers' slots), over every partition."""
        names = list(queues)
        last = -1 if first is None else first - 1

        async def read(client: Redis, partition: int) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.zcard(keys.running(name, partition))
                    pipe.zrange(keys.running(name, partition), 0, last, withscores=True)
                return list(await pipe.execute())

        parts = await self._each_partition(read)
        found = {}
        for i, name in enumerate(names):
            members = sorted(
                ((member.decode(), score / 1000) for part in parts for member, score in part[2 * i + 1]),
                key=lambda item: item[1],
            )
            found[name] = (sum(part[2 * i] for part in parts), members[:first])
        return found

    async def running_since(self, queues: Iterable[str]) -> dict[str, float]:
        """Processing task ids with the time each started."""
        names = list(queues)

        async def read(client: Redis, partition: int) -> dict[str, float]:
            started: dict[str, float] = {}
            for queue in names:
                for member, score in await client.zrange(
                    keys.running(queue, partition), 0, -1, withscores=True
                ):
                    started[member.decode()] = score / 1000
            return started

        return {task_id: at for part in await self._each_partition(read) for task_id, at in part.items()}

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
