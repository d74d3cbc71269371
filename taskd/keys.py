"""Every Redis key taskd uses, with how long each lives and why.

| key | type | lives |
|---|---|---|
| `taskd:task:{id}` | hash: one task record | `storage.task_ttl` (24 h) from creation, renewed when the task ends, so a finished task stays readable for a full day |
| `taskd:project:{project_id}` | sorted set: task id -> created ms | renewed with every submit; ids whose record expired are pruned when listed |
| `taskd:metrics` | hash: cumulative counters | forever: the document says metrics survive restarts |
| `taskd:running:{queue}` | sorted set: task id -> started ms | members leave when their task ends |
| `taskd:workers` | sorted set: worker id -> last heartbeat ms | members older than the heartbeat TTL are dead and pruned |
| `taskd:worker:{id}` | string: the worker's JSON description | heartbeat TTL: disappears when the process stops beating |
| `taskd:queue:{queue}` | arq's queue sorted set: task id -> score | members leave when arq finishes or taskd revokes the job |
| `arq:job:{id}` | arq's job definition | arq's own expiry (a day past its score) |
| `taskd:webhooks:due` | sorted set: task id -> ms when its webhook is next due (the durable outbox) | members leave when delivered or given up |
| `taskd:cancel` | pub/sub channel: ids of running tasks to stop | no storage |
"""

from __future__ import annotations

PREFIX = "taskd:"
METRICS = f"{PREFIX}metrics"
WORKERS = f"{PREFIX}workers"
CANCEL_CHANNEL = f"{PREFIX}cancel"
WEBHOOKS_DUE = f"{PREFIX}webhooks:due"

# Must equal arq.constants.job_key_prefix and in_progress_key_prefix (a test pins it).
ARQ_JOB_PREFIX = "arq:job:"
ARQ_IN_PROGRESS_PREFIX = "arq:in-progress:"


def task(task_id: str) -> str:
    """The hash holding one task record."""
    return f"{PREFIX}task:{task_id}"


def project(project_id: str) -> str:
    """The per-project index of task ids, scored by creation time."""
    return f"{PREFIX}project:{project_id}"


def running(queue: str) -> str:
    """Tasks of `queue` that are processing now, scored by start time."""
    return f"{PREFIX}running:{queue}"


def worker(worker_id: str) -> str:
    """The heartbeat record of one worker process."""
    return f"{PREFIX}worker:{worker_id}"


def queue(name: str) -> str:
    """arq's queue for taskd's queue `name`."""
    return f"{PREFIX}queue:{name}"


def arq_job(task_id: str) -> str:
    """arq's job definition for a task (taskd uses the task id as the job id)."""
    return f"{ARQ_JOB_PREFIX}{task_id}"


def arq_in_progress(task_id: str) -> str:
    """arq's lock on a running job."""
    return f"{ARQ_IN_PROGRESS_PREFIX}{task_id}"
