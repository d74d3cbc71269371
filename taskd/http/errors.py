"""One middleware renders every error in the document's shape."""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import ReadOnlyError as RedisReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskd import shapes
from taskd.http.responses import shape_response
from taskd.model import ApiError, BodyCutOff, InvalidState, ServiceUnavailable
from taskd.redis_conn import lacks_replicas, refused_by_acl, refuses_writes

log = logging.getLogger("taskd.http")

STORAGE_FULL = "Task storage is full; new work is refused until it has room again, please try again later"
STORAGE_UNAVAILABLE = "Task storage is unavailable, please try again later"
STORAGE_UNAVAILABLE_RETRY_AFTER = 5
STORAGE_CANNOT_WRITE = "Task storage cannot write to its disk now; please try again later"
STORAGE_FULL_RETRY_AFTER = 60
STORAGE_REFUSES_US = "Task storage refuses this service a command it needs; please try again later"
OUT_OF_FILES = "The service has too many connections or files open now; please try again later"
OUT_OF_FILES_RETRY_AFTER = 5
_HTTP_ERRORS = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
# While Redis refuses (its disk or memory full, or it is unreachable), every request that needs it
# is refused: one warning per kind of refusal this often, counting the requests refused between,
# rather than a line per request (thousands a minute under clients that poll). The same for what
# clients do many times over at will (bodies cut off) and a process out of open files.
REFUSALS_LOG_EVERY_S = 60.0
BODY_CUT_OFF = "request body cut off (the client closed the connection before all of it arrived)"


class _Refusals:
    """Logs a kind of refusal at its first request, then once per REFUSALS_LOG_EVERY_S at most."""

    def __init__(self) -> None:
        self._logged_at: dict[str, float] = {}
        self._unlogged: collections.Counter[str] = collections.Counter()

    def warn(
        self, kind: str, request: web.Request, exc: BaseException | None = None, level: int = logging.WARNING
    ) -> None:
        """Log that `kind` refused `request` (with `exc`), unless a line of `kind` went out lately."""
        at = time.monotonic()
        logged_at = self._logged_at.get(kind)
        if logged_at is not None and at - logged_at < REFUSALS_LOG_EVERY_S:
            self._unlogged[kind] += 1
            return
        self._logged_at[kind] = at
        unlogged = self._unlogged.pop(kind, 0)
        log.log(
            level,
            "%s for %s %s%s%s",
            kind,
            request.method,
            request.path,
            f": {exc}" if exc is not None else "",
            f" (and {unlogged} more requests refused since the last such line)" if unlogged else "",
        )


_REFUSALS = _Refusals()


def too_large(limit: int) -> str:
    """The message of the 413 for a body over `limit` bytes."""
    return f"Request body is larger than the limit of {limit} bytes"


def shape(error: ApiError) -> shapes.Error | shapes.Detail:
    """An ApiError's body as the shape the document gives it.

    `taskd.model` (floor 0, below `taskd.shapes`, which imports it) keeps the body as a dict; a key
    that `shapes.Error` lacks is a bug to see, so it is structured strictly.
    """
    if isinstance(error, InvalidState):
        return shapes.Detail(**error.body)
    return shapes.STRICT_CONVERTER.structure(error.body, shapes.Error)


def render(error: ApiError) -> web.Response:
    """The response for an ApiError, with Retry-After where it has one."""
    retry_after = getattr(error, "retry_after", None)  # 503 service_unavailable, 429 rate_limited
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return shape_response(shape(error), error.status, headers)


async def answer_and_close(request: web.Request, response: web.Response) -> None:
    """Write `response`, then close the connection: no more of the request is read."""
    # After the handler aiohttp reads what is left of an unread body for up to 10 s (its lingering
    # close), so that a client still sending sees the answer; for a body that stalls or cannot be
    # decoded there is nothing to wait for: the answer is written, then the connection closed.
    response.force_close()
    # A client that sent its broken body and went away has nobody to answer: not a server error
    # (raised from here, aiohttp would log it as one, with a traceback).
    with contextlib.suppress(ConnectionError):
        await response.prepare(request)
        await response.write_eof()
    request.protocol.force_close()


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render ApiError, aiohttp's HTTP errors, a lost Redis and anything unexpected as JSON."""
    try:
        return await handler(request)
    except ApiError as exc:
        if isinstance(exc, BodyCutOff):
            # The caller's doing, as often as it likes: one INFO line a minute, not one each.
            _REFUSALS.warn(BODY_CUT_OFF, request, level=logging.INFO)
        response = render(exc)
        if exc.close_connection:
            await answer_and_close(request, response)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _HTTP_ERRORS.get(exc.status, "http_error")
        message = exc.reason
        if exc.status == 413:
            message = too_large(request.client_max_size)
        # A 405 names the methods the path answers (RFC 9110, section 15.5.6): aiohttp puts them there.
        allow = exc.headers.get("Allow")
        response = shape_response(
            shapes.Error(error, message), exc.status, {"Allow": allow} if allow else None
        )
        if exc.status == 413:
            # No request follows on this connection: aiohttp reads and drops what is left of the body
            # (for up to 10 s, so that a client still sending sees the answer), then closes it.
            response.force_close()
        return response
    except RedisOutOfMemoryError:
        # maxmemory with noeviction: Redis refuses writes rather than drop task data.
        _REFUSALS.warn("storage full (redis maxmemory)", request)
        return render(ServiceUnavailable(STORAGE_FULL, retry_after=STORAGE_FULL_RETRY_AFTER))
    except (RedisConnectionError, RedisTimeoutError, ConnectionError, RedisReadOnlyError) as exc:
        # READONLY: the server of a plain redis:// URL became a replica (a failover, or a demoted
        # primary): writes come back once it, or the address, is a primary again.
        _REFUSALS.warn("storage unavailable", request, exc)
        return render(ServiceUnavailable(STORAGE_UNAVAILABLE, retry_after=STORAGE_UNAVAILABLE_RETRY_AFTER))
    except Exception as exc:
        return _unexpected(request, exc)


def _unexpected(request: web.Request, exc: Exception) -> web.Response:
    """The answer to an exception no handler expected: a 503 for a Redis that refuses or a process
    out of open files (nothing the request did wrong), else the 500 with its traceback logged."""
    if lacks_replicas(exc):
        # NOREPLICAS: too few replicas in sync with the primary (min-replicas-to-write); it takes
        # writes again once one catches up, within seconds (min-replicas-max-lag) where one is alive.
        _REFUSALS.warn("storage lacks its replicas", request, exc)
        return render(ServiceUnavailable(STORAGE_UNAVAILABLE, retry_after=STORAGE_UNAVAILABLE_RETRY_AFTER))
    if refuses_writes(exc):
        # MISCONF: its disk is full or failing; it takes writes again once it can persist them.
        _REFUSALS.warn("storage refuses writes", request, exc)
        return render(ServiceUnavailable(STORAGE_CANNOT_WRITE, retry_after=STORAGE_FULL_RETRY_AFTER))
    if refused_by_acl(exc):
        # The Redis user taskd logs in as lacks a command or the pub/sub channels: no fault of the
        # request, and mended on the Redis, not here. An error for the operator, not a 500.
        log.error(
            "Redis refuses taskd's user a command for %s %s (grant it: ~* &* +@all): %s",
            request.method,
            request.path,
            exc,
        )
        return render(ServiceUnavailable(STORAGE_REFUSES_US, retry_after=STORAGE_FULL_RETRY_AFTER))
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        # Out of open files (every one held by connections, say): a shortage that passes as
        # they close, not a bug; no traceback, and a line a minute however many it refuses.
        _REFUSALS.warn("out of open files", request, exc)
        return render(ServiceUnavailable(OUT_OF_FILES, retry_after=OUT_OF_FILES_RETRY_AFTER))
    log.exception("unhandled error for %s %s", request.method, request.path, exc_info=exc)
    return shape_response(shapes.Error("internal_error", "Internal server error"), 500)
