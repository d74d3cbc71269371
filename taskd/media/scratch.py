"""A task's scratch directory, removed whatever way the task ends (cancel included).

Making and removing it touch the disk (removing a tree of rendered media can take a while), so both
run in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path


def _make(root: Path, task_id: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{task_id[:64]}-", dir=root))


@contextlib.asynccontextmanager
async def scratch_dir(root: Path, task_id: str) -> AsyncIterator[Path]:
    """A fresh directory under `root` for one run of one task; deleted, in a thread, before the exit returns."""
    path = await asyncio.to_thread(_make, root, task_id)
    try:
        yield path
    finally:
        await _remove(path)


async def _remove(path: Path) -> None:
    # A second cancel while the tree is being removed must not end the wait early: the task would
    # report done with its scratch still there. The removal is waited for, then the cancel goes on.
    removal = asyncio.ensure_future(asyncio.to_thread(shutil.rmtree, path, ignore_errors=True))
    cancelled = False
    while not removal.done():
        try:
            await asyncio.shield(removal)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
