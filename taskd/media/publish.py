"""Putting a finished file into the media store and describing it in the documented result shape."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from taskd.config import Config
from taskd.errors import TransientError
from taskd.media import payload
from taskd.media.backend import media_backend
from taskd.media.capacity import Threshold, disk_usage, shortfall
from taskd.media.store import StoredMedia, media_dir


async def publish(
    config: Config, project_id: str, source: Path, filename: str, metadata: dict[str, Any]
) -> dict[str, Any]:
    """Store `source` as `<project_id>/<filename>`; the result: media_url, payload_media_id, metadata + file_size.

    The store's upload, then, with `[payload]` configured, the CMS upload, whose failure is reported
    as `metadata.payload_error` and a null `payload_media_id`. The CMS upload runs on the task's own
    loop, not in the store's thread: a cancel or a time limit stops it (a CMS that has the whole
    file by then still makes its document: docs/media.md).
    """
    # Storing copies or sends the whole file: in a thread, so the API keeps answering meanwhile.
    stored = await asyncio.to_thread(_store, config, project_id, source, filename)
    result: dict[str, Any] = {
        "media_url": stored.url,
        "payload_media_id": None,
        "metadata": {**metadata, "file_size": stored.file_size},
    }
    if config.payload.base_url:
        delivered = await payload.upload(config.payload, source, filename)
        result["payload_media_id"] = delivered.media_id
        if delivered.error is not None:
            result["metadata"]["payload_error"] = delivered.error
    return result


def _store(config: Config, project_id: str, source: Path, filename: str) -> StoredMedia:
    # Checked again here, not only at submit: the disk may have filled while the task ran.
    if config.media.backend == "local" and shortfall(
        disk_usage(media_dir(config)), Threshold.from_config(config), source.stat().st_size
    ):
        raise TransientError("Media storage is nearly full: the result was not stored")
    return media_backend(config).put(project_id, filename, source)
