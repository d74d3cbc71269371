"""Helpers shared by the benchmarks in bench/: percentiles, child processes, memory, the submit body."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
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


def spawn(argv: list[str], env: Mapping[str, str], cwd: Path | None = None) -> subprocess.Popen[str]:
    """A child process in its own process group, its output kept for when it fails to start."""
    return subprocess.Popen(
        argv,
        env={**os.environ, **env},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for_line(proc: subprocess.Popen[str], pattern: str, timeout: float = 60) -> re.Match[str]:
    """Read the child's output until a line matches `pattern`; then keep draining it in the background."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    for line in proc.stdout:
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            _drain(proc)
            return match
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"{proc.args[:3]} did not print {pattern!r}; its output:\n{''.join(seen[-40:])}")


# Children whose output a thread of _drain reads (and closes at its end).
_DRAINED: weakref.WeakSet[subprocess.Popen[str]] = weakref.WeakSet()


def _drain(proc: subprocess.Popen[str]) -> None:
    # A child whose pipe fills up blocks on its next log line; read and drop the rest.
    import threading

    _DRAINED.add(proc)

    def drop() -> None:
        assert proc.stdout is not None
        with proc.stdout:  # closed at its end: the child has exited
            for _ in proc.stdout:
                pass

    threading.Thread(target=drop, daemon=True).start()


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
    # Output kept for a failure (a worker's, never drained) is not needed once the child is gone.
    if proc.stdout is not None and proc not in _DRAINED:
        proc.stdout.close()


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
