"""Completion-to-webhook latency: how long after a task ends its receiver gets the POST.

Starts everything in this process: an embedded Valkey, a fake OpenAI server (so `test_prompt`
finishes at once), a local webhook receiver and taskd itself (API + workers + webhook sender).
Submits N tasks with a callback_url and reports, per task, the receiver's arrival time minus the
task's `completed_at` (read from Redis, full precision).

    .venv/bin/python bench/webhook_latency.py --tasks 20      # tiny run
    .venv/bin/python bench/webhook_latency.py --tasks 1000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fake_openai import FakeOpenAI
from webhook_receiver import WebhookReceiver

from taskd.config import (
    AuthConfig,
    Config,
    HttpConfig,
    LimitsConfig,
    LlmProvider,
    ProvidersConfig,
    RedisConfig,
    WebhooksConfig,
)
from taskd.embedded import EmbeddedValkey
from taskd.service import Service
from taskd.store import TaskStore

API_KEY = "bench-key-0123456789"
TASK_DATA = {"prompt_template": "Say {{word}}", "test_parameters": {"word": "hello"}}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def submit_all(base_url: str, callback_url: str, count: int, rate: float) -> list[str]:
    """Submit `count` tasks, `rate` per second (0: as fast as possible)."""
    ids = []
    async with aiohttp.ClientSession(base_url=base_url, headers={"X-API-Key": API_KEY}) as client:
        for _ in range(count):
            body = {"project_id": "bench", "task_type": "test_prompt", "task_data": TASK_DATA}
            async with client.post("/api/v1/tasks/submit", json={**body, "callback_url": callback_url}) as r:
                answer = await r.json()
                if r.status != 200:
                    raise SystemExit(f"submit refused: {r.status} {answer}")
                ids.append(answer["task_id"])
            if rate:
                await asyncio.sleep(1 / rate)
    return ids


async def run(tasks: int, rate: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        valkey = EmbeddedValkey(Path(tmp) / "redis")
        url = await valkey.start()
        try:
            async with FakeOpenAI() as llm, WebhookReceiver() as receiver:
                config = Config(
                    data_dir=str(Path(tmp) / "data"),
                    http=HttpConfig(port=0),
                    auth=AuthConfig(api_keys=[API_KEY]),
                    redis=RedisConfig(url=url),
                    providers=ProvidersConfig(
                        llm=LlmProvider(base_url=llm.base_url, api_key="sk", timeout=5)
                    ),
                    webhooks=WebhooksConfig(allow_private=True),
                    limits=LimitsConfig(submit_per_minute=0, status_per_minute=0, concurrent_per_project=0),
                )
                service = Service(config, http=True, workers=True)
                await service.start()
                try:
                    host, port = service.addresses[0]
                    started = time.monotonic()
                    ids = await submit_all(f"http://{host}:{port}", receiver.url(), tasks, rate)
                    await receiver.wait_for(tasks, timeout=60 + tasks / 10)
                    elapsed = time.monotonic() - started
                    redis = Redis.from_url(url)
                    store = TaskStore(redis, config.storage.task_ttl)
                    completed = {task_id: (await store.get(task_id)).completed_at for task_id in ids}
                    await redis.aclose()
                finally:
                    await service.stop(grace=1)
        finally:
            await valkey.stop()
    arrivals = {request.json["task_id"]: request.wall for request in receiver.received}
    latencies = [(arrivals[task_id] - done) * 1000 for task_id, done in completed.items() if done is not None]
    print(f"{'tasks':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'mean ms':>8} {'wall s':>7}")
    print(
        f"{len(latencies):>6} {percentile(latencies, 50):>8.1f} {percentile(latencies, 99):>8.1f} "
        f"{max(latencies):>8.1f} {statistics.fmean(latencies):>8.1f} {elapsed:>7.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=200, help="how many tasks (default 200)")
    parser.add_argument(
        "--rate", type=float, default=50, help="submissions per second; 0 = all at once (default 50)"
    )
    args = parser.parse_args()
    asyncio.run(run(args.tasks, args.rate))


if __name__ == "__main__":
    main()
