"""Submit, status, cancel and retry."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import attrs
from aiohttp import web

from taskd import shapes
from taskd.http import ratelimit
from taskd.http.auth import KEY_ID
from taskd.http.context import API
from taskd.http.events import HUB, client_gone
from taskd.http.expect import expect_continue
from taskd.http.input_limits import check_body_shape
from taskd.http.media import resigned
from taskd.http.prefer_wait import requested_wait, wait_for_end
from taskd.http.responses import read_json, shape_response
from taskd.http.scope import Touches, touches
from taskd.http.views import stamp, status_view
from taskd.logs import bind_task
from taskd.model import TaskNotFound, TaskRecord, TaskStatus, ValidationError, iso
from taskd.net.guard import AddressPolicy, check_callback_url
from taskd.submit.batch import batch_items, parse_batch
from taskd.submit.dispatch import Accepted
from taskd.submit.idempotency import HEADER, REPLAYED, idempotency, unless_remembered
from taskd.submit.submission import Submission, parse_submission
from taskd.webhooks.outbox import delivery_state

log = logging.getLogger("taskd.http")

routes = web.RouteTableDef()


@routes.post("/api/v1/tasks/submit", expect_handler=expect_continue)
@touches(Touches.BODY_PROJECT)
async def submit(request: web.Request) -> web.Response:
    """Validate, store and enqueue a task; with `Prefer: wait=N`, answer its status once it ends or N s pass.

    The caller's `submit` rate limit is spent inside the submit script (one round trip for both); a
    request refused before that spends its unit in `ratelimit.rate_limit_middleware`.
    """
    accepted, wait = await _submitted(request)
    api = request.app[API]
    record: TaskRecord | None = None
    if wait is not None:
        # A wait past the key's cap of open requests is ignored (RFC 7240 lets a server do so): the
        # task is stored, so the submit answers at once rather than refusing what it has done.
        with request.app[ratelimit.OPEN_STREAMS].holding(request[KEY_ID]) as held:
            if held:
                try:
                    record = await wait_for_end(
                        request.app[HUB],
                        api.store,
                        accepted.record.task_id,
                        wait,
                        lambda: client_gone(request),
                    )
                except TaskNotFound:
                    # Only a replay names a task whose record is gone (expired: the Idempotency-Key is
                    # kept 24 h, the record `keep_for`); it is answered as without the wait, not 404.
                    if not accepted.replayed:
                        raise
    if record is not None:
        view = await _status_view(request, record)
        return shape_response(
            shapes.WaitedTaskStatus(
                **attrs.asdict(view, recurse=False), estimated_duration=accepted.estimated_duration
            ),
            headers={"Preference-Applied": f"wait={wait}", **(_replayed(accepted) or {})},
        )
    return shape_response(_submit_response(accepted), headers=_replayed(accepted))


async def _submitted(request: web.Request) -> tuple[Accepted, int | None]:
    # The task stored, and the wait its `Prefer` header asked for.
    api = request.app[API]
    wait = requested_wait(request.headers.getall("Prefer", []))
    body = await read_json(request)
    check_body_shape(body, api.config.limits)
    submission = parse_submission(body, api.registry, api.config.limits.max_schedule_ahead, request[KEY_ID])
    remembered = idempotency(request.headers.getall(HEADER, []), request[KEY_ID], request.path, body)
    if submission.callback_url:
        remembered = unless_remembered(
            await _refusal(
                check_callback_url(submission.callback_url, AddressPolicy.from_config(api.config))
            ),
            remembered,
        )
    accepted = await api.dispatcher.submit(
        submission, idempotency=remembered, quota=await ratelimit.submit_quota(request)
    )
    _log_submitted(accepted)
    return accepted, wait


@routes.post("/api/v1/tasks/batch", expect_handler=expect_continue)
@touches(Touches.BODY_PROJECTS)
async def submit_batch(request: web.Request) -> web.Response:
    """Validate, store and enqueue several tasks, all or none; "@<index>" names an earlier one."""
    api = request.app[API]
    body = await read_json(request)
    # One unit of the submit quota per item is spent (by the rate-limit middleware) before the
    # items are checked, as a submit's is.
    items = batch_items(body)
    for index, item in enumerate(items):
        try:
            check_body_shape(item, api.config.limits)
        except ValidationError as exc:
            raise ValidationError(
                {f"tasks[{index}].{field}": message for field, message in exc.details.items()}, str(exc)
            ) from None
    submissions = parse_batch(items, api.registry, api.config.limits.max_schedule_ahead, request[KEY_ID])
    remembered = idempotency(request.headers.getall(HEADER, []), request[KEY_ID], request.path, body)
    remembered = unless_remembered(
        await _refusal(_check_callback_urls(submissions, AddressPolicy.from_config(api.config))), remembered
    )
    accepted = await api.dispatcher.submit_batch(submissions, idempotency=remembered)
    for one in accepted:
        _log_submitted(one)
    return shape_response(
        shapes.BatchResponse(tasks=[_submit_response(one) for one in accepted]),
        headers=_replayed(accepted[0]),
    )


async def _refusal(check: Awaitable[None]) -> ValidationError | None:
    """The 400 of a check whose answer depends on the moment (a callback URL's name lookup), or
    None: it stands unless the request's Idempotency-Key is remembered (unless_remembered)."""
    try:
        await check
    except ValidationError as refused:
        return refused
    return None


async def _check_callback_urls(submissions: list[Submission], policy: AddressPolicy) -> None:
    """Refuse the batch, naming `tasks[<index>].callback_url` of each item whose URL the guard refuses.

    The names are looked up at once, so a batch waits one lookup's limit (5 s) at most, not one per
    item; one after another, the first refusal stopped the check and was named `callback_url`,
    without its item.
    """

    async def refusal(index: int, url: str) -> dict[str, str]:
        try:
            await check_callback_url(url, policy)
        except ValidationError as exc:
            return {f"tasks[{index}].{field}": message for field, message in exc.details.items()}
        return {}

    checks = [
        refusal(index, item.callback_url) for index, item in enumerate(submissions) if item.callback_url
    ]
    details = {field: message for found in await asyncio.gather(*checks) for field, message in found.items()}
    if details:
        raise ValidationError(details, "Invalid batch")


def _log_submitted(accepted: Accepted) -> None:
    # Binding the task's ids costs more than the line when INFO is off (the usual level under load).
    if not log.isEnabledFor(logging.INFO):
        return
    with bind_task(accepted.record):
        log.info(
            "task submission replayed" if accepted.replayed else "task submitted",
            extra={"queue": accepted.record.queue, "priority": accepted.record.priority},
        )


def _submit_response(accepted: Accepted) -> shapes.SubmitResponse:
    return shapes.SubmitResponse(
        task_id=accepted.record.task_id,
        status=accepted.record.status,
        project_id=accepted.record.project_id,
        estimated_duration=accepted.estimated_duration,
        queue_position=accepted.queue_position,
        created_at=stamp(accepted.record.created_at),
    )


@routes.get("/api/v1/tasks/{task_id}/status")
@touches(Touches.PATH_TASK)
async def status(request: web.Request) -> web.Response:
    """A task's status, progress and outcome."""
    record = await request.app[API].store.get(request.match_info["task_id"])
    return shape_response(await _status_view(request, record))


async def _status_view(request: web.Request, record: TaskRecord) -> shapes.TaskStatusBody:
    api = request.app[API]
    position = None
    if record.status is TaskStatus.QUEUED:
        position = await api.store.position(record)
    webhook = await delivery_state(api.store.clients, record.task_id) if record.callback_url else None
    return status_view(resigned(request, record), position, webhook)


@routes.delete("/api/v1/tasks/{task_id}")
@touches(Touches.PATH_TASK)
async def cancel(request: web.Request) -> web.Response:
    """Revoke a queued task, stop a running one; 400 for one that already ended."""
    api = request.app[API]
    task_id = request.match_info["task_id"]
    outcome = await api.dispatcher.cancel(task_id)
    if outcome.cancelled_now:
        message = (
            "Task was queued and has been revoked"
            if outcome.was is TaskStatus.QUEUED
            else "Task was running and has been terminated"
        )
    else:
        message = "Task was already cancelled"
    return shape_response(
        shapes.CancelResponse(
            task_id=task_id,
            status="cancelled",
            message=message,
            previous_state=outcome.previous_state,
            cancelled_at=iso(outcome.cancelled_at),
        )
    )


@routes.post("/api/v1/tasks/{task_id}/retry")
@touches(Touches.PATH_TASK)
async def retry(request: web.Request) -> web.Response:
    """Submit a failed or cancelled task again as a new task."""
    api = request.app[API]
    original = request.match_info["task_id"]
    remembered = idempotency(request.headers.getall(HEADER, []), request[KEY_ID], request.path, None)
    accepted = await api.dispatcher.retry(original, remembered)
    with bind_task(accepted.record):
        log.info(
            "task retry replayed" if accepted.replayed else "task submitted as a retry",
            extra={"retry_of": original, "queue": accepted.record.queue},
        )
    return shape_response(
        shapes.RetryResponse(
            new_task_id=accepted.record.task_id,
            original_task_id=original,
            status=accepted.record.status,
            message="Task retry submitted successfully",
        ),
        headers=_replayed(accepted),
    )


def _replayed(accepted: Accepted) -> dict[str, str] | None:
    # Says that the answer is the first one's, sent again for a repeated Idempotency-Key.
    return {REPLAYED: "true"} if accepted.replayed else None


def add_routes(app: web.Application) -> None:
    """Register the task routes."""
    app.router.add_routes(routes)
