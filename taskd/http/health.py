"""Liveness, service health, metrics and queue health."""

from __future__ import annotations

import asyncio
import time
import typing

import psutil
from aiohttp import web

from taskd import keys, shapes
from taskd.alerts import overall_status, queue_alerts, redis_memory_alerts
from taskd.gpu.nvml import DeviceReading
from taskd.heartbeat import live_workers
from taskd.http.context import API, Api
from taskd.http.responses import shape_response
from taskd.http.scope import Touches, touches, visible_tasks
from taskd.http.views import gpu_reading, stamp
from taskd.model import now
from taskd.redis_memory import read_memory

routes = web.RouteTableDef()


@routes.get("/health")
@touches(Touches.NOTHING)
async def liveness(_: web.Request) -> web.Response:
    """The process is up; no key, no Redis."""
    return shape_response(shapes.Liveness(status="healthy", service="taskd"))


async def _redis_ok(api: Api) -> bool:
    try:
        async with asyncio.timeout(2):
            return bool(await api.redis.ping())
    except Exception:  # any failure to answer means disconnected
        return False


@routes.get("/api/v1/health")
@touches(Touches.FILTERED)
async def service_health(request: web.Request) -> web.Response:
    """Redis, live workers, queue sizes, system load and uptime."""
    api = request.app[API]
    uptime = int(time.monotonic() - api.started_at)
    devices = api.gpu.inventory.read()
    system_load = shapes.SystemLoad(
        cpu_percent=psutil.cpu_percent(interval=None),
        memory_percent=psutil.virtual_memory().percent,
        gpu_utilization=[device.utilization for device in devices],
    )
    if not await _redis_ok(api):
        unhealthy = shapes.ServiceHealth(
            status="unhealthy",
            redis_status="disconnected",
            worker_count=0,
            queue_sizes={},
            system_load=system_load,
            uptime=uptime,
        )
        return shape_response(unhealthy, 503)
    workers = await live_workers(api.redis, api.config.worker.heartbeat_ttl)
    health = shapes.ServiceHealth(
        status="healthy" if workers else "degraded",
        redis_status="connected",
        worker_count=len(workers),
        queue_sizes=await api.queue.waiting(api.queue_names),
        system_load=system_load,
        uptime=uptime,
        gpus=await _gpus(request, devices),
        gpu_note=shapes.ABSENT
        if devices
        else "No GPU found on this host (NVML unavailable or no device); GPU queues run on the CPU",
    )
    return shape_response(health)


async def _gpus(request: web.Request, devices: list[DeviceReading]) -> list[shapes.GpuDevice]:
    api = request.app[API]
    uses = {use.index: use for use in await api.gpu.usage()}
    # Slots used count every holder; only the holders the key may see are named.
    shown = await visible_tasks(request, (task_id for use in uses.values() for task_id in use.holders))
    named = {
        index: {task_id: slots for task_id, slots in use.holders.items() if task_id in shown}
        for index, use in uses.items()
    }
    return [
        shapes.GpuDevice(
            **gpu_reading(device, api.config.gpu.slots),
            slots_used=uses[device.index].used if device.index in uses else 0,
            running=named.get(device.index, {}),
        )
        for device in devices
    ]


@routes.get("/api/v1/tasks/metrics")
@touches(Touches.NOTHING)
async def task_metrics(request: web.Request) -> web.Response:
    """The cumulative counters shared by every process."""
    api = request.app[API]
    metrics = await api.store.metrics(api.queue_names)
    delivered, failed = await api.redis.hmget(keys.METRICS, "webhooks_delivered", "webhooks_failed")
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
        webhooks_delivered=int(delivered or 0),
        webhooks_failed=int(failed or 0),
    )
    return shape_response(shapes.TaskMetrics(metrics=counters, timestamp=stamp(now())))


@routes.get("/api/v1/tasks/health")
@touches(Touches.FILTERED)
async def queue_health(request: web.Request) -> web.Response:
    """Alerts from the failure rate, long-running tasks, worker memory and Redis memory."""
    api = request.app[API]
    metrics = await api.store.metrics(api.queue_names)
    running = await api.store.running_since(api.queue_names)
    workers = await live_workers(api.redis, api.config.worker.heartbeat_ttl)
    at = now()
    recycles = await api.store.memory_recycles(at)
    memory_limit = api.config.execution.memory_limit_mb * 1024 * 1024
    named = await visible_tasks(request, [*running, *(str(event.get("task_id")) for event in recycles)])
    alerts = queue_alerts(metrics, running, workers, at, memory_limit, recycles, named)
    if (redis_memory := await read_memory(api.redis)) is not None:
        alerts += redis_memory_alerts(redis_memory.used, redis_memory.limit)
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
