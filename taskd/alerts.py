"""Queue health: the document's alert thresholds applied to metrics, running tasks and worker memory."""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from typing import Any

import attrs

from taskd.agreement import Difference
from taskd.heartbeat import WorkerInfo
from taskd.model import Metrics
from taskd.redis_conn import redis_of
from taskd.redis_memory import NodeState, eviction_risk

FAILURE_RATE_WARNING, FAILURE_RATE_CRITICAL = 10.0, 20.0
DURATION_WARNING, DURATION_CRITICAL = 8 * 60.0, 9.5 * 60.0
# With the default 2 GB limit these are the document's 1.5 GB and 1.9 GB.
MEMORY_WARNING_SHARE, MEMORY_CRITICAL_SHARE = 0.75, 0.95
DEFAULT_MEMORY_LIMIT = 2 * 1024**3
# Redis (maxmemory, noeviction): writes, and so submits, fail once it is full.
REDIS_MEMORY_WARNING_SHARE, REDIS_MEMORY_CRITICAL_SHARE = 0.80, 0.95

SEVERITY_ORDER = {"healthy": 0, "warning": 1, "critical": 2}
# How an alert names a task the caller's key may not see (a key scoped to other projects).
ANOTHER_PROJECTS_TASK = "A task of another project"


@attrs.frozen
class Alert:
    """One alert as the document renders it."""

    severity: str
    message: str
    metric: str
    value: float
    extra: Mapping[str, Any] = attrs.Factory(dict)

    def to_json(self) -> dict[str, Any]:
        """The alert's JSON body."""
        return {
            "severity": self.severity,
            "message": self.message,
            "metric": self.metric,
            "value": self.value,
            **self.extra,
        }


def _failure_rate(metrics: Metrics) -> list[Alert]:
    # The exact share, not `metrics.failure_rate` (rounded to one decimal for the metrics body):
    # 201 failures of 2,001 tasks (10.045 %) rounded to 10.0 and raised nothing.
    if not metrics.total_tasks:
        return []
    rate = 100.0 * metrics.failed_tasks / metrics.total_tasks
    if rate > FAILURE_RATE_CRITICAL:
        return [Alert("critical", f"Critical failure rate: {rate:.2f}%", "failure_rate", round(rate, 2))]
    if rate > FAILURE_RATE_WARNING:
        return [Alert("warning", f"Elevated failure rate: {rate:.2f}%", "failure_rate", round(rate, 2))]
    return []


def _durations(running_since: Mapping[str, float], at: float, named: Container[str] | None) -> list[Alert]:
    alerts = []
    for task_id, started in sorted(running_since.items(), key=lambda item: item[1]):
        seconds = int(at - started)
        if seconds > DURATION_WARNING:
            severity = "critical" if seconds > DURATION_CRITICAL else "warning"
            if named is None or task_id in named:
                message, extra = f"Task {task_id} running for {seconds} seconds", {"task_id": task_id}
            else:
                message, extra = f"{ANOTHER_PROJECTS_TASK} running for {seconds} seconds", {}
            alerts.append(Alert(severity, message, "task_duration", seconds, extra))
    return alerts


def _memory(workers: Iterable[WorkerInfo], limit: int) -> list[Alert]:
    alerts = []
    for worker in workers:
        for what, rss in (("Worker", worker.rss_bytes), ("Job process of worker", worker.job_rss_bytes)):
            if rss > MEMORY_WARNING_SHARE * limit:
                severity = "critical" if rss > MEMORY_CRITICAL_SHARE * limit else "warning"
                mb = round(rss / 1024**2, 1)
                message = f"{what} {worker.worker_id} using {mb} MB of memory"
                alerts.append(Alert(severity, message, "memory_usage", mb, {"worker_id": worker.worker_id}))
    return alerts


def _recycles(events: Iterable[Mapping[str, Any]], named: Container[str] | None) -> list[Alert]:
    alerts = []
    for event in events:
        task_id = event["task_id"]
        task, extra = f"task {task_id}", {"task_id": task_id, "worker_id": event["worker_id"]}
        if named is not None and task_id not in named:
            task, extra = ANOTHER_PROJECTS_TASK.lower(), {"worker_id": event["worker_id"]}
        if event.get("what") == "processes":
            message = f"Processes of {task} exceeded the memory limit ({event['rss_mb']} MB) and were killed"
        else:
            message = (
                f"Job process for {task} exceeded the memory limit ({event['rss_mb']} MB) and was replaced"
            )
        alerts.append(Alert("critical", message, "memory_usage", float(event["rss_mb"]), extra))
    return alerts


def _unserved(waiting: Mapping[str, int], workers: Iterable[WorkerInfo]) -> list[Alert]:
    # A queue no live worker serves (every worker host runs `--queues` without it, or none lives):
    # its tasks wait for ever, and neither the worker count nor the queue sizes say why.
    served = {queue for worker in workers for queue in worker.queues}
    return [
        Alert(
            "critical",
            f"Queue {queue} has {count} {'task' if count == 1 else 'tasks'} waiting and no live worker serves it",
            "queue_without_worker",
            count,
            {"queue": queue},
        )
        for queue, count in sorted(waiting.items())
        if count and queue not in served
    ]


def queue_alerts(
    metrics: Metrics,
    running_since: Mapping[str, float],
    workers: Iterable[WorkerInfo],
    at: float,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    memory_events: Iterable[Mapping[str, Any]] = (),
    named: Container[str] | None = None,
    waiting: Mapping[str, int] | None = None,
) -> list[Alert]:
    """Every alert that holds now, in the document's order: failure rate, task duration, memory;
    then the queues with tasks `waiting` that no live worker serves.

    Memory alerts come from live processes (warning over 75 % of the limit, critical over 95 %)
    and from job processes recently killed for passing it. Only the task ids in `named` (None:
    all) are named; an alert about any other task still counts, without its id.
    """
    workers = list(workers)
    return [
        *_failure_rate(metrics),
        *_durations(running_since, at, named),
        *_memory(workers, memory_limit),
        *_recycles(memory_events, named),
        *_unserved(waiting or {}, workers),
    ]


def _on(partition: int | None) -> dict[str, Any]:
    # An alert about the server of some partitions (a cluster's shard) names the lowest of them.
    return {} if partition is None else {"partition": partition}


def redis_memory_alerts(used: int, maxmemory: int, partition: int | None = None) -> list[Alert]:
    """A warning from 80 % of Redis's maxmemory, critical from 95 %; none without a maxmemory.
    `partition`: the server's, where partitions are on servers of their own."""
    if maxmemory <= 0:
        return []
    share = used / maxmemory
    if share < REDIS_MEMORY_WARNING_SHARE:
        return []
    severity = "critical" if share >= REDIS_MEMORY_CRITICAL_SHARE else "warning"
    percent = round(share * 100, 1)
    message = (
        f"{redis_of(partition)} memory at {percent}% of maxmemory ({used / 1024**2:.1f} of "
        f"{maxmemory / 1024**2:.1f} MB); when it is full new tasks are refused"
    )
    extra = {"used_memory": used, "maxmemory": maxmemory, **_on(partition)}
    return [Alert(severity, message, "redis_memory", percent, extra)]


def redis_eviction_alerts(risk: str | None, share: float | None, partition: int | None = None) -> list[Alert]:
    """An alert while Redis's maxmemory-policy may drop taskd's keys (`risk`, taskd.redis_memory):
    a warning, critical once its memory (`share` of maxmemory) is where keys are being dropped."""
    if risk is None:
        return []
    severity = "critical" if (share or 0.0) >= REDIS_MEMORY_CRITICAL_SHARE else "warning"
    return [Alert(severity, risk, "redis_eviction", 1.0, _on(partition))]


def redis_persistence_alerts(failed: str | None, partition: int | None = None) -> list[Alert]:
    """Critical while Redis cannot write `failed` (its append-only file, a snapshot) to its disk."""
    if failed is None:
        return []
    message = (
        f"{redis_of(partition)} cannot write {failed} to its disk (full or failing): new tasks are "
        "refused and task outcomes wait until it can; see its log"
    )
    return [Alert("critical", message, "redis_persistence", 1.0, _on(partition))]


def redis_node_alerts(states: Iterable[NodeState]) -> list[Alert]:
    """The memory, eviction and persistence alerts of each server of taskd's partitions."""
    alerts = []
    for state in states:
        if (memory := state.memory) is not None:
            alerts += redis_memory_alerts(memory.used, memory.limit, state.partition)
            risk = eviction_risk(memory, redis_of(state.partition))
            alerts += redis_eviction_alerts(risk, memory.share, state.partition)
        alerts += redis_persistence_alerts(state.persistence_failure, state.partition)
    return alerts


def settings_alerts(differences: Iterable[Difference]) -> list[Alert]:
    """A warning for each setting that live taskd processes do not agree on (taskd.agreement)."""
    alerts = []
    for difference in differences:
        groups = " | ".join(
            ", ".join(sorted({process.named() for process in group})) for group in difference.groups
        )
        message = f"Setting {difference.setting} differs between taskd processes: {groups}"
        alerts.append(
            Alert(
                "warning",
                message,
                "settings_mismatch",
                len(difference.groups),
                {"setting": difference.setting},
            )
        )
    return alerts


def overall_status(alerts: Iterable[Alert]) -> str:
    """`healthy`, or the most severe alert's severity."""
    return max((alert.severity for alert in alerts), key=SEVERITY_ORDER.__getitem__, default="healthy")
