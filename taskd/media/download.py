"""Bounded downloads of task inputs: through the SSRF guard, a size cap, a time cap, and a content check."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import aiohttp
import attrs
from yarl import URL

from taskd.config import MediaConfig
from taskd.errors import TaskError, TransientError
from taskd.media.own import OwnMedia
from taskd.net.guard import ForbiddenAddress, NotHttp, refusal
from taskd.net.guarded import GuardedClient, RedirectRefused
from taskd.validation import latin1_credentials, url_problem

_CHUNK = 64 * 1024
_SNIFFED = 16  # the bytes sniff() is given: every magic below lies within them
_ALLOW_HINT = "network.allow_private is off"

# Leading bytes of the formats ffmpeg is asked to read, by kind.
_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)
_AUDIO_MAGIC = (
    # An ID3v2 tag: an MP3's, or one a tagger put before a FLAC or an ADTS AAC stream.
    (b"ID3", "id3"),
    (b"fLaC", "flac"),
    (b"OggS", "ogg"),
)


@attrs.frozen
class Limits:
    """How much one task may download."""

    max_bytes: int
    max_inputs: int
    timeout: float

    @classmethod
    def from_config(cls, media: MediaConfig) -> Limits:
        """The limits of the `[media]` section."""
        return cls(media.max_download_bytes, media.max_inputs, media.download_timeout)


def _mpeg_audio_frame(head: bytes) -> bool:
    # A frame sync (11 bits set: MPEG 1, 2 and 2.5) and a layer (I to III; 00 is an ADTS AAC header).
    return len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06 != 0


def sniff(head: bytes, kind: str) -> str | None:
    """The file type by its first bytes (`png`, `jpg`, `wav`, ...), or None if it is not a `kind`."""
    if kind == "image":
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return "webp"
        return next((ext for magic, ext in _IMAGE_MAGIC if head.startswith(magic)), None)
    if kind == "audio":
        if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            return "wav"
        if head[4:8] == b"ftyp":
            return "m4a"
        if _mpeg_audio_frame(head):
            return "mp3"
        return next((ext for magic, ext in _AUDIO_MAGIC if head.startswith(magic)), None)
    if kind == "video":
        # An ISO base media file (MP4, MOV): its first box is `ftyp`.
        return "mp4" if head[4:8] == b"ftyp" else None
    if kind == "json":
        return "json" if head.lstrip()[:1] in (b"{", b"[") else None
    raise ValueError(kind)


def check_count(urls: list[str], limits: Limits, what: str) -> None:
    """TaskError when a task asks for more inputs than `media.max_inputs`."""
    if len(urls) > limits.max_inputs:
        raise TaskError(f"Too many {what}: {len(urls)} given, at most {limits.max_inputs} allowed")


async def fetch(
    client: GuardedClient,
    url: str,
    dest: Path,
    *,
    kind: str,
    limits: Limits,
    what: str = "Input",
    trusted: Iterable[str] = (),
    own: OwnMedia | None = None,
    trusted_headers: Mapping[str, str] | None = None,
) -> Path:
    """Download `url` to `dest` + the sniffed extension; TaskError naming the URL when it cannot be used.

    Every hop goes through the SSRF guard (`trusted`: origins exempt from it, which alone are sent
    `trusted_headers`; see GuardedClient).
    Errors never carry what answered beyond a status code: no content type, size or body.
    With `own`, a link to this taskd's media store is read from the store instead (see OwnMedia),
    with the same size and content checks.
    """
    # Checked at submit (validation.HttpUrl), but a `$ref` fills a URL in at run time.
    problem = url_problem(url)
    if problem is not None:
        raise TaskError(f"{what} {url} is not a valid URL: {problem}")
    if not latin1_credentials(URL(url)):
        raise TaskError(f"{what} {url} is not a valid URL: its user name and password must be Latin-1 text")
    if own is not None:
        copied = await asyncio.to_thread(_copy_own, own, url, dest, kind, limits, what)
        if copied is not None:
            return copied
    part = dest.with_suffix(".part")
    try:
        async with asyncio.timeout(limits.timeout):
            async with client.get(
                url,
                trusted=trusted,
                trusted_headers=trusted_headers,
                redirect_check=own.refuse_redirect if own is not None else None,
                timeout=limits.timeout,
            ) as resp:
                ext = await _save(resp, part, kind, limits, what, url)
    except TimeoutError:
        part.unlink(missing_ok=True)
        raise TransientError(f"{what} {url} did not download within {limits.timeout:g}s") from None
    except (aiohttp.ClientError, ForbiddenAddress, RedirectRefused) as exc:
        part.unlink(missing_ok=True)
        error = TransientError if _passing(exc) else TaskError
        raise error(f"{what} {url} {_failure(exc)}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    final = dest.with_suffix(f".{ext}")
    part.rename(final)
    return final


def _copy_own(own: OwnMedia, url: str, dest: Path, kind: str, limits: Limits, what: str) -> Path | None:
    # In a thread: the signature check stats the file, and the copy may be large.
    stored = own.find(url, what)
    if stored is None:
        return None
    # O_NOFOLLOW: a link swapped in after find() looked is not followed either.
    with os.fdopen(os.open(stored, os.O_RDONLY | os.O_NOFOLLOW), "rb") as source:
        size = os.fstat(source.fileno()).st_size
        if size > limits.max_bytes:
            raise TaskError(_too_big(what, url, limits))
        ext = _sniffed(source.read(_SNIFFED), kind, what, url)
        source.seek(0)
        final = dest.with_suffix(f".{ext}")
        with final.open("wb") as out:
            shutil.copyfileobj(source, out)
    return final


async def _save(
    resp: aiohttp.ClientResponse, part: Path, kind: str, limits: Limits, what: str, url: str
) -> str:
    # The response passed the guard, so its status may be named; nothing else of it is.
    if resp.status >= 400:
        error = TransientError if resp.status >= 500 or resp.status == 429 else TaskError
        raise error(f"{what} {url} could not be fetched: HTTP {resp.status}")
    if resp.content_length is not None and resp.content_length > limits.max_bytes:
        raise TaskError(_too_big(what, url, limits))
    written = 0
    ext = None
    head = b""  # the first bytes, however the server split them into chunks
    with part.open("wb") as out:
        async for chunk in resp.content.iter_chunked(_CHUNK):
            if ext is None and len(head) < _SNIFFED:
                head += chunk[: _SNIFFED - len(head)]
                if len(head) == _SNIFFED:
                    ext = _sniffed(head, kind, what, url)
            written += len(chunk)
            if written > limits.max_bytes:
                raise TaskError(_too_big(what, url, limits))
            out.write(chunk)
    if written == 0:
        raise TaskError(f"{what} {url} is empty")
    return ext or _sniffed(head, kind, what, url)


def _sniffed(head: bytes, kind: str, what: str, url: str) -> str:
    ext = sniff(head, kind)
    if ext is None:
        raise TaskError(f"{what} {url} is not a supported {kind} file")
    return ext


def _failure(exc: BaseException) -> str:
    """Why a fetch failed, in words that say nothing of an internal service."""
    refused = refusal(exc)
    if isinstance(refused, NotHttp):
        return f"was refused: {refused}"
    if refused is not None:
        return f"was refused: {refused} ({_ALLOW_HINT})"
    if isinstance(exc, RedirectRefused):
        return f"was refused: {exc}"
    if isinstance(exc, aiohttp.InvalidURL):
        return "is not a valid URL"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "is unreachable: its host name does not resolve"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        # What the TLS check said of the certificate (expired, self-signed, another name): nothing
        # the host sent beyond it.
        reason = (
            getattr(exc.certificate_error, "verify_message", None) or type(exc.certificate_error).__name__
        )
        return f"was refused: its TLS certificate is not valid ({reason})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "is unreachable: the connection failed"
    return f"is unreachable: the transfer broke off ({type(exc).__name__})"


def _passing(exc: BaseException) -> bool:
    """True for a failure that may pass (a refused or reset connection, a transfer cut off): retried,
    as a provider's are. A refusal by the guard, a bad URL or a host name that does not resolve
    (most often a typo) or a TLS certificate that is not valid (expired, self-signed, of another name:
    it does not mend itself in the minutes the retries take) is the input's fault and fails the
    task at once."""
    if refusal(exc) is not None or isinstance(exc, (RedirectRefused, ForbiddenAddress, aiohttp.InvalidURL)):
        return False
    return not isinstance(exc, (aiohttp.ClientConnectorDNSError, aiohttp.ClientConnectorCertificateError))


def _too_big(what: str, url: str, limits: Limits) -> str:
    return f"{what} {url} is larger than the {limits.max_bytes} byte limit (media.max_download_bytes)"
