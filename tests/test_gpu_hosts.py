"""Every worker host in the GPU view: health, /metrics and the dashboard show the GPUs that each live
worker host publishes with its heartbeat, and a host that stops beating drops out.

An API node (`taskd serve --no-worker`, no GPU of its own) and two `taskd worker` processes with
their own host ids and data dirs: `gpu-a` with two simulated GPUs, `gpu-b` with one.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from chromium import Browser, find_chromium
from conftest import API_KEY, TaskdProcess, child_env
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from taskd import keys
from taskd.config import ConfigError, load_config
from taskd.embedded import EmbeddedValkey

CHROMIUM = find_chromium()
HEARTBEAT_TTL = 3.0  # child_env's
SIMULATED = {"gpu-a": 2, "gpu-b": 1}


@attrs.define
class Hosts:
    """The API node and the worker hosts."""

    spawn: Callable[..., TaskdProcess]
    root: Path
    api: str
    redis_url: str
    workers: dict[str, TaskdProcess] = attrs.Factory(dict)

    def start(self, host: str) -> None:
        """(Re)start worker host `host`, with its simulated GPUs and its own data dir."""
        env = child_env(
            self.root / host,
            TASKD_REDIS__URL=self.redis_url,
            TASKD_WORKER__HOST_ID=host,
            TASKD_GPU__SIMULATE=str(SIMULATED[host]),
            TASKD_GPU__SLOTS="2",
        )
        self.workers[host] = self.spawn("worker", env=env, wait_listening=False)


@pytest.fixture(scope="module")
def hosts(module_spawn_taskd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    root = tmp_path_factory.mktemp("hosts")
    api = module_spawn_taskd("serve", "--no-worker", env=child_env(root / "api", TASKD_GPU__SIMULATE="0"))
    redis_url = EmbeddedValkey.running_url(root / "api")
    assert redis_url is not None
    world = Hosts(module_spawn_taskd, root, str(api.base_url), redis_url)
    for host in SIMULATED:
        world.start(host)
    yield world


@pytest.fixture
async def client(hosts: Hosts) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(hosts.api, headers={"X-API-Key": API_KEY}) as session:
        yield session


async def get(client: aiohttp.ClientSession, path: str) -> Any:
    async with client.get(path) as response:
        assert response.status == 200, await response.text()
        return await response.json()


def shown(gpus: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(gpu["host"], gpu["index"]) for gpu in gpus]


async def health_when(client: aiohttp.ClientSession, wanted: list[tuple[str, int]]) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while shown((health := await get(client, "/api/v1/health")).get("gpus", [])) != wanted:
            await asyncio.sleep(0.1)
    return health


EVERY_DEVICE = [("gpu-a", 0), ("gpu-a", 1), ("gpu-b", 0)]


async def test_health_lists_the_gpus_of_every_worker_host_by_host_then_index(client):
    health = await health_when(client, EVERY_DEVICE)

    assert health["system_load"]["gpu_utilization"] == [0.0, 0.0, 0.0]
    assert [gpu["name"] for gpu in health["gpus"]] == [
        "Simulated GPU 0",
        "Simulated GPU 1",
        "Simulated GPU 0",
    ]
    assert {(gpu["slots"], gpu["slots_used"], gpu["temperature"]) for gpu in health["gpus"]} == {(2, 0, None)}
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", gpu["last_heartbeat"]) for gpu in health["gpus"]
    )
    assert "gpu_note" not in health


async def test_a_running_task_shows_on_the_device_of_the_host_that_runs_it(client, hosts):
    await health_when(client, EVERY_DEVICE)
    body = {"project_id": "hold", "task_type": "gpu_hold", "task_data": {"seconds": 30}}
    async with client.post("/api/v1/tasks/submit", json=body) as response:
        task_id = (await response.json())["task_id"]

    # Both hosts' workers may take a slot for it before one wins the claim; the loser gives its back.
    # The winner took its slot before its claim, so once the task runs its slot is held, and a
    # health reading with one slot held is the winner's (read before that, it may be the loser's).
    async with Redis.from_url(hosts.redis_url) as redis, asyncio.timeout(30):
        while (worker_id := await redis.hget(keys.task(task_id), "worker_id")) is None:
            await asyncio.sleep(0.05)
        while (
            len(holding := [gpu for gpu in (await get(client, "/api/v1/health"))["gpus"] if gpu["running"]])
            != 1
        ):
            await asyncio.sleep(0.1)
    async with client.delete(f"/api/v1/tasks/{task_id}"):
        pass

    [device] = holding
    assert device["running"] == {task_id: 1}
    assert device["slots_used"] == 1
    assert device["host"] == worker_id.decode().split(":")[0]  # worker ids start with their host id


async def test_metrics_carry_the_gpus_of_every_worker_host(client, hosts):
    await health_when(client, EVERY_DEVICE)

    async with aiohttp.ClientSession() as anonymous, anonymous.get(f"{hosts.api}/metrics") as response:
        text = await response.text()

    labels = sorted(
        (sample.labels["host"], sample.labels["gpu"])
        for family in text_string_to_metric_families(text)
        if family.name == "taskd_gpu_utilization_ratio"
        for sample in family.samples
    )
    assert labels == [("gpu-a", "0"), ("gpu-a", "1"), ("gpu-b", "0")]


async def test_the_dashboard_shows_the_gpus_of_every_worker_host(client):
    await health_when(client, EVERY_DEVICE)

    overview = await get(client, "/api/v1/dashboard/overview")

    assert overview["gpus"]["available"] is True
    assert shown(overview["gpus"]["devices"]) == EVERY_DEVICE
    assert sorted({worker["host"] for worker in overview["workers"]}) == ["gpu-a", "gpu-b"]


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (Debian: apt-get install chromium); it drives the dashboard",
)
async def test_in_chromium_the_dashboard_page_shows_each_gpu_under_its_host(client, hosts, tmp_path):
    await health_when(client, EVERY_DEVICE)
    assert CHROMIUM is not None
    browser = await Browser.start(CHROMIUM, tmp_path / "chromium")
    try:
        await browser.navigate(f"{hosts.api}/dashboard")
        await browser.wait_for("!document.getElementById('key-panel').hidden")
        await browser.evaluate(
            f"document.getElementById('api-key').value = {json.dumps(API_KEY)};"
            "document.getElementById('key-form').requestSubmit(); true"
        )
        await browser.wait_for("document.querySelectorAll('#gpus .gpu').length === 3")
        titles = await browser.evaluate(
            "Array.from(document.querySelectorAll('#gpus .gpu strong'), (node) => node.textContent.trim())"
        )
        exceptions = browser.exceptions
    finally:
        await browser.close()

    assert titles == ["gpu-a · GPU 0", "gpu-a · GPU 1", "gpu-b · GPU 0"]
    assert exceptions == []


async def test_a_killed_worker_host_drops_out_of_the_gpu_view_when_its_report_expires(client, hosts):
    await health_when(client, EVERY_DEVICE)

    hosts.workers["gpu-b"].stop(signal.SIGKILL)
    killed_at = time.monotonic()
    still = shown((await get(client, "/api/v1/health"))["gpus"])
    health = await health_when(client, [("gpu-a", 0), ("gpu-a", 1)])
    gone_after = time.monotonic() - killed_at
    async with aiohttp.ClientSession() as anonymous, anonymous.get(f"{hosts.api}/metrics") as response:
        metrics = await response.text()
    hosts.start("gpu-b")  # for the module's other tests

    assert still == EVERY_DEVICE  # its last report lives out its TTL
    assert health["system_load"]["gpu_utilization"] == [0.0, 0.0]
    assert gone_after <= HEARTBEAT_TTL + 2
    assert 'host="gpu-b"' not in metrics
    assert 'host="gpu-a"' in metrics


def test_the_report_key_of_a_host_is_under_the_hash_tag():
    assert keys.gpu_host("gpu-a") == "{taskd}:gpu_host:gpu-a"
    assert keys.GPU_HOSTS == "{taskd}:gpu_hosts"


@pytest.mark.parametrize("host_id", ["a:b", "-lead", "x" * 65, "gpu a"])
def test_a_host_id_that_is_not_a_short_plain_name_is_refused(host_id):
    with pytest.raises(ConfigError, match=r"host_id.*1-64 letters"):
        load_config(environ={"TASKD_WORKER__HOST_ID": host_id})


def test_without_a_host_id_the_host_is_the_hostname():
    assert load_config(environ={}).worker.host == socket.gethostname()
