"""The operator's paths, taken out of what a task's caller reads: its `error` and `traceback`.

A traceback names each frame's file by its absolute path, which says where taskd is installed: a
home directory and its user's name, the virtualenv, the Python build. A caller needs only the
file's path inside what it was imported from (`taskd/media/download.py`, `asyncio/tasks.py`), in
a frame as in an error's text (a tool's binary inside a package). A
file-system error names a path in the data dir, the media dir or the scratch dir: those are written
`<data_dir>`, `<media_dir>`, `<scratch_dir>`, as ffmpeg's errors already name their scratch file
alone, and one in the home dir of taskd's user (a model cache) `~/…`. The worker's log line of a failure quotes the error as the caller reads it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import taskd

# A frame's line of a formatted traceback: `  File "/abs/path.py", line 12, in run`.
_FRAME_FILE = re.compile(r'(?m)^(?P<head>[ \t]*File ")(?P<path>/[^"\n]*)(?=", line \d)')
# What may come before a folder's absolute name, and after it, when that folder is meant: not the
# path of a URL (`https://example.com/data/x`), nor a longer name that starts the same (`/database`).
_START_OF_PATH = r"(?<![\w.~/-])"
_END_OF_NAME = r"(?![\w.-])"
# taskd itself, wherever it was imported from: an editable install is found through an import
# hook, not a sys.path entry.
_TASKD_ROOT = str(Path(taskd.__file__).resolve().parent.parent)


def _import_roots() -> list[str]:
    """Every folder modules are imported from, longest first (a venv's site-packages before the
    folder it lies in). Read each time: a plugin may add to sys.path after start."""
    roots = {entry.rstrip("/") for entry in sys.path if entry.startswith("/")} | {_TASKD_ROOT}
    return sorted((root for root in roots if root), key=len, reverse=True)


class ShownPaths:
    """Rewrites the operator's paths in text shown to a task's caller."""

    def __init__(self) -> None:
        self._places: list[tuple[re.Pattern[str], str]] = []

    def add(self, folder: str | Path, shown: str) -> None:
        """Write `folder` (absolute) as `shown` from now on, in errors and tracebacks."""
        name = str(folder).rstrip("/")
        pattern = re.compile(_START_OF_PATH + re.escape(name) + _END_OF_NAME)
        # Every service of a process adds its own (tests start several, each with its data dir).
        if not name.startswith("/") or any(pattern == known for known, _ in self._places):
            return
        self._places.append((pattern, shown))
        # Longest first: a scratch dir inside the data dir is named as the scratch dir.
        self._places.sort(key=lambda place: len(place[0].pattern), reverse=True)

    def text(self, text: str) -> str:
        """`text` with each registered folder written as its placeholder, then a path under an
        import root from that root on (`imageio_ffmpeg/binaries/…`, as a frame's file is named)."""
        for pattern, shown in self._places:
            text = pattern.sub(shown, text)
        roots = "|".join(re.escape(root) for root in _import_roots())  # longest first: it is tried first
        return re.sub(f"{_START_OF_PATH}(?:{roots})/", "", text)

    def traceback(self, text: str) -> str:
        """A formatted traceback with each frame's file named inside its import root (or by its
        name alone, when it lies under none), then the registered folders rewritten."""
        roots = _import_roots()

        def frame(match: re.Match[str]) -> str:
            path = match["path"]
            for root in roots:
                if path.startswith(root + "/"):
                    return match["head"] + path[len(root) + 1 :]
            return match["head"] + path.rpartition("/")[2]

        return self.text(_FRAME_FILE.sub(frame, text))


SHOWN_PATHS = ShownPaths()
