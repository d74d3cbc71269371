"""Putting a finished file into the media store and describing it in the documented result shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from taskd.config import Config
from taskd.errors import TransientError
from taskd.media.backend import media_backend
from taskd.media.capacity import Threshold, disk_usage, shortfall
from taskd.media.store import media_dir


def publish(
    config: Config, project_id: str, source: Path, filename: str, metadata: dict[str, Any]
) -> dict[str, Any]:
    """Store `source` as `<project_id>/<filename>`; the result: media_url, payload_media_id, metadata + file_size.

    Blocking (it runs in a thread): the upload to the store of `media.backend`.
    """
    # Checked again here, not only at submit: the disk may have filled while the task ran.
    if config.media.backend == "local" and shortfall(
        disk_usage(media_dir(config)), Threshold.from_config(config), source.stat().st_size
    ):
        raise TransientError("Media storage is nearly full: the result was not stored")
    stored = media_backend(config).put(project_id, filename, source)
    return {
        "media_url": stored.url,
        # Payload CMS upload is not implemented yet: always null.
        "payload_media_id": None,
        "metadata": {**metadata, "file_size": stored.file_size},
    }
