"""The reference stack's Celery side: the app, its Redis task storage and the task that runs a job.

Written the way the API document describes its own service: Celery with a Redis broker, every
task's record in a Redis hash (`TaskStorage`), updated by the worker when the task starts and
ends, shared counters in a Redis hash, and a webhook POSTed to `callback_url` when a task ends.
Worker settings follow the document (prefetch multiplier 1), except `max_tasks_per_child = 10`,
which would restart a prefork child every ten no-op tasks: left out, in the reference's favour.
The record hash is the source of truth for status, so Celery's own result backend is off.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from typing import Any

import redis
from celery import Celery

REDIS_URL = os.environ.get("REFERENCE_REDIS_URL", "redis://127.0.0.1:6379/0")
TASK_TTL = 24 * 3600  # "Tasks are stored in Redis and expire after 24 hours"

celery_app = Celery("reference", broker=REDIS_URL)
celery_app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    task_routes={
        "reference.generate_video": {"queue": "gpu_heavy"},
        "reference.generate_image": {"queue": "gpu_medium"},
        "reference.process_audio": {"queue": "cpu_intensive"},
    },
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


class TaskStorage:
    """Task records (one hash per task), the per-project index and the shared metrics in Redis."""

    def __init__(self, url: str = REDIS_URL) -> None:
        self.redis = redis.Redis.from_url(url)

    def create(self, record: dict[str, Any], queue: str) -> int:
        """Save a new record, index it, count it; returns the queue's length (for queue_position)."""
        pipe = self.redis.pipeline(transaction=False)
        key = f"task:{record['task_id']}"
        pipe.hset(key, mapping={name: _encode(value) for name, value in record.items() if value is not None})
        pipe.expire(key, TASK_TTL)
        pipe.zadd(f"project_tasks:{record['project_id']}", {record["task_id"]: record["created_at"]})
        pipe.hincrby("task_metrics", "total_tasks", 1)
        pipe.llen(queue)
        return pipe.execute()[-1]

    def get(self, task_id: str) -> dict[str, Any] | None:
        """The record of `task_id`, decoded, or None."""
        raw = self.redis.hgetall(f"task:{task_id}")
        if not raw:
            return None
        return {name.decode(): _decode(name.decode(), value) for name, value in raw.items()}

    def update(self, task_id: str, **fields: Any) -> None:
        """Overwrite some fields of a record."""
        self.redis.hset(f"task:{task_id}", mapping={name: _encode(value) for name, value in fields.items()})

    def finish(self, task_id: str, counter: str, **fields: Any) -> None:
        """Record a task's end and count it."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(f"task:{task_id}", mapping={name: _encode(value) for name, value in fields.items()})
        pipe.hincrby("task_metrics", counter, 1)
        pipe.execute()


_JSON = {"task_data", "metadata", "result"}
_FLOATS = {"created_at", "updated_at", "started_at", "completed_at", "progress", "processing_time"}


def _encode(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def _decode(name: str, raw: bytes) -> Any:
    if name in _JSON:
        return json.loads(raw)
    if name in _FLOATS:
        return float(raw)
    if name == "priority":
        return int(raw)
    return raw.decode()


storage = TaskStorage()


def noop(_: dict[str, Any]) -> dict[str, Any]:
    """Return at once, saying when the handler started (wall clock), like taskd's `noop`."""
    return {"ok": True, "handler_started_at": time.time()}


HANDLERS = {"noop": noop}


def _send_webhook(url: str, payload: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
    except OSError:
        pass  # the document's service does not retry webhooks


@celery_app.task(name="reference.run_task")
def run_task(task_id: str, task_type: str, task_data: dict[str, Any], callback_url: str | None) -> None:
    """Mark the record processing, run the handler, record the result, send the webhook."""
    started = time.time()
    storage.update(task_id, status="processing", started_at=started, updated_at=started)
    try:
        result = HANDLERS[task_type](task_data)
    except Exception as exc:
        ended = time.time()
        storage.finish(
            task_id, "failed_tasks", status="failed", error=str(exc), completed_at=ended, updated_at=ended
        )
        outcome: dict[str, Any] = {"status": "failed", "error": str(exc)}
    else:
        ended = time.time()
        storage.finish(
            task_id,
            "completed_tasks",
            status="completed",
            result=result,
            progress=1.0,
            completed_at=ended,
            updated_at=ended,
            processing_time=round(ended - started, 3),
        )
        outcome = {"status": "completed", "result": result}
    if callback_url:
        _send_webhook(callback_url, {"task_id": task_id, "completed_at": ended, **outcome})
