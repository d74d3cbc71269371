"""The API keys: from config, or one made on first start and kept in the data directory."""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path

from taskd.config import ConfigError
from taskd.files import create_once, read_kept, warn_if_readable

KEY_FILE = "api_key"
# taskd writes 43 characters (32 random bytes); a kept key shorter than this is damaged, never used.
MIN_KEPT_LENGTH = 32


def load_or_create(configured: list[str], data_dir: Path) -> tuple[list[str], str | None]:
    """The keys to accept, and the generated key when taskd made (or reuses) one of its own."""
    if configured:
        return configured, None
    if (key := kept_key(data_dir)) is None:
        path = data_dir / KEY_FILE
        with contextlib.suppress(FileNotFoundError):
            # An empty file (left by a taskd that wrote it in place) counts as none; one another
            # process has just made is kept.
            if path.stat().st_size == 0:
                path.unlink()
        # Two taskd starting together on a new data directory (an API node and a worker) both found
        # no key: the first one linked is the key of both, where each used to keep its own.
        create_once(path, (secrets.token_urlsafe(32) + "\n").encode())
        # Read as it is now: a name create_once could not link over (a link to a missing file)
        # raises its OSError, which start-up reports in one line naming the file.
        key = _read_key(path)
        assert key is not None  # made whole just now, or by another process
    return [key], key


def kept_key(data_dir: Path) -> str | None:
    """The key an earlier start made and kept in the data directory, if there is one.

    Raises ConfigError, one line naming the file, when it is truncated or not text: a short
    key is a guessable one. An empty file counts as none (a new key is made). Raises the OSError of
    a file that is there but cannot be read (a directory, no permission, a failing disk).
    """
    try:
        return _read_key(data_dir / KEY_FILE)
    except FileNotFoundError:
        return None


def _read_key(path: Path) -> str | None:
    if not (key := read_kept(path).decode("utf-8", "replace").strip()):
        return None
    if len(key) < MIN_KEPT_LENGTH or not key.isascii() or not key.isprintable():
        raise ConfigError(
            f"{path} does not hold a key taskd made (truncated or damaged): delete it "
            "(taskd makes a new one when auth.api_keys is empty)"
        )
    warn_if_readable(path)
    return key
