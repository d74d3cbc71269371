"""The Payload CMS upload: each media output is posted to `POST /api/<collection>` (Payload's REST upload).

The CMS address and credentials are operator config (trusted); its answers are not: they are read up
to MAX_ANSWER_BYTES, and the document id must be a plain integer or a short token before it becomes
`payload_media_id`. Failures are retried (bounded, with backoff) and then reported, never raised:
the media is already stored and stays in the result.

A run cut short (its worker killed) may have left a document in the CMS: its answer came, or the
CMS had the whole file and made the document after the worker died. What each upload is (its
filename, the collection's address, the file's size and SHA-256) is kept in the task's run state
(taskd.store.run_state) before it is sent, and the document's id once it answers. The next run of
the task, with the same file (the same bytes: a provider that made a new image gets a new
document) for the same collection of the same CMS, reuses that id, or looks for a document of that
filename and size (`GET /api/<collection>?where[filename][equals]=…`) before it uploads: the CMS
is not given a `-1` twin of it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import attrs

from taskd.config import PayloadConfig
from taskd.logs import redact
from taskd.media import content_types

if TYPE_CHECKING:
    from taskd.store.run_state import RunState

log = logging.getLogger("taskd.media")

MAX_ANSWER_BYTES = 64 * 1024
# Payload's ids: integers (SQL adapters) or 24-hex ObjectIds (MongoDB); a custom id is a short token.
_TEXT_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{1,8192}")
# How much of the CMS's own error message a result may carry.
MAX_MESSAGE_CHARS = 200
# The run state's field of the task's upload of a file, + its filename (taskd.store.run_state).
KEPT_UPLOAD = "cms_upload:"
# How many documents of one filename a look for the killed run's is read: ours is the first made
# with that name (a task id is in it); more would be twins.
FIND_LIMIT = 10

T = TypeVar("T")


@attrs.frozen
class Delivered:
    """The outcome of one upload: the CMS document id, or why there is none."""

    media_id: str | None
    error: str | None = None


class _Retryable(Exception):
    """A failure worth another try: no answer, a timeout, 429 or 5xx."""


class _Refused(Exception):
    """A failure another try would repeat: bad credentials, a refused upload, an unusable answer."""


async def upload(
    settings: PayloadConfig, source: Path, filename: str, state: RunState | None = None
) -> Delivered:
    """Upload `source` as `filename` to the configured collection; never raises for the CMS's failures.

    With `state`, the upload is kept for the next run of the task, and one an earlier run made of
    the same file is reused instead of uploading again."""
    kept: dict[str, Any] | None = None
    upload_of: dict[str, Any] | None = None
    if state is not None:
        upload_of = {
            "filename": filename,
            # Where it went: a document of another CMS or collection (the operator moved `[payload]`
            # between the two runs) is not this one's, whatever its id.
            "collection": _collection_url(settings),
            **await asyncio.to_thread(_fingerprint, source),
        }
        kept = await state.get(KEPT_UPLOAD + filename)
        if not isinstance(kept, dict) or {k: kept.get(k) for k in upload_of} != upload_of:
            kept = None
        elif isinstance(kept.get("id"), str):
            log.info("%s: the CMS document %s an earlier run uploaded is reused", filename, kept["id"])
            return Delivered(kept["id"])
    timeout = aiohttp.ClientTimeout(total=settings.timeout)
    # The error becomes the result's payload_error, which the caller reads: a CMS (or a proxy before
    # it) that echoes the Authorization header or the login must not hand the credentials on.
    credentials = [settings.api_key, settings.password]
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            authorization = await _with_retries(
                settings, lambda: _authorization(session, settings, credentials)
            )
            credentials.append(authorization.rsplit(" ", 1)[-1])  # the key, or the login's token
            if kept is not None:
                found = await _find(session, settings, authorization, filename, kept["size"], credentials)
                if found is not None:
                    log.info(
                        "%s: the CMS made document %s of an earlier run's upload; it is reused",
                        filename,
                        found,
                    )
                    await _keep(state, {**kept, "id": found})
                    return Delivered(found)
            # Kept before it is sent: the CMS may make the document though this run dies before its answer.
            await _keep(state, upload_of)
            media_id = await _with_retries(
                settings, lambda: _post(session, settings, authorization, source, filename, credentials)
            )
        except _Refused as exc:
            return Delivered(None, str(exc))
    await _keep(state, upload_of and {**upload_of, "id": media_id})
    return Delivered(media_id)


def _collection_url(settings: PayloadConfig) -> str:
    """The collection's REST address: what an upload is sent to and a search reads."""
    return f"{settings.base_url.rstrip('/')}/api/{settings.collection}"


def _fingerprint(source: Path) -> dict[str, Any]:
    """The file's size and SHA-256 (read in full: in a thread)."""
    with source.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    return {"size": source.stat().st_size, "sha256": digest}


async def _keep(state: RunState | None, value: dict[str, Any] | None) -> None:
    if state is not None and value is not None:
        await state.keep(KEPT_UPLOAD + value["filename"], value)


async def _find(
    session: aiohttp.ClientSession,
    settings: PayloadConfig,
    authorization: str,
    filename: str,
    size: int,
    credentials: list[str],
) -> str | None:
    """The id of the collection's document named `filename` holding `size` bytes, if the CMS has one
    and says so; None otherwise (a CMS that cannot be asked is uploaded to, as without a kept upload)."""
    url = _collection_url(settings)
    query = {"where[filename][equals]": filename, "limit": str(FIND_LIMIT), "depth": "0"}
    try:
        answer = await _with_retries(
            settings,
            lambda: _request(
                session,
                "search",
                url,
                credentials,
                method="GET",
                params=query,
                headers={"Authorization": authorization},
            ),
        )
    except _Refused as exc:
        log.warning(
            "%s: could not look for an earlier run's CMS document (%s); it is uploaded", filename, exc
        )
        return None
    docs = answer.get("docs")
    for doc in docs if isinstance(docs, list) else []:
        if isinstance(doc, dict) and doc.get("filename") == filename and doc.get("filesize") == size:
            return _media_id(doc)
    return None


async def _with_retries(settings: PayloadConfig, attempt: Callable[[], Awaitable[T]]) -> T:
    for tried in range(1, settings.max_attempts + 1):
        try:
            return await attempt()
        except _Retryable as exc:
            if tried == settings.max_attempts:
                raise _Refused(f"{exc} (gave up after {tried} attempts)") from None
            await asyncio.sleep(settings.retry_delay * 2 ** (tried - 1))
    raise AssertionError("max_attempts is at least 1")


async def _authorization(
    session: aiohttp.ClientSession, settings: PayloadConfig, credentials: list[str]
) -> str:
    if settings.api_key:
        return f"{settings.auth_collection} API-Key {settings.api_key}"
    url = f"{settings.base_url.rstrip('/')}/api/{settings.auth_collection}/login"
    answer = await _request(
        session, "login", url, credentials, json={"email": settings.email, "password": settings.password}
    )
    token = answer.get("token")
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise _Refused("Payload CMS login answered without a usable token")
    return f"JWT {token}"


async def _post(
    session: aiohttp.ClientSession,
    settings: PayloadConfig,
    authorization: str,
    source: Path,
    filename: str,
    credentials: list[str],
) -> str:
    url = _collection_url(settings)
    content_type = content_types.content_type(filename)
    with source.open("rb") as file:
        form = aiohttp.FormData()
        form.add_field("file", file, filename=filename, content_type=content_type)
        # `alt` is required by Payload's usual media collection; other fields are the collection's own.
        form.add_field("_payload", json.dumps({"alt": filename}), content_type="application/json")
        answer = await _request(
            session, "upload", url, credentials, data=form, headers={"Authorization": authorization}
        )
    doc = answer.get("doc")
    media_id = _media_id(doc) if isinstance(doc, dict) else None
    if media_id is None:
        raise _Refused("Payload CMS upload answered without a usable doc id")
    return media_id


def _media_id(doc: dict[str, Any]) -> str | None:
    """A document's id as `payload_media_id` has it; None when it is not a plain integer or token."""
    media_id = doc.get("id")
    if isinstance(media_id, int) and not isinstance(media_id, bool) and 0 <= media_id < 2**63:
        return str(media_id)
    if isinstance(media_id, str) and _TEXT_ID.fullmatch(media_id):
        return media_id
    return None


async def _request(
    session: aiohttp.ClientSession,
    what: str,
    url: str,
    credentials: list[str],
    method: str = "POST",
    **kwargs: Any,
) -> dict[str, Any]:
    try:
        async with session.request(method, url, allow_redirects=False, **kwargs) as response:
            body = await _bounded(response)
            status = response.status
    except TimeoutError:
        raise _Retryable(f"Payload CMS {what} timed out") from None
    except aiohttp.ClientError as exc:
        raise _Retryable(f"Payload CMS {what} failed: {type(exc).__name__}") from None
    try:
        answer = json.loads(body) if body else None
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser recurses
        answer = None
    if status in (401, 403):
        raise _Refused(f"Payload CMS refused the credentials (HTTP {status}){_message(answer, credentials)}")
    if status == 429 or status >= 500:
        raise _Retryable(f"Payload CMS {what} answered HTTP {status}{_message(answer, credentials)}")
    if not 200 <= status < 300:
        raise _Refused(f"Payload CMS {what} answered HTTP {status}{_message(answer, credentials)}")
    if not isinstance(answer, dict):
        raise _Refused(f"Payload CMS {what} answered with no JSON object")
    return answer


async def _bounded(response: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(16 * 1024):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise _Refused(f"Payload CMS answered more than {MAX_ANSWER_BYTES} bytes")
    return bytes(body)


def _message(answer: Any, credentials: list[str]) -> str:
    # Payload's errors: {"errors": [{"message": "…"}]}; only printable text, cut short, is kept.
    errors = answer.get("errors") if isinstance(answer, dict) else None
    first = errors[0] if isinstance(errors, list) and errors else None
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, str):
        return ""
    # Masked before it is cut: a credential cut in half would no longer be recognised.
    for credential in credentials:
        message = redact(message, credential)
    text = "".join(ch for ch in message if ch.isprintable())[:MAX_MESSAGE_CHARS]
    return f": {text}" if text else ""
