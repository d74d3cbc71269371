"""A project's tasks, filtered and paged."""

from __future__ import annotations

from aiohttp import web

from taskd import shapes
from taskd.http import ratelimit
from taskd.http.context import API
from taskd.http.media import resigned
from taskd.http.responses import shape_response
from taskd.http.scope import Touches, touches
from taskd.http.views import list_item_view
from taskd.model import TaskStatus, ValidationError

DEFAULT_LIMIT, MAX_LIMIT = 20, 100
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
async def project_tasks(request: web.Request) -> web.Response:
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
    records, total = await api.store.list_project(
        project_id,
        status=status,
        task_type=query.get("task_type") or None,
        offset=(page - 1) * limit,
        limit=limit,
        spend=lambda calls: ratelimit.spend_listing(request, calls),
    )
    return shape_response(
        shapes.ProjectTasks(
            tasks=[list_item_view(resigned(request, record)) for record in records],
            pagination=shapes.Pagination(
                page=page, limit=limit, total=total, total_pages=(total + limit - 1) // limit
            ),
        )
    )


def add_routes(app: web.Application) -> None:
    """Register the project routes."""
    app.router.add_routes(routes)
