"""Files made once and shared by every process of a data directory: its secrets and its API key."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """Re-raise an OSError of the block with `path` as its file name.

    A write's error names no file (a full disk: "[Errno 28] No space left on device"); start-up
    says which file it could not make in one line, as it does for an open's error, from the name.
    """
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


# A kept key or secret is a line of under a hundred bytes; what is read of a file is bounded by this.
KEPT_FILE_LIMIT = 64 * 1024


def read_kept(path: Path) -> bytes:
    """What `path`, a file made by create_once, holds (at most KEPT_FILE_LIMIT bytes).

    OSError naming `path` for anything but a plain file: a FIFO put in its place would hold
    start-up for ever on the open or the read, a device would be read without end.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a plain file (a FIFO, a device or a socket)", str(path))
    except BaseException:
        os.close(fd)
        raise
    with naming(path), os.fdopen(fd, "rb") as kept:
        return kept.read(KEPT_FILE_LIMIT)


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
        with naming(path), os.fdopen(fd, "wb") as out:
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
