"""Refuse deeply nested or huge `task_data` and `metadata` with a 400 before anything else looks at them."""

from __future__ import annotations

from typing import Any

from taskd.config import LimitsConfig
from taskd.model import ValidationError

_CHECKED = {"task_data": "Task data", "metadata": "Metadata"}


def shape_problem(value: Any, max_depth: int, max_items: int) -> str | None:
    """Why a decoded JSON value is too deep or too big, or None; iterative, so any depth is safe."""
    stack = [(value, 1)]
    items = 0
    while stack:
        current, depth = stack.pop()
        items += 1
        if items > max_items:
            return f"must hold at most {max_items} values in all"
        if isinstance(current, dict | list):
            if depth > max_depth:
                return f"must be nested at most {max_depth} levels deep"
            children = current.values() if isinstance(current, dict) else current
            stack.extend((child, depth + 1) for child in children)
    return None


def check_body_shape(body: Any, limits: LimitsConfig) -> None:
    """Raise a 400 `validation_error` naming `task_data` or `metadata` when either is too deep or too big."""
    if not isinstance(body, dict):
        return
    details = {}
    for field, label in _CHECKED.items():
        problem = shape_problem(body.get(field), limits.max_task_data_depth, limits.max_task_data_items)
        if problem is not None:
            details[field] = f"{label} {problem}"
    if details:
        raise ValidationError(details, "Request body is too large or too deeply nested")
