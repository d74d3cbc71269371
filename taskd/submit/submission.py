"""The submit request: checked field by field into a Submission, or a 400 with every problem named.

The fields and their limits are `taskd.shapes.SubmitRequest`'s (the OpenAPI document is generated
from that class). A body is checked here by hand rather than structured into the class by cattrs,
because that would change what is accepted and what is said: cattrs turns a number into a string
(`"project_id": 5` would pass), names a missing field "This field is required" where the document
says "Project ID is required", and would refuse the `null`, `false` or `""` metadata that has always
been read as none; and `task_data` is checked against its task type's own input class.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, cast

import attrs
from yarl import URL

from taskd import refs
from taskd.model import PRIORITY_HIGH, PRIORITY_LOW, PRIORITY_NORMAL, ValidationError, now
from taskd.shapes import (
    CALLBACK_URL,
    MAX_CALLBACK_URL,
    MAX_DEPENDS_ON,
    MAX_KEEP_FOR,
    MAX_SCHEDULE_AHEAD,
    MIN_KEEP_FOR,
    PROJECT_ID,
    WEBHOOK_EVENTS,
    SubmitRequest,
    WebhookEvent,
)
from taskd.tasks.registry import Registry
from taskd.tasks.spec import TaskType
from taskd.validation import Path, latin1_credentials, path_text, url_problem, whole_number

__all__ = ["CALLBACK_URL", "MAX_CALLBACK_URL", "PROJECT_ID", "Submission", "parse_submission"]


@attrs.frozen
class Submission(SubmitRequest):
    """A valid request for work: what the submit endpoint and retry create tasks from."""

    # The id of the submitting API key (taskd.webhooks.signing.key_id): whose secret signs its webhook.
    key_id: str | None = None
    # The id of that key's own webhook secret when it was first submitted (a retry keeps it); None:
    # the submitting key's, as configured now (taskd.webhooks.signing.secret_id).
    webhook_secret_id: str | None = None
    # When it may queue (epoch seconds), from `run_at` or `delay_seconds`; None: now.
    scheduled_for: float | None = None


# RFC 3339's date-time: a full date, a time and an offset (fromisoformat alone also takes a bare
# date, a time without an offset and ISO 8601's other forms). The offset's hours and minutes are
# held to RFC 3339's ranges here: fromisoformat reads "+05:60" as "+06:00". ASCII digits only.
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:)(\d{2})(\.\d+)?([Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)", re.ASCII
)
# RFC 3339 allows a leap second (second 60); Python's datetime has none.
_LEAP_SECOND = "60"


def _rfc3339(value: Any) -> float:
    """An RFC 3339 date-time as epoch seconds; ValueError for anything else. A leap second
    (`23:59:60`) is read as the instant after second 59 (the next day's 00:00:00), as POSIX time
    has no leap seconds to count it in."""
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(value)
    head, second, fraction, offset = match.groups()
    leap = second == _LEAP_SECOND
    text = (head + ("59" if leap else second) + (fraction or "") + offset).upper().replace("Z", "+00:00")
    return datetime.fromisoformat(text).timestamp() + (1 if leap else 0)


def _project_id(value: Any, details: dict[str, str]) -> None:
    if value is None or value == "":
        details["project_id"] = "Project ID is required"
    elif not isinstance(value, str) or not PROJECT_ID.fullmatch(value):
        details["project_id"] = (
            "Project ID must be 1-128 characters: letters, digits and _ . : @ -, starting with a letter or digit"
        )


def _priority(value: Any, details: dict[str, str]) -> int:
    """The priority as an int (`2.0` is 2: JSON Schema's integer); PRIORITY_NORMAL with a detail if bad."""
    number = whole_number(value)
    if number is None or not PRIORITY_HIGH <= number <= PRIORITY_LOW:
        details["priority"] = "Priority must be 1 (high), 2 (normal) or 3 (low)"
        return PRIORITY_NORMAL
    return number


def _callback_url(value: Any, details: dict[str, str]) -> None:
    if value is None:
        return
    if not isinstance(value, str) or len(value) > MAX_CALLBACK_URL or not CALLBACK_URL.match(value):
        details["callback_url"] = (
            f"Callback URL must be an http(s) URL of at most {MAX_CALLBACK_URL} characters"
        )
        return
    problem = url_problem(value)
    if problem is not None:
        details["callback_url"] = f"Callback URL is not a valid URL: {problem}"
    elif not latin1_credentials(URL(value)):
        details["callback_url"] = (
            "Callback URL's user name and password must be Latin-1 text: HTTP Basic authentication "
            "sends them so"
        )


def _keep_for(value: Any, details: dict[str, str]) -> int | None:
    """Seconds as an int (`60.0` is 60, and Redis's EXPIRE takes no other), or None."""
    if value is None:
        return None
    number = whole_number(value)
    if number is None or not MIN_KEEP_FOR <= number <= MAX_KEEP_FOR:
        details["keep_for"] = (
            f"Keep for must be a whole number of seconds from {MIN_KEEP_FOR} to {MAX_KEEP_FOR} (30 days)"
        )
        return None
    return number


def _scheduled_for(body: dict[str, Any], max_ahead: int, details: dict[str, str]) -> float | None:
    """When `run_at` or `delay_seconds` lets the task queue (epoch seconds); None for now."""
    run_at, delay = body.get("run_at"), body.get("delay_seconds")
    if run_at is not None and delay is not None:
        message = "Give run_at or delay_seconds, not both"
        details["run_at"] = details["delay_seconds"] = message
        return None
    at = now()
    if run_at is not None:
        field = "run_at"
        try:
            when = _rfc3339(run_at)
        except ValueError:
            details[field] = "run_at must be an RFC 3339 timestamp with its offset, e.g. 2030-01-31T09:00:00Z"
            return None
    elif delay is not None:
        field = "delay_seconds"
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            details[field] = "delay_seconds must be a number of seconds, 0 or more"
            return None
        when = at + delay
    else:
        return None
    if when - at > max_ahead:
        details[field] = f"{field} may schedule a task at most {max_ahead} seconds ahead"
        return None
    # A past time runs now.
    return when if when > at else None


def _depends_on(value: Any, details: dict[str, str]) -> list[str]:
    # Whether each id exists, is of the same project and has not failed is the submit script's to
    # say (taskd/store/lua/submit.lua), atomically with the write.
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        details["depends_on"] = "depends_on must be a list of task ids"
    elif len(value) > MAX_DEPENDS_ON:
        details["depends_on"] = f"depends_on may name at most {MAX_DEPENDS_ON} tasks"
    elif len(set(value)) != len(value):
        details["depends_on"] = "depends_on names a task more than once"
    else:
        return value
    return []


def _refs(task_data: dict[str, Any], depends_on: list[str], details: dict[str, str]) -> list[Path]:
    """Check every $ref in task_data; return the field paths they stand at."""
    paths = []
    for path, value in refs.find(task_data):
        paths.append(path)
        ref = refs.parse(value)
        if ref is None:
            details[path_text(path)] = refs.MALFORMED
        elif ref.task_id not in depends_on:
            details[path_text(path)] = f"A $ref must name a task in depends_on; '{ref.task_id}' is not"
    return paths


def _webhook_events(value: Any, details: dict[str, str]) -> list[WebhookEvent] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(event, str) and event in WEBHOOK_EVENTS for event in value
    ):
        details["webhook_events"] = "Webhook events must be a list of: " + ", ".join(WEBHOOK_EVENTS)
        return None
    return cast(list[WebhookEvent], list(dict.fromkeys(value)))  # each event once, in the order given


def input_problems(
    registry: Registry, task_type: TaskType, task_data: dict[str, Any], ref_paths: list[Path]
) -> dict[str, str]:
    """What the type's checks refuse in `task_data` (field -> message), leaving out the fields a $ref
    at one of `ref_paths` fills (its value is known only when the task runs) and the checks that read
    it (refs.SetAside); not a list's length (FieldErrors.firm), which no $ref in an item changes."""
    errors = registry.input_errors(task_type, refs.blank(task_data) if ref_paths else task_data)
    set_aside = refs.SetAside(ref_paths)
    return {
        path_text(field): message
        for field, message in errors.at.items()
        if field in errors.firm or not set_aside.covers(field)
    }


def _task_data(
    task_data: Any,
    depends_on: list[str],
    registry: Registry,
    task_type: TaskType | None,
    details: dict[str, str],
) -> None:
    if task_data is None:
        details["task_data"] = "Task data is required"
    elif not isinstance(task_data, dict):
        details["task_data"] = "Task data must be an object"
    elif refs.is_ref(task_data):
        # What a task type reads is an object of fields: a $ref goes in a field of it.
        details["task_data"] = "Task data must be an object of fields, not a $ref: put the $ref in a field"
    else:
        ref_paths = _refs(task_data, depends_on, details)
        if task_type is not None:
            details.update(input_problems(registry, task_type, task_data, ref_paths))


def stored_problems(
    registry: Registry,
    task_type: TaskType,
    task_data: Any,
    callback_url: str | None,
    depends_on: list[str],
) -> dict[str, str]:
    """What a submit's checks of its body refuse in a stored task's task_data (its $refs too, against
    its `depends_on`) and callback_url (a retry submits them again): an earlier version, whose checks
    were laxer, may have stored them; anything else in Redis's copy, a 400 rather than a 500."""
    details: dict[str, str] = {}
    _callback_url(callback_url, details)
    _task_data(task_data, depends_on, registry, task_type, details)
    return details


def parse_submission(
    body: Any, registry: Registry, max_schedule_ahead: int = MAX_SCHEDULE_AHEAD, key_id: str | None = None
) -> Submission:
    """Check a decoded JSON body; raise ValidationError naming every bad field (task_data's included).

    `max_schedule_ahead`: the most seconds ahead `run_at`/`delay_seconds` may be (limits.max_schedule_ahead);
    `key_id`: the submitting key's (a copy with it made afterwards cost a submit ~5 µs).
    """
    if not isinstance(body, dict):
        raise ValidationError({"body": "Request body must be a JSON object"}, "Invalid request body")
    details: dict[str, str] = {}
    _project_id(body.get("project_id"), details)
    priority = _priority(body.get("priority", PRIORITY_NORMAL), details)
    _callback_url(body.get("callback_url"), details)
    keep_for = _keep_for(body.get("keep_for"), details)
    depends_on = _depends_on(body.get("depends_on"), details)
    scheduled_for = _scheduled_for(body, max_schedule_ahead, details)
    webhook_events = _webhook_events(body.get("webhook_events"), details)
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        details["metadata"] = "Metadata must be an object"

    task_type_name = body.get("task_type")
    task_type = registry.get(task_type_name) if isinstance(task_type_name, str) else None
    if task_type is None:
        known = ", ".join(sorted(registry.types))
        details["task_type"] = (
            "Task type is required"
            if task_type_name in (None, "")
            else f"Unknown task type; expected one of: {known}"
        )

    task_data = body.get("task_data")
    _task_data(task_data, depends_on, registry, task_type, details)

    if details or task_type is None or not isinstance(task_data, dict):
        raise ValidationError(details)
    return Submission(
        project_id=body["project_id"],
        task_type=task_type.name,
        task_data=task_data,
        priority=priority,
        callback_url=body.get("callback_url"),
        metadata=metadata,
        keep_for=keep_for,
        depends_on=depends_on,
        run_at=body.get("run_at"),
        delay_seconds=body.get("delay_seconds"),
        scheduled_for=scheduled_for,
        webhook_events=webhook_events,
        key_id=key_id,
    )
