"""One JSON POST to an OpenAI-compatible provider (chat, images, speech): auth, timeout, and errors
that name the provider, say whether a retry may help, and never contain its key."""

from __future__ import annotations

import contextlib
from typing import Any, Generic, Protocol, TypeVar

import aiohttp
import orjson

from taskd.errors import TaskError
from taskd.logs import shorten
from taskd.providers.limits import Gate

# The most taskd reads of a provider's JSON answer (a chat completion, a video job's state): far
# above any real one, so that a broken or hostile provider cannot fill a worker's memory.
JSON_REPLY_LIMIT = 16 * 1024 * 1024
# Of an error answer only the start is read: its message is cut to SHORT_MESSAGE_CHARS anyway.
_ERROR_READ_LIMIT = 64 * 1024
_CHUNK = 64 * 1024
# What taskd's calls to a provider say they are (and its fetches from a provider's own origin, on
# the same session): aiohttp's own (`Python/3.11 aiohttp/3.14.5`) told the provider taskd's Python
# and aiohttp versions (docs/security.md, "What taskd says, to whom"). As the webhooks' and downloads'.
USER_AGENT = "taskd-providers/1"


class ProviderSettings(Protocol):
    """What every `[providers.*]` section has."""

    @property
    def model(self) -> str: ...


Settings = TypeVar("Settings", bound=ProviderSettings)


class ProviderClient(Generic[Settings]):
    """What every provider client holds: its config section, the shared session, and its limits."""

    def __init__(self, provider: Settings, session: aiohttp.ClientSession, gate: Gate | None = None) -> None:
        self._provider = provider
        self._session = session
        # The provider's shared limits (providers.<name>.max_concurrency, per_minute); None: unlimited.
        self._gate = gate

    @property
    def model(self) -> str:
        """The model name sent with every request."""
        return self._provider.model


class ProviderError(TaskError):
    """A provider failed; `transient` says whether trying again later may help."""

    def __init__(
        self,
        message: str,
        transient: bool,
        status: int | None = None,
        *,
        timeout: bool = False,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.status = status
        self.timeout = timeout
        # Seconds the provider asked to wait before the next try (its Retry-After), if it said.
        self.retry_after = retry_after

    @property
    def reason(self) -> str:
        """A short, secret-free cause: `timeout`, `HTTP 503`, `connection failed` or `malformed reply`."""
        if self.timeout:
            return "timeout"
        if self.status is not None:
            return f"HTTP {self.status}"
        return "connection failed" if self.transient else "malformed reply"


def _invalid_fields(detail: Any) -> str:
    # FastAPI's 422 (a server built on it that leaves its validation errors as they come):
    # [{"loc": ["body", "messages"], "msg": "Field required", "type": "missing", "input": ...}].
    # Only each field's place and reason: `input` is the request's own body.
    if not isinstance(detail, list):
        return ""
    reasons = []
    for entry in detail:
        if isinstance(entry, dict) and isinstance(entry.get("msg"), str):
            place = entry.get("loc")
            where = ".".join(map(str, place)) if isinstance(place, list) else ""
            reasons.append(f"{where}: {entry['msg']}" if where else entry["msg"])
    return "; ".join(reasons)


def error_detail(raw: bytes, secret: str = "") -> str:
    """The provider's own error message, masked and shortened: OpenAI's `{"error": {"message": ...}}`
    or `{"error": "..."}` (Ollama's), an RFC 9457 problem's `{"detail": "..."}` (Replicate's),
    FastAPI's `{"detail": [{"loc": ..., "msg": ...}]}`, or `{"object": "error", "message": "..."}`
    (vLLM's before it took OpenAI's shape): the first of them that says something."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return shorten(raw.decode("utf-8", "replace").strip(), secret)
    fields = data if isinstance(data, dict) else {}
    error, detail, message = fields.get("error"), fields.get("detail"), fields.get("message")
    candidates = (
        str(error.get("message") or "") if isinstance(error, dict) else error,
        detail if isinstance(detail, str) else _invalid_fields(detail),
        message,
    )
    text = next((found for found in candidates if isinstance(found, str) and found.strip()), "")
    return shorten(text, secret)


async def read_reply(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body of `response`, or None when it is longer than `limit` bytes (read no further).

    An error status's body is cut to its start instead: only its message is shown.
    """
    failed = response.status >= 400
    cap = min(limit, _ERROR_READ_LIMIT) if failed else limit
    if not failed and response.content_length is not None and response.content_length > cap:
        return None
    body = bytearray()
    async for chunk in response.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > cap:
            return bytes(body[:cap]) if failed else None
    return bytes(body)


def redirected(name: str, status: int) -> ProviderError:
    """The error of a redirect: where a provider points is its choice, not the operator's (any
    internal address), so taskd does not go there with the task's request."""
    return ProviderError(
        f"{name} returned HTTP {status} (taskd does not follow a provider's redirects)", False, status
    )


def too_large(name: str, limit: int) -> ProviderError:
    """The error of a reply over `limit` bytes: not transient, a provider that sends one is broken."""
    return ProviderError(f"{name} sent a reply larger than {limit} bytes", False)


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    *,
    api_key: str,
    timeout: float,
    name: str,
    gate: Gate | None = None,
    max_bytes: int = JSON_REPLY_LIMIT,
) -> bytes:
    """POST `body` to `url` and return the 2xx reply's bytes; ProviderError for anything else.

    Timeouts, connection errors, 429 and 5xx are transient; other 4xx and 3xx (redirects are not
    followed) are not; a reply longer than
    `max_bytes` is not read beyond them and fails, not transient. With a `gate`, the
    request first waits for a slot of the provider's limits and holds it until the reply is read;
    `timeout` counts from when the request is sent, not while it waits.
    """
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        async with (
            gate.slot() if gate else contextlib.nullcontext(),
            session.post(
                url,
                data=orjson.dumps(body),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as response,
        ):
            status, raw = response.status, await read_reply(response, max_bytes)
    except TimeoutError:
        # Checked before ClientError: aiohttp's timeout errors are both.
        raise ProviderError(f"{name} did not answer within {timeout:g}s", True, timeout=True) from None
    except aiohttp.ClientError as exc:
        # aiohttp's message may quote what it could not parse of the answer (a status line or
        # a header of kilobytes, over lines): the provider's words, cut as its error's are.
        reason = shorten(f"{type(exc).__name__}: {exc}", api_key)
        raise ProviderError(f"{name} unreachable: {reason}", True) from None
    if 300 <= status < 400:
        raise redirected(name, status)
    if raw is None:
        raise too_large(name, max_bytes)
    if status >= 400:
        detail = error_detail(raw, api_key)
        message = f"{name} returned HTTP {status}" + (f": {detail}" if detail else "")
        raise ProviderError(message, status == 429 or status >= 500, status)
    return raw
