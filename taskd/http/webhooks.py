"""`POST /api/v1/tasks/{task_id}/webhook/redeliver`: send a task's terminal webhook again."""

from __future__ import annotations

from aiohttp import web

from taskd import shapes
from taskd.http.context import API
from taskd.http.responses import shape_response
from taskd.http.scope import Touches, touches
from taskd.http.views import stamp
from taskd.logs import MASK, mask_url
from taskd.model import InvalidState
from taskd.webhooks.outbox import Outbox, now_ms
from taskd.webhooks.payload import event_id

routes = web.RouteTableDef()


@routes.post("/api/v1/tasks/{task_id}/webhook/redeliver")
@touches(Touches.PATH_TASK)
async def redeliver(request: web.Request) -> web.Response:
    """Schedule a fresh delivery of an ended task's webhook now; its attempt count starts again."""
    api = request.app[API]
    record = await api.store.get(request.match_info["task_id"])
    if not record.callback_url:
        raise InvalidState("Task has no callback_url, so there is no webhook to redeliver")
    if not record.is_terminal:
        raise InvalidState(f"Task is {record.status.value}; its webhook is sent once it has ended")
    if record.webhook_events is not None and record.status.value not in record.webhook_events:
        raise InvalidState(f"Task's webhook_events leave out '{record.status.value}', so it sent no webhook")
    at = now_ms()
    await Outbox(api.redis, api.config.storage.task_ttl, api.store.clients).redeliver(record.task_id, at)
    return shape_response(
        shapes.RedeliverResponse(
            task_id=record.task_id,
            status=record.status,
            # The caller's own URL, but its password need not travel in answers a proxy may log.
            callback_url=mask_url(record.callback_url, MASK),
            webhook_id=event_id(record),
            scheduled_at=stamp(at / 1000),
            message="Webhook redelivery scheduled",
        ),
        202,
    )


def add_routes(app: web.Application) -> None:
    """Register the webhook routes."""
    app.router.add_routes(routes)
