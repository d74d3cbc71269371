"""What both video-generation protocols share: the request taskd makes, a job's state as taskd reads
it, the interface of a protocol, and HTTP calls to the provider that retry transient failures."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp
import attrs
import orjson

from taskd.backoff import Backoff, retry_after_seconds
from taskd.config import VideoProvider
from taskd.errors import TaskError
from taskd.logs import shorten
from taskd.providers.http import (
    JSON_REPLY_LIMIT,
    ProviderError,
    error_detail,
    read_reply,
    redirected,
    too_large,
)

log = logging.getLogger("taskd.providers")

NAME = "Video provider"
# The longest wait between two tries of one request, whatever Retry-After says.
RETRY_CAP = 60.0
# A job id is put into URL paths: only the characters real providers use (no dots: no `..`).
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
T = TypeVar("T")


@attrs.frozen
class VideoRequest:
    """What taskd asks a provider for, built from the task's fields."""

    prompt: str
    seconds: int
    width: int
    height: int
    fps: int
    # The first storyboard image as the caller gave it (for a protocol that takes a URL) ...
    image_url: str | None = None
    # ... and fetched through the guard, fitted to width x height (for one that takes an upload).
    image_file: Path | None = None

    @property
    def size(self) -> str:
        """`WxH`."""
        return f"{self.width}x{self.height}"


@attrs.frozen
class JobState:
    """A provider's job as taskd reads it: running, or done (succeeded or failed with `error`)."""

    done: bool
    succeeded: bool = False
    progress: float | None = None  # 0..1, when the provider says
    error: str | None = None
    output: Any = None  # the protocol's description of its output (a URL, a list of URLs)


class JobApi(Protocol):
    """One protocol: create a job, read its state, cancel it, and say where its video is."""

    # True when `create` wants the reference image uploaded (VideoRequest.image_file).
    uploads_reference: bool

    async def create(self, request: VideoRequest) -> str:
        """Start a job; its id."""
        ...

    async def state(self, job_id: str) -> JobState:
        """The job's state now."""
        ...

    async def cancel(self, job_id: str) -> None:
        """Ask the provider to stop (or remove) the job; one try."""
        ...

    def output_url(self, job_id: str, state: JobState) -> str:
        """Where the finished job's MP4 is."""
        ...


def job_id(value: Any) -> str:
    """The job id of a provider's answer; TaskError for one that is not a plain token."""
    if not isinstance(value, str) or not JOB_ID.fullmatch(value):
        raise TaskError(f"{NAME} sent a malformed reply: no usable job id")
    return value


def json_object(raw: bytes) -> dict[str, Any]:
    """The provider's JSON object; TaskError for anything else."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise TaskError(f"{NAME} sent a malformed reply: not a JSON object")
    return data


class ProviderCalls:
    """HTTP calls to `[providers.video]`: its key, its timeout, and retries of 429, 5xx and broken
    connections with backoff (Retry-After honoured up to RETRY_CAP)."""

    def __init__(self, settings: VideoProvider, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self._session = session

    @property
    def base_url(self) -> str:
        """The configured base URL without a trailing slash."""
        return self.settings.base_url.strip().rstrip("/")

    @property
    def auth(self) -> dict[str, str]:
        """The Authorization header of the provider (none without a key)."""
        key = self.settings.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def retrying(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        """`attempt()`, tried again after each transient failure, at most `max_retries` times."""
        delays = Backoff(self.settings.retry_delay, RETRY_CAP)
        while True:
            try:
                return await attempt()
            except TaskError as exc:
                if not exc.transient or delays.failures >= self.settings.max_retries:
                    raise
                wait = delays.next_delay()
                asked = exc.retry_after if isinstance(exc, ProviderError) else None
                if asked is not None:
                    # A longer wait the provider asks for is waited (up to the cap); a shorter one,
                    # `Retry-After: 0` on every 429, would send every try at once.
                    wait = max(wait, min(RETRY_CAP, asked))
                log.info("%s: %s; try %d again in %.1fs", what, exc, delays.failures + 1, wait)
                await asyncio.sleep(wait)

    async def call(
        self, method: str, path: str, body: Callable[[], Any] | None = None, *, retry: bool = True
    ) -> bytes:
        """`method` on `<base_url>/<path>` and the 2xx reply's bytes; ProviderError otherwise.

        `body` makes the request body for each try (a dict is sent as JSON, aiohttp.FormData as
        multipart: a form can be sent only once).
        """

        async def once() -> bytes:
            return await self._once(method, f"{self.base_url}/{path}", body() if body else None)

        return await self.retrying(once, f"{method} {path}") if retry else await once()

    async def _once(self, method: str, url: str, body: Any) -> bytes:
        headers = {"Accept": "application/json", **self.auth}
        if isinstance(body, dict):
            headers["Content-Type"] = "application/json"
            body = orjson.dumps(body)
        timeout = self.settings.timeout
        try:
            async with self._session.request(
                method,
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as response:
                status, raw, retry_after = (
                    response.status,
                    await read_reply(response, JSON_REPLY_LIMIT),
                    retry_after_seconds(response.headers.get("Retry-After")),
                )
        except TimeoutError:
            # Checked before ClientError: aiohttp's timeout errors are both.
            raise ProviderError(f"{NAME} did not answer within {timeout:g}s", True, timeout=True) from None
        except aiohttp.ClientError as exc:
            # aiohttp's message may quote what it could not parse of the answer (a status line or
            # a header of kilobytes, over lines): the provider's words, cut as its error's are.
            reason = shorten(f"{type(exc).__name__}: {exc}", self.settings.api_key)
            raise ProviderError(f"{NAME} unreachable: {reason}", True) from None
        if 300 <= status < 400:
            raise redirected(NAME, status)
        if raw is None:
            raise too_large(NAME, JSON_REPLY_LIMIT)
        if status >= 400:
            detail = error_detail(raw, self.settings.api_key)
            message = f"{NAME} returned HTTP {status}" + (f": {detail}" if detail else "")
            transient = status == 429 or status >= 500
            raise ProviderError(message, transient, status, retry_after=retry_after if transient else None)
        return raw
