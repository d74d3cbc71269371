"""`python -m taskd ...` as a child process whose stderr is kept in a file, for tests that read its logs."""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import sys
from pathlib import Path


def taskd_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """This environment without TASKD_ variables, plus a data dir, a free port and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    env.update(TASKD_DATA_DIR=str(data_dir), TASKD_HTTP__PORT="0", **extra)
    return env


def start(
    args: list[str], env: dict[str, str], cwd: Path, stderr: Path | None = None
) -> subprocess.Popen[str]:
    """Start `python -m taskd *args`; stderr goes to the file `stderr` (or is dropped)."""
    err = stderr.open("w") if stderr is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "taskd", *args],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    finally:
        if stderr is not None:
            err.close()


def wait_listening(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    """The base URL the child prints once its API listens."""
    selector = selectors.DefaultSelector()
    assert proc.stdout is not None
    selector.register(proc.stdout, selectors.EVENT_READ)
    while selector.select(timeout):
        line = proc.stdout.readline()
        if not line:
            break
        if match := re.search(r"listening on (http://\S+)", line):
            return match.group(1)
    raise AssertionError("taskd did not start listening")


def stop(proc: subprocess.Popen[str], timeout: float = 30) -> int:
    """SIGTERM the child and wait for it; its exit status."""
    if proc.poll() is None:
        proc.terminate()
    code = proc.wait(timeout)
    if proc.stdout is not None:
        proc.stdout.close()
    return code
