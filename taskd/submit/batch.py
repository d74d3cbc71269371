"""The batch submit request: every item checked as a submit, its problems named `tasks[i].<field>`.

An item may depend on an earlier item of the same batch: `"@<index>"` in `depends_on` and
`{"$ref": "@<index>#/<pointer>"}` in its data. The items are checked here with the "@<index>"
still in place (a $ref must name an entry of depends_on either way); the dispatcher replaces each
by the task id it gives that item before anything is stored (taskd.submit.dispatch.submit_batch).
"""

from __future__ import annotations

import re
from typing import Any

from taskd.model import ValidationError
from taskd.shapes import MAX_BATCH, MAX_SCHEDULE_AHEAD
from taskd.submit.submission import Submission, parse_submission
from taskd.tasks.registry import Registry

_BATCH_REF = re.compile(r"@(0|[1-9][0-9]*)")


def batch_ref(index: int) -> str:
    """How an item names the item at `index` of its batch."""
    return f"@{index}"


def batch_items(body: Any) -> list[Any]:
    """The batch's items; a 400 naming `tasks` when it is not a list of 1 to MAX_BATCH of them."""
    tasks = body.get("tasks") if isinstance(body, dict) else None
    if not isinstance(tasks, list) or not 1 <= len(tasks) <= MAX_BATCH:
        raise ValidationError(
            {"tasks": f"tasks must be a list of 1 to {MAX_BATCH} submissions"}, "Invalid batch"
        )
    return tasks


def parse_batch(
    items: list[Any],
    registry: Registry,
    max_schedule_ahead: int = MAX_SCHEDULE_AHEAD,
    key_id: str | None = None,
) -> list[Submission]:
    """Check every item as a submit (the same limits, the same key); raise one ValidationError
    naming every problem of every item."""
    details: dict[str, str] = {}
    submissions = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            # Named as the item itself: the submit's own words ("body": "Request body must be a
            # JSON object") read as if the batch's body were not one.
            details[f"tasks[{index}]"] = "Each item of tasks must be a submission: a JSON object"
            continue
        try:
            submission = parse_submission(item, registry, max_schedule_ahead, key_id)
        except ValidationError as exc:
            details.update((f"tasks[{index}].{field}", message) for field, message in exc.details.items())
            continue
        for earlier in submission.depends_on:
            if earlier.startswith("@") and not (
                (match := _BATCH_REF.fullmatch(earlier)) and int(match[1]) < index
            ):
                details[f"tasks[{index}].depends_on"] = (
                    f"'{earlier}' must name an earlier item of the batch, '@0' to '@{index - 1}'"
                    if index
                    else f"'{earlier}': the first item of a batch cannot depend on another"
                )
        submissions.append(submission)
    if details:
        raise ValidationError(details, "Invalid batch")
    return submissions
