"""Helpers shared by the benchmarks in bench/: percentiles, child processes, memory, the submit body."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench-key-0123456789"
SUBMIT_PATH = "/api/v1/tasks/submit"
# What every benchmark client submits: a valid body of the document's shape, for the `noop` type.
SUBMIT_BODY = {
    "project_id": "bench_project",
    "task_type": "noop",
    "task_data": {},
    "priority": 2,
    "metadata": {"user_id": "bench"},
}


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank; NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# How many of a child's last lines are kept for when it fails.
TAIL_LINES = 200


class _Output:
    """A child's output, read by a thread of its own from the start, so that a pipe nobody reads
    never fills and blocks the child on its next line (a `taskd worker` logging at INFO does); the
    last TAIL_LINES lines are kept for an error message."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.changed = threading.Condition()
        self.ended = False
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with proc.stdout:  # closed at its end: the child has exited
            for line in proc.stdout:
                with self.changed:
                    self.lines.append(line)
                    self.changed.notify_all()
        with self.changed:
            self.ended = True
            self.changed.notify_all()


_OUTPUTS: weakref.WeakKeyDictionary[subprocess.Popen[str], _Output] = weakref.WeakKeyDictionary()


def spawn(argv: list[str], env: Mapping[str, str], cwd: Path | None = None) -> subprocess.Popen[str]:
    """A child process in its own process group, its output read as it comes (`output`)."""
    proc = subprocess.Popen(
        argv,
        env={**os.environ, **env},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    _OUTPUTS[proc] = _Output(proc)
    return proc


def output(proc: subprocess.Popen[str], wait: float = 5) -> str:
    """The last lines a child of `spawn` printed; all of them once it has exited (waiting up to
    `wait` s for the reader to reach the end)."""
    out = _OUTPUTS[proc]
    with out.changed:
        if proc.poll() is not None:
            out.changed.wait_for(lambda: out.ended, timeout=wait)
        return "".join(out.lines)


def wait_for_line(proc: subprocess.Popen[str], pattern: str, timeout: float = 60) -> re.Match[str]:
    """Wait until a line the child of `spawn` printed matches `pattern`."""
    out = _OUTPUTS[proc]

    def first_match() -> re.Match[str] | None:
        return next((match for line in out.lines if (match := re.search(pattern, line))), None)

    with out.changed:
        out.changed.wait_for(lambda: out.ended or first_match() is not None, timeout=timeout)
        match = first_match()
    if match is None:
        raise RuntimeError(f"{proc.args[:3]} did not print {pattern!r}; its output:\n{output(proc)}")
    return match


def stop(proc: subprocess.Popen[str], timeout: float = 30) -> None:
    """SIGTERM the child's process group, then SIGKILL it if it has not exited in `timeout` s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    # Whatever is left of the group (a pool child, a job process) goes too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def tree(pids: Iterable[int]) -> list[psutil.Process]:
    """The processes `pids` and all their descendants."""
    found: dict[int, psutil.Process] = {}
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                found[proc.pid] = proc
    return list(found.values())


def memory_mb(pids: Iterable[int]) -> float:
    """Proportional set size (PSS) of the processes and their descendants, in MiB.

    PSS splits each shared page among the processes that map it, so forked children (Celery's
    prefork pool, taskd's job processes) are not counted twice for the pages they share with
    their parent. Falls back to RSS where PSS cannot be read.
    """
    total = 0
    for proc in tree(pids):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            try:
                total += proc.memory_full_info().pss
            except (AttributeError, psutil.AccessDenied):
                total += proc.memory_info().rss
    return total / (1024 * 1024)


def python() -> str:
    """The interpreter running the benchmark (the venv's)."""
    return sys.executable
