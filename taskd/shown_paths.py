"""The operator's paths, taken out of what a task's caller reads: its `error` and `traceback`.

A traceback names each frame's file by its absolute path, which says where taskd is installed: a
home directory and its user's name, the virtualenv, the Python build. A caller needs only the
file's path inside what it was imported from (`taskd/media/download.py`, `asyncio/tasks.py`), in
a frame as in an error's text (a tool's binary inside a package). A file-system error names a
path in the data dir, the media dir or the scratch dir: those are written
`<data_dir>`, `<media_dir>`, `<scratch_dir>`, as ffmpeg's errors already name their scratch file
alone, and one in the home dir of taskd's user (a model cache) `~/…`, in a `file://` URL as well
(`file://~/…`). The worker's log line of a
failure quotes the error as the caller reads it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import taskd

# A frame's line of a formatted traceback: `  File "/abs/path.py", line 12, in run`, matched from
# the newline before it (the text is read with one put first): a literal start `re` finds quickly,
# and each line is read once. Finding `File "` first and then looking back for its line's start
# read a line again for each `File "` in it: 3.4 s of the worker's loop for one 1 MiB line of
# them, a handler's error message quoting a caller's text.
_FRAME_FILE = re.compile(r'\n(?P<indent>[ \t]*)File "(?P<path>/[^"\n]*)(?=", line \d)')
# What may not come before a folder's absolute name, and after it, when that folder is meant: the
# path of a URL (`https://example.com/data/x`), a longer name that starts the same (`/database`).
# Checked apart from the pattern, which then starts with its literal, the one form `re` looks for
# quickly (a lookbehind first took 4 s over a 40 MiB error, on the worker's loop).
_IN_A_NAME = frozenset("_.~/-")
_END_OF_NAME = r"(?![\w.-])"
# A file URL's path is a path of this machine, though a `/` comes before it (`file:///home/u/x`, or
# with the host named, `file://localhost/home/u/x`): read just before a match, at its end.
_FILE_URL = re.compile(r"file://(?:localhost)?\Z", re.IGNORECASE)
_FILE_URL_MAX = len("file://localhost")
# taskd itself, wherever it was imported from: an editable install is found through an import
# hook, not a sys.path entry.
_TASKD_ROOT = str(Path(taskd.__file__).resolve().parent.parent)


def _import_roots() -> list[str]:
    """Every folder modules are imported from, longest first (a venv's site-packages before the
    folder it lies in). Read each time: a plugin may add to sys.path after start."""
    roots = {entry.rstrip("/") for entry in sys.path if entry.startswith("/")} | {_TASKD_ROOT}
    return sorted((root for root in roots if root), key=len, reverse=True)


def _at_path_starts(pattern: re.Pattern[str], shown: str, text: str) -> str:
    """`text` with `shown` for each match of `pattern` that starts a path."""

    def one(match: re.Match[str]) -> str:
        start = match.start()
        if _FILE_URL.search(text, max(0, start - _FILE_URL_MAX), start):
            return shown  # the path of a file:// URL is the file's (RFC 8089): `file://<data_dir>/x`
        before = text[start - 1] if start else " "
        return match[0] if before.isalnum() or before in _IN_A_NAME else shown

    return pattern.sub(one, text)


class ShownPaths:
    """Rewrites the operator's paths in text shown to a task's caller."""

    def __init__(self) -> None:
        self._places: dict[str, re.Pattern[str]] = {}  # placeholder: the folder's pattern

    def add(self, folder: str | Path, shown: str) -> None:
        """Write `folder` (absolute) as `shown` from now on, in errors and tracebacks, in place of
        the folder `shown` stood for before: a process serves one config (a test process starts
        many, one after another; their patterns would pile up, each read over every error)."""
        name = str(folder).rstrip("/")
        if name.startswith("/"):
            self._places[shown] = re.compile(re.escape(name) + _END_OF_NAME)

    def text(self, text: str) -> str:
        """`text` with each registered folder written as its placeholder, then a path under an
        import root from that root on (`imageio_ffmpeg/binaries/…`, as a frame's file is named)."""
        # Longest first: a scratch dir inside the data dir is named as the scratch dir.
        for shown, pattern in sorted(self._places.items(), key=lambda place: -len(place[1].pattern)):
            text = _at_path_starts(pattern, shown, text)
        for root in _import_roots():  # longest first: site-packages before the venv it lies in
            text = _at_path_starts(re.compile(re.escape(root + "/")), "", text)
        return text

    def traceback(self, text: str) -> str:
        """A formatted traceback with each frame's file named inside its import root (or by its
        name alone, when it lies under none), then the registered folders rewritten."""
        roots = _import_roots()

        def frame(match: re.Match[str]) -> str:
            path = match["path"]
            for root in roots:
                if path.startswith(root + "/"):
                    return f'\n{match["indent"]}File "{path[len(root) + 1 :]}'
            return f'\n{match["indent"]}File "{path.rpartition("/")[2]}'

        return self.text(_FRAME_FILE.sub(frame, "\n" + text)[1:])


SHOWN_PATHS = ShownPaths()
