"""One JSON POST to an OpenAI-compatible provider (chat, images, speech): auth, timeout, and errors
that name the provider, say whether a retry may help, and never contain its key."""

from __future__ import annotations

import contextlib
from typing import Any, Generic, Protocol, TypeVar

import aiohttp
import orjson

from taskd.errors import TaskError
from taskd.logs import REDACTOR
from taskd.providers.limits import Gate

_DETAIL_LIMIT = 300


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


def redact(text: str, secret: str) -> str:
    """`text` with `secret` masked."""
    return text.replace(secret, "***") if secret else text


def error_detail(raw: bytes, secret: str = "") -> str:
    """The provider's own error message, masked and shortened: OpenAI's `{"error": {"message": ...}}`
    or `{"error": "..."}`, or an RFC 9457 problem's `{"detail": "..."}` (Replicate's)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace").strip()
    else:
        error = data.get("error") if isinstance(data, dict) else None
        detail = data.get("detail") if isinstance(data, dict) else None
        if isinstance(error, dict):
            text = str(error.get("message") or "")
        elif isinstance(error, str):
            text = error
        elif isinstance(detail, str):
            text = detail
        else:
            text = ""
    return shorten(text, secret)


def shorten(text: str, secret: str = "") -> str:
    """A provider's message on one line, masked, then cut to a bounded length.

    Masking comes first: a secret cut in half by the shortening would no longer be recognised.
    """
    text = REDACTOR.redact(redact(" ".join(text.split()), secret))
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 1] + "…"


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    *,
    api_key: str,
    timeout: float,
    name: str,
    gate: Gate | None = None,
) -> bytes:
    """POST `body` to `url` and return the 2xx reply's bytes; ProviderError for anything else.

    Timeouts, connection errors, 429 and 5xx are transient; other 4xx are not. With a `gate`, the
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
                url, data=orjson.dumps(body), headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response,
        ):
            status, raw = response.status, await response.read()
    except TimeoutError:
        # Checked before ClientError: aiohttp's timeout errors are both.
        raise ProviderError(f"{name} did not answer within {timeout:g}s", True, timeout=True) from None
    except aiohttp.ClientError as exc:
        reason = redact(f"{type(exc).__name__}: {exc}", api_key)
        raise ProviderError(f"{name} unreachable: {reason}", True) from None
    if status >= 400:
        detail = error_detail(raw, api_key)
        message = f"{name} returned HTTP {status}" + (f": {detail}" if detail else "")
        raise ProviderError(message, status == 429 or status >= 500, status)
    return raw
