"""`GET /openapi.json`: the OpenAPI 3.1 document of every route, its parameters, bodies and responses.

Every schema is generated from an attrs class: the bodies taskd sends from `taskd.shapes` (the
classes the views and the error middleware render), the submission from `shapes.SubmitRequest`
(with the limits `taskd.submit.submission` checks), and each installed task type's `task_data`
from its input class, with the defaults, ranges, enums and patterns of its validators
(`taskd.validation.Check.schema`), so a plugin task type is described as soon as it is installed;
each of its fields, at any depth, may be a `$ref` object (`TaskRef`) instead (taskd.refs).
Only the paths, their parameters and headers are written out here, in `openapi_watch` and in
`openapi_ops`. A test walks the app's routes and fails when a route and this document disagree.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Mapping, Sequence, Set
from typing import Any

import attrs
from aiohttp import web

from taskd import refs, shapes
from taskd.http import openapi_ops, openapi_watch
from taskd.http.context import API
from taskd.http.health import HEALTH_WAIT_S
from taskd.http.projects import DEFAULT_LIMIT, MAX_LIMIT, MAX_PAGE, RECORDS_AT_ONCE
from taskd.http.responses import json_response
from taskd.http.scope import Touches, touches
from taskd.model import TaskStatus
from taskd.submit import idempotency
from taskd.tasks.registry import FROM_A_LIST, FROM_AN_OBJECT, Registry
from taskd.validation import Check, HttpUrl

Schema = dict[str, Any]

_SCALARS: dict[Any, Schema] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    Any: {},
}
# The bodies taskd sends, by the name the document gives each; the classes they use come along.
BODIES = (
    shapes.Error,
    shapes.Detail,
    shapes.SubmitResponse,
    shapes.BatchResponse,
    shapes.TaskStatusBody,
    shapes.WaitedTaskStatus,
    shapes.ProjectTasks,
    shapes.CancelResponse,
    shapes.RetryResponse,
    shapes.RedeliverResponse,
    shapes.Liveness,
    shapes.Probe,
    shapes.ServiceHealth,
    shapes.TaskMetrics,
    shapes.QueueHealth,
    shapes.TaskEvent,
    shapes.DashboardOverview,
)


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


TASK_REF = "TaskRef"
# `patternProperties`, not `properties`: a key "$ref" whose value is a schema, not a reference, is
# what tools that resolve every "$ref" key of a document (Swagger UI's) stumble on.
_TASK_REF_SCHEMA: Schema = {
    "type": "object",
    "patternProperties": {r"^\$ref$": {"type": "string", "pattern": refs.PATTERN}},
    "required": [refs.REF],
    "additionalProperties": False,
    "description": (
        'In place of any field of `task_data` (not of `task_data` itself), at any depth: `{"$ref": '
        '"<task_id>#/<JSON pointer>"}`, the task one of `depends_on` (`@<index>` in a batch), replaced '
        "just before the task runs by what the RFC 6901 pointer reaches in that task's result, which is "
        "then checked as the field's value"
    ),
}
# Kept beside the alternatives, where a reader of the document looks for them.
_ANNOTATIONS = ("description", "default")
# Keywords that only a string, number or list can fail: an object passes them, whatever their value.
_NOT_OF_OBJECTS = frozenset(
    {"minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
    | {"multipleOf", "items", "prefixItems", "minItems", "maxItems", "uniqueItems"}
)


def _or_task_ref(schema: Schema) -> Schema:
    """A task_data field's schema, or a `$ref` object in its place: the field's, and each list
    item's and mapping value's it holds. One that accepts anything stays as it is."""
    inner = dict(schema)
    for key in ("items", "additionalProperties"):
        if isinstance(inner.get(key), dict):
            inner[key] = _or_task_ref(inner[key])
    if "prefixItems" in inner:
        inner["prefixItems"] = [_or_task_ref(item) for item in inner["prefixItems"]]
    notes = {key: inner.pop(key) for key in _ANNOTATIONS if key in inner}
    if not inner:
        return notes
    if "anyOf" in inner and set(inner) - {"anyOf"} <= _NOT_OF_OBJECTS:  # `string | null`: one more
        return {**inner, "anyOf": [*inner["anyOf"], _ref(TASK_REF)], **notes}
    # Else around the whole schema: an `enum` or `type` beside its other keywords refuses an object.
    return {"anyOf": [inner, _ref(TASK_REF)], **notes}


def schema_name(cls: type) -> str:
    """The name of an attrs class among the document's schemas."""
    return str(getattr(cls, "schema_name", cls.__name__))


def _choices(values: list[Any]) -> Schema:
    """The schema of a field that takes one of `values` (a Literal's, an Enum's), as its hook reads them."""
    schema = {"const": values[0]} if len(values) == 1 else {"enum": values}
    return {"type": "string", **schema} if all(isinstance(value, str) for value in values) else schema


class _Classes:
    """Collects the schemas of attrs classes by name; `sent` for what taskd sends, else what it reads;
    `task_refs` for a task type's input, whose every field may be a `$ref` object."""

    def __init__(self, schemas: dict[str, Schema], *, sent: bool, task_refs: bool = False) -> None:
        self.schemas = schemas
        self.sent = sent
        self.task_refs = task_refs

    def type_schema(self, kind: Any) -> Schema:
        if kind in _SCALARS:
            return dict(_SCALARS[kind])
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if origin in (types.UnionType, typing.Union):
            # ABSENT is no value on the wire: the field is left out, which `required` says.
            options = [self.type_schema(arg) for arg in args if arg not in (type(None), shapes.Absent)]
            schema = options[0] if len(options) == 1 else {"anyOf": options}
            return _nullable(schema) if type(None) in args else schema
        if (origin or kind) in FROM_A_LIST:
            if origin is tuple and args and args[-1] is not Ellipsis:  # tuple[str, int]: each its own
                items = [self.type_schema(arg) for arg in args]
                return {"type": "array", "prefixItems": items, "minItems": len(items), "maxItems": len(items)}
            return {"type": "array", "items": self.type_schema(args[0]) if args else {}}
        if (origin or kind) in FROM_AN_OBJECT:
            return {"type": "object", "additionalProperties": self.type_schema(args[1]) if args else {}}
        if origin is typing.Literal:
            return _choices([arg.value if isinstance(arg, enum.Enum) else arg for arg in args])
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            # Its members' values, of whatever type: an IntEnum's are numbers (up to 893666b,
            # 2026-12-06, every Enum was published as strings, which no value of an IntEnum is).
            return _choices([member.value for member in kind])
        if attrs.has(kind):
            return _ref(self.add(kind))
        return {}

    def add(self, cls: type) -> str:
        """Add an attrs class (and the classes it uses) to the schemas; its name there."""
        name = schema_name(cls)
        if name in self.schemas:
            return name
        self.schemas[name] = {}  # reserve the name first: classes may refer to each other
        hints = typing.get_type_hints(cls)
        properties, required = {}, []
        for field in attrs.fields(cls):
            properties[field.name] = self.field_schema(field, hints[field.name])
            if self._required(field):
                required.append(field.name)
        schema: Schema = {"type": "object", "properties": properties}
        if cls.__doc__:
            schema["description"] = cls.__doc__.split("\n\n")[0].strip()
        if required:
            schema["required"] = required
        # What taskd sends is exactly its class; in what it reads, unknown fields are kept as sent.
        schema["additionalProperties"] = not self.sent
        self.schemas[name] = schema
        return name

    def _required(self, field: attrs.Attribute[Any]) -> bool:
        if self.sent:
            return field.default is not shapes.ABSENT
        return field.default is attrs.NOTHING

    def field_schema(self, field: attrs.Attribute[Any], kind: Any) -> Schema:
        """A field's type, then its metadata's keywords, its validators' and its default."""
        schema = self.type_schema(kind)
        _merge(schema, _validator_schema(field.validator), array=_is_array(kind))
        _merge(schema, field.metadata.get("schema", {}), array=_is_array(kind))
        if description := field.metadata.get("description"):
            schema["description"] = description
        # A constant default is published; a factory's (an empty list) and None say nothing more.
        default = field.default
        constant = default is not attrs.NOTHING and not isinstance(default, _FACTORY)
        if not self.sent and constant and default is not None:
            schema["default"] = _as_json(default)
        return _or_task_ref(schema) if self.task_refs else schema


def _as_json(default: Any) -> Any:
    """A field's default as the JSON it stands for, at every depth: an attrs instance's as an object
    of its fields, a tuple's or set's as a list (a set's in one order whatever the hash seed). A
    plugin's `frozenset()` default, or a `Style()` one of an attrs class, made /openapi.json a 500:
    orjson writes neither."""
    if isinstance(default, enum.Enum):
        return default.value
    if attrs.has(type(default)):
        return {field.name: _as_json(getattr(default, field.name)) for field in attrs.fields(type(default))}
    if isinstance(default, Mapping):
        return {key: _as_json(value) for key, value in default.items()}
    if isinstance(default, Set):
        return sorted((_as_json(item) for item in default), key=repr)
    if isinstance(default, Sequence) and not isinstance(default, str | bytes):
        return [_as_json(item) for item in default]
    return default


def _is_array(kind: Any) -> bool:
    args = [arg for arg in typing.get_args(kind) if arg not in (type(None), shapes.Absent)]
    if typing.get_origin(kind) in (types.UnionType, typing.Union) and len(args) == 1:
        return _is_array(args[0])
    return (typing.get_origin(kind) or kind) in FROM_A_LIST


def _validator_schema(validator: Any) -> Schema:
    """The JSON Schema keywords a validator stands for: taskd's `Check`s and attrs' own."""
    if validator is None:
        return {}
    if isinstance(validator, Check | HttpUrl):
        return dict(validator.schema)
    found: Schema = {}
    for part in getattr(validator, "_validators", ()):  # attrs.validators.and_, or a list of validators
        _merge(found, _validator_schema(part), array=False)
    if (member := getattr(validator, "member_validator", None)) is not None:  # deep_iterable
        _merge(found, _validator_schema(getattr(validator, "iterable_validator", None)), array=False)
        if items := _validator_schema(member):
            found["items"] = items
    if (minimum := getattr(validator, "min_length", None)) is not None:  # attrs.validators.min_len
        found["minLength"] = minimum
    if (maximum := getattr(validator, "max_length", None)) is not None:  # attrs.validators.max_len
        found["maxLength"] = maximum
    if (options := getattr(validator, "options", None)) is not None:  # attrs.validators.in_
        found["enum"] = list(options)
    return found


# attrs.Factory is typed as a function (its overloads), so isinstance needs the class it makes.
_FACTORY: type = type(attrs.Factory(list))
_ITEM_COUNTS = {"minLength": "minItems", "maxLength": "maxItems"}


def _merge(schema: Schema, keywords: typing.Mapping[str, Any], *, array: bool) -> None:
    """Add `keywords` to a field's schema; a length of a list is its number of items."""
    for key, value in keywords.items():
        if key == "items" and isinstance(schema.get("items"), dict):
            _merge(schema["items"], value, array=False)
        else:
            schema[_ITEM_COUNTS.get(key, key) if array else key] = value


def class_schema(cls: type, schemas: dict[str, Schema], *, task_refs: bool = False) -> str:
    """Add a class taskd reads (and the classes it uses) to `schemas`; its name there. `task_refs` for
    a task type's input: each field may be a `$ref` object instead."""
    return _Classes(schemas, sent=False, task_refs=task_refs).add(cls)


def _body_schemas() -> dict[str, Schema]:
    schemas: dict[str, Schema] = {}
    classes = _Classes(schemas, sent=True)
    for cls in BODIES:
        classes.add(cls)
    return schemas


_STATUS = {"type": "string", "enum": [status.value for status in TaskStatus]}


# An object whose only key is "$ref" (taskd.refs.is_ref), whatever its value: what task_data itself
# may not be, though a type with no required field takes any object.
_BARE_REF: Schema = {"required": [refs.REF], "maxProperties": 1}
# A submission that schedules by both `run_at` and `delay_seconds` (`null` is either left out): a 400
# (taskd.submit.submission._scheduled_for), which the fields' own schemas cannot say.
_BOTH_SCHEDULES: Schema = {
    "required": ["run_at", "delay_seconds"],
    "properties": {"run_at": {"type": "string"}, "delay_seconds": {"type": "number"}},
}


def _submit_schemas(registry: Registry, schemas: dict[str, Schema]) -> None:
    """`SubmitRequest`: one variant of `shapes.SubmitRequest` per task type, told apart by `task_type`."""
    # Generated aside: the class's own name is the union's, and only its variants are published.
    generated: dict[str, Schema] = {}
    request = generated[class_schema(shapes.SubmitRequest, generated)]
    variants = []
    schemas[TASK_REF] = _TASK_REF_SCHEMA
    for name, task_type in sorted(registry.types.items()):
        data = class_schema(task_type.input, schemas, task_refs=True)
        properties = request["properties"]
        schemas[f"Submit_{name}"] = {
            **request,
            "properties": {
                **properties,
                "task_type": {**properties["task_type"], "const": name},
                "task_data": {
                    **_ref(data),
                    "not": _BARE_REF,
                    "description": properties["task_data"]["description"],
                },
            },
            "not": _BOTH_SCHEDULES,
            "description": f"A `{name}` task; runs on the `{task_type.queue}` queue.",
        }
        variants.append(_ref(f"Submit_{name}"))
    schemas["SubmitRequest"] = {"oneOf": variants, "discriminator": {"propertyName": "task_type"}}
    batch = generated[class_schema(shapes.BatchRequest, generated)]
    tasks = batch["properties"]["tasks"]
    schemas["BatchRequest"] = {
        **batch,
        "properties": {"tasks": {**tasks, "items": _ref("SubmitRequest")}},
    }


def _json(schema_name: str, description: str, headers: dict[str, Any] | None = None) -> Schema:
    response: Schema = {
        "description": description,
        "content": {"application/json": {"schema": _ref(schema_name)}},
    }
    if headers:
        response["headers"] = headers
    return response


# RFC 7240. A `wait` outside 1..60 or not a whole number is ignored (taskd.http.prefer_wait).
_PREFER_WAIT: Schema = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "description": (
        "`wait=<seconds>` (1..60): hold the answer until the task ends or the time is up; any other"
        " value is ignored and the task's submit answer comes at once"
    ),
    "schema": {"type": "string"},
}
_PREFERENCE_APPLIED = {
    "Preference-Applied": {
        "description": "`wait=<seconds>` when the `Prefer: wait` was honoured",
        "schema": {"type": "string", "pattern": "^wait=[0-9]+$"},
    }
}
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
# A tenant's file: no shared cache keeps it, and a browser asks again before each reuse (taskd.http.media).
_MEDIA_CACHE_CONTROL = {
    "description": "`private, no-cache`: a browser revalidates before each reuse, so a deleted file stops showing",
    "schema": {"type": "string", "const": "private, no-cache"},
}


def _errors(*codes: int, limited: bool = False) -> dict[str, Schema]:
    headers = _LIMIT_HEADERS if limited else None
    described = {
        400: _json(
            "Error", "Invalid request: `validation_error` with one `details` entry per bad field", headers
        ),
        401: _json("Error", "`authentication_failed`: missing or wrong X-API-Key"),
        403: _json("Error", "`forbidden`: the media signature does not check out"),
        404: _json("Error", "`task_not_found` (or `not_found`)", headers),
        408: _json(
            "Error",
            "`request_timeout`: the body did not arrive within `http.body_timeout`; the connection is closed",
        ),
        413: _json("Error", "`payload_too_large`: the body is over `limits.max_body_bytes`", headers),
        417: _json("Error", "`expectation_failed`: an `Expect` other than `100-continue`"),
        429: _json(
            "Error",
            "`rate_limited`: a per-key quota (per minute, or `limits.open_bodies` request bodies still"
            " arriving at once on one taskd process: that body is not read and the connection is closed),"
            " or the project's waiting-task limit or stored-bytes budget",
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


# The queue health and the task counters answer within HEALTH_WAIT_S of a Redis that hangs (health.py).
_BOUNDED_503 = _json(
    "Error",
    f"`service_unavailable`: Redis is unreachable, or did not answer within {HEALTH_WAIT_S:g} s",
    _RETRY_AFTER,
)


_REPLAYED = {
    idempotency.REPLAYED: {
        "description": "`true` when this is the answer to an earlier request with the same Idempotency-Key",
        "schema": {"type": "string", "const": "true"},
    }
}


def _idempotency_key() -> Schema:
    return {
        "name": idempotency.HEADER,
        "in": "header",
        "description": (
            "Makes a resend safe: the same key with the same request within 24 h (per API key) gets the "
            "first answer again, with `Idempotent-Replayed: true`, and creates nothing; sent at most once"
        ),
        "schema": {"type": "string", "minLength": 1, "maxLength": idempotency.MAX_KEY},
    }


_REUSED = {
    "422": _json("Error", "`idempotency_key_reused`: the Idempotency-Key was used with a different request")
}


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
                    "200": _json(
                        "ServiceHealth",
                        "Healthy, or degraded: no live worker, or Redis refuses writes (redis_note says why)",
                    ),
                    "503": _json(
                        "ServiceHealth",
                        f"Unhealthy: Redis is unreachable, or did not answer within {HEALTH_WAIT_S:g} s",
                    ),
                    **_errors(401),
                },
            }
        },
        "/api/v1/tasks/metrics": {
            "get": {
                "summary": "Cumulative task counters shared by every process",
                "operationId": "task_metrics",
                "security": key,
                "responses": {"200": _json("TaskMetrics", "Counters"), **_errors(401), "503": _BOUNDED_503},
            }
        },
        "/api/v1/tasks/health": {
            "get": {
                "summary": "Queue health alerts (failure rate, long-running tasks, worker memory)",
                "operationId": "queue_health",
                "security": key,
                "responses": {"200": _json("QueueHealth", "Alerts"), **_errors(401), "503": _BOUNDED_503},
            }
        },
        "/api/v1/tasks/submit": {
            "post": {
                "summary": "Submit a task (quota `submit`: 100/min per key; 50 active tasks per project)",
                "operationId": "submit_task",
                "security": key,
                "parameters": [_idempotency_key(), _PREFER_WAIT],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("SubmitRequest")}},
                },
                "responses": {
                    "200": {
                        "description": (
                            "Stored and queued (`SubmitResponse`); with `Prefer: wait=N` honoured, the task's"
                            " status once it ended or N seconds passed (`WaitedTaskStatus`)"
                        ),
                        "headers": {**_LIMIT_HEADERS, **_REPLAYED, **_PREFERENCE_APPLIED},
                        "content": {
                            "application/json": {
                                "schema": {"anyOf": [_ref("SubmitResponse"), _ref("WaitedTaskStatus")]}
                            }
                        },
                    },
                    **_errors(400, 401, 408, 413, 417, 429, 503, limited=True),
                    **_REUSED,
                },
            }
        },
        "/api/v1/tasks/batch": {
            "post": {
                "summary": "Submit several tasks, stored all or none (quota `submit`: one per task)",
                "description": 'A task may depend on an earlier one of the batch: `"@<index>"` in its '
                '`depends_on`, `{"$ref": "@<index>#/<JSON pointer>"}` in its `task_data`. A 400 names '
                "each bad field as `tasks[<index>].<field>`; a batch no wait would let pass (more tasks of a "
                "project than `limits.queued_per_project`, or more to queue at once than "
                "`limits.max_queue_length`) is a 400 on `tasks`, with no `Retry-After`.",
                "operationId": "submit_batch",
                "security": key,
                "parameters": [_idempotency_key()],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("BatchRequest")}},
                },
                "responses": {
                    "200": _json(
                        "BatchResponse", "Stored and queued, in order", {**_LIMIT_HEADERS, **_REPLAYED}
                    ),
                    **_errors(400, 401, 408, 413, 417, 429, 503, limited=True),
                    **_REUSED,
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
                "parameters": [_task_id(), _idempotency_key()],
                "responses": {
                    "200": _json("RetryResponse", "Submitted as a new task", {**_LIMIT_HEADERS, **_REPLAYED}),
                    "400": {
                        "description": "The task is not failed or cancelled (`Detail`); a bad "
                        "Idempotency-Key, or a stored `task_data` or `callback_url` that a submit's checks "
                        "now refuse (`Error`, `validation_error` naming the fields in `details`; nothing is stored)",
                        "content": {
                            "application/json": {"schema": {"anyOf": [_ref("Detail"), _ref("Error")]}}
                        },
                        "headers": _LIMIT_HEADERS,
                    },
                    **_errors(401, 404, 429, 503, limited=True),
                    **_REUSED,
                },
            }
        },
        "/api/v1/tasks/{task_id}/webhook/redeliver": {
            "post": {
                "summary": "Send an ended task's webhook again (quota `submit`)",
                "operationId": "redeliver_webhook",
                "security": key,
                "parameters": [_task_id()],
                "responses": {
                    "202": _json("RedeliverResponse", "Delivery scheduled", _LIMIT_HEADERS),
                    "400": _json("Detail", "No callback_url, or the task has not ended", _LIMIT_HEADERS),
                    **_errors(401, 404, 429, 503, limited=True),
                },
            }
        },
        "/api/v1/projects/{project_id}/tasks": {
            "get": {
                "summary": (
                    "A project's tasks, newest first, filtered and paged (quota `status`: one unit per "
                    "1,000 ids of the project's index it reads; one for a page of a project unchanged since "
                    "its last listing)"
                ),
                "operationId": "project_tasks",
                "security": key,
                "parameters": [
                    openapi_watch.PROJECT_ID_PARAM,
                    {"name": "status", "in": "query", "schema": _STATUS},
                    {"name": "task_type", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "page",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_LIMIT,
                            "default": DEFAULT_LIMIT,
                        },
                    },
                ],
                "responses": {
                    "200": _json(
                        "ProjectTasks",
                        f"One page; one of more than {RECORDS_AT_ONCE} tasks is sent as it is read (chunked),"
                        f" from its first {RECORDS_AT_ONCE} on, and a Redis failure after them closes the"
                        " connection before the JSON ends",
                        _LIMIT_HEADERS,
                    ),
                    # Spent after the query and the project are checked: a 400 or 404 spends none.
                    **_errors(400, 401, 404, 429, 503),
                },
            }
        },
        "/media/{project_id}/{filename}": {
            "get": {
                "summary": "A media file a task made: with X-API-Key, or a signed URL (`expires`, `sig`)",
                "operationId": "media_file",
                "security": [*key, {}],
                "parameters": [
                    openapi_watch.PROJECT_ID_PARAM,
                    {"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "expires", "in": "query", "schema": {"type": "string"}},
                    {"name": "sig", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "The file",
                        "headers": {"Cache-Control": _MEDIA_CACHE_CONTROL},
                        "content": {"*/*": {"schema": {}}},
                    },
                    "206": {
                        "description": "The part of the file a `Range` asked for; with `If-Range`, only while it "
                        "names the file as it is now (its `ETag`, or exactly its `Last-Modified`), else the "
                        "whole file (200)",
                        "headers": {"Cache-Control": _MEDIA_CACHE_CONTROL},
                        "content": {"*/*": {"schema": {}}},
                    },
                    "302": {
                        "description": "With the s3 backend (a key only): to a presigned URL of the bucket",
                        "headers": {
                            "Location": {"description": "The presigned URL", "schema": {"type": "string"}},
                            "Cache-Control": {"schema": {"type": "string", "const": "no-store"}},
                        },
                    },
                    "304": {
                        "description": "Not modified: the file the `If-None-Match` ETag (or "
                        "`If-Modified-Since`) names is still there"
                    },
                    "412": {"description": "An `If-Match` or `If-Unmodified-Since` the file does not meet"},
                    "416": {
                        "description": "A range of bytes that starts past the file's end, ends before it "
                        "starts (`bytes=5-3`) or names no byte (`bytes=-`); a `Range` of several ranges, or of "
                        "another unit, is ignored: the whole file, 200"
                    },
                    **_errors(401, 403, 404),
                    "503": _json(
                        "Error",
                        "`service_unavailable`: with the s3 backend, the bucket could not be asked whether "
                        "the file is there",
                    ),
                },
            }
        },
    }


def document(registry: Registry) -> dict[str, Any]:
    """The OpenAPI 3.1 document for the task types in `registry`."""
    schemas = _body_schemas()
    _submit_schemas(registry, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "taskd",
            "version": "1.0.0",
            "description": (
                "The task service of the AI movie platform. Every `/api/v1/` route needs `X-API-Key`. "
                "A key scoped to projects (`auth.keys`) gets 404 for anything of another project, and "
                "views across projects name only its own tasks. "
                "Request bodies over `limits.max_body_bytes` (1 MiB) get 413, bodies that take longer than "
                "`http.body_timeout` (60 s) to arrive 408; unknown top-level fields "
                "of a submission are ignored, unknown `task_data` fields are kept as sent. An `integer` "
                "field takes any number with no fractional part, as JSON Schema counts them: `24.0` is "
                "24; `24.5`, and a float of 2^53 or more, are a 400 naming the field."
            ),
        },
        "components": {
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
            "schemas": schemas,
        },
        "paths": {**_paths(), **openapi_watch.paths(), **openapi_ops.paths()},
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
