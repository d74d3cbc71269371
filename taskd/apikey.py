"""The API keys: from config, or one made on first start and kept in the data directory."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from taskd.config import ConfigError

KEY_FILE = "api_key"
# taskd writes 43 characters (32 random bytes); a kept key shorter than this is damaged, never used.
MIN_KEPT_LENGTH = 32


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
    """The key an earlier start made and kept in the data directory, if there is one.

    Raises ConfigError, one line naming the file, when it is truncated or not text: a short
    key is a guessable one. An empty file counts as none (a new key is made).
    """
    path = data_dir / KEY_FILE
    if not path.is_file() or not (key := path.read_text("utf-8", "replace").strip()):
        return None
    if len(key) < MIN_KEPT_LENGTH or not key.isascii() or not key.isprintable():
        raise ConfigError(
            f"{path} does not hold a key taskd made (truncated or damaged): delete it "
            "(taskd makes a new one when auth.api_keys is empty)"
        )
    return key
