"""The API keys: from config, or one made on first start and kept in the data directory."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

KEY_FILE = "api_key"


def load_or_create(configured: list[str], data_dir: Path) -> tuple[list[str], str | None]:
    """The keys to accept, and the generated key when taskd made (or reuses) one of its own."""
    if configured:
        return configured, None
    path = data_dir / KEY_FILE
    if (kept := kept_key(data_dir)) is not None:
        key = kept
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(32)
        # Written with owner-only permissions from the first byte.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
    return [key], key


def kept_key(data_dir: Path) -> str | None:
    """The key an earlier start made and kept in the data directory, if there is one."""
    path = data_dir / KEY_FILE
    if path.is_file() and (key := path.read_text().strip()):
        return key
    return None
