"""Rate limits per API key in Redis, shared by every taskd process: at most N requests in any window.

The per-project concurrency limit and the queue length limit are checked in the submit script
itself (taskd/store/lua/submit.lua), atomically with the write. The sliding-window
script is taskd/http/lua/window.lua: one round trip per request.

Each limited response carries the IETF `RateLimit-Policy` and `RateLimit` fields
(draft-ietf-httpapi-ratelimit-headers), e.g. `RateLimit-Policy: "submit";q=100;w=60` and
`RateLimit: "submit";r=57;t=12`.
"""

from __future__ import annotations

import hashlib
import math
import secrets

import attrs
from aiohttp import web
from aiohttp.typedefs import Handler
from redis.asyncio import Redis

from taskd import keys
from taskd.http.context import API
from taskd.model import RateLimited
from taskd.store import scripts

WINDOW = 60  # seconds: every limit is "per minute"
# Which routes spend which quota; a retry creates a task, so it is a submission. A batch spends one
# unit of `submit` per item from its handler, which alone knows how many items its body holds.
POLICIES = {
    ("POST", "/api/v1/tasks/submit"): "submit",
    ("POST", "/api/v1/tasks/{task_id}/retry"): "submit",
    ("GET", "/api/v1/tasks/{task_id}/status"): "status",
}

_HEADERS = web.RequestKey("ratelimit_headers", dict)


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


def key_id(api_key: str) -> str:
    """What identifies an API key in Redis: a hash, never the key itself."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


class RateLimiter:
    """Spends per-key quota in Redis with one sliding-window script call per request."""

    def __init__(self, redis: Redis) -> None:
        self._window = scripts.load(redis, "window", "taskd.http")

    async def hit(self, policy: str, api_key: str, limit: int, cost: int = 1) -> Decision:
        """Spend `cost` requests of `limit` per minute for `api_key` under `policy`, all or none."""
        allowed, remaining, retry_ms, reset_ms = await self._window(
            {"log": keys.rate_limit(policy, key_id(api_key))},
            {"limit": limit, "window": WINDOW * 1000, "nonce": secrets.token_hex(6), "cost": cost},
        )
        return Decision(policy, limit, bool(allowed), int(remaining), int(retry_ms), int(reset_ms))


LIMITER = web.AppKey("rate_limiter", RateLimiter)


def _policy(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return POLICIES.get((request.method, resource.canonical))


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Spend the route's quota for the caller's key; 429 over it. Runs after auth, so the key is valid."""
    policy = _policy(request)
    if policy is not None:
        await spend(request, policy, 1)
    return await handler(request)


async def spend(request: web.Request, policy: str, cost: int) -> None:
    """Spend `cost` requests of `policy`'s quota for the caller's key, or raise the 429 and spend none.

    The middleware spends one for each request of a route in POLICIES; the batch route spends one
    per submission of its body, once it has read it.
    """
    limit = getattr(request.app[API].config.limits, f"{policy}_per_minute", 0)
    if not limit:
        return
    decision = await request.app[LIMITER].hit(policy, request.headers.get("X-API-Key", ""), limit, cost)
    request[_HEADERS] = decision.headers()
    if not decision.allowed:
        what = f"{cost} {policy} requests at once" if cost > 1 else f"{policy} requests"
        raise RateLimited(
            f"Too many {what}: at most {limit} per minute per API key; retry in {decision.retry_after} s",
            decision.retry_after,
        )


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    # Error responses are rendered outside the middleware; the signal reaches them all.
    for name, value in request.get(_HEADERS, {}).items():
        response.headers[name] = value


def install(app: web.Application) -> None:
    """Give the app its limiter and add the RateLimit fields to every response of a limited route."""
    app[LIMITER] = RateLimiter(app[API].redis)
    app.on_response_prepare.append(_add_headers)
