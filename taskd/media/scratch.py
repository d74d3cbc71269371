"""A task's scratch directory, removed whatever way the task ends (cancel included)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def scratch_dir(root: Path, task_id: str) -> Iterator[Path]:
    """A fresh directory under `root` for one run of one task; deleted on exit."""
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{task_id[:64]}-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
