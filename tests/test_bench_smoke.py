"""The benchmarks still run (tiny mode), so they cannot rot; their numbers are not judged here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


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


def test_comparison_benchmark_completes_every_task_and_prints_its_table():
    # bench/compare.py in tiny mode: taskd always; the reference stack only where `.[bench]` is installed.
    result = subprocess.run(
        [sys.executable, str(BENCH / "compare.py"), "--tiny"],
        capture_output=True,
        text=True,
        timeout=110,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "| | taskd | reference, prefork | reference, threads | taskd ÷ best reference |" in result.stdout
    assert "| end to end, tasks/s |" in result.stdout
    assert "taskd: 40 of 40 end-to-end tasks completed; 10 of 10 webhooks received" in result.stdout
    if "reference stack not installed" in result.stderr:
        assert "| not installed |" in result.stdout
    else:
        assert "reference (prefork): 40 of 40 end-to-end tasks completed" in result.stdout
        assert "reference (threads): 40 of 40 end-to-end tasks completed" in result.stdout
