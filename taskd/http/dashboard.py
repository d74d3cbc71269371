"""`/dashboard`: the live web dashboard (static files from `taskd/dashboard/`), and the overview it polls.

The page itself needs no key (it holds no data); it asks for the API key once and keeps it in the
browser's session storage. Everything it shows comes from the `/api/v1/` routes with that key:
`GET /api/v1/dashboard/overview` (queues, workers, GPUs), `GET /api/v1/tasks/health` (alerts),
a project's task list and its event stream.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from aiohttp import web

from taskd import keys, shapes
from taskd.heartbeat import live_workers
from taskd.http.context import API
from taskd.http.gpu_view import gpu_rows
from taskd.http.responses import shape_response
from taskd.http.scope import CALLER, Touches, touches, visible_tasks
from taskd.http.views import gpu_reading, stamp
from taskd.model import ApiError, iso, now

NO_GPUS = "no GPUs on any live worker host (NVML not available or no device)"
RUNNING_SHOWN = 50  # running task ids listed per queue
_CONTENT_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # A page that opened this one (window.open) keeps no handle on it: it cannot send it, later,
    # to a look-alike page that asks for the key again.
    "Cross-Origin-Opener-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
}


def _assets() -> dict[str, tuple[bytes, str]]:
    """Every file of the dashboard package by name, with its content type."""
    found = {}
    for entry in resources.files("taskd.dashboard").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _CONTENT_TYPES:
            found[entry.name] = (entry.read_bytes(), _CONTENT_TYPES[suffix])
    return found


ASSETS = web.AppKey("dashboard_assets", dict)


def _asset_response(request: web.Request, name: str) -> web.Response:
    asset = request.app[ASSETS].get(name)
    if asset is None:
        raise ApiError(404, "not_found", f"No dashboard file {name!r}")
    body, content_type = asset
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=_HEADERS)


@touches(Touches.NOTHING)
async def page(request: web.Request) -> web.Response:
    """The dashboard page."""
    return _asset_response(request, "index.html")


@touches(Touches.NOTHING)
async def asset(request: web.Request) -> web.Response:
    """A stylesheet or script of the page."""
    name = request.match_info["asset"]
    if name == "index.html":
        raise ApiError(404, "not_found", f"No dashboard file {name!r}")
    return _asset_response(request, name)


async def _queues(request: web.Request, workers: list[Any]) -> list[shapes.DashboardQueue]:
    api = request.app[API]
    names = await api.queues_in_use()
    waiting = await api.queue.waiting(names)
    # A scoped key's first running tasks are found among them all: the first of every project's
    # could all be other projects', and would list none of its own.
    caller = request.get(CALLER)
    scoped = caller is not None and caller.projects is not None
    running = await api.store.running_first(names, None if scoped else RUNNING_SHOWN)
    listed = [[task_id for task_id, _ in running[name][1]] for name in names]
    # Running counts are every project's; only the running tasks the key may see are listed.
    shown = await visible_tasks(request, (task_id for ids in listed for task_id in ids))
    queues = []
    for i, name in enumerate(names):
        configured = api.config.queues.get(name)
        queues.append(
            shapes.DashboardQueue(
                name=name,
                waiting=waiting.get(name, 0),
                running=running[name][0],
                running_tasks=[task_id for task_id in listed[i] if task_id in shown][:RUNNING_SHOWN],
                concurrency=configured.concurrency if configured else None,
                workers=sum(1 for worker in workers if name in worker.queues),
            )
        )
    return queues


@touches(Touches.FILTERED)
async def overview(request: web.Request) -> web.Response:
    """Queues (waiting, running, concurrency), workers with their last heartbeat, and GPUs, in one call."""
    api = request.app[API]
    workers = await live_workers(api.redis, api.config.worker.heartbeat_ttl)
    beats = {
        member.decode(): score / 1000
        for member, score in await api.redis.zrange(keys.WORKERS, 0, -1, withscores=True)
    }
    at = now()
    rows = await gpu_rows(api)
    shown = await visible_tasks(request, (task_id for row in rows for task_id in row.holders))
    return shape_response(
        shapes.DashboardOverview(
            queues=await _queues(request, workers),
            workers=[
                shapes.DashboardWorker(
                    worker_id=worker.worker_id,
                    host=worker.host,
                    pid=worker.pid,
                    queues=worker.queues,
                    running=worker.running,
                    rss_bytes=worker.rss_bytes,
                    job_rss_bytes=worker.job_rss_bytes,
                    started_at=iso(worker.started_at),
                    last_heartbeat=iso(beats.get(worker.worker_id)),
                    heartbeat_age=round(max(0.0, at - beats.get(worker.worker_id, at)), 1),
                )
                for worker in workers
            ],
            gpus=shapes.DashboardGpus(
                available=bool(rows),
                note=None if rows else NO_GPUS,
                devices=[
                    shapes.DashboardGpu(
                        **gpu_reading(row.host, row.device), holders=sorted(shown.intersection(row.holders))
                    )
                    for row in rows
                ],
            ),
            uptime=int(time.monotonic() - api.started_at),
            timestamp=stamp(at),
        )
    )


def add_routes(app: web.Application) -> None:
    """Register the page, its files and the overview."""
    app[ASSETS] = _assets()
    app.router.add_get("/dashboard", page)
    app.router.add_get("/dashboard/{asset}", asset)
    app.router.add_get("/api/v1/dashboard/overview", overview)
