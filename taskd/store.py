"""Task records, the per-project index and the shared metrics, in Redis.

State changes that must not race (start, finish, cancel, progress) are Lua scripts, so a
cancelled task can never be overwritten by a late `completed` from its worker.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import orjson
from redis.asyncio import Redis

from taskd import keys
from taskd.model import ACTIVE, Metrics, RateLimited, ServiceUnavailable, TaskNotFound, TaskRecord, TaskStatus

log = logging.getLogger("taskd.store")

_JSON_FIELDS = frozenset({"task_data", "metadata", "result"})
_FLOAT_FIELDS = frozenset(
    {
        "progress",
        "created_at",
        "updated_at",
        "started_at",
        "completed_at",
        "cancelled_at",
        "processing_time",
        "next_retry_at",
    }
)
_INT_FIELDS = frozenset({"priority", "attempt", "deaths", "enqueues"})
_FIELD_NAMES = tuple(field.name for field in attrs.fields(TaskRecord))


def _encode_value(name: str, value: Any) -> bytes | str:
    if name in _JSON_FIELDS:
        return orjson.dumps(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def encode(record: TaskRecord) -> dict[str, bytes | str]:
    """The hash fields of a record; None values are left out."""
    return {
        name: _encode_value(name, value)
        for name in _FIELD_NAMES
        if (value := getattr(record, name)) is not None
    }


def _decode_value(name: str, raw: bytes) -> Any:
    if name in _JSON_FIELDS:
        return orjson.loads(raw)
    text = raw.decode()
    if name in _FLOAT_FIELDS:
        return float(text)
    if name in _INT_FIELDS:
        return int(text)
    if name == "status":
        return TaskStatus(text)
    return text


class CorruptRecord(TaskNotFound):
    """A record hash that cannot be read (missing fields, bad JSON, unknown status): treated as absent.

    The API answers 404 task_not_found for it, lists skip it, workers and the webhook sender drop
    it; each logs the cause, so one broken hash never becomes a 500 or a crash loop (issue 9).
    """

    def __init__(self, task_id: str, reason: str) -> None:
        super().__init__(task_id)
        self.reason = reason


def decode(fields: Mapping[bytes, bytes]) -> TaskRecord:
    """A record from its hash fields; fields taskd does not know are ignored. Raises CorruptRecord."""
    values = {}
    task_id = fields.get(b"task_id", b"?").decode(errors="replace")
    try:
        for raw_name, raw in fields.items():
            name = raw_name.decode()
            if name in _FIELD_NAMES:
                values[name] = _decode_value(name, raw)
        return TaskRecord(**values)
    except (ValueError, TypeError, UnicodeDecodeError, orjson.JSONDecodeError) as exc:
        log.error("task record %s is corrupt and is skipped: %s", task_id, exc)
        raise CorruptRecord(task_id, str(exc)) from None


# Appends an event to the task's and the project's streams (what the SSE endpoints read), in
# the same script as the change it reports. The result is spliced in as stored: re-encoding it
# with cjson would turn empty lists into objects.
_EMIT_LUA = f"""
local function emit(task_key, kind)
  local f = redis.call('HMGET', task_key, 'task_id', 'project_id', 'task_type', 'status', 'progress',
                       'current_step', 'error', 'attempt', 'updated_at', 'result')
  local event = {{type = kind, task_id = f[1], project_id = f[2], task_type = f[3], status = f[4],
                 progress = tonumber(f[5]) or 0, current_step = f[6] or cjson.null, error = f[7] or cjson.null,
                 attempt = tonumber(f[8]) or 0, at = tonumber(f[9]) or cjson.null}}
  local data = cjson.encode(event)
  if f[10] and f[4] == 'completed' then data = string.sub(data, 1, -2) .. ',"result":' .. f[10] .. '}}' end
  local task_stream = '{keys.task_events("")}' .. f[1]
  local project_stream = '{keys.project_events("")}' .. f[2]
  redis.call('XADD', task_stream, 'MAXLEN', '~', {keys.TASK_EVENTS_MAXLEN}, '*', 'event', data)
  redis.call('EXPIRE', task_stream, {keys.EVENTS_TTL})
  redis.call('XADD', project_stream, 'MAXLEN', '~', {keys.PROJECT_EVENTS_MAXLEN}, '*', 'event', data)
  redis.call('EXPIRE', project_stream, {keys.EVENTS_TTL})
end
"""

# Creates a fresh arq job for a task: a new job id per enqueue, so a stale job of an earlier
# attempt (still in arq's hands) can never run the task again. Keys built here follow
# taskd.keys and arq's layout; taskd supports standalone Redis and Sentinel, not Cluster.
_ENQUEUE_LUA = """
local function enqueue(task_key, task_id, queue, score, now_ms)
  local n = redis.call('HINCRBY', task_key, 'enqueues', 1)
  local job_id = task_id .. '.' .. n
  redis.call('HSET', task_key, 'job_id', job_id)
  local job = '{"t":null,"f":"run_task","a":["' .. task_id .. '"],"k":{},"et":' .. now_ms .. '}'
  redis.call('SET', '@JOB_PREFIX@' .. job_id, job, 'PX', 86400000 + math.max(0, score - now_ms))
  redis.call('ZADD', '@QUEUE_PREFIX@' .. queue, score, job_id)
  redis.call('PUBLISH', '@WAKE@', queue)
  return job_id
end
"""

# KEYS: task, project index, metrics, queue zset, arq job, project's active set, running zset.
# ARGV: task id, created ms, ttl, queue score, job id, job payload, job expiry ms, project limit,
#       queue limit, queue name, task type, then the record's field/value pairs.
# One round trip: admission (project concurrency, queue length), the record, its index, the
# counters, the queued job, the wake-up and the first event, all or nothing.
_SUBMIT = (
    _EMIT_LUA
    + """
local project_limit, queue_limit = tonumber(ARGV[8]), tonumber(ARGV[9])
if project_limit > 0 and redis.call('SCARD', KEYS[6]) >= project_limit then
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[6])) do
    local status = redis.call('HGET', '@TASK_PREFIX@' .. id, 'status')
    if status ~= 'queued' and status ~= 'processing' then redis.call('SREM', KEYS[6], id) end
  end
  local active = redis.call('SCARD', KEYS[6])
  if active >= project_limit then return {'project_full', active} end
end
if queue_limit > 0 then
  local waiting = redis.call('ZCARD', KEYS[4]) - redis.call('ZCARD', KEYS[7])
  if waiting >= queue_limit then return {'queue_full', waiting} end
end
for i = 12, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[6], ARGV[1])
redis.call('EXPIRE', KEYS[6], ARGV[3])
redis.call('HINCRBY', KEYS[3], 'total_tasks', 1)
redis.call('HINCRBY', KEYS[3], 'submitted:' .. ARGV[11], 1)
redis.call('SET', KEYS[5], ARGV[6], 'PX', ARGV[7])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5])
redis.call('PUBLISH', '@WAKE@', ARGV[10])
emit(KEYS[1], 'status')
local durations = redis.call('HMGET', KEYS[3], 'duration_sum:' .. ARGV[11], 'duration_count:' .. ARGV[11])
return {'ok', redis.call('ZRANK', KEYS[4], ARGV[5]) or -1, redis.call('ZCARD', KEYS[7]),
        durations[1] or '0', durations[2] or '0'}
"""
)

# Removes the task's current arq job (definition, lock, queue entry) in the script that ends or
# requeues the task, so the worker need not drop it in a round trip of its own.
_DROP_JOB_LUA = """
local function drop_job(task_key, queue_key)
  local job_id = redis.call('HGET', task_key, 'job_id')
  if job_id then
    redis.call('DEL', '@JOB_PREFIX@' .. job_id, '@IN_PROGRESS_PREFIX@' .. job_id)
    redis.call('ZREM', queue_key, job_id)
  end
end
"""

# What every end of a task (completed, failed, cancelled) also does: count it, free its place in
# the project's concurrency, queue its webhook (waking the senders), keep the record a day, emit.
_ENDED_LUA = """
local function ended(task_key, metrics_key, outbox_key, counter, per_type, task_id, now_ms, ttl)
  redis.call('HINCRBY', metrics_key, counter, 1)
  if per_type then
    redis.call('HINCRBY', metrics_key, per_type .. ':' .. redis.call('HGET', task_key, 'task_type'), 1)
  end
  redis.call('SREM', '@ACTIVE_PREFIX@' .. redis.call('HGET', task_key, 'project_id'), task_id)
  if redis.call('HEXISTS', task_key, 'callback_url') == 1 then
    redis.call('ZADD', outbox_key, now_ms, task_id)
    redis.call('PUBLISH', '@WEBHOOKS_WAKE@', task_id)
  end
  redis.call('EXPIRE', task_key, ttl)
  emit(task_key, 'status')
end
"""

# KEYS: task, running zset, the job's arq lock, the queue's sorted set.
# ARGV: now, worker id, task id, job id, now ms, lock ms.
# Claims the arq job (arq's rule: unlocked, still queued, due) and starts its task, in one round
# trip. A processing task is never started again here, whatever arq thinks: only the reclaimer
# (which knows its worker is dead) puts it back on a queue, under a new job id.
_START = (
    _EMIT_LUA
    + """
local lock = redis.call('GET', KEYS[3])
if lock and lock ~= ARGV[2] then return 'locked' end
local score = redis.call('ZSCORE', KEYS[4], ARGV[4])
if not score or tonumber(score) > tonumber(ARGV[5]) then return 'not_due' end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[6])
local function started()
  local reply = {score, 'started'}
  for _, value in ipairs(redis.call('HGETALL', KEYS[1])) do reply[#reply + 1] = value end
  return reply
end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {score, 'gone'} end
if redis.call('HGET', KEYS[1], 'job_id') ~= ARGV[4] then return {score, 'stale'} end
-- The same worker asking again for the same job: its first call went through but the reply was lost.
if status == 'processing' and redis.call('HGET', KEYS[1], 'worker_id') == ARGV[2] then return started() end
if status ~= 'queued' then return {score, status} end
redis.call('HSET', KEYS[1], 'status', 'processing', 'started_at', ARGV[1], 'updated_at', ARGV[1],
           'worker_id', ARGV[2], 'progress', '0.0')
redis.call('HDEL', KEYS[1], 'current_step', 'next_retry_at')
redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('ZADD', KEYS[2], math.floor(tonumber(ARGV[1]) * 1000), ARGV[3])
emit(KEYS[1], 'status')
return started()
"""
)

_PROGRESS = (
    _EMIT_LUA
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'processing' then return 0 end
if redis.call('HGET', KEYS[1], 'worker_id') ~= ARGV[4] then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[1], 'updated_at', ARGV[3])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'current_step', ARGV[2]) end
emit(KEYS[1], 'progress')
return 1
"""
)

# KEYS: task, running zset, metrics, webhook outbox, the queue's sorted set.
# ARGV: worker id, counter, task type, duration, ttl, task id, now ms, then field/value pairs.
# A task with a callback_url gets its webhook due in the same script that records its end.
_FINISH = (
    _EMIT_LUA
    + _DROP_JOB_LUA
    + _ENDED_LUA
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'processing' or redis.call('HGET', KEYS[1], 'worker_id') ~= ARGV[1] then
  return status or false
end
drop_job(KEYS[1], KEYS[5])
for i = 8, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZREM', KEYS[2], ARGV[6])
if ARGV[2] == 'completed_tasks' then
  redis.call('HINCRBYFLOAT', KEYS[3], 'duration_sum:' .. ARGV[3], ARGV[4])
  redis.call('HINCRBY', KEYS[3], 'duration_count:' .. ARGV[3], 1)
  local d = tonumber(ARGV[4])
  for _, le in ipairs({@DURATION_BUCKETS@}) do
    if d <= le then redis.call('HINCRBY', KEYS[3], 'duration_bucket:' .. ARGV[3] .. ':' .. le, 1) end
  end
  ended(KEYS[1], KEYS[3], KEYS[4], 'completed_tasks', nil, ARGV[6], ARGV[7], ARGV[5])
else
  ended(KEYS[1], KEYS[3], KEYS[4], 'failed_tasks', 'failed', ARGV[6], ARGV[7], ARGV[5])
end
return 'ok'
"""
)

# KEYS: task, running zset, metrics.
# ARGV: worker id, task id, now, now ms, queue, score, retried (1 = count an automatic retry), last error.
# Puts a task this worker runs back on its queue: a retry after a transient error, or a
# running task handed back at shutdown.
_REQUEUE = (
    _EMIT_LUA
    + _ENQUEUE_LUA
    + _DROP_JOB_LUA
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'processing' or redis.call('HGET', KEYS[1], 'worker_id') ~= ARGV[1] then
  return status or false
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'updated_at', ARGV[3], 'progress', '0.0')
redis.call('HDEL', KEYS[1], 'worker_id', 'started_at', 'current_step')
redis.call('ZREM', KEYS[2], ARGV[2])
if ARGV[7] == '1' then
  redis.call('HINCRBY', KEYS[3], 'retried_tasks', 1)
  redis.call('HINCRBY', KEYS[3], 'retried:' .. redis.call('HGET', KEYS[1], 'task_type'), 1)
  redis.call('HSET', KEYS[1], 'last_error', ARGV[8], 'next_retry_at', tonumber(ARGV[6]) / 1000)
end
drop_job(KEYS[1], '@QUEUE_PREFIX@' .. ARGV[5])
enqueue(KEYS[1], ARGV[2], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[4]))
emit(KEYS[1], 'status')
return 'ok'
"""
)

# KEYS: task, running zset, metrics, webhook outbox.
# ARGV: task id, now, now ms, queue, score, max deaths, ttl, worker key prefix.
# Takes back a task whose worker stopped beating: requeued, or failed once it has taken
# down `max deaths` workers.
_RECLAIM = (
    _EMIT_LUA
    + _ENQUEUE_LUA
    + _ENDED_LUA
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'processing' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'not_processing'
end
local owner = redis.call('HGET', KEYS[1], 'worker_id') or '?'
if redis.call('EXISTS', ARGV[8] .. owner) == 1 then return 'alive' end
local deaths = redis.call('HINCRBY', KEYS[1], 'deaths', 1)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], 'worker_id', 'current_step')
local reason = 'worker ' .. owner .. ' died while running the task'
if deaths >= tonumber(ARGV[6]) then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'updated_at', ARGV[2], 'completed_at', ARGV[2],
             'error', 'Task failed: its worker died ' .. deaths .. ' times while running it (last: ' .. reason .. ')')
  ended(KEYS[1], KEYS[3], KEYS[4], 'failed_tasks', 'failed', ARGV[1], ARGV[3], ARGV[7])
  return 'failed'
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'updated_at', ARGV[2], 'progress', '0.0', 'last_error', reason)
redis.call('HDEL', KEYS[1], 'started_at')
enqueue(KEYS[1], ARGV[1], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[3]))
emit(KEYS[1], 'status')
return 'requeued'
"""
)

# KEYS: task, running zset, metrics, webhook outbox, the queue's sorted set.
# ARGV: now, ttl, task id, now ms.
_CANCEL = (
    _EMIT_LUA
    + _DROP_JOB_LUA
    + _ENDED_LUA
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status ~= 'queued' and status ~= 'processing' then
  return {status, redis.call('HGET', KEYS[1], 'previous_state') or '', redis.call('HGET', KEYS[1], 'cancelled_at') or ''}
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'previous_state', status, 'cancelled_at', ARGV[1],
           'updated_at', ARGV[1], 'completed_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'worker_id', 'next_retry_at')
redis.call('ZREM', KEYS[2], ARGV[3])
drop_job(KEYS[1], KEYS[5])
ended(KEYS[1], KEYS[3], KEYS[4], 'cancelled_tasks', 'cancelled', ARGV[3], ARGV[4], ARGV[2])
return {'cancelled_now', status, ARGV[1]}
"""
)


def _with_constants(script: str) -> str:
    # A task's end wakes the webhook senders of every process at once; durations feed a histogram.
    replacements = {
        "@WEBHOOKS_WAKE@": keys.WEBHOOKS_WAKE,
        "@WAKE@": keys.WAKE_CHANNEL,
        "@TASK_PREFIX@": keys.task(""),
        "@ACTIVE_PREFIX@": keys.project_active(""),
        "@JOB_PREFIX@": keys.ARQ_JOB_PREFIX,
        "@IN_PROGRESS_PREFIX@": keys.ARQ_IN_PROGRESS_PREFIX,
        "@QUEUE_PREFIX@": keys.queue(""),
        "@DURATION_BUCKETS@": ", ".join(str(le) for le in keys.DURATION_BUCKETS),
    }
    for token, value in replacements.items():
        script = script.replace(token, value)
    return script


PROJECT_FULL_RETRY_AFTER = 10
QUEUE_FULL_RETRY_AFTER = 30


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


@attrs.frozen
class Admission:
    """Limits a submit must pass; 0 = unlimited."""

    concurrent_per_project: int = 0
    max_queue_length: int = 0


@attrs.frozen
class Created:
    """Where a new task stands: its rank in arq's queue set, the queue's running count, past durations."""

    rank: int | None
    running: int
    duration_sum: float
    duration_count: int


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


class TaskStore:
    """Reads and writes task records, project indexes and metrics."""

    def __init__(
        self, redis: Redis, task_ttl: int, wait_replicas: int = 0, wait_timeout: float = 2.0
    ) -> None:
        self.redis = redis
        self.task_ttl = task_ttl
        # Replicas that must have a new task before its submit is acknowledged (redis.wait_replicas).
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = int(wait_timeout * 1000)
        self._submit = redis.register_script(_with_constants(_SUBMIT))
        self._start = redis.register_script(_with_constants(_START))
        self._progress = redis.register_script(_with_constants(_PROGRESS))
        self._finish = redis.register_script(_with_constants(_FINISH))
        self._requeue = redis.register_script(_with_constants(_REQUEUE))
        self._reclaim = redis.register_script(_with_constants(_RECLAIM))
        self._cancel = redis.register_script(_with_constants(_CANCEL))

    async def create(self, record: TaskRecord, job: QueuedJob, admission: Admission) -> Created:
        """Admit, store, index, count and enqueue `record` in one script; a return means it is in Redis.

        Raises RateLimited when the project has too many active tasks, ServiceUnavailable when the
        queue is full; nothing is written then.
        """
        flat: list[bytes | str] = []
        for name, value in encode(record).items():
            flat += [name, value]
        reply, replicated = await self._create(
            key_names=[
                keys.task(record.task_id),
                keys.project(record.project_id),
                keys.METRICS,
                keys.queue(record.queue),
                keys.arq_job(job.job_id),
                keys.project_active(record.project_id),
                keys.running(record.queue),
            ],
            args=[
                record.task_id,
                int(record.created_at * 1000),
                self.task_ttl,
                job.score,
                job.job_id,
                job.payload,
                job.expiry_ms,
                admission.concurrent_per_project,
                admission.max_queue_length,
                record.queue,
                record.task_type,
                *flat,
            ],
        )
        verdict = reply[0].decode()
        if verdict == "ok" and replicated is not None and replicated < self.wait_replicas:
            # Issue 9: not yet on enough replicas, so a failover now could lose it; the caller may retry.
            raise ServiceUnavailable(
                f"Task storage could not copy the task to {self.wait_replicas} replica(s) in time, "
                "please try again later",
                retry_after=5,
            )
        if verdict == "project_full":
            raise RateLimited(
                f"Project '{record.project_id}' already has {reply[1]} queued or processing tasks; "
                f"at most {admission.concurrent_per_project} may be active at once",
                PROJECT_FULL_RETRY_AFTER,
            )
        if verdict == "queue_full":
            raise ServiceUnavailable(
                f"Queue '{record.queue}' is full ({reply[1]} tasks waiting), please try again later",
                retry_after=QUEUE_FULL_RETRY_AFTER,
            )
        _, rank, running, duration_sum, duration_count = reply
        return Created(
            rank=None if int(rank) < 0 else int(rank),
            running=int(running),
            duration_sum=float(duration_sum),
            duration_count=int(duration_count),
        )

    async def _create(self, key_names: list[str], args: list[Any]) -> tuple[Any, int | None]:
        # WAIT counts the writes of its own connection, so it follows the script in one pipeline.
        if not self.wait_replicas:
            return await self._submit(keys=key_names, args=args), None
        async with self.redis.pipeline(transaction=False) as pipe:
            await self._submit(keys=key_names, args=args, client=pipe)
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
            reply, replicated = await pipe.execute()
        return reply, int(replicated)

    async def get(self, task_id: str) -> TaskRecord:
        """The record of `task_id`; raises TaskNotFound."""
        fields = await self.redis.hgetall(keys.task(task_id))
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
            keys=[keys.task(task_id), keys.running(queue), keys.arq_in_progress(job_id), keys.queue(queue)],
            args=[repr(at), worker_id, task_id, job_id, int(at * 1000), lock_ms],
        )
        if not isinstance(reply, list):
            return Start(claimed=False)
        score = int(float(reply[0]))
        if reply[1] != b"started":
            return Start(claimed=True, score=score)
        fields = reply[2:]
        return Start(
            claimed=True, score=score, record=decode(dict(zip(fields[::2], fields[1::2], strict=True)))
        )

    async def progress(
        self, task_id: str, worker_id: str, progress: float, step: str | None, at: float
    ) -> bool:
        """Record progress of a task this worker runs; False if the task is no longer its to run."""
        written = await self._progress(
            keys=[keys.task(task_id)], args=[repr(progress), step or "", repr(at), worker_id]
        )
        return bool(written)

    async def finish(
        self, record: TaskRecord, worker_id: str, status: TaskStatus, at: float, **fields: Any
    ) -> bool:
        """End a processing task as completed or failed, dropping its arq job; False if it was cancelled
        or taken over meanwhile."""
        processing_time = round(at - (record.started_at or at), 3)
        values: dict[str, Any] = {
            "status": status.value,
            "updated_at": at,
            "completed_at": at,
            "processing_time": processing_time,
            **fields,
        }
        if status is TaskStatus.COMPLETED:
            values["progress"] = 1.0
        flat: list[bytes | str] = []
        for name, value in values.items():
            if value is not None:
                flat += [name, _encode_value(name, value)]
        counter = "completed_tasks" if status is TaskStatus.COMPLETED else "failed_tasks"
        outcome = await self._finish(
            keys=[
                keys.task(record.task_id),
                keys.running(record.queue),
                keys.METRICS,
                keys.WEBHOOKS_DUE,
                keys.queue(record.queue),
            ],
            args=[
                worker_id,
                counter,
                record.task_type,
                repr(processing_time),
                self.task_ttl,
                record.task_id,
                int(at * 1000),
                *flat,
            ],
        )
        return outcome == b"ok"

    async def requeue(
        self, record: TaskRecord, worker_id: str, at: float, score: int, *, retry_error: str | None = None
    ) -> bool:
        """Put a task this worker runs back on its queue at `score` (ms): a retry if `retry_error` is given."""
        outcome = await self._requeue(
            keys=[keys.task(record.task_id), keys.running(record.queue), keys.METRICS],
            args=[
                worker_id,
                record.task_id,
                repr(at),
                int(at * 1000),
                record.queue,
                score,
                "1" if retry_error is not None else "0",
                retry_error or "",
            ],
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
            keys=[keys.task(task_id), keys.running(queue), keys.METRICS, keys.WEBHOOKS_DUE],
            args=[
                task_id,
                repr(at),
                int(at * 1000),
                queue,
                score,
                max_deaths,
                self.task_ttl,
                keys.worker(""),
            ],
        )
        return outcome.decode() if isinstance(outcome, bytes) else "gone"

    async def cancel(self, record: TaskRecord, queue_key: str, at: float) -> CancelOutcome:
        """Cancel a queued or processing task atomically, removing its queued job; report what was there."""
        reply = await self._cancel(
            keys=[
                keys.task(record.task_id),
                keys.running(record.queue),
                keys.METRICS,
                keys.WEBHOOKS_DUE,
                queue_key,
            ],
            args=[repr(at), self.task_ttl, record.task_id, int(at * 1000)],
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
