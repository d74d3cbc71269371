"""Putting a finished file into the media store and describing it in the documented result shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from taskd.config import Config
from taskd.media.store import MediaStore


def publish(
    config: Config, project_id: str, source: Path, filename: str, metadata: dict[str, Any]
) -> dict[str, Any]:
    """Store `source` as `<project_id>/<filename>`; the result: media_url, payload_media_id, metadata + file_size."""
    stored = MediaStore.from_config(config).put(project_id, filename, source)
    return {
        "media_url": stored.url,
        # Payload CMS upload is not implemented yet: always null.
        "payload_media_id": None,
        "metadata": {**metadata, "file_size": stored.file_size},
    }
