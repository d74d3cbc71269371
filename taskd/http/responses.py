"""JSON responses rendered with orjson."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from taskd import shapes, wide_ints
from taskd.http.bodies import OPEN_BODIES
from taskd.http.context import API
from taskd.model import BodyCutOff, RequestTimeout, UnreadableBody, ValidationError

_PARSED = web.RequestKey("taskd_parsed_body", object)
# A body refused as not JSON, kept so that a second reader (the project scope check lets the handler
# answer it) is refused without parsing it again: the search for integers past 64 bits can cost a
# few times orjson's parse.
_REFUSED = web.RequestKey("taskd_refused_body", str)


class NotJson(ValidationError):
    """400 `validation_error` on `body`: it was read whole, and is not JSON."""


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response encoded once with orjson."""
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def shape_response(shape: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response of one of `taskd.shapes`' bodies."""
    return json_response(shapes.render(shape), status, headers)


async def read_body(request: web.Request) -> bytes:
    """The request body, read at most once (aiohttp keeps it): a 413 at once when its declared
    length is over the limit, a 408 when it does not arrive within `http.body_timeout`, a 400 when
    it cannot be read (a broken gzip or deflate encoding, a broken chunked one, a client that hung
    up before all of it came)."""
    if request.content_length is not None and request.content_length > request.client_max_size:
        raise web.HTTPRequestEntityTooLarge(request.client_max_size, request.content_length)
    try:
        if request.content.is_eof():
            # The whole body came with the headers, as a submit's does: nothing to wait for, so no
            # timer (one costs ~4 us, 3 % of a submit's CPU).
            return await request.read()
        async with asyncio.timeout(request.app[API].config.http.body_timeout):
            with request.app[OPEN_BODIES].receiving(request):
                return await request.read()
    except TimeoutError:
        raise RequestTimeout(request.app[API].config.http.body_timeout) from None
    except web.RequestPayloadError:
        raise UnreadableBody from None
    except ConnectionResetError:
        # aiohttp ends the body of a connection the client closed with a ConnectionResetError; left
        # to the error middleware it would pass for Redis gone (a 503, a "storage unavailable"
        # warning that hides the next real one for a minute). The caller hung up: a 400 (logged
        # at INFO by the error middleware).
        raise BodyCutOff from None


def _not_utf8(raw: bytes) -> str | None:
    """Where `raw` stops being UTF-8, or None when it is UTF-8.

    orjson says "str is not valid UTF-8: surrogates not allowed: line 1 column 1 (char 0)" of any
    such body: a body in Latin-1 (`é` as one byte) or UTF-16 is told of surrogates it does not hold,
    at a place where nothing is wrong. Looked for only once orjson has refused the body.
    """
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (
            f"it is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); JSON is sent as UTF-8, "
            "whatever charset the Content-Type names"
        )
    return None


async def read_json(request: web.Request) -> Any:
    """The request body as JSON, parsed once per request (the rate limit, the project scope and the
    handler may each want it); a 400 in the documented shape when it is not JSON, from that one
    parse too."""
    if _PARSED in request:
        return request[_PARSED]
    if _REFUSED in request:
        raise NotJson({"body": request[_REFUSED]}, "Invalid request body")
    raw = await read_body(request)
    try:
        # orjson reads an integer past 64 bits as a float, or one too large for a float as not JSON:
        # refused by name, as it could not be stored and read back as sent.
        parsed = wide_ints.loads(raw)
    except wide_ints.WideInteger as exc:
        problem = str(exc)
    except orjson.JSONDecodeError as exc:
        # orjson's reason and place ("UTF-8 byte order mark (BOM) is not supported: line 1 column 1
        # (char 0)", "trailing comma is not allowed: …"): the caller's editor may show a body that
        # looks fine. It quotes nothing of the body.
        problem = f"Request body must be valid JSON: {_not_utf8(raw) or exc}"
    else:
        request[_PARSED] = parsed
        return parsed
    request[_REFUSED] = problem
    raise NotJson({"body": problem}, "Invalid request body")
