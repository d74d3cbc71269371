"""Files made once and shared by every process of a data directory: its secrets and its API key."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def create_once(path: Path, content: bytes) -> bool:
    """Put `content` at `path` (owner-only, on disk) unless a file is there already; True if this
    call put it there.

    Written aside, then hard-linked into place: no process ever reads half of it, and of processes
    starting together on one data directory the first link wins and every one reads that file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(aside, path)
        except FileExistsError:
            return False
        return True
    finally:
        aside.unlink(missing_ok=True)
