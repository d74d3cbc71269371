"""The benchmarks still run (tiny mode), so they cannot rot; their numbers are not judged here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


def test_latency_benchmark_prints_its_table():
    result = subprocess.run(
        [sys.executable, str(BENCH / "latency.py"), "--tasks", "10"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert "start latency over 10 sequential no-op tasks" in result.stdout
    assert "| p50 ms | p99 ms |" in result.stdout


def test_comparison_benchmark_of_taskd_alone_completes_every_task_and_prints_its_table():
    # taskd only: the peers need their virtualenvs (built from the network by `make bench`).
    latest = BENCH / "results" / "latest.json"
    before = latest.read_bytes() if latest.exists() else None

    result = subprocess.run(
        [sys.executable, str(BENCH / "compare.py"), "--tiny", "--no-peers"],
        capture_output=True,
        text=True,
        timeout=110,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "| | taskd | taskd ÷ reference | taskd ÷ best peer | target | met |" in result.stdout
    assert "| end to end, tasks/s |" in result.stdout
    assert "| worker draining a queue, tasks/s |" in result.stdout
    assert "taskd: 40 of 40 end-to-end tasks completed; 10 of 10 webhooks received" in result.stdout
    assert "building" not in result.stderr
    # A tiny run measures nothing: the committed results of a full run stay as they are.
    assert (latest.read_bytes() if latest.exists() else None) == before
