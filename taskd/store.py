"""Task records, the per-project index and the shared metrics, in Redis.

State changes that must not race (start, finish, cancel, progress) are Lua scripts, so a
cancelled task can never be overwritten by a late `completed` from its worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from taskd import keys
from taskd.model import ACTIVE, Metrics, TaskNotFound, TaskRecord, TaskStatus

_JSON_FIELDS = frozenset({"task_data", "metadata", "result"})
_FLOAT_FIELDS = frozenset(
    {"progress", "created_at", "updated_at", "started_at", "completed_at", "cancelled_at", "processing_time"}
)
_INT_FIELDS = frozenset({"priority", "attempt"})
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


def decode(fields: Mapping[bytes, bytes]) -> TaskRecord:
    """A record from its hash fields; fields taskd does not know are ignored."""
    values = {}
    for raw_name, raw in fields.items():
        name = raw_name.decode()
        if name in _FIELD_NAMES:
            values[name] = _decode_value(name, raw)
    return TaskRecord(**values)


_START = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status ~= 'queued' and status ~= 'processing' then return status end
redis.call('HSET', KEYS[1], 'status', 'processing', 'started_at', ARGV[1], 'updated_at', ARGV[1],
           'worker_id', ARGV[2], 'progress', '0.0')
redis.call('HDEL', KEYS[1], 'current_step', 'error', 'traceback')
redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('ZADD', KEYS[2], math.floor(tonumber(ARGV[1]) * 1000), ARGV[3])
return 'ok'
"""

_PROGRESS = """
if redis.call('HGET', KEYS[1], 'status') ~= 'processing' then return 0 end
if redis.call('HGET', KEYS[1], 'worker_id') ~= ARGV[4] then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[1], 'updated_at', ARGV[3])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'current_step', ARGV[2]) end
return 1
"""

# KEYS: task, running zset, metrics, webhook outbox.
# ARGV: worker id, counter, task type, duration, ttl, task id, now ms, then field/value pairs.
# A task with a callback_url gets its webhook due in the same script that records its end.
_FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'processing' or redis.call('HGET', KEYS[1], 'worker_id') ~= ARGV[1] then
  return status or false
end
for i = 8, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZREM', KEYS[2], ARGV[6])
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
if ARGV[2] == 'completed_tasks' then
  redis.call('HINCRBYFLOAT', KEYS[3], 'duration_sum:' .. ARGV[3], ARGV[4])
  redis.call('HINCRBY', KEYS[3], 'duration_count:' .. ARGV[3], 1)
end
if redis.call('HEXISTS', KEYS[1], 'callback_url') == 1 then redis.call('ZADD', KEYS[4], ARGV[7], ARGV[6]) end
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 'ok'
"""

# KEYS: task, running zset, metrics, webhook outbox, the queue's sorted set, then the queued job's keys.
# ARGV: now, ttl, task id, now ms.
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status ~= 'queued' and status ~= 'processing' then
  return {status, redis.call('HGET', KEYS[1], 'previous_state') or '', redis.call('HGET', KEYS[1], 'cancelled_at') or ''}
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'previous_state', status, 'cancelled_at', ARGV[1],
           'updated_at', ARGV[1], 'completed_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'worker_id')
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZREM', KEYS[5], ARGV[3])
for i = 6, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('HINCRBY', KEYS[3], 'cancelled_tasks', 1)
if redis.call('HEXISTS', KEYS[1], 'callback_url') == 1 then redis.call('ZADD', KEYS[4], ARGV[4], ARGV[3]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return {'cancelled_now', status, ARGV[1]}
"""


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

    def __init__(self, redis: Redis, task_ttl: int) -> None:
        self.redis = redis
        self.task_ttl = task_ttl
        self._start = redis.register_script(_START)
        self._progress = redis.register_script(_PROGRESS)
        self._finish = redis.register_script(_FINISH)
        self._cancel = redis.register_script(_CANCEL)

    def add_create(self, pipe: Pipeline, record: TaskRecord) -> None:
        """Queue on `pipe` the writes that create `record`, index it and count it."""
        key = keys.task(record.task_id)
        pipe.hset(key, mapping=encode(record))
        pipe.expire(key, self.task_ttl)
        index = keys.project(record.project_id)
        pipe.zadd(index, {record.task_id: int(record.created_at * 1000)})
        pipe.expire(index, self.task_ttl)
        pipe.hincrby(keys.METRICS, "total_tasks", 1)

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
        return [decode(fields) for fields in rows if fields]

    async def start(self, task_id: str, queue: str, worker_id: str, at: float) -> TaskRecord | None:
        """Mark a queued task processing for `worker_id`; None if it is gone or already ended."""
        outcome = await self._start(
            keys=[keys.task(task_id), keys.running(queue)], args=[repr(at), worker_id, task_id]
        )
        if outcome != b"ok":
            return None
        return await self.get(task_id)

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
        """End a processing task as completed or failed; False if it was cancelled or taken over meanwhile."""
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
            keys=[keys.task(record.task_id), keys.running(record.queue), keys.METRICS, keys.WEBHOOKS_DUE],
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

    async def cancel(
        self, record: TaskRecord, queue_key: str, job_keys: Iterable[str], at: float
    ) -> CancelOutcome:
        """Cancel a queued or processing task atomically, removing its queued job; report what was there."""
        reply = await self._cancel(
            keys=[
                keys.task(record.task_id),
                keys.running(record.queue),
                keys.METRICS,
                keys.WEBHOOKS_DUE,
                queue_key,
                *job_keys,
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
