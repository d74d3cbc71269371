"""The media backends behind one small interface: `local` (taskd's disk, HMAC-signed URLs) and `s3`.

publish, the media route, the re-signing of status and listing, and retention all go through it,
so an API node and a worker host that share the bucket serve the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from taskd.config import Config
from taskd.media.store import MediaStore, StoredMedia


class MediaBackend(Protocol):
    """Where media files are kept and how their download URLs are made."""

    def put(self, project_id: str, filename: str, source: Path) -> StoredMedia:
        """Store a copy of `source` as `<project_id>/<filename>` (blocking: call it in a thread)."""
        ...

    def url(self, project_id: str, filename: str) -> str:
        """A fresh download URL, valid for `media.url_ttl` seconds; computed, no request made."""
        ...

    def locate(self, url: str) -> tuple[str, str] | None:
        """`(project_id, filename)` of a URL this backend made, else None."""
        ...

    def exists(self, project_id: str, filename: str) -> bool:
        """True when the file is stored (blocking); TransientError when the store cannot be asked."""
        ...

    def remove(self, project_id: str, filename: str) -> None:
        """Delete the file if it is stored (blocking); nothing when it is not."""
        ...


def media_backend(config: Config) -> MediaBackend:
    """The backend `media.backend` names."""
    if config.media.backend == "s3":
        from taskd.media.s3 import S3Store  # boto3 is the optional `s3` extra

        return S3Store.from_config(config)
    return MediaStore.from_config(config)


def resign(backend: MediaBackend, project_id: str, result: Any) -> Any:
    """`result` with its `media_url` signed again from now, when it is a URL of this backend for this project.

    A result that is not a media result, or whose URL the backend did not make (another backend's,
    a changed base URL), is returned as it is.
    """
    if not isinstance(result, dict) or not isinstance(result.get("media_url"), str):
        return result
    located = backend.locate(result["media_url"])
    if located is None or located[0] != project_id:
        return result
    return {**result, "media_url": backend.url(*located)}
