"""`X-API-Key` on every `/api/v1/` route, compared in constant time against every configured key."""

from __future__ import annotations

import hmac

from aiohttp import web

from taskd.http.context import API
from taskd.model import ApiError

PROTECTED_PREFIX = "/api/v1/"


def key_matches(given: str, keys: list[str]) -> bool:
    """True if `given` equals one of `keys`; every key is compared, so timing tells nothing."""
    given_bytes = given.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given_bytes, key.encode())
    return matched


@web.middleware
async def auth_middleware(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    """Refuse `/api/v1/` requests without a valid key with the document's 401 body."""
    given = request.headers.get("X-API-Key", "")
    if request.path.startswith(PROTECTED_PREFIX) and not key_matches(given, request.app[API].api_keys):
        raise ApiError(401, "authentication_failed", "Invalid or missing API key")
    return await handler(request)
