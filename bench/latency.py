"""Start latency: "submit request sent -> handler started", over sequential no-op tasks on an idle taskd.

Runs `taskd serve` as its own process (embedded Valkey, the diagnostic task types loaded) and
submits one `noop` task at a time over HTTP from this process. The `noop` handler records the
wall-clock time it started; the latency is that minus the time just before the request was sent.

    .venv/bin/python bench/latency.py              # 300 tasks
    .venv/bin/python bench/latency.py --tasks 20   # quick check
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import API_KEY, percentile, python, spawn, stop, wait_for_line


def start_taskd(data_dir: str) -> tuple[subprocess.Popen[str], str]:
    """`taskd serve` on a free port; returns the process and its base URL."""
    env = {
        "TASKD_DATA_DIR": data_dir,
        "TASKD_HTTP__PORT": "0",
        "TASKD_AUTH__API_KEYS": API_KEY,
        "TASKD_TASKS__MODULES": "taskd.tasks.diagnostics",
        "TASKD_LOGGING__LEVEL": "WARNING",
        # A benchmark is not a client to protect the service from.
        "TASKD_LIMITS__SUBMIT_PER_MINUTE": "0",
        "TASKD_LIMITS__STATUS_PER_MINUTE": "0",
    }
    proc = spawn([python(), "-m", "taskd", "serve"], env)
    return proc, wait_for_line(proc, r"listening on (http://\S+)").group(1)


async def measure(base_url: str, tasks: int) -> list[float]:
    """Latencies in ms, one per sequential task."""
    latencies = []
    headers = {"X-API-Key": API_KEY}
    body = {"project_id": "bench", "task_type": "noop", "task_data": {}}
    async with aiohttp.ClientSession(base_url, headers=headers) as session:
        for _ in range(tasks + 5):  # the first few warm up connections and job processes
            sent = time.time()
            async with session.post("/api/v1/tasks/submit", json=body) as response:
                task_id = (await response.json())["task_id"]
            while True:
                # Polling slowly keeps the measuring client from competing with what it measures.
                await asyncio.sleep(0.02)
                async with session.get(f"/api/v1/tasks/{task_id}/status") as response:
                    status = await response.json()
                if status["status"] == "completed":
                    break
            latencies.append((status["result"]["handler_started_at"] - sent) * 1000)
    return latencies[5:]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        proc, base_url = start_taskd(data_dir)
        try:
            latencies = asyncio.run(measure(base_url, args.tasks))
        finally:
            stop(proc, timeout=60)
    print(
        f"start latency over {len(latencies)} sequential no-op tasks (submit request sent -> handler started)"
    )
    print("| p50 ms | p99 ms | max ms | mean ms |")
    print("|---:|---:|---:|---:|")
    print(
        f"| {percentile(latencies, 50):.2f} | {percentile(latencies, 99):.2f} | {max(latencies):.2f} "
        f"| {statistics.mean(latencies):.2f} |"
    )


if __name__ == "__main__":
    main()
