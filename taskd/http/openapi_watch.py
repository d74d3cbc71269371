"""The OpenAPI paths of the event streams and the dashboard; merged into `taskd.http.openapi`.

Their bodies' schemas (`TaskEvent`, `DashboardOverview`) are generated there from `taskd.shapes`.
"""

from __future__ import annotations

from typing import Any

from taskd import shapes
from taskd.http.events import EVENT_ID_PATTERN

Schema = dict[str, Any]

# Every path that names a project (its listing, its events, its media; shared with taskd.http.openapi):
# an id no submit takes is a 404 on each (taskd.http.scope), so it has the submission's pattern.
PROJECT_ID_PARAM: Schema = {
    "name": "project_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": f"^{shapes.PROJECT_ID.pattern}$"},
}

_ERROR = {"$ref": "#/components/schemas/Error"}
_KEY: list[dict[str, list[str]]] = [{"ApiKey": []}]


def _error(description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


_TOO_MANY_OPEN = {
    **_error(
        "`rate_limited`: the key's `status` quota is spent (each stream started spends one unit; "
        "with the RateLimit fields), or the key already holds `limits.open_streams` event streams "
        "and `Prefer: wait` submits open on this process"
    ),
    "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
}


_LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "description": (
        "Resume after this event id (sent by EventSource on reconnect); each part below 2^64, as a"
        " stream's ids are; an empty one is as if not sent"
    ),
    "schema": {"type": "string", "pattern": f"^({EVENT_ID_PATTERN})?$"},
}
_QUERY_KEY = {
    "name": "api_key",
    "in": "query",
    "description": "The API key, for clients that cannot send X-API-Key (a browser's EventSource)",
    "schema": {"type": "string"},
}
_EVENT_STREAM = {
    "description": (
        "Server-sent events: `id: <stream id>`, `event: status|progress`, `data: <TaskEvent JSON>`; "
        "where the stream's cap trimmed events this client was not sent, `event: gap` (no id) with "
        '`data: {"type": "gap", "after": <id>, "kept_from": <id>}` before the events that follow them; '
        "a `: keep-alive` comment every 15 s"
    ),
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}
# A project's stream resumed from before a stream's life (keys.events_ttl: storage.task_ttl, a day at
# most) is sent nothing older, and is told so by a gap when the stream still held such events.
_PROJECT_EVENT_STREAM = {
    **_EVENT_STREAM,
    "description": (
        f"{_EVENT_STREAM['description']}. A `Last-Event-ID` older than the streams' life "
        "(`storage.task_ttl`, a day at most) is resumed from that time: `event: gap` first, its "
        "`kept_from` that time's id (`<milliseconds>-0`), when the stream still held events between "
        "the two, and no event older than that is sent"
    ),
}


def paths() -> dict[str, Any]:
    """The event streams, the dashboard page and its overview."""
    return {
        "/api/v1/tasks/{task_id}/events": {
            "get": {
                "summary": "A task's events as server-sent events; ends after the terminal status event",
                "operationId": "task_events",
                "security": _KEY,
                "parameters": [
                    {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    _LAST_EVENT_ID,
                    _QUERY_KEY,
                ],
                "responses": {
                    "200": _EVENT_STREAM,
                    "204": {
                        "description": "The client's Last-Event-ID was already the task's terminal event"
                    },
                    "400": _error("`validation_error`: a malformed Last-Event-ID"),
                    "401": _error("`authentication_failed`: missing or wrong key"),
                    "404": _error("`task_not_found`"),
                    "429": _TOO_MANY_OPEN,
                    "503": _error("`service_unavailable`: storage unreachable"),
                },
            }
        },
        "/api/v1/projects/{project_id}/events": {
            "get": {
                "summary": "Events of every task of a project as server-sent events, from now on; stays open",
                "operationId": "project_events",
                "security": _KEY,
                "parameters": [
                    PROJECT_ID_PARAM,
                    _LAST_EVENT_ID,
                    _QUERY_KEY,
                ],
                "responses": {
                    "200": _PROJECT_EVENT_STREAM,
                    "400": _error("`validation_error`: a malformed Last-Event-ID"),
                    "401": _error("`authentication_failed`: missing or wrong key"),
                    # taskd.http.scope, before the stream starts, as for the project's listing.
                    "404": _error(
                        "`not_found`: a project_id no task can have (see a submission's `project_id`), "
                        "or a project the key may not use (`auth.keys`)"
                    ),
                    "429": _TOO_MANY_OPEN,
                    "503": _error("`service_unavailable`: storage unreachable"),
                },
            }
        },
        "/api/v1/dashboard/overview": {
            "get": {
                "summary": "Queues (waiting, running), live workers with their heartbeats, and GPUs, in one call",
                "operationId": "dashboard_overview",
                "security": _KEY,
                "responses": {
                    "200": {
                        "description": "The overview",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/DashboardOverview"}}
                        },
                    },
                    "401": _error("`authentication_failed`: missing or wrong key"),
                    "503": _error("`service_unavailable`: storage unreachable"),
                },
            }
        },
        "/dashboard": {
            "get": {
                "summary": "The live web dashboard (asks for the API key in the page)",
                "operationId": "dashboard_page",
                "security": [],
                "responses": {
                    "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}
                },
            }
        },
        "/dashboard/{asset}": {
            "get": {
                "summary": "A stylesheet or script of the dashboard",
                "operationId": "dashboard_asset",
                "security": [],
                "parameters": [
                    {"name": "asset", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {
                        "description": "The file",
                        "content": {
                            "text/css": {"schema": {"type": "string"}},
                            "text/javascript": {"schema": {"type": "string"}},
                        },
                    },
                    "404": _error("`not_found`: no such file"),
                },
            }
        },
    }
