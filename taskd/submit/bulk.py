"""Operators' bulk operations: purge a queue's waiting tasks, retry a project's failed ones.

Both go through the same Lua scripts as one API call per task does, so nothing is dropped
silently: a purged task ends `cancelled` with an error that says so, its webhook is queued in the
durable outbox and its event is emitted, and the tasks that depend on it are cancelled in turn; a
retry is the API's retry, under an Idempotency-Key of its own (`retry-failed:<task id>`), so that
running the same command twice within a day makes no second copy of a task, and made only if the
task has no retry yet (one made through the API), which the script that stores it checks.
"""

from __future__ import annotations

import sys

import attrs

from taskd import keys
from taskd.model import ApiError, TaskRecord, TaskStatus, ValidationError, now
from taskd.store import AlreadyRetried, TaskStore
from taskd.submit.dispatch import Dispatcher
from taskd.submit.idempotency import idempotency

PURGED = "Purged from queue '{queue}' by an operator (taskd purge)"
# The namespace of the operator's Idempotency-Keys: no API key's id (16 hex digits) is this.
OPERATOR_KEY_ID = "operator"


async def waiting_on(store: TaskStore, queue: str) -> list[TaskRecord]:
    """The queue's queued tasks: its waiting line, then those scheduled for later; oldest first.

    A task still waiting for its dependencies is in no queue's index: purging one of those it
    waits for cancels it (lib/ended.lua).
    """
    line: list[str] = []
    scheduled: list[str] = []
    for partition, client in enumerate(store.clients):
        line += [
            job.decode().rpartition(".")[0]
            for job in await client.zrange(keys.waiting(queue, partition), 0, -1)
        ]
        scheduled += [member.decode() for member in await client.zrange(keys.scheduled(partition), 0, -1)]
    records = await store.get_many(list(dict.fromkeys(line + scheduled)))
    return [record for record in records if record.queue == queue and record.status is TaskStatus.QUEUED]


async def purge(store: TaskStore, queue: str) -> list[str]:
    """Cancel every task queued on `queue` with the PURGED error; the ids cancelled.

    A task that started between the listing and its cancel is left running (cancel.lua's
    `queued_only`).
    """
    error = PURGED.format(queue=queue)
    return [
        record.task_id
        for record in await waiting_on(store, queue)
        if await store.cancel_queued(record, now(), error)
    ]


@attrs.frozen
class Retried:
    """One failed task and what retrying it did: its new task, or why it was refused."""

    task_id: str
    new_task_id: str | None = None
    # Retried already, by an earlier run of the same command or through the API: `new_task_id` is
    # that retry (the latest, for a task retried more than once).
    replayed: bool = False
    refused: str | None = None


async def failed_since(store: TaskStore, project: str, since: float | None) -> list[TaskRecord]:
    """The project's failed tasks (that failed at or after `since`), oldest first."""
    records, _ = await store.list_project(
        project, status=TaskStatus.FAILED.value, task_type=None, offset=0, limit=sys.maxsize
    )
    return [r for r in reversed(records) if since is None or (r.completed_at or r.created_at) >= since]


async def retry_failed(dispatcher: Dispatcher, project: str, since: float | None) -> list[Retried]:
    """Retry each failed task of the project as the API's retry does; a refusal is reported, not raised."""
    outcomes = []
    for record in await failed_since(dispatcher.store, project, since):
        if record.task_type not in dispatcher.registry.types:
            # The API's refusal says the type is "no longer installed", true of a server; this
            # command knows only the types of its own config, which may lack what the servers run.
            refused = (
                f"task type '{record.task_type}' is not installed by this command's config "
                "(tasks.modules); run it with the config of the taskd that runs these tasks"
            )
            outcomes.append(Retried(record.task_id, refused=refused))
            continue
        route = f"/api/v1/tasks/{record.task_id}/retry"
        remembered = idempotency([f"retry-failed:{record.task_id}"], OPERATOR_KEY_ID, route, None)
        try:
            # Not a task retried already (through the API): its work would run twice more.
            accepted = await dispatcher.retry(record.task_id, remembered, first_retry=True)
        except AlreadyRetried as retried:
            outcomes.append(Retried(record.task_id, retried.retry_id, replayed=True))
            continue
        except ValidationError as refused:
            # A line on stderr has no `details`: the fields go in its text.
            said = "; ".join(f"{field}: {message}" for field, message in refused.details.items())
            outcomes.append(Retried(record.task_id, refused=f"{refused} ({said})"))
            continue
        except ApiError as refused:
            outcomes.append(Retried(record.task_id, refused=str(refused)))
            continue
        outcomes.append(Retried(record.task_id, accepted.record.task_id, accepted.replayed))
    return outcomes
