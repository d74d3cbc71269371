"""JSON responses rendered with orjson."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from taskd import shapes
from taskd.model import ValidationError


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response encoded once with orjson."""
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def shape_response(shape: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response of one of `taskd.shapes`' bodies."""
    return json_response(shapes.render(shape), status, headers)


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; a 400 in the documented shape when it is not JSON."""
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValidationError({"body": "Request body must be valid JSON"}, "Invalid request body") from None
