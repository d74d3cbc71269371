"""`X-API-Key` on every `/api/v1/` route, compared in constant time against every configured key."""

from __future__ import annotations

import hmac

from aiohttp import web

from taskd import keys as redis_keys
from taskd.http.context import API
from taskd.model import ApiError, TaskNotFound
from taskd.webhooks.signing import key_id

PROTECTED_PREFIX = "/api/v1/"
QUERY_KEY = "api_key"
_QUERY_KEY_ALLOWED = "_taskd_query_key_allowed"
# The projects the request's key may use; None: every project.
PROJECTS = web.RequestKey("taskd_projects", object)
# The id of the request's key (never the key): tasks it submits are signed with its webhook secret.
KEY_ID = web.RequestKey("taskd_key_id", str)


def query_key_allowed(handler: web.Handler) -> web.Handler:
    """Mark a route that also takes the key as `?api_key=` (for EventSource, which cannot send headers)."""
    setattr(handler, _QUERY_KEY_ALLOWED, True)
    return handler


def key_matches(given: str, keys: list[str]) -> bool:
    """True if `given` equals one of `keys`; every key is compared, so timing tells nothing."""
    given_bytes = given.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given_bytes, key.encode())
    return matched


@web.middleware
async def auth_middleware(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    """Refuse `/api/v1/` requests without a valid key with the document's 401 body."""
    given = request.headers.get("X-API-Key", "")
    if not given and getattr(request.match_info.handler, _QUERY_KEY_ALLOWED, False):
        given = request.query.get(QUERY_KEY, "")
    if not request.path.startswith(PROTECTED_PREFIX):
        return await handler(request)
    api = request.app[API]
    if not key_matches(given, api.api_keys):
        raise ApiError(401, "authentication_failed", "Invalid or missing API key")
    request[PROJECTS] = projects = key_projects(given, api.key_projects)
    request[KEY_ID] = key_id(given)
    task_id = request.match_info.get("task_id")
    if projects is not None and task_id is not None:
        # Another project's task does not exist for this key: 404, never 403, so ids leak nothing.
        owner = await api.redis.hget(redis_keys.task(task_id), "project_id")
        if owner is not None and owner.decode() not in projects:
            raise TaskNotFound(task_id)
    project_id = request.match_info.get("project_id")
    if project_id is not None and not request.path.endswith("/tasks") and not may_use(request, project_id):
        raise ApiError(404, "not_found", f"Project '{project_id}' not found")  # e.g. its event stream
    return await handler(request)


def key_projects(given: str, scoped: dict[str, frozenset[str]]) -> frozenset[str] | None:
    """The projects a (valid) key may use, or None for every project; compared in constant time."""
    given_bytes = given.encode()
    found: frozenset[str] | None = None
    for key, projects in scoped.items():
        if hmac.compare_digest(given_bytes, key.encode()):
            found = projects
    return found


def may_use(request: web.Request, project_id: str) -> bool:
    """True if the request's key may see and submit to `project_id`."""
    projects = request.get(PROJECTS)
    return projects is None or project_id in projects
