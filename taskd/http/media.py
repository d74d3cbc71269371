"""`GET /media/{project_id}/{filename}`: stored media, for a key of the project or a signed, unexpired URL.

Also the re-signing of status and listing: a `media_url` in a result is signed again on every read,
so the URL in a fresh document works for `media.url_ttl` seconds while the file exists.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from pathlib import Path

import attrs
from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from taskd.errors import TransientError
from taskd.http.context import API
from taskd.http.errors import render
from taskd.http.scope import CALLER, Touches, touches
from taskd.media.backend import MediaBackend, media_backend, resign
from taskd.media.content_types import content_type
from taskd.media.store import MediaStore, valid_name
from taskd.model import ApiError, TaskRecord

STORE = web.AppKey("media_store", MediaBackend)
# A file is served from the API's own origin, the dashboard's: a browser must take it as the type
# its name gives (no sniffing it into a page) and, opened on its own, run nothing in it. It is a
# tenant's: no shared cache keeps it (`private`), and a browser asks again before each reuse
# (`no-cache`; a 304 while it is there), so a deleted file or an expired link stops being shown at
# once (with `max-age=3600` a browser showed either for up to an hour).
_FILE_HEADERS = {
    "Cache-Control": "private, no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}


def _not_found(project_id: str, filename: str) -> ApiError:
    return ApiError(404, "not_found", f"Media '{project_id}/{filename}' not found")


class _ShapedRefusal(web.StreamResponse):
    """The refusals `web.FileResponse` makes itself, in the document's error shape.

    FileResponse opens the file only when the response is sent, after the handler: a file deleted
    (its task purged, retention) between the handler's look and that open was aiohttp's own 404 with
    an empty body. FileResponse sends such a refusal through `super().prepare()`; this class sits
    after it in `_MediaFile`'s MRO, so that call lands here, before the headers go out.
    """

    refusal: ApiError

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        # 403: a file taskd may not read; 404: one gone (or no regular file). To the caller either
        # is a file that is not there to have.
        if self.status not in (403, 404):
            return await super().prepare(request)
        shaped = render(self.refusal)
        body = shaped.body
        assert isinstance(body, bytes)
        self.set_status(shaped.status)
        self.content_type = shaped.content_type
        self.content_length = len(body)
        writer = await super().prepare(request)
        if request.method != "HEAD":
            await self.write(body)
        return writer


class _MediaFile(web.FileResponse, _ShapedRefusal):
    def __init__(self, path: Path, refusal: ApiError) -> None:
        # Its type from taskd's table, not aiohttp's guess: see taskd.media.content_types.
        super().__init__(path, headers={**_FILE_HEADERS, hdrs.CONTENT_TYPE: content_type(path.name)})
        self.refusal = refusal
        self.file = path

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        asked = request.headers.getall(hdrs.RANGE, [])
        # GET is the only method with ranges (RFC 9110, section 14.2): aiohttp answered a HEAD's 206.
        ranged = request.method == hdrs.METH_GET and _one_byte_range(asked)
        if asked and not (ranged and await self._if_range_holds(request)):
            request = _with_range(request, None)
        elif asked and not asked[0].startswith("bytes="):
            # A range unit is case-insensitive (RFC 9110, section 14.1), but aiohttp below 3.14.4
            # (pyproject's floor is 3.14.0) reads only `bytes=` in lower case: `BYTES=0-3` was a 416 there.
            request = _with_range(request, "bytes=" + asked[0][len("bytes=") :])
        return await super().prepare(request)

    async def _if_range_holds(self, request: web.BaseRequest) -> bool:
        if hdrs.IF_RANGE not in request.headers:
            return True
        try:
            stat = await asyncio.to_thread(self.file.stat)
        except OSError:
            return True  # gone: aiohttp's own look answers it, the 404
        return _validator_matches(request, stat)


def _one_byte_range(asked: list[str]) -> bool:
    """Whether a `Range` is one range of bytes, the only kind aiohttp serves.

    aiohttp answers any other 416 "Range Not Satisfiable", which tells a client that none of its
    ranges overlap the file: for another unit (`items=0-3`), which RFC 9110 (section 14.2) says a
    server must ignore, and for several ranges (`bytes=0-1,5-6`), which it may ignore (the whole file,
    200) but not call unsatisfiable. Such a `Range` is ignored; one range past the file's end stays a 416.
    """
    return len(asked) == 1 and _BYTE_RANGE.fullmatch(asked[0]) is not None


# The one form aiohttp reads (web.BaseRequest.http_range): a first and a last byte, either may be left out.
# ASCII, as aiohttp's: in Unicode a long s (`byte\u017f=0-3`) matches `s` without case, and aiohttp
# answered that 416.
_BYTE_RANGE = re.compile(r"bytes=[0-9]*-[0-9]*", re.ASCII | re.IGNORECASE)


def _validator_matches(request: web.BaseRequest, stat: os.stat_result) -> bool:
    """RFC 9110's If-Range (section 13.1.5): whether the `Range` is for the file as it is now.

    aiohttp reads If-Range only as a date, and as "not modified after" it: an entity tag, the
    validator browsers resume a download with, was ignored, so a client resuming a file replaced since
    (a task's run again storing the same name) got a part of the new file to splice onto the old.
    An entity tag must be the file's own, strong; a date the file's `Last-Modified` exactly; anything
    else fails, and the whole file is sent (200). The file may still change between this look and
    aiohttp's: its answer then carries the new file's ETag, which a resuming client checks.
    """
    validator = request.headers[hdrs.IF_RANGE]
    if validator.startswith('"'):
        # aiohttp's ETag of a file (web.FileResponse); should it change, nothing matches and the
        # whole file is sent, never a wrong part.
        return validator == f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
    date = request.if_range
    # aiohttp sends Last-Modified as the modification time rounded up to the second.
    return date is not None and date.timestamp() == math.ceil(stat.st_mtime)


_RANGE_FIELDS = frozenset({hdrs.RANGE.lower(), hdrs.IF_RANGE.lower()})


def _with_range(request: web.BaseRequest, asked: str | None) -> web.BaseRequest:
    """`request` for aiohttp with `asked` as its `Range` (None: none, the whole file is sent), and
    without the `If-Range` taskd has checked already."""
    headers = [
        # clone() encodes the values as UTF-8 again: bytes that were not UTF-8 (read as lone
        # surrogates) would raise. Those become U+FFFD, which matches no validator, as they did not.
        (name, value.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
        for name, value in request.headers.items()
        if name.lower() not in _RANGE_FIELDS
    ]
    if asked is not None:
        headers.append((hdrs.RANGE, asked))
    # clone() copies what the middlewares noted (the caller, the RateLimit fields), which is read
    # when the answer is prepared.
    return request.clone(headers=headers)


@touches(Touches.PATH_PROJECT)
async def serve_media(request: web.Request) -> web.StreamResponse:
    """The file, if the request carries a key of its project, or `expires` + `sig` that check out.

    With the s3 backend the answer is a redirect to a presigned URL of the bucket, for a key only:
    media_url there is the bucket's own presigned URL, never this route.
    """
    store = request.app[STORE]
    project_id, filename = request.match_info["project_id"], request.match_info["filename"]
    if not (valid_name(project_id) and valid_name(filename)):
        raise _not_found(project_id, filename)
    # With a valid key the scope check has already run (another project's file is 404 for it).
    if CALLER not in request:
        expires, sig = request.query.get("expires"), request.query.get("sig")
        if expires is None or sig is None or not isinstance(store, MediaStore):
            raise ApiError(401, "authentication_failed", "Invalid or missing API key or media signature")
        problem = store.check(project_id, filename, expires, sig)
        if problem is not None:
            raise ApiError(403, "forbidden", problem)
    if isinstance(store, MediaStore):
        path = store.path_of(project_id, filename)
        if path is None or not path.is_file():
            raise _not_found(project_id, filename)
        return _MediaFile(path, _not_found(project_id, filename))
    return await _redirect(store, project_id, filename)


async def _redirect(store: MediaBackend, project_id: str, filename: str) -> web.StreamResponse:
    # Asked first, so that a missing file is the documented 404 rather than the bucket's XML.
    try:
        exists = await asyncio.to_thread(store.exists, project_id, filename)
    except TransientError as exc:
        raise ApiError(503, "service_unavailable", str(exc)) from None
    if not exists:
        raise _not_found(project_id, filename)
    return web.Response(
        status=302, headers={"Location": store.url(project_id, filename), "Cache-Control": "no-store"}
    )


def resigned(request: web.Request, record: TaskRecord) -> TaskRecord:
    """`record` with its result's `media_url` signed again from now (computed: no request is made)."""
    result = resign(request.app[STORE], record.project_id, record.result)
    return record if result is record.result else attrs.evolve(record, result=result)


def add_routes(app: web.Application) -> None:
    """Register the media route and its store."""
    app[STORE] = media_backend(app[API].config)
    app.router.add_get("/media/{project_id}/{filename}", serve_media)
