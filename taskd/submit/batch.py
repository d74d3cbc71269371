"""The batch submit request: every item checked as a submit, its problems named `tasks[i].<field>`.

An item may depend on an earlier item of the same batch: `"@<index>"` in `depends_on` and
`{"$ref": "@<index>#/<pointer>"}` in its data. The items are checked here with the "@<index>"
still in place (a $ref must name an entry of depends_on either way); the dispatcher replaces each
by the task id it gives that item before anything is stored (taskd.submit.dispatch.submit_batch).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from taskd.model import ValidationError
from taskd.shapes import MAX_BATCH, MAX_SCHEDULE_AHEAD
from taskd.store import batch_fills_queue
from taskd.submit.submission import Submission, parse_submission
from taskd.tasks.registry import Registry

_BATCH_REF = re.compile(r"@(0|[1-9][0-9]*)")


def batch_ref(index: int) -> str:
    """How an item names the item at `index` of its batch."""
    return f"@{index}"


def _earlier_item(ref: str, index: int) -> int | None:
    """The index an `"@<index>"` of item `index` names, when it is an earlier item; else None."""
    match = _BATCH_REF.fullmatch(ref)
    # No int() of more digits than `index` has: past 4,300 it raises ValueError (a 500), and any
    # such number is out of the batch anyway.
    if match is None or len(match[1]) > len(str(index)):
        return None
    earlier = int(match[1])
    return earlier if earlier < index else None


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
    # The project of each item whose project_id passed, by its index: an "@<index>" of another
    # project is refused here, by the name the caller wrote. The batch script would refuse it too,
    # naming the id chosen for that item, which the caller never saw and which no task has.
    projects: dict[int, str] = {}
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
            if "project_id" not in exc.details:
                # Its project is good: an item depending on it from another is named in the same answer.
                projects[index] = item["project_id"]
            continue
        for earlier in submission.depends_on:
            if not earlier.startswith("@"):
                continue
            item_index = _earlier_item(earlier, index)
            if item_index is None:
                details[f"tasks[{index}].depends_on"] = (
                    f"'{earlier}' must name an earlier item of the batch, '@0' to '@{index - 1}'"
                    if index
                    else f"'{earlier}': the first item of a batch cannot depend on another"
                )
            elif (project := projects.get(item_index, submission.project_id)) != submission.project_id:
                details[f"tasks[{index}].depends_on"] = (
                    f"'{earlier}' is an item of another project ('{project}'): a task may depend only "
                    "on tasks of its own project"
                )
        projects[index] = submission.project_id
        submissions.append(submission)
    if details:
        raise ValidationError(details, "Invalid batch")
    return submissions


def check_within_limits(
    submissions: Sequence[Submission],
    queued_per_project: int,
    max_queue_length: int,
    queue_of: Callable[[Submission], str],
) -> None:
    """A 400 naming `tasks` for a batch that no wait lets pass (0 = unlimited): more tasks of one
    project than `queued_per_project`, or a task that comes after `max_queue_length` of the batch's
    tasks to queue at once on its queue.

    The batch script counts its own earlier tasks as waiting (batch.lua), so such a batch is refused
    even on an empty project and queue: as a 429 or 503, its Retry-After invited a resend refused
    the same way for ever. Every task counts for its project. On a queue, the script refuses any
    task (one waiting for dependencies or its time too, as a submit to a full queue) while the
    batch's earlier tasks that went on it at once fill it; of those only the ones without
    dependencies or a time are known here (a dependency met already queues at once too, which
    only the script sees: TaskStore.create_batch answers that with the same 400), so these are
    counted: what they refuse is refused on any queue.
    """
    projects = Counter(submission.project_id for submission in submissions)
    for project, count in projects.items():
        if queued_per_project and count > queued_per_project:
            raise ValidationError(
                {
                    "tasks": f"A batch of {count} tasks of project '{project}' is more than the "
                    f"{queued_per_project} a project may have waiting at once: send them in smaller batches"
                },
                "Invalid batch",
            )
    at_once: Counter[str] = Counter()
    for index, submission in enumerate(submissions):
        queue = queue_of(submission)
        if max_queue_length and at_once[queue] >= max_queue_length:
            raise batch_fills_queue(index, at_once[queue], queue, max_queue_length)
        if not submission.depends_on and submission.scheduled_for is None:
            at_once[queue] += 1
