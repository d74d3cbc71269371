"""Liveness, service health, metrics and queue health."""

from __future__ import annotations

import asyncio
import functools
import time
import typing
from collections.abc import Awaitable, Callable

import psutil
from aiohttp import web
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskd import agreement, shapes
from taskd.alerts import (
    overall_status,
    queue_alerts,
    redis_node_alerts,
    settings_alerts,
)
from taskd.heartbeat import live_workers
from taskd.http.context import API, Api
from taskd.http.gpu_view import GpuRow, gpu_rows
from taskd.http.responses import shape_response
from taskd.http.scope import Touches, touches, visible_tasks
from taskd.http.views import gpu_reading, stamp
from taskd.model import now
from taskd.redis_conn import distinct_partitions, writes_refused
from taskd.redis_memory import read_every_node

routes = web.RouteTableDef()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# How long the health and metrics routes wait for Redis in all, as a /metrics scrape does (prom.py):
# a hung Redis (no answer, no error) held each of their reads for redis.socket_timeout, and one
# answer for tens of seconds, past any probe's or load balancer's timeout.
HEALTH_WAIT_S = 5.0

NO_GPU_NOTE = (
    "No GPU on any live worker host (NVML unavailable or no device, or no worker); GPU queues run on the CPU"
)


@routes.get("/health")
@touches(Touches.NOTHING)
async def liveness(_: web.Request) -> web.Response:
    """The process is up; no key, no Redis."""
    return shape_response(shapes.Liveness(status="healthy", service="taskd"))


async def _redis_refusals(api: Api) -> dict[int, str] | None:
    """The partitions whose Redis refuses writes (taskd.redis_conn.writes_refused), or None when
    Redis does not answer."""
    try:
        async with asyncio.timeout(2):
            return await writes_refused(api.store.clients, "api")
    except Exception:  # any other failure to answer means disconnected
        return None


def _refusal_note(refused: dict[int, str], partitioned: bool) -> str | shapes.Absent:
    # Redis answers reads and PING meanwhile: only a write tells that submits and task outcomes are refused.
    if not refused:
        return shapes.ABSENT
    whose = "; ".join(
        f"partition {partition}'s Redis: {why}" if partitioned else f"Redis: {why}"
        for partition, why in sorted(refused.items())
    )
    return (
        f"Redis refuses writes ({whose}): submits answer 503 and task outcomes wait until it takes "
        "them again; see /api/v1/tasks/health"
    )


def _bounded(handler: Handler) -> Handler:
    """`handler`, answering the 503 of a Redis that is unavailable once Redis has not answered its
    reads within HEALTH_WAIT_S (a monitor's timeout is seconds, not a socket timeout's)."""

    @functools.wraps(handler)
    async def bounded(request: web.Request) -> web.StreamResponse:
        try:
            async with asyncio.timeout(HEALTH_WAIT_S):
                return await handler(request)
        except TimeoutError:
            # Told as a lost Redis is (taskd.http.errors): its 503, and a line in the log.
            raise RedisTimeoutError(f"Redis did not answer within {HEALTH_WAIT_S:g} s") from None

    return bounded


@routes.get("/api/v1/health")
@touches(Touches.FILTERED)
async def service_health(request: web.Request) -> web.Response:
    """Redis, live workers, queue sizes, system load (every worker host's GPUs) and uptime."""
    api = request.app[API]
    uptime = int(time.monotonic() - api.started_at)
    cpu_percent = api.cpu_load.percent
    memory_percent = psutil.virtual_memory().percent
    health = None
    if (refused := await _redis_refusals(api)) is not None:
        try:
            async with asyncio.timeout(HEALTH_WAIT_S):
                health = await _connected_health(request, refused, uptime, cpu_percent, memory_percent)
        except TimeoutError:  # it answered the first read, then hung: as unreachable
            health = None
    if health is None:
        # Without Redis no host's report can be read: the GPUs of the answering node, as NVML reads them.
        local = [device.utilization for device in api.gpu.inventory.read()]
        unhealthy = shapes.ServiceHealth(
            status="unhealthy",
            redis_status="disconnected",
            worker_count=0,
            queue_sizes={},
            system_load=shapes.SystemLoad(cpu_percent, memory_percent, local),
            uptime=uptime,
        )
        return shape_response(unhealthy, 503)
    return shape_response(health)


async def _connected_health(
    request: web.Request, refused: dict[int, str], uptime: int, cpu_percent: float, memory_percent: float
) -> shapes.ServiceHealth:
    api = request.app[API]
    workers = await live_workers(api.redis, api.config.worker.heartbeat_ttl)
    rows = await gpu_rows(api)
    queues = await api.queues_in_use()
    return shapes.ServiceHealth(
        status="healthy" if workers and not refused else "degraded",
        redis_status="connected",
        worker_count=len(workers),
        queue_sizes=await api.queue.waiting(queues),
        system_load=shapes.SystemLoad(cpu_percent, memory_percent, [row.device.utilization for row in rows]),
        uptime=uptime,
        gpus=await _gpus(request, rows),
        gpu_note=shapes.ABSENT if rows else NO_GPU_NOTE,
        redis_note=_refusal_note(refused, len(distinct_partitions(api.store.clients)) > 1),
    )


async def _gpus(request: web.Request, rows: list[GpuRow]) -> list[shapes.GpuDevice]:
    # Slots used count every holder; only the holders the key may see are named.
    shown = await visible_tasks(request, (task_id for row in rows for task_id in row.holders))
    return [
        shapes.GpuDevice(
            **gpu_reading(row.host, row.device),
            slots_used=row.slots_used,
            running={task_id: slots for task_id, slots in row.holders.items() if task_id in shown},
        )
        for row in rows
    ]


@routes.get("/api/v1/tasks/metrics")
@touches(Touches.NOTHING)
@_bounded
async def task_metrics(request: web.Request) -> web.Response:
    """The cumulative counters shared by every process."""
    api = request.app[API]
    metrics = await api.store.metrics(await api.queues_in_use())
    counters = shapes.Counters(
        total_tasks=metrics.total_tasks,
        completed_tasks=metrics.completed_tasks,
        failed_tasks=metrics.failed_tasks,
        retried_tasks=metrics.retried_tasks,
        cancelled_tasks=metrics.cancelled_tasks,
        success_rate=metrics.success_rate,
        failure_rate=metrics.failure_rate,
        average_durations=metrics.average_durations,
        currently_running=metrics.currently_running,
        webhooks_delivered=metrics.webhooks_delivered,
        webhooks_failed=metrics.webhooks_failed,
    )
    return shape_response(shapes.TaskMetrics(metrics=counters, timestamp=stamp(now())))


@routes.get("/api/v1/tasks/health")
@touches(Touches.FILTERED)
@_bounded
async def queue_health(request: web.Request) -> web.Response:
    """Alerts from the failure rate, long-running tasks, worker memory and Redis memory."""
    api = request.app[API]
    # With the queues no config here names that hold tasks: theirs wait, or run, unseen otherwise.
    queues = await api.queues_in_use()
    metrics = await api.store.metrics(queues)
    running = await api.store.running_since(queues)
    workers = await live_workers(api.redis, api.config.worker.heartbeat_ttl)
    at = now()
    recycles = await api.store.memory_recycles(at)
    memory_limit = api.config.execution.memory_limit_mb * 1024 * 1024
    named = await visible_tasks(request, [*running, *(str(event.get("task_id")) for event in recycles)])
    waiting = await api.queue.waiting(queues)
    alerts = queue_alerts(metrics, running, workers, at, memory_limit, recycles, named, waiting)
    alerts += redis_node_alerts(await read_every_node(api.store.clients))
    alerts += settings_alerts(
        agreement.differences(await agreement.read(api.redis, api.config.worker.heartbeat_ttl))
    )
    health = shapes.QueueHealth(
        # `healthy` or an alert's severity, which the alerts' shape below checks.
        status=typing.cast(shapes.QueueStatus, overall_status(alerts)),
        metrics=shapes.QueueHealthMetrics(
            total_tasks=metrics.total_tasks,
            completed_tasks=metrics.completed_tasks,
            failed_tasks=metrics.failed_tasks,
            success_rate=metrics.success_rate,
            failure_rate=metrics.failure_rate,
            currently_running=metrics.currently_running,
        ),
        # An alert's extra fields (task_id, worker_id, ...) are checked against the shape here.
        alerts=[shapes.STRICT_CONVERTER.structure(alert.to_json(), shapes.Alert) for alert in alerts],
        timestamp=stamp(now()),
    )
    return shape_response(health)


def add_routes(app: web.Application) -> None:
    """Register the health routes."""
    app.router.add_routes(routes)
