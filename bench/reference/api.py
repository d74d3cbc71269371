"""The reference stack's HTTP API: FastAPI on uvicorn, `submit` and `status` as the API document has them.

Submit validates the body with pydantic, saves the record in a Redis hash and sends the Celery task
with `apply_async`; status reads the record back. Endpoints are plain `def` functions, FastAPI's way
to call blocking clients (redis-py, Celery's producer): they run in its thread pool.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from celery_app import run_task, storage
from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel, Field

API_KEY = os.environ.get("REFERENCE_API_KEY", "")
TASK_TYPES = {
    # task type: (queue, estimated duration in seconds)
    "generate_video": ("gpu_heavy", 300),
    "generate_image": ("gpu_medium", 60),
    "generate_character_voice": ("celery", 30),
    "process_audio": ("cpu_intensive", 30),
    "render_animation": ("gpu_heavy", 300),
    "evaluate_department": ("cpu_intensive", 90),
    "automated_gather_creation": ("cpu_intensive", 240),
    "test_prompt": ("celery", 10),
    "noop": ("celery", 1),
}

app = FastAPI(title="Celery-Redis Task Service (reference)")


def check_key(x_api_key: str = Header(default="")) -> None:
    """The document's `X-API-Key` check."""
    if x_api_key != API_KEY:
        raise HTTPException(status_code=401, detail="Invalid or missing API key")


class TaskSubmission(BaseModel):
    project_id: str = Field(min_length=1)
    task_type: str
    task_data: dict[str, Any]
    priority: int = Field(default=2, ge=1, le=3)
    callback_url: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "healthy"}


@app.post("/api/v1/tasks/submit", dependencies=[Depends(check_key)])
def submit(submission: TaskSubmission) -> dict[str, Any]:
    if submission.task_type not in TASK_TYPES:
        raise HTTPException(status_code=400, detail=f"Unknown task type: {submission.task_type}")
    queue, estimate = TASK_TYPES[submission.task_type]
    task_id = str(uuid.uuid4())
    created = time.time()
    waiting = storage.create(
        {
            "task_id": task_id,
            "project_id": submission.project_id,
            "task_type": submission.task_type,
            "status": "queued",
            "task_data": submission.task_data,
            "priority": submission.priority,
            "callback_url": submission.callback_url,
            "metadata": submission.metadata,
            "progress": 0.0,
            "created_at": created,
            "updated_at": created,
        },
        queue,
    )
    run_task.apply_async(
        args=[task_id, submission.task_type, submission.task_data, submission.callback_url],
        task_id=task_id,
        queue=queue,
        priority=submission.priority,
    )
    return {
        "task_id": task_id,
        "status": "queued",
        "project_id": submission.project_id,
        "estimated_duration": estimate,
        "queue_position": waiting + 1,
        "created_at": iso(created),
    }


@app.get("/api/v1/tasks/{task_id}/status", dependencies=[Depends(check_key)])
def status(task_id: str) -> dict[str, Any]:
    record = storage.get(task_id)
    if record is None:
        raise HTTPException(status_code=404, detail=f"Task with ID '{task_id}' not found")
    return {
        "task_id": task_id,
        "project_id": record.get("project_id"),
        "status": record.get("status"),
        "progress": record.get("progress", 0.0),
        "current_step": record.get("current_step"),
        "result": record.get("result"),
        "error": record.get("error"),
        "started_at": iso(record.get("started_at")),
        "completed_at": iso(record.get("completed_at")),
        "processing_time": record.get("processing_time"),
    }
