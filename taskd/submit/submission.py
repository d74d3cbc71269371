"""The submit request: checked field by field into a Submission, or a 400 with every problem named.

The fields and their limits are `taskd.shapes.SubmitRequest`'s (the OpenAPI document is generated
from that class). A body is checked here by hand rather than structured into the class by cattrs,
because that would change what is accepted and what is said: cattrs turns a number into a string
(`"project_id": 5` would pass), names a missing field "This field is required" where the document
says "Project ID is required", and would refuse the `null`, `false` or `""` metadata that has always
been read as none; and `task_data` is checked against its task type's own input class.
"""

from __future__ import annotations

from typing import Any, cast

import attrs

from taskd.model import PRIORITY_HIGH, PRIORITY_LOW, PRIORITY_NORMAL, ValidationError
from taskd.shapes import (
    CALLBACK_URL,
    MAX_CALLBACK_URL,
    PROJECT_ID,
    WEBHOOK_EVENTS,
    SubmitRequest,
    WebhookEvent,
)
from taskd.tasks.registry import Registry

__all__ = ["CALLBACK_URL", "MAX_CALLBACK_URL", "PROJECT_ID", "Submission", "parse_submission"]


@attrs.frozen
class Submission(SubmitRequest):
    """A valid request for work: what the submit endpoint and retry create tasks from."""

    # The id of the submitting API key (taskd.webhooks.signing.key_id): whose secret signs its webhook.
    key_id: str | None = None


def _project_id(value: Any, details: dict[str, str]) -> None:
    if value is None or value == "":
        details["project_id"] = "Project ID is required"
    elif not isinstance(value, str) or not PROJECT_ID.fullmatch(value):
        details["project_id"] = (
            "Project ID must be 1-128 characters: letters, digits and _ . : @ -, starting with a letter or digit"
        )


def _priority(value: Any, details: dict[str, str]) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not PRIORITY_HIGH <= value <= PRIORITY_LOW:
        details["priority"] = "Priority must be 1 (high), 2 (normal) or 3 (low)"


def _callback_url(value: Any, details: dict[str, str]) -> None:
    if value is None:
        return
    if not isinstance(value, str) or len(value) > MAX_CALLBACK_URL or not CALLBACK_URL.match(value):
        details["callback_url"] = (
            f"Callback URL must be an http(s) URL of at most {MAX_CALLBACK_URL} characters"
        )


def _webhook_events(value: Any, details: dict[str, str]) -> list[WebhookEvent] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(event, str) and event in WEBHOOK_EVENTS for event in value
    ):
        details["webhook_events"] = "Webhook events must be a list of: " + ", ".join(WEBHOOK_EVENTS)
        return None
    return cast(list[WebhookEvent], list(dict.fromkeys(value)))  # each event once, in the order given


def parse_submission(body: Any, registry: Registry) -> Submission:
    """Check a decoded JSON body; raise ValidationError naming every bad field (task_data's included)."""
    if not isinstance(body, dict):
        raise ValidationError({"body": "Request body must be a JSON object"}, "Invalid request body")
    details: dict[str, str] = {}
    _project_id(body.get("project_id"), details)
    priority = body.get("priority", PRIORITY_NORMAL)
    _priority(priority, details)
    _callback_url(body.get("callback_url"), details)
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
    if task_data is None:
        details["task_data"] = "Task data is required"
    elif not isinstance(task_data, dict):
        details["task_data"] = "Task data must be an object"
    elif task_type is not None:
        try:
            registry.parse_input(task_type, task_data)
        except ValidationError as exc:
            details.update(exc.details)

    if details or task_type is None or not isinstance(task_data, dict):
        raise ValidationError(details)
    return Submission(
        project_id=body["project_id"],
        task_type=task_type.name,
        task_data=task_data,
        priority=priority,
        callback_url=body.get("callback_url"),
        metadata=metadata,
        webhook_events=webhook_events,
    )
