"""Liveness, service health, metrics and queue health."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psutil
from aiohttp import web

from taskd import keys
from taskd.alerts import overall_status, queue_alerts, redis_memory_alerts
from taskd.gpu.nvml import DeviceReading
from taskd.heartbeat import live_workers
from taskd.http.context import API, Api
from taskd.http.responses import json_response
from taskd.http.scope import Touches, touches, visible_tasks
from taskd.model import iso, now
from taskd.redis_memory import read_memory

routes = web.RouteTableDef()


@routes.get("/health")
@touches(Touches.NOTHING)
async def liveness(_: web.Request) -> web.Response:
    """The process is up; no key, no Redis."""
    return json_response({"status": "healthy", "service": "taskd"})


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
    system_load: dict[str, Any] = {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_percent": psutil.virtual_memory().percent,
        "gpu_utilization": [device.utilization for device in devices],
    }
    if not await _redis_ok(api):
        body = {
            "status": "unhealthy",
            "redis_status": "disconnected",
            "worker_count": 0,
            "queue_sizes": {},
            "system_load": system_load,
            "uptime": uptime,
        }
        return json_response(body, 503)
    workers = await live_workers(api.redis, api.config.worker.heartbeat_ttl)
    body = {
        "status": "healthy" if workers else "degraded",
        "redis_status": "connected",
        "worker_count": len(workers),
        "queue_sizes": await api.queue.waiting(api.queue_names),
        "system_load": system_load,
        "uptime": uptime,
        "gpus": await _gpus(request, devices),
    }
    if not devices:
        body["gpu_note"] = (
            "No GPU found on this host (NVML unavailable or no device); GPU queues run on the CPU"
        )
    return json_response(body)


async def _gpus(request: web.Request, devices: list[DeviceReading]) -> list[dict[str, Any]]:
    api = request.app[API]
    uses = {use.index: use for use in await api.gpu.usage()}
    # Slots used count every holder; only the holders the key may see are named.
    shown = await visible_tasks(request, (task_id for use in uses.values() for task_id in use.holders))
    named = {
        index: {task_id: slots for task_id, slots in use.holders.items() if task_id in shown}
        for index, use in uses.items()
    }
    return [
        {
            "index": device.index,
            "name": device.name,
            "utilization": device.utilization,
            "memory_used": device.memory_used,
            "memory_total": device.memory_total,
            "slots": api.config.gpu.slots,
            "slots_used": uses[device.index].used if device.index in uses else 0,
            "running": named.get(device.index, {}),
        }
        for device in devices
    ]


@routes.get("/api/v1/tasks/metrics")
@touches(Touches.NOTHING)
async def task_metrics(request: web.Request) -> web.Response:
    """The cumulative counters shared by every process."""
    api = request.app[API]
    metrics = await api.store.metrics(api.queue_names)
    delivered, failed = await api.redis.hmget(keys.METRICS, "webhooks_delivered", "webhooks_failed")
    return json_response(
        {
            "metrics": {
                "total_tasks": metrics.total_tasks,
                "completed_tasks": metrics.completed_tasks,
                "failed_tasks": metrics.failed_tasks,
                "retried_tasks": metrics.retried_tasks,
                "cancelled_tasks": metrics.cancelled_tasks,
                "success_rate": metrics.success_rate,
                "failure_rate": metrics.failure_rate,
                "average_durations": metrics.average_durations,
                "currently_running": metrics.currently_running,
                "webhooks_delivered": int(delivered or 0),
                "webhooks_failed": int(failed or 0),
            },
            "timestamp": iso(now()),
        }
    )


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
    return json_response(
        {
            "status": overall_status(alerts),
            "metrics": {
                "total_tasks": metrics.total_tasks,
                "completed_tasks": metrics.completed_tasks,
                "failed_tasks": metrics.failed_tasks,
                "success_rate": metrics.success_rate,
                "failure_rate": metrics.failure_rate,
                "currently_running": metrics.currently_running,
            },
            "alerts": [alert.to_json() for alert in alerts],
            "timestamp": iso(now()),
        }
    )


def add_routes(app: web.Application) -> None:
    """Register the health routes."""
    app.router.add_routes(routes)
