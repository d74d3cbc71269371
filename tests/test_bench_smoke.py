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
