"""The aiohttp application factory."""

from __future__ import annotations

from aiohttp import web

from taskd.http import health, projects, tasks
from taskd.http.auth import auth_middleware
from taskd.http.context import API, Api
from taskd.http.errors import error_middleware


def create_app(api: Api) -> web.Application:
    """The HTTP API with auth and the documented error bodies on every route."""
    app = web.Application(middlewares=[error_middleware, auth_middleware])
    app[API] = api
    health.add_routes(app)
    tasks.add_routes(app)
    projects.add_routes(app)
    return app
