"""`GET /openapi.json`: the OpenAPI 3.1 document of every route, its parameters, bodies and responses.

`task_data` schemas are derived from each installed task type's attrs input class, so a plugin
task type is described as soon as it is installed. A test walks the app's routes and fails when
a route and this document disagree.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import attrs
from aiohttp import web

from taskd.http import openapi_watch
from taskd.http.context import API
from taskd.http.responses import json_response
from taskd.http.scope import Touches, touches
from taskd.model import TaskStatus
from taskd.submit.submission import MAX_CALLBACK_URL, PROJECT_ID
from taskd.tasks.registry import Registry

Schema = dict[str, Any]

_SCALARS: dict[Any, Schema] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    Any: {},
}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def type_schema(kind: Any, schemas: dict[str, Schema]) -> Schema:
    """The JSON Schema of a type used in a task input class; attrs classes go to `schemas` by name."""
    if kind in _SCALARS:
        return dict(_SCALARS[kind])
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        options = [type_schema(arg, schemas) for arg in args if arg is not type(None)]
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        return _nullable(schema) if type(None) in args else schema
    if origin in (list, tuple, set, frozenset):
        return {"type": "array", "items": type_schema(args[0], schemas) if args else {}}
    if origin is dict:
        return {"type": "object", "additionalProperties": type_schema(args[1], schemas) if args else {}}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if attrs.has(kind):
        return _ref(class_schema(kind, schemas))
    return {}


def class_schema(cls: type, schemas: dict[str, Schema]) -> str:
    """Add an attrs class (and the classes it uses) to `schemas`; its name there."""
    name = cls.__name__
    if name in schemas:
        return name
    schemas[name] = {}  # reserve the name first: classes may refer to each other
    hints = typing.get_type_hints(cls)
    properties, required = {}, []
    for field in attrs.fields(cls):
        properties[field.name] = type_schema(hints[field.name], schemas)
        if field.default is attrs.NOTHING:
            required.append(field.name)
    # Unknown fields are accepted and kept as sent.
    schemas[name] = {"type": "object", "properties": properties, "additionalProperties": True}
    if required:
        schemas[name]["required"] = required
    return name


def _nullable_types(*names: str) -> Schema:
    return {"type": [*names, "null"]}


_TIMESTAMP = {"type": "string", "examples": ["2025-01-15T10:30:00Z"]}
_NULLABLE_TIMESTAMP = _nullable_types("string")
_STATUS = {"type": "string", "enum": [status.value for status in TaskStatus]}


def _common_schemas() -> dict[str, Schema]:
    return {
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {
                "error": {"type": "string", "examples": ["validation_error", "rate_limited"]},
                "message": {"type": "string"},
                "details": {"type": "object", "additionalProperties": {"type": "string"}},
                "retry_after": {"type": "integer", "minimum": 0},
            },
        },
        "Detail": {
            "type": "object",
            "required": ["detail"],
            "properties": {"detail": {"type": "string"}},
        },
        "SubmitResponse": {
            "type": "object",
            "required": [
                "task_id",
                "status",
                "project_id",
                "estimated_duration",
                "queue_position",
                "created_at",
            ],
            "properties": {
                "task_id": {"type": "string"},
                "status": _STATUS,
                "project_id": {"type": "string"},
                "estimated_duration": {"type": "integer", "minimum": 1},
                "queue_position": {"type": "integer", "minimum": 0},
                "created_at": _TIMESTAMP,
            },
        },
        "Webhook": {
            "type": "object",
            "properties": {
                "attempts": {"type": "integer"},
                "last_status": _nullable_types("integer"),
                "last_error": _nullable_types("string"),
                "last_attempt_at": _NULLABLE_TIMESTAMP,
                "delivered_at": _NULLABLE_TIMESTAMP,
                "failed_at": _NULLABLE_TIMESTAMP,
                "next_attempt_at": _NULLABLE_TIMESTAMP,
            },
        },
        "TaskStatus": {
            "type": "object",
            "required": ["task_id", "project_id", "status", "progress", "task_type", "created_at"],
            "properties": {
                "task_id": {"type": "string"},
                "project_id": {"type": "string"},
                "status": _STATUS,
                "progress": {"type": "number", "minimum": 0, "maximum": 1},
                "current_step": _nullable_types("string"),
                "result": _nullable_types("object"),
                "error": _nullable_types("string"),
                "started_at": _NULLABLE_TIMESTAMP,
                "completed_at": _NULLABLE_TIMESTAMP,
                "processing_time": _nullable_types("number"),
                "task_type": {"type": "string"},
                "priority": {"type": "integer"},
                "attempt": {"type": "integer"},
                "last_error": _nullable_types("string"),
                "next_retry_at": _NULLABLE_TIMESTAMP,
                "created_at": _TIMESTAMP,
                "updated_at": _NULLABLE_TIMESTAMP,
                "traceback": {"type": "string"},
                "previous_state": _nullable_types("string"),
                "cancelled_at": _NULLABLE_TIMESTAMP,
                "retry_of": {"type": "string"},
                "queue_position": {"type": "integer", "minimum": 0},
                "webhook": {"anyOf": [_ref("Webhook"), {"type": "null"}]},
            },
        },
        "TaskListItem": {
            "type": "object",
            "required": ["task_id", "project_id", "task_type", "status", "task_data", "created_at"],
            "properties": {
                "task_id": {"type": "string"},
                "project_id": {"type": "string"},
                "task_type": {"type": "string"},
                "status": _STATUS,
                "task_data": {"type": "object"},
                "result": _nullable_types("object"),
                "error": _nullable_types("string"),
                "progress": {"type": "number"},
                "priority": {"type": "integer"},
                "created_at": _TIMESTAMP,
                "updated_at": _NULLABLE_TIMESTAMP,
            },
        },
        "ProjectTasks": {
            "type": "object",
            "required": ["tasks", "pagination"],
            "properties": {
                "tasks": {"type": "array", "items": _ref("TaskListItem")},
                "pagination": {
                    "type": "object",
                    "required": ["page", "limit", "total", "total_pages"],
                    "properties": {
                        name: {"type": "integer", "minimum": 0}
                        for name in ("page", "limit", "total", "total_pages")
                    },
                },
            },
        },
        "CancelResponse": {
            "type": "object",
            "required": ["task_id", "status", "message", "previous_state", "cancelled_at"],
            "properties": {
                "task_id": {"type": "string"},
                "status": {"const": "cancelled"},
                "message": {"type": "string"},
                "previous_state": _nullable_types("string"),
                "cancelled_at": _NULLABLE_TIMESTAMP,
            },
        },
        "RetryResponse": {
            "type": "object",
            "required": ["new_task_id", "original_task_id", "status", "message"],
            "properties": {
                "new_task_id": {"type": "string"},
                "original_task_id": {"type": "string"},
                "status": _STATUS,
                "message": {"type": "string"},
            },
        },
        "RedeliverResponse": {
            "type": "object",
            "required": ["task_id", "status", "callback_url", "webhook_id", "scheduled_at", "message"],
            "properties": {
                "task_id": {"type": "string"},
                "status": _STATUS,
                "callback_url": {"type": "string"},
                "webhook_id": {"type": "string"},
                "scheduled_at": _TIMESTAMP,
                "message": {"type": "string"},
            },
        },
        "Liveness": {
            "type": "object",
            "required": ["status", "service"],
            "properties": {"status": {"const": "healthy"}, "service": {"const": "taskd"}},
        },
        "ServiceHealth": {
            "type": "object",
            "required": ["status", "redis_status", "worker_count", "queue_sizes", "system_load", "uptime"],
            "properties": {
                "status": {"enum": ["healthy", "degraded", "unhealthy"]},
                "redis_status": {"enum": ["connected", "disconnected"]},
                "worker_count": {"type": "integer", "minimum": 0},
                "queue_sizes": {"type": "object", "additionalProperties": {"type": "integer"}},
                "system_load": {
                    "type": "object",
                    "properties": {
                        "cpu_percent": {"type": "number"},
                        "memory_percent": {"type": "number"},
                        "gpu_utilization": {"type": "array", "items": {"type": "number"}},
                    },
                },
                "uptime": {"type": "integer", "minimum": 0},
            },
        },
        "TaskMetrics": {
            "type": "object",
            "required": ["metrics", "timestamp"],
            "properties": {
                "metrics": {
                    "type": "object",
                    "required": ["total_tasks", "success_rate", "failure_rate", "average_durations"],
                    "properties": {
                        "total_tasks": {"type": "integer"},
                        "completed_tasks": {"type": "integer"},
                        "failed_tasks": {"type": "integer"},
                        "retried_tasks": {"type": "integer"},
                        "cancelled_tasks": {"type": "integer"},
                        "success_rate": {"type": "number"},
                        "failure_rate": {"type": "number"},
                        "average_durations": {"type": "object", "additionalProperties": {"type": "number"}},
                        "currently_running": {"type": "integer"},
                    },
                },
                "timestamp": _TIMESTAMP,
            },
        },
        "QueueHealth": {
            "type": "object",
            "required": ["status", "metrics", "alerts", "timestamp"],
            "properties": {
                "status": {"enum": ["healthy", "warning", "critical"]},
                "metrics": {"type": "object"},
                "alerts": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["severity", "message", "metric", "value"],
                        "properties": {
                            "severity": {"enum": ["warning", "critical"]},
                            "message": {"type": "string"},
                            "metric": {"type": "string"},
                            "value": {"type": "number"},
                        },
                    },
                },
                "timestamp": _TIMESTAMP,
            },
        },
    }


def _submit_schemas(registry: Registry, schemas: dict[str, Schema]) -> None:
    variants = []
    for name, task_type in sorted(registry.types.items()):
        data = class_schema(task_type.input, schemas)
        schemas[f"Submit_{name}"] = {
            "type": "object",
            "required": ["project_id", "task_type", "task_data"],
            "properties": {
                "project_id": {"type": "string", "pattern": PROJECT_ID.pattern},
                "task_type": {"const": name},
                "task_data": _ref(data),
                "priority": {"enum": [1, 2, 3], "default": 2},
                "callback_url": {"type": "string", "pattern": r"^https?://", "maxLength": MAX_CALLBACK_URL},
                "metadata": {"type": "object"},
            },
            # Unknown top-level fields are ignored.
            "additionalProperties": True,
            "description": f"A `{name}` task; runs on the `{task_type.queue}` queue.",
        }
        variants.append(_ref(f"Submit_{name}"))
    schemas["SubmitRequest"] = {"oneOf": variants, "discriminator": {"propertyName": "task_type"}}


def _json(schema_name: str, description: str, headers: dict[str, Any] | None = None) -> Schema:
    response: Schema = {
        "description": description,
        "content": {"application/json": {"schema": _ref(schema_name)}},
    }
    if headers:
        response["headers"] = headers
    return response


_LIMIT_HEADERS = {
    "RateLimit-Policy": {
        "description": 'The quota of this route, e.g. `"submit";q=100;w=60` (draft-ietf-httpapi-ratelimit-headers)',
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'What is left of it, e.g. `"submit";r=57;t=12`: r requests, full again in t seconds',
        "schema": {"type": "string"},
    },
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}


def _errors(*codes: int, limited: bool = False) -> dict[str, Schema]:
    headers = _LIMIT_HEADERS if limited else None
    described = {
        400: _json(
            "Error", "Invalid request: `validation_error` with one `details` entry per bad field", headers
        ),
        401: _json("Error", "`authentication_failed`: missing or wrong X-API-Key"),
        403: _json("Error", "`forbidden`: the media signature does not check out"),
        404: _json("Error", "`task_not_found` (or `not_found`)", headers),
        413: _json("Error", "`payload_too_large`: the body is over `limits.max_body_bytes`", headers),
        429: _json(
            "Error",
            "`rate_limited`: a per-key quota or the project's active-task limit",
            {**_LIMIT_HEADERS, **_RETRY_AFTER},
        ),
        503: _json(
            "Error",
            "`service_unavailable`: storage unreachable or full, the queue is full, "
            "or (media task types) the media disk is nearly full",
            _RETRY_AFTER,
        ),
    }
    return {str(code): described[code] for code in codes}


def _task_id() -> Schema:
    return {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _paths() -> dict[str, Any]:
    key: list[dict[str, list[str]]] = [{"ApiKey": []}]
    return {
        "/health": {
            "get": {
                "summary": "Liveness: the process is up (no key, no Redis)",
                "operationId": "liveness",
                "security": [],
                "responses": {"200": _json("Liveness", "Up")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (no key unless `metrics.require_key`)",
                "operationId": "prometheus_metrics",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The Prometheus text format, or OpenMetrics when the Accept header asks",
                        "content": {
                            "text/plain": {"schema": {"type": "string"}},
                            "application/openmetrics-text": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(401),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi_document",
                "security": [],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/api/v1/health": {
            "get": {
                "summary": "Service health: Redis, live workers, queue sizes, system load",
                "operationId": "service_health",
                "security": key,
                "responses": {
                    "200": _json("ServiceHealth", "Healthy, or degraded (no live worker)"),
                    "503": _json("ServiceHealth", "Unhealthy: Redis is unreachable"),
                    **_errors(401),
                },
            }
        },
        "/api/v1/tasks/metrics": {
            "get": {
                "summary": "Cumulative task counters shared by every process",
                "operationId": "task_metrics",
                "security": key,
                "responses": {"200": _json("TaskMetrics", "Counters"), **_errors(401, 503)},
            }
        },
        "/api/v1/tasks/health": {
            "get": {
                "summary": "Queue health alerts (failure rate, long-running tasks, worker memory)",
                "operationId": "queue_health",
                "security": key,
                "responses": {"200": _json("QueueHealth", "Alerts"), **_errors(401, 503)},
            }
        },
        "/api/v1/tasks/submit": {
            "post": {
                "summary": "Submit a task (quota `submit`: 100/min per key; 50 active tasks per project)",
                "operationId": "submit_task",
                "security": key,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("SubmitRequest")}},
                },
                "responses": {
                    "200": _json("SubmitResponse", "Stored and queued", _LIMIT_HEADERS),
                    **_errors(400, 401, 413, 429, 503, limited=True),
                },
            }
        },
        "/api/v1/tasks/{task_id}/status": {
            "get": {
                "summary": "A task's status, progress and outcome (quota `status`: 1000/min per key)",
                "operationId": "task_status",
                "security": key,
                "parameters": [_task_id()],
                "responses": {
                    "200": _json("TaskStatus", "The task", _LIMIT_HEADERS),
                    **_errors(401, 404, 429, 503, limited=True),
                },
            }
        },
        "/api/v1/tasks/{task_id}": {
            "delete": {
                "summary": "Cancel a queued or running task",
                "operationId": "cancel_task",
                "security": key,
                "parameters": [_task_id()],
                "responses": {
                    "200": _json("CancelResponse", "Cancelled now, or already"),
                    "400": _json("Detail", "The task already completed or failed"),
                    **_errors(401, 404, 503),
                },
            }
        },
        "/api/v1/tasks/{task_id}/retry": {
            "post": {
                "summary": "Submit a failed or cancelled task again (quota `submit`)",
                "operationId": "retry_task",
                "security": key,
                "parameters": [_task_id()],
                "responses": {
                    "200": _json("RetryResponse", "Submitted as a new task", _LIMIT_HEADERS),
                    "400": _json("Detail", "The task is not failed or cancelled", _LIMIT_HEADERS),
                    **_errors(401, 404, 429, 503, limited=True),
                },
            }
        },
        "/api/v1/tasks/{task_id}/webhook/redeliver": {
            "post": {
                "summary": "Send an ended task's webhook again",
                "operationId": "redeliver_webhook",
                "security": key,
                "parameters": [_task_id()],
                "responses": {
                    "202": _json("RedeliverResponse", "Delivery scheduled"),
                    "400": _json("Detail", "No callback_url, or the task has not ended"),
                    **_errors(401, 404, 503),
                },
            }
        },
        "/api/v1/projects/{project_id}/tasks": {
            "get": {
                "summary": "A project's tasks, newest first, filtered and paged",
                "operationId": "project_tasks",
                "security": key,
                "parameters": [
                    {"name": "project_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "status", "in": "query", "schema": _STATUS},
                    {"name": "task_type", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "page",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "default": 1},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                    },
                ],
                "responses": {"200": _json("ProjectTasks", "One page"), **_errors(400, 401, 404, 503)},
            }
        },
        "/media/{project_id}/{filename}": {
            "get": {
                "summary": "A media file a task made: with X-API-Key, or a signed URL (`expires`, `sig`)",
                "operationId": "media_file",
                "security": [*key, {}],
                "parameters": [
                    {"name": "project_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "expires", "in": "query", "schema": {"type": "string"}},
                    {"name": "sig", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {"description": "The file", "content": {"*/*": {"schema": {}}}},
                    **_errors(401, 403, 404),
                },
            }
        },
    }


def document(registry: Registry) -> dict[str, Any]:
    """The OpenAPI 3.1 document for the task types in `registry`."""
    schemas = _common_schemas()
    _submit_schemas(registry, schemas)
    schemas.update(openapi_watch.schemas())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "taskd",
            "version": "1.0.0",
            "description": (
                "The task service of the AI movie platform. Every `/api/v1/` route needs `X-API-Key`. "
                "A key scoped to projects (`auth.keys`) gets 404 for anything of another project, and "
                "views across projects name only its own tasks. "
                "Request bodies over `limits.max_body_bytes` (1 MiB) get 413; unknown top-level fields "
                "of a submission are ignored, unknown `task_data` fields are kept as sent."
            ),
        },
        "components": {
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
            "schemas": schemas,
        },
        "paths": {**_paths(), **openapi_watch.paths()},
    }


routes = web.RouteTableDef()


@routes.get("/openapi.json")
@touches(Touches.NOTHING)
async def openapi_document(request: web.Request) -> web.Response:
    """The OpenAPI document; no key needed."""
    return json_response(document(request.app[API].registry))


def add_routes(app: web.Application) -> None:
    """Register the document's route."""
    app.router.add_routes(routes)
