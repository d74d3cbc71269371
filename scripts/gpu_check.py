"""Run real CUDA jobs through taskd and show where they ran: a check for a machine with NVIDIA GPUs.

Needs an NVIDIA driver (NVML) and PyTorch with CUDA in taskd's environment
(`.venv/bin/pip install torch`). Starts an embedded Valkey and taskd (API + workers) in this
process with the diagnostic task types, submits `--jobs` `cuda_matmul` jobs (each takes one GPU
slot, `--slots` per device), then prints: the devices NVML sees, the slot occupancy and NVML
utilisation sampled while the jobs run, and which device each job ran on.

    .venv/bin/python scripts/gpu_check.py --jobs 8 --slots 2 --size 4096 --iterations 300
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from taskd.config import AuthConfig, Config, GpuConfig, HttpConfig, LimitsConfig, RedisConfig, TasksConfig
from taskd.embedded import EmbeddedValkey
from taskd.gpu.devices import GpuInventory
from taskd.service import Service

KEY = "gpu-check-key-0123456789"
TERMINAL = {"completed", "failed", "cancelled"}


async def sample(
    session: aiohttp.ClientSession, stop: asyncio.Event, rows: list[str], started: float
) -> None:
    """Every 0.5 s: per device, slots used and NVML utilisation."""
    while not stop.is_set():
        async with session.get("/api/v1/health") as response:
            health = await response.json()
        cells = [
            f"gpu{g['index']}: {g['slots_used']}/{g['slots']} slots {g['utilization']:5.1f}%"
            for g in health["gpus"]
        ]
        rows.append(f"{time.monotonic() - started:6.1f}s  " + "  ".join(cells))
        await asyncio.sleep(0.5)


async def check(args: argparse.Namespace) -> int:
    inventory = GpuInventory(GpuConfig())
    devices = inventory.read()
    if not devices:
        print("No NVIDIA GPU visible through NVML: nothing to check here.")
        return 2
    print("Devices (NVML):")
    for device in devices:
        print(
            f"  {device.index}: {device.name}, {device.memory_total / 1024**3:.1f} GiB, {device.utilization}% busy"
        )
    with tempfile.TemporaryDirectory() as tmp:
        valkey = EmbeddedValkey(Path(tmp) / "redis")
        url = await valkey.start()
        config = Config(
            data_dir=tmp,
            http=HttpConfig(port=0),
            auth=AuthConfig(api_keys=[KEY]),
            redis=RedisConfig(url=url),
            gpu=GpuConfig(slots=args.slots),
            tasks=TasksConfig(modules=["taskd.tasks.diagnostics"]),
            limits=LimitsConfig(submit_per_minute=0, status_per_minute=0, concurrent_per_project=0),
        )
        service = Service(config, http=True, workers=True)
        await service.start()
        host, port = service.addresses[0]
        try:
            async with aiohttp.ClientSession(f"http://{host}:{port}", headers={"X-API-Key": KEY}) as session:
                ids = []
                data = {"size": args.size, "iterations": args.iterations}
                for _ in range(args.jobs):
                    body = {"project_id": "gpu-check", "task_type": "cuda_matmul", "task_data": data}
                    async with session.post("/api/v1/tasks/submit", json=body) as response:
                        ids.append((await response.json())["task_id"])
                stop, rows = asyncio.Event(), []
                sampler = asyncio.create_task(sample(session, stop, rows, time.monotonic()))
                results = []
                for task_id in ids:
                    while True:
                        async with session.get(f"/api/v1/tasks/{task_id}/status") as response:
                            status = await response.json()
                        if status["status"] in TERMINAL:
                            results.append(status)
                            break
                        await asyncio.sleep(0.2)
                stop.set()
                await sampler
        finally:
            await service.stop()
            await valkey.stop()
    print("\nSlot occupancy and NVML utilisation over time:")
    print("\n".join(rows))
    print("\nJobs:")
    failures = 0
    for status in results:
        if status["status"] != "completed":
            failures += 1
            print(f"  {status['task_id']}: {status['status']}: {status['error']}")
            continue
        result = status["result"]
        seconds = result["ended"] - result["started"]
        print(
            f"  {status['task_id']}: device {result['device']} ({result['gpu_name']}), "
            f"CUDA_VISIBLE_DEVICES={result['cuda_visible_devices']}, {seconds:.2f} s, pid {result['pid']}"
        )
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--iterations", type=int, default=300)
    sys.exit(asyncio.run(check(parser.parse_args())))


if __name__ == "__main__":
    main()
