"""`/docs`: Swagger UI over `/openapi.json`, served offline from installed packages; no key.

The page and the script that starts Swagger UI are taskd's own (`taskd/apidocs/`); the viewer
itself comes from the `swagger-ui-bundle-v2` package. Only the files the page names are served,
and the page names nothing outside this server, so /docs works with no network.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from aiohttp import web
from swagger_ui_bundle import swagger_ui_path

from taskd.http.scope import Touches, touches
from taskd.model import ApiError

PAGE = "index.html"
# What the page loads: from taskd's own folder, or from the Swagger UI package.
OWN_FILES = frozenset({"taskd-docs.js"})
SWAGGER_FILES = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"})
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",  # as the dashboard's (taskd.http.dashboard)
    # Swagger UI sets style attributes from its scripts, hence 'unsafe-inline' for styles only.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
}


def _path(name: str) -> Path:
    folder = resources.files("taskd.apidocs") if name == PAGE or name in OWN_FILES else swagger_ui_path
    return Path(str(folder / name))


@touches(Touches.NOTHING)
async def page(_: web.Request) -> web.FileResponse:
    """The API reference page."""
    return web.FileResponse(_path(PAGE), headers=HEADERS)


@touches(Touches.NOTHING)
async def asset(request: web.Request) -> web.FileResponse:
    """A script, stylesheet or icon the page loads."""
    name = request.match_info["asset"]
    if name not in OWN_FILES | SWAGGER_FILES:
        raise ApiError(404, "not_found", f"No docs file {name!r}")
    return web.FileResponse(_path(name), headers=HEADERS)


def add_routes(app: web.Application) -> None:
    """Register the page and its files."""
    app.router.add_get("/docs", page)
    app.router.add_get("/docs/{asset}", asset)
