"""Project scoping: every route declares which project it touches, and one check enforces it.

A key of `auth.keys` with `projects` may use only those projects. Each handler is registered
with one declaration (`@touches(Touches.…)`); before any handler runs, `scope_middleware` (after
the key is known and its rate limit spent) calls `enforce`, which applies the declaration to the
request's key:

- a route that declares nothing is refused to a scoped key (fail closed): a new route is sealed
  until its author says what it touches;
- another project (in the path, the body, or as the owner of the task in the path) is answered
  404, the same answer as for one that does not exist, so ids leak nothing;
- views across projects (`FILTERED`) drop, with `visible_tasks`, every task of another project.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import attrs
from aiohttp import web
from aiohttp.typedefs import Handler

from taskd.http.context import API
from taskd.http.responses import NotJson, read_json
from taskd.model import ApiError, ForeignDependency, TaskNotFound, ValidationError
from taskd.submit.submission import PROJECT_ID

_DECLARATION = "_taskd_touches"
H = TypeVar("H", bound=Callable[..., Any])


class Touches(enum.Enum):
    """What of which project a route reads or changes."""

    # Nothing of any one project: liveness, static files, the API document, counts over all projects.
    NOTHING = "nothing"
    # The project named by the path's `{project_id}`.
    PATH_PROJECT = "path_project"
    # The project that owns the task named by the path's `{task_id}`.
    PATH_TASK = "path_task"
    # The project named by the JSON body's `project_id`.
    BODY_PROJECT = "body_project"
    # The projects named by the `project_id` of each of the JSON body's `tasks` (a batch).
    BODY_PROJECTS = "body_projects"
    # Several projects at once; the handler keeps only what `visible_tasks` returns.
    FILTERED = "filtered"


@attrs.frozen
class Caller:
    """The key a request carries: None for every project, else the projects it may use."""

    projects: frozenset[str] | None

    def may_use(self, project_id: str) -> bool:
        """True if this key may see and change `project_id`."""
        return self.projects is None or project_id in self.projects


# Set by the auth middleware for a request with a valid key; absent without one.
CALLER = web.RequestKey("taskd_caller", Caller)


def touches(what: Touches) -> Callable[[H], H]:
    """Declare what a handler touches; `enforce` reads it for every request."""

    def declare(handler: H) -> H:
        setattr(handler, _DECLARATION, what)
        return handler

    return declare


def declared(handler: Callable[..., Any]) -> Touches | None:
    """The handler's declaration, or None when it has none."""
    return getattr(handler, _DECLARATION, None)


def may_use(request: web.Request, project_id: str) -> bool:
    """True if the request carries a valid key that may use `project_id`."""
    caller = request.get(CALLER)
    return caller is not None and caller.may_use(project_id)


def project_not_found(project_id: str) -> ApiError:
    """The 404 for a project a key may not see (or that cannot exist)."""
    return ApiError(404, "not_found", f"Project '{project_id}' not found")


@web.middleware
async def scope_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Apply the route's declaration to the request's key, and hide other projects' tasks it names."""
    await enforce(request)
    try:
        return await handler(request)
    except ForeignDependency as refused:
        caller = request.get(CALLER)
        if caller is None or caller.projects is None:
            raise
        # A key scoped to projects learns nothing of other projects' tasks, not even that one exists.
        raise refused.unknown from None


async def enforce(request: web.Request) -> None:
    """Refuse a scoped key anything of another project, and every route that declares nothing."""
    path_project = request.match_info.get("project_id")
    if path_project is not None and not PROJECT_ID.fullmatch(path_project):
        # No task can belong to it: submissions refuse such ids (e.g. an encoded slash).
        raise project_not_found(path_project)
    caller = request.get(CALLER)
    if caller is None or caller.projects is None or request.match_info.http_exception is not None:
        return  # no key (the route's own rule applies), every project, or aiohttp's own 404/405
    what = declared(request.match_info.handler)
    if what is None:
        raise ApiError(404, "not_found", "Not found")
    if what is Touches.PATH_PROJECT and path_project is not None and not caller.may_use(path_project):
        raise project_not_found(path_project)
    if what is Touches.PATH_TASK:
        await _check_task_owner(request, caller)
    if what is Touches.BODY_PROJECT:
        await _check_body_project(request, caller)
    if what is Touches.BODY_PROJECTS:
        await _check_body_projects(request, caller)


async def _check_task_owner(request: web.Request, caller: Caller) -> None:
    task_id = request.match_info["task_id"]
    owner = (await request.app[API].store.field_of_each([task_id], "project_id"))[0]
    # A task without an owner is refused too: a scoped key sees only what is provably its own.
    if owner is None or not caller.may_use(owner.decode("utf-8", "replace")):
        raise TaskNotFound(task_id)


async def _check_body_project(request: web.Request, caller: Caller) -> None:
    try:
        body = await read_json(request)  # parsed once, for the handler too
    except NotJson:
        return  # the handler answers a body that is not JSON with its own 400
    project_id = body.get("project_id") if isinstance(body, dict) else None
    if not isinstance(project_id, str) or not project_id:
        raise ValidationError({"project_id": "Project ID is required"})
    if not caller.may_use(project_id):
        raise ValidationError({"project_id": f"Project '{project_id}' is not available to this API key"})


async def _check_body_projects(request: web.Request, caller: Caller) -> None:
    try:
        body = await read_json(request)  # parsed once, for the handler too
    except NotJson:
        return  # the handler answers a body that is not JSON with its own 400
    items = body.get("tasks") if isinstance(body, dict) else None
    for index, item in enumerate(items if isinstance(items, list) else []):
        project_id = item.get("project_id") if isinstance(item, dict) else None
        # A missing or malformed project is the handler's to name, with the item's other problems.
        if isinstance(project_id, str) and project_id and not caller.may_use(project_id):
            raise ValidationError(
                {f"tasks[{index}].project_id": f"Project '{project_id}' is not available to this API key"}
            )


async def visible_tasks(request: web.Request, task_ids: Iterable[str]) -> set[str]:
    """The ids among `task_ids` whose project the request's key may see (none without a key)."""
    ids = list(dict.fromkeys(task_ids))
    caller = request.get(CALLER)
    if caller is None or not ids:
        return set()
    if caller.projects is None:
        return set(ids)
    owners = await request.app[API].store.field_of_each(ids, "project_id")
    return {
        task_id
        for task_id, owner in zip(ids, owners, strict=True)
        if owner is not None and caller.may_use(owner.decode("utf-8", "replace"))
    }
