"""`GET /media/{project_id}/{filename}`: stored media, for a key of the project or a signed, unexpired URL."""

from __future__ import annotations

from aiohttp import web

from taskd.http.context import API
from taskd.http.scope import CALLER, Touches, touches
from taskd.media.store import MediaStore
from taskd.model import ApiError

STORE = web.AppKey("media_store", MediaStore)


@touches(Touches.PATH_PROJECT)
async def serve_media(request: web.Request) -> web.StreamResponse:
    """The file, if the request carries a key of its project, or `expires` + `sig` that check out."""
    store = request.app[STORE]
    project_id, filename = request.match_info["project_id"], request.match_info["filename"]
    path = store.path_of(project_id, filename)
    if path is None:
        raise ApiError(404, "not_found", f"Media '{project_id}/{filename}' not found")
    # With a valid key the scope check has already run (another project's file is 404 for it).
    if CALLER not in request:
        expires, sig = request.query.get("expires"), request.query.get("sig")
        if expires is None or sig is None:
            raise ApiError(401, "authentication_failed", "Invalid or missing API key or media signature")
        problem = store.check(project_id, filename, expires, sig)
        if problem is not None:
            raise ApiError(403, "forbidden", problem)
    if not path.is_file():
        raise ApiError(404, "not_found", f"Media '{project_id}/{filename}' not found")
    return web.FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})


def add_routes(app: web.Application) -> None:
    """Register the media route and its store."""
    app[STORE] = MediaStore.from_config(app[API].config)
    app.router.add_get("/media/{project_id}/{filename}", serve_media)
