"""The Content-Type of a media file, from its name, the same on every host and Python.

Python's `mimetypes` knows `.flac`, `.ogg`, `.webp` and `.m4a` only from 3.13 on, or from the host's
`/etc/mime.types` where there is one (a slim container image has none); aiohttp's file answers use
Python's table alone. Up to dc0cc79 (2026-12-06), `/media` on Python 3.11 and 3.12 served taskd's
own FLAC and Ogg mixes, and WebP and M4A files a provider sent, as `application/octet-stream` (with
`nosniff`, which tells a browser not to guess); an S3 or Payload upload's type depended on the host.
"""

from __future__ import annotations

import mimetypes
from typing import Final

FALLBACK: Final = "application/octet-stream"

# Every type taskd writes or fetches (taskd.media.download names a fetched file by what it sniffs).
_KNOWN: Final = {
    ".mp4": "video/mp4",
    ".mp3": "audio/mpeg",
    ".wav": "audio/x-wav",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".m4a": "audio/mp4",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
    ".json": "application/json",
}


def content_type(filename: str) -> str:
    """The type of a file named `filename`: taskd's own for the types it writes, else Python's guess."""
    dot = filename.rfind(".")
    known = _KNOWN.get(filename[dot:].lower()) if dot >= 0 else None
    if known:
        return known
    guessed, encoding = mimetypes.guess_type(filename)
    # `page.svg.gz` is gzip bytes, sent as they are (no Content-Encoding): Python's table names what
    # they decompress to, and a type a browser would read as a page or a script is no type for them.
    return guessed if guessed and encoding is None else FALLBACK
