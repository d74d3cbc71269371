"""`GET /livez` and `GET /readyz`: the probes of Kubernetes and load balancers; no key.

`/livez` says only that the event loop answers (restart the process when it does not); `/readyz`
says the node can take work now: Redis answers, and every queue this node works on has a worker
polling it. A node that is not ready answers 503 in the documented error shape, with
`Retry-After`, so a load balancer sends its requests elsewhere until it is.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from taskd import shapes
from taskd.http.context import API
from taskd.http.responses import shape_response
from taskd.http.scope import Touches, touches
from taskd.model import ServiceUnavailable
from taskd.redis_conn import serves_every_partition

# Kubernetes gives a probe 1 s by default: a Redis slower than this is not ready.
REDIS_TIMEOUT = 0.8
RETRY_AFTER = 5

routes = web.RouteTableDef()


@routes.get("/livez")
@touches(Touches.NOTHING)
async def livez(_: web.Request) -> web.Response:
    """The process answers; no key, no Redis."""
    return shape_response(shapes.Probe(status="alive"))


@routes.get("/readyz")
@touches(Touches.NOTHING)
async def readyz(request: web.Request) -> web.Response:
    """Redis answers and this node's workers poll their queues; else 503 `service_unavailable`."""
    api = request.app[API]
    try:
        async with asyncio.timeout(REDIS_TIMEOUT):
            await serves_every_partition(api.store.clients)
    except Exception:  # any failure to answer in time means not ready
        raise ServiceUnavailable("Not ready: Redis does not answer", RETRY_AFTER) from None
    if unready := api.unready_queues():
        raise ServiceUnavailable(f"Not ready: no worker polls queue(s) {', '.join(unready)} yet", RETRY_AFTER)
    return shape_response(shapes.Probe(status="ready"))


def add_routes(app: web.Application) -> None:
    """Register the probes."""
    app.router.add_routes(routes)
