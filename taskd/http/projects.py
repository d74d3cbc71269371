"""A project's tasks, filtered and paged."""

from __future__ import annotations

import logging

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from taskd import shapes
from taskd.http import ratelimit
from taskd.http.context import API
from taskd.http.media import resigned
from taskd.http.responses import shape_response
from taskd.http.scope import Touches, touches
from taskd.http.views import list_item_view
from taskd.model import TaskRecord, TaskStatus, ValidationError

log = logging.getLogger("taskd.http")

DEFAULT_LIMIT, MAX_LIMIT = 20, 100
# Records a listing reads and renders at once: a page of more is written group by group.
RECORDS_AT_ONCE = 10
# Far past any real project (a day of tasks), and small enough for every JSON number parser.
MAX_PAGE = 1_000_000

_PARAMETERS = ("status", "task_type", "page", "limit")

routes = web.RouteTableDef()


def _positive_int(raw: str | None, default: int, name: str, details: dict[str, str], high: int) -> int:
    if raw is None:
        return default
    if raw.isascii() and raw.isdigit() and len(raw) <= len(str(high)) and 1 <= int(raw) <= high:
        return int(raw)
    details[name] = f"{name.capitalize()} must be an integer between 1 and {high}"
    return default


@routes.get("/api/v1/projects/{project_id}/tasks")
@touches(Touches.PATH_PROJECT)
async def project_tasks(request: web.Request) -> web.StreamResponse:
    """Newest first, filtered by `status` and `task_type`, paged by `page` and `limit`."""
    api = request.app[API]
    query = request.query
    details: dict[str, str] = {}
    page = _positive_int(query.get("page"), 1, "page", details, MAX_PAGE)
    limit = _positive_int(query.get("limit"), DEFAULT_LIMIT, "limit", details, MAX_LIMIT)
    status = query.get("status") or None
    if status is not None and status not in TaskStatus.__members__.values():
        details["status"] = f"Status must be one of: {', '.join(s.value for s in TaskStatus)}"
    # A parameter given twice (`status=completed&status=failed`) is refused rather than read as
    # its first value: the caller would take a page of one status for all it asked for.
    details.update(
        (name, f"{name} must be given once, not {count} times")
        for name in _PARAMETERS
        if (count := len(query.getall(name, []))) > 1
    )
    if details:
        raise ValidationError(details, "Invalid query parameters")
    project_id = request.match_info["project_id"]
    ids, total = await api.store.list_project_ids(
        project_id,
        status=status,
        task_type=query.get("task_type") or None,
        offset=(page - 1) * limit,
        limit=limit,
        spend=lambda calls: ratelimit.spend_listing(request, calls),
    )
    pagination = shapes.Pagination(
        page=page, limit=limit, total=total, total_pages=(total + limit - 1) // limit
    )
    if len(ids) <= RECORDS_AT_ONCE:
        records = await api.store.get_many(ids)
        return shape_response(
            shapes.ProjectTasks(tasks=[_entry(request, record) for record in records], pagination=pagination)
        )
    return await _send_in_groups(request, ids, pagination)


def _entry(request: web.Request, record: TaskRecord) -> shapes.TaskListItem:
    return list_item_view(resigned(request, record))


async def _send_in_groups(
    request: web.Request, ids: list[str], pagination: shapes.Pagination
) -> web.StreamResponse:
    """The page written as it is read, RECORDS_AT_ONCE records at a time, each group once the client
    has taken enough of the one before (the write waits for the socket to drain).

    A task holds up to `max_body_bytes` of task_data and `execution.result_max_bytes` of result: a
    page of 100 such tasks is some 200 MB. Read and rendered whole, it took some 270 MB of the
    process and held the event loop for each listing (four at once: 1.3 GB, and another key's
    status read waited 2.5 s), and a client that read it slowly held all of it for as long as it
    liked, at one `status` unit a page. Now a listing holds one group's records and bytes.
    """
    api = request.app[API]
    # The first group is read before anything is sent: a Redis lost by then is still the 503 (with
    # its Retry-After, which clients wait and retry on), as for a page of ten or fewer.
    records = await api.store.get_many(ids[:RECORDS_AT_ONCE])
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    try:
        await response.write(b'{"tasks":[')
        separator = b""
        for start in range(0, len(ids), RECORDS_AT_ONCE):
            if start:
                records = await api.store.get_many(ids[start : start + RECORDS_AT_ONCE])
            for record in records:
                await response.write(separator + orjson.dumps(shapes.render(_entry(request, record))))
                separator = b","
        await response.write(b'],"pagination":' + orjson.dumps(shapes.render(pagination)) + b"}")
        await response.write_eof()
    except Exception as exc:
        # Its status and first bytes are sent: no error answer can follow. The client sees the
        # connection close before the JSON ends, which it cannot take for a whole page. A client
        # gone is nothing to log, a lost Redis one line (no traceback: nothing here to mend); the
        # rest is a bug, logged with its traceback as the error middleware logs a 500's.
        if isinstance(exc, RedisError):
            log.warning("project listing cut off after it began: %s", type(exc).__name__)
        elif not isinstance(exc, ConnectionError):
            log.exception("project listing cut off after it began", exc_info=exc)
        request.protocol.force_close()
    return response


def add_routes(app: web.Application) -> None:
    """Register the project routes."""
    app.router.add_routes(routes)
