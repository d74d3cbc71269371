"""The aiohttp application factory."""

from __future__ import annotations

from aiohttp import web

from taskd import tracing
from taskd.http import (
    apidocs,
    auth,
    dashboard,
    events,
    health,
    media,
    openapi,
    probes,
    projects,
    protocol_log,
    ratelimit,
    tasks,
    webhooks,
)
from taskd.http.auth import auth_middleware
from taskd.http.bodies import OPEN_BODIES, OpenBodies
from taskd.http.context import API, Api
from taskd.http.errors import error_middleware
from taskd.http.ratelimit import rate_limit_middleware
from taskd.http.scope import Touches, scope_middleware, touches


@touches(Touches.NOTHING)  # counts over every project; no project or task id in any label
async def _metrics(request: web.Request) -> web.StreamResponse:
    # prometheus-client is loaded at the first scrape rather than by every taskd process at start.
    from taskd.http import prom

    return await prom.metrics(request)


# aiohttp's own `Server` value names its version and Python's, which tell anyone who connects which
# published flaws to try; a caller needs neither (the API's version is in /openapi.json).
SERVER = "taskd"


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER


def create_app(api: Api) -> web.Application:
    """The HTTP API with auth and the documented error bodies on every route."""
    app = web.Application(
        # The tracing middleware (when on) comes first, so that its span sees the status sent; the
        # rate limits before the project scope, so that what the scope refuses still spends quota.
        middlewares=[
            *tracing.server_middlewares(),
            error_middleware,
            auth_middleware,
            rate_limit_middleware,
            scope_middleware,
        ],
        client_max_size=api.config.limits.max_body_bytes,
    )
    app[API] = api
    app[OPEN_BODIES] = OpenBodies(api.config.limits.open_bodies, lambda request: request.get(auth.KEY))
    app.on_response_prepare.append(_server_header)
    protocol_log.install()
    auth.install(app)
    ratelimit.install(app)
    openapi.add_routes(app)
    app.router.add_get("/metrics", _metrics)
    health.add_routes(app)
    probes.add_routes(app)
    tasks.add_routes(app)
    projects.add_routes(app)
    webhooks.add_routes(app)
    media.add_routes(app)
    events.add_routes(app)
    dashboard.add_routes(app)
    apidocs.add_routes(app)
    return app
