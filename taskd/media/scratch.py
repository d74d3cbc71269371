"""A task's scratch directory, removed whatever way the task ends (cancel included).

Making and removing it touch the disk (removing a tree of rendered media can take a while), so both
run in a thread, off the event loop. A disk that fills up while the task writes (a download, a
tool's output, the copy into the store) is a TransientError: retried later, not the input's fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from taskd.errors import TransientError
from taskd.stopping import outlast

log = logging.getLogger("taskd.media")

DISK_FULL = "No space left on the disk a media task writes to; it is tried again later"
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# The random end of a name tempfile.mkdtemp makes.
_RANDOM_CHARS = 8


def _prefix(task_id: str) -> str:
    return f"{task_id[:64]}-"


def _make(root: Path, task_id: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=_prefix(task_id), dir=root))


def remove_earlier(root: Path, task_id: str) -> int:
    """Remove the scratch dirs an earlier run of the task left under `root` (blocking); how many.

    Only a run cut short by the death of its worker leaves one (any other end removes it), and the
    task runs again once that worker is taken for dead, so the run that runs again removes them at
    its start, on the host it runs on, rather than the media sweeper once older than any task can
    run. A worker taken for dead that still lives (its heartbeat lost in a Redis outage) has its
    run's end refused anyway (the task was taken over); losing its scratch only ends it sooner.
    """
    prefix = _prefix(task_id)
    removed = 0
    for entry in root.glob(f"{glob.escape(prefix)}*"):
        # mkdtemp's random part is 8 characters: a longer task id that shares the prefix is not ours.
        if len(entry.name) == len(prefix) + _RANDOM_CHARS and not entry.is_symlink() and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed


@contextlib.asynccontextmanager
async def scratch_dir(root: Path, task_id: str) -> AsyncIterator[Path]:
    """A fresh directory under `root` for one run of one task; deleted, in a thread, before the exit returns."""
    with _full_disk_is_transient():
        path = await asyncio.to_thread(_make, root, task_id)
    try:
        with _full_disk_is_transient():
            yield path
    finally:
        await _remove(path)


@contextlib.contextmanager
def _full_disk_is_transient() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno not in _DISK_FULL_ERRNOS:
            raise
        # The OSError names a path under the data dir, which is not the caller's business: the
        # task's error says what happened, the log where.
        log.warning("media task out of disk space: %s", exc)
        raise TransientError(DISK_FULL) from exc


async def _remove(path: Path) -> None:
    # A second cancel while the tree is being removed must not end the wait early: the task would
    # report done with its scratch still there. The removal is waited for, then the cancel goes on.
    await outlast(asyncio.ensure_future(asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)))
