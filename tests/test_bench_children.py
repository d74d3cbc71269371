"""bench/_common.py's child processes: their output is read as it comes, so a child that prints a
lot is never blocked on a full pipe, and its last lines are there when it fails."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def common() -> ModuleType:
    # bench/ is scripts, not a package: load the module by its path.
    spec = importlib.util.spec_from_file_location("bench_common", BENCH / "_common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def child(common: ModuleType, code: str) -> subprocess.Popen[str]:
    proc: subprocess.Popen[str] = common.spawn([sys.executable, "-c", code], {})
    return proc


def test_a_child_printing_far_more_than_a_pipe_holds_runs_to_its_end_with_nobody_reading(common: ModuleType):
    # 4 MB of lines: a pipe holds 64 KiB, so an unread child would block on its write.
    proc = child(common, "for n in range(200_000): print(f'line {n:>12}')")

    assert proc.wait(timeout=60) == 0
    tail = common.output(proc).splitlines()
    assert len(tail) == common.TAIL_LINES
    assert tail[-1] == f"line {199_999:>12}"


def test_wait_for_line_returns_the_match_and_the_lines_after_it_stay_readable(common: ModuleType):
    proc = child(common, "print('starting'); print('listening on http://127.0.0.1:1234'); print('ready')")

    match = common.wait_for_line(proc, r"listening on (http://\S+)", timeout=30)

    assert match.group(1) == "http://127.0.0.1:1234"
    proc.wait(timeout=30)
    assert common.output(proc).splitlines() == ["starting", "listening on http://127.0.0.1:1234", "ready"]


def test_wait_for_line_fails_at_once_with_the_last_lines_of_a_child_that_exits_without_it(common: ModuleType):
    proc = child(common, "import sys; print('config error: no such file'); sys.exit(2)")
    started = time.monotonic()

    with pytest.raises(RuntimeError, match="config error: no such file"):
        common.wait_for_line(proc, r"listening on", timeout=60)
    assert time.monotonic() - started < 30  # the child's exit ends the wait, not the timeout
    assert proc.wait(timeout=30) == 2
