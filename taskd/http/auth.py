"""`X-API-Key` on every `/api/v1/` route, compared in constant time against every configured key."""

from __future__ import annotations

import hmac

from aiohttp import web

from taskd.http.context import API
from taskd.model import ApiError

PROTECTED_PREFIX = "/api/v1/"
QUERY_KEY = "api_key"
_QUERY_KEY_ALLOWED = "_taskd_query_key_allowed"


def query_key_allowed(handler: web.Handler) -> web.Handler:
    """Mark a route that also takes the key as `?api_key=` (for EventSource, which cannot send headers)."""
    setattr(handler, _QUERY_KEY_ALLOWED, True)
    return handler


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
    if not given and getattr(request.match_info.handler, _QUERY_KEY_ALLOWED, False):
        given = request.query.get(QUERY_KEY, "")
    if request.path.startswith(PROTECTED_PREFIX) and not key_matches(given, request.app[API].api_keys):
        raise ApiError(401, "authentication_failed", "Invalid or missing API key")
    return await handler(request)
