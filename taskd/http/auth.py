"""`X-API-Key` on every `/api/v1/` route, found among the configured keys by its digest (taskd.http.keytable).

A valid key, on any route, becomes the request's `Caller`. The rate limits then spend its quota
(`taskd.http.ratelimit`), and only then is the route's project scope applied to it
(`taskd.http.scope.scope_middleware`), so a request the scope refuses still counts.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from taskd.http.context import API
from taskd.http.scope import CALLER, Caller
from taskd.model import ApiError
from taskd.webhooks.signing import key_id

PROTECTED_PREFIX = "/api/v1/"
HEADER = "X-API-Key"
QUERY_KEY = "api_key"
_QUERY_KEY_ALLOWED = "_taskd_query_key_allowed"
# The id of the request's key (never the key): tasks it submits are signed with its webhook secret.
KEY_ID = web.RequestKey("taskd_key_id", str)
# The valid key itself, from its header or `?api_key=`: the rate limits count by a hash of it.
KEY = web.RequestKey("taskd_key", str)


def query_key_allowed(handler: Handler) -> Handler:
    """Mark a route that also takes the key as `?api_key=` (for EventSource, which cannot send headers)."""
    setattr(handler, _QUERY_KEY_ALLOWED, True)
    return handler


def _sent_keys(request: web.Request) -> tuple[str, list[str]]:
    # Where the key came from and every value sent there: the header, else `?api_key=` on the
    # routes that take it; both, on those routes, when both were sent.
    sent = request.headers.getall(HEADER, [])
    if not getattr(request.match_info.handler, _QUERY_KEY_ALLOWED, False):
        return HEADER, sent
    in_query = request.query.getall(QUERY_KEY, [])
    if not any(sent):
        return QUERY_KEY, in_query
    if in_query:
        # Sent twice, as two headers are: a proxy in front may check one and taskd the other.
        return f"{HEADER} with {QUERY_KEY}", sent + in_query
    return HEADER, sent


def refusal(request: web.Request) -> ApiError | None:
    """The 401 for a request to `/api/v1/` without a valid key, or with several; None otherwise."""
    if not request.path.startswith(PROTECTED_PREFIX):
        return None
    where, sent = _sent_keys(request)
    if len(sent) == 1 and request.app[API].keys.find(sent[0])[0]:
        return None
    return _unmatched(request, where, sent)


def sent_key(request: web.Request) -> str | None:
    """The one key the request sent, valid or not; None when it sent none, or several."""
    sent = _sent_keys(request)[1]
    return sent[0] if len(sent) == 1 else None


def _unmatched(request: web.Request, where: str, sent: list[str]) -> ApiError | None:
    """The 401 for a request whose keys (`sent`, from `where`) matched none, on `/api/v1/`."""
    if not request.path.startswith(PROTECTED_PREFIX):
        return None
    message = "Invalid or missing API key"
    if len(sent) > 1:
        message += f": {where} was sent {len(sent)} times; send one key, once"
    return ApiError(401, "authentication_failed", message)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Know the caller by its key; refuse `/api/v1/` without one (401), or with several."""
    where, sent = _sent_keys(request)
    # Two keys are no key: which one a proxy in front checked (the first, the last, both joined
    # as "a, b") is not for taskd to guess.
    given = sent[0] if len(sent) == 1 else ""
    valid, projects = request.app[API].keys.find(given)
    if valid:
        request[CALLER] = Caller(projects)
        request[KEY_ID] = key_id(given)
        request[KEY] = given
    elif (refused := _unmatched(request, where, sent)) is not None:
        raise refused
    return await handler(request)


async def _not_stored(request: web.Request, response: web.StreamResponse) -> None:
    # What `/api/v1/` answers is one key's view (a task's data and result, a project's list), told
    # apart by a header that caches do not know: only `Authorization` keeps an answer out of a
    # shared cache by itself (RFC 9111, section 3.5), and a browser writes what it fetched to its
    # disk cache, where it outlives the tab and the dashboard's Forget key.
    # Any other answer that says nothing of caching is not stored either: a cache may keep a 200 or
    # a 404 without Cache-Control for a time of its own choosing (RFC 9111, section 4.2.2; Varnish
    # 120 s, a CDN caching by extension minutes), keyed by the URL alone. So `/media`'s 404 to a
    # key of another project was handed to the file's own project's key for as long, and a
    # probe's or `/health`'s 200 outlived the node's health. The routes whose answer may be kept
    # say so themselves (the file, the pages).
    if request.path.startswith(PROTECTED_PREFIX) or hdrs.CACHE_CONTROL not in response.headers:
        response.headers[hdrs.CACHE_CONTROL] = "no-store"


def install(app: web.Application) -> None:
    """Tell every cache, shared or a browser's, to keep no answer of `/api/v1/`, errors included,
    nor any other answer that does not say how it may be kept."""
    app.on_response_prepare.append(_not_stored)
