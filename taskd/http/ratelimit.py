"""Rate limits per API key in Redis, shared by every taskd process: at most N requests in any window.

The per-project concurrency limit and the queue length limit are checked in the submit script
itself (taskd/store/lua/submit.lua), atomically with the write. The sliding window is
taskd/store/lua/lib/window.lua: a submit spends its unit inside the submit script (one round trip
for both: `submit_quota`), every other limited request through taskd/store/lua/window.lua (one
round trip of its own; a submit's too with several partitions, as the log is in another slot than
the task). It lives with the store's scripts so that submit.lua can include it.

Each limited response carries the IETF `RateLimit-Policy` and `RateLimit` fields
(draft-ietf-httpapi-ratelimit-headers), e.g. `RateLimit-Policy: "submit";q=100;w=60` and
`RateLimit: "submit";r=57;t=12`.

A listing of a project's tasks spends `status` units too, one per 1,000 ids of the project's index
it reads (`spend_listing`, from its handler).

Requests a key holds open (event streams, `Prefer: wait` submits) are counted apart, in the process
that holds them (`OpenStreams`): what they use up is that process's connections.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import itertools
import math
import os
import secrets
from collections.abc import Iterator

import attrs
from aiohttp import web
from aiohttp.typedefs import Handler
from redis.asyncio import Redis
from redis.exceptions import RedisError

from taskd import keys
from taskd.http import auth
from taskd.http.context import API
from taskd.http.responses import read_json
from taskd.model import RateLimited, ValidationError
from taskd.store import Quota, Spent, scripts
from taskd.store.coalesce import Coalesced
from taskd.submit.batch import batch_items

WINDOW = 60  # seconds: every limit is "per minute"
# Seconds a stream refused at `open_streams` is told to wait: long enough not to invite a
# reconnection storm, short enough for a client whose other streams just ended.
OPEN_STREAMS_RETRY_AFTER = 10
SUBMIT_ROUTE = ("POST", "/api/v1/tasks/submit")
BATCH_ROUTE = ("POST", "/api/v1/tasks/batch")
# Which routes the middleware spends which quota for, before anything else of the request is
# looked at (its project scope included); a retry creates a task, so it is a submission, and so is
# a redelivery: it starts a delivery as a submit's end does (with its WARNING and ERROR lines, to a
# receiver that fails), and unspent, one task redelivered in a loop wrote a WARNING line a request,
# past any quota. A submit spends its unit of `submit` from its handler, inside the submit script
# (`submit_quota`), or here when it is refused before that; a batch spends one unit per item
# (`_batch_cost`). An event stream's start reads and sends the task's (or project's) state as a
# status read does, at the same cost to Valkey: unspent, it was a way round the status quota
# (a stream of an ended task answers its end and closes), so each start spends one unit of it,
# however long the stream then stays open. HEAD is GET.
POLICIES = {
    ("POST", "/api/v1/tasks/{task_id}/retry"): "submit",
    ("POST", "/api/v1/tasks/{task_id}/webhook/redeliver"): "submit",
    ("GET", "/api/v1/tasks/{task_id}/status"): "status",
    ("GET", "/api/v1/tasks/{task_id}/events"): "status",
    ("GET", "/api/v1/projects/{project_id}/events"): "status",
    BATCH_ROUTE: "submit",
}

_HEADERS = web.RequestKey("ratelimit_headers", dict)


class _Nonces:
    """What makes each request's entries in its key's log its own (lib/window.lua: two requests of
    one key may share a millisecond): a random part per process, 48 bits as each request's own
    random bytes were, and a count. secrets.token_hex(6) per request was a getrandom system call,
    ~1 µs of a submit's CPU (docs/performance.md)."""

    def __init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        """A new random part (a forked child's, so that it never repeats its parent's nonces)."""
        self._prefix = secrets.token_hex(6) + "."
        self._count = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._count):x}"


_nonce = _Nonces()
os.register_at_fork(after_in_child=_nonce.renew)


@attrs.frozen
class Decision:
    """The outcome of spending units of a policy's quota."""

    policy: str
    limit: int
    allowed: bool
    remaining: int
    retry_after_ms: int
    reset_ms: int

    def headers(self) -> dict[str, str]:
        """The IETF RateLimit-Policy and RateLimit fields, plus Retry-After when refused."""
        reset = max(0, math.ceil(self.reset_ms / 1000))
        fields = {
            "RateLimit-Policy": f'"{self.policy}";q={self.limit};w={WINDOW}',
            "RateLimit": f'"{self.policy}";r={self.remaining};t={reset}',
        }
        if not self.allowed:
            fields["Retry-After"] = str(self.retry_after)
        return fields

    @property
    def retry_after(self) -> int:
        """Whole seconds until this request would pass (at least 1)."""
        return max(1, math.ceil(self.retry_after_ms / 1000))


@functools.lru_cache(maxsize=256)
def key_id(api_key: str) -> str:
    """What identifies an API key in Redis: a hash, never the key itself.

    Only valid keys reach it (the limits run after auth), so the cache holds configured keys and
    saves a hash per request.
    """
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


class RateLimiter:
    """Spends per-key quota in Redis with one sliding-window script call per request."""

    def __init__(self, redis: Redis) -> None:
        # Spends made at once share a round trip (a status read's, under load).
        self._window = Coalesced(redis, scripts.load(redis, "window"))

    async def hit(self, policy: str, api_key: str, limit: int, cost: int = 1) -> Decision:
        """Spend `cost` requests of `limit` per minute for `api_key` under `policy`, all or none."""
        allowed, remaining, retry_ms, reset_ms = await self._window(
            {"log": keys.rate_limit(policy, key_id(api_key))},
            {"limit": limit, "window": WINDOW * 1000, "nonce": _nonce(), "cost": cost},
        )
        return Decision(policy, limit, bool(allowed), int(remaining), int(retry_ms), int(reset_ms))


LIMITER = web.AppKey("rate_limiter", RateLimiter)


class OpenStreams:
    """How many requests each API key holds open in this process: event streams and `Prefer: wait` submits.

    Counted here, not in Redis: what they use up is this process's file descriptors, and a count
    in memory cannot be left behind by a process that dies.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: unlimited
        self._open: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def holding(self, key_id: str) -> Iterator[bool]:
        """Count one more open request of `key_id` for the block; False, counting nothing, past the cap."""
        if self.limit and self._open[key_id] >= self.limit:
            yield False
            return
        self._open[key_id] += 1
        try:
            yield True
        finally:
            self._open[key_id] -= 1
            if not self._open[key_id]:
                del self._open[key_id]

    @contextlib.contextmanager
    def stream(self, key_id: str) -> Iterator[None]:
        """Hold an event stream open for the block; the 429 `rate_limited` past the cap."""
        with self.holding(key_id) as held:
            if not held:
                raise self.refusal()
            yield

    def refusal(self) -> RateLimited:
        """The 429 `rate_limited` for a stream past the cap."""
        # "on each taskd process": behind a load balancer the key holds this many on every API
        # node, and a cap read as the key's overall one would not add up for its holder.
        return RateLimited(
            f"Too many open event streams: at most {self.limit} per API key at once on each taskd "
            "process (event streams and Prefer: wait submits); "
            f"retry in {OPEN_STREAMS_RETRY_AFTER} s",
            OPEN_STREAMS_RETRY_AFTER,
        )


OPEN_STREAMS = web.AppKey("open_streams", OpenStreams)


def _route(request: web.Request) -> tuple[str, str] | None:
    resource = request.match_info.route.resource
    if resource is None:
        return None
    # aiohttp answers a HEAD with the GET handler: it runs the same reads, so it spends the same.
    return ("GET" if request.method == "HEAD" else request.method, resource.canonical)


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Spend the route's quota for the caller's key; 429 over it. Runs after auth, so the key is
    valid, and before the project scope, so a request naming another project's task still counts."""
    route = _route(request)
    if route == SUBMIT_ROUTE:
        try:
            return await handler(request)
        except RedisError:
            # Redis refused the submit or did not answer (503): it would refuse the spend too, and
            # one that hangs would hold the answer a second redis.socket_timeout.
            raise
        except Exception:
            await spend_if_unspent(request, "submit")
            raise
    policy = POLICIES.get(route) if route is not None else None
    if policy is not None and (limit := _limit(request, policy)):
        await spend(request, policy, await _batch_cost(request, limit) if route == BATCH_ROUTE else 1)
    return await handler(request)


async def _batch_cost(request: web.Request, limit: int) -> int:
    """One unit per item of the batch; a 400 for a body that holds no batch, or a batch larger than
    the `submit` limit (it could never pass, so no Retry-After invites it again).

    Such a refusal spends one unit, as a submit refused for its body does: its body was read and
    parsed whole (up to `max_body_bytes`, some 4-30 ms of the event loop for a crafted 1 MiB), and
    unspent, one key sending 101-item batches on four connections took other keys' submits from
    3.5 to 84 ms (p50), past any quota. Over the limit, that refusal is the 429.
    """
    try:
        return _batch_size(await read_json(request), limit)
    except RedisError:
        raise
    except Exception:
        await spend(request, "submit", 1)
        raise


def _batch_size(body: object, limit: int) -> int:
    items = batch_items(body)
    if len(items) > limit:
        raise ValidationError(
            {"tasks": f"A batch of {len(items)} is more than this API key's {limit} submissions per minute"},
            "Invalid batch",
        )
    return len(items)


async def spend(request: web.Request, policy: str, cost: int) -> None:
    """Spend `cost` requests of `policy`'s quota for the caller's key, or raise the 429 and spend none.

    The middleware spends one for each request of a route in POLICIES, a batch one per submission
    of its body.
    """
    limit = _limit(request, policy)
    if not limit:
        return
    _decided(
        request,
        await request.app[LIMITER].hit(policy, request[auth.KEY], limit, cost),
        cost,
    )


async def spend_listing(request: web.Request, calls: int) -> None:
    """Spend a project listing's `status` units: one per call of list.lua/list_look.lua it makes
    (`calls`, TaskStore.list_project's count once its first call told it), or the whole quota when
    it makes more.

    A listing that reads its project's whole index, 1,000 ids a call (~2-3 ms of Valkey each),
    held Valkey ~170 ms at 100,000 tasks, and unlimited, one key listing in a loop slowed every
    other key's submits tenfold. Most listings read only their page (the counts kept by the one
    that read it all): one unit. Capped at the limit, a listing of any size still passes once the
    key's window is empty. Spent after the project scope (the route's handler), so that a key never
    learns from its remaining quota how large another project is.
    """
    limit = _limit(request, "status")
    if limit:
        await spend(request, "status", min(limit, calls))


async def submit_quota(request: web.Request) -> Quota | None:
    """The caller's `submit` quota for the submit script to spend one unit of (None without a limit).

    Its report sets the RateLimit fields and raises the 429 over the limit, as `spend` does. With
    several partitions (redis.partitions), the key's log is not in the slot of the task's partition:
    the unit is spent here, in a round trip of its own, and None comes back.
    """
    limit = _limit(request, "submit")
    if not limit:
        return None
    if keys.partition_count() > 1:
        await spend(request, "submit", 1)
        return None

    def report(spent: Spent) -> None:
        decision = Decision(
            "submit", limit, spent.allowed, spent.remaining, spent.retry_after_ms, spent.reset_ms
        )
        _decided(request, decision, 1)

    api_key = request[auth.KEY]
    return Quota(keys.rate_limit("submit", key_id(api_key)), limit, WINDOW * 1000, _nonce(), report)


async def spend_if_unspent(request: web.Request, policy: str) -> None:
    """Spend one unit of `policy` unless this request already has (a submit refused before its script ran).

    A submit refused before it reached the submit script (a body that is not valid, another
    project than its key's, say) still spends its unit; over the limit, its answer is the 429.
    """
    if _HEADERS not in request:
        await spend(request, policy, 1)


def _limit(request: web.Request, policy: str) -> int:
    limit: int = getattr(request.app[API].config.limits, f"{policy}_per_minute", 0)
    return limit


def _decided(request: web.Request, decision: Decision, cost: int) -> None:
    # The fields go on whatever the request's answer is; over the limit, that answer is the 429.
    request[_HEADERS] = decision.headers()
    if not decision.allowed:
        at_once = f" ({cost} at once)" if cost > 1 else ""
        raise RateLimited(
            f"Too many {decision.policy} requests{at_once}: at most {decision.limit} per minute per API key; "
            f"retry in {decision.retry_after} s",
            decision.retry_after,
        )


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    # Error responses are rendered outside the middleware; the signal reaches them all.
    for name, value in request.get(_HEADERS, {}).items():
        response.headers[name] = value


def install(app: web.Application) -> None:
    """Give the app its limiter and stream count, and add the RateLimit fields to every response of a limited route."""
    app[LIMITER] = RateLimiter(app[API].redis)
    app[OPEN_STREAMS] = OpenStreams(app[API].config.limits.open_streams)
    app.on_response_prepare.append(_add_headers)
