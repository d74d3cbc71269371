"""taskd as real processes: serve + worker on one Redis, API-only and queue-restricted nodes, restarts."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from conftest import API_KEY, TERMINAL, child_env
from examples import TASK_DATA
from redis.asyncio import Redis

from taskd.embedded import EmbeddedValkey


def env_for(data_dir: Path, **extra: str) -> dict[str, str]:
    return child_env(data_dir, **extra)


class Client:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session, self.base_url = session, base_url

    async def call(self, method: str, path: str, **kwargs):
        async with self.session.request(
            method, self.base_url + path, headers={"X-API-Key": API_KEY}, **kwargs
        ) as response:
            return response.status, await response.json()

    async def submit(self, task_type: str, task_data: dict, project_id: str = "proc") -> str:
        status, body = await self.call(
            "POST",
            "/api/v1/tasks/submit",
            json={"project_id": project_id, "task_type": task_type, "task_data": task_data},
        )
        assert status == 200, body
        return body["task_id"]

    async def wait_terminal(self, task_id: str, timeout: float = 30) -> dict:
        async with asyncio.timeout(timeout):
            while True:
                _, body = await self.call("GET", f"/api/v1/tasks/{task_id}/status")
                if body["status"] in TERMINAL:
                    return body
                await asyncio.sleep(0.05)


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as client_session:
        yield client_session


async def test_api_only_serve_and_a_separate_worker_share_one_redis(spawn_taskd, tmp_path, session, fake_llm):
    api = spawn_taskd("serve", "--no-worker", env=env_for(tmp_path / "data"))
    client = Client(session, api.base_url)
    task_id = await client.submit("test_prompt", TASK_DATA["test_prompt"])
    await asyncio.sleep(0.3)
    _, still_queued = await client.call("GET", f"/api/v1/tasks/{task_id}/status")

    spawn_taskd(
        "worker",
        env=env_for(tmp_path / "data", TASKD_PROVIDERS__LLM__BASE_URL=fake_llm.base_url),
        wait_listening=False,
    )
    body = await client.wait_terminal(task_id)

    assert still_queued["status"] == "queued"
    assert body["status"] == "completed"
    _, health = await client.call("GET", "/api/v1/health")
    assert health["worker_count"] == 1


async def test_serve_and_a_worker_reach_the_embedded_valkey_through_its_unix_socket(
    spawn_taskd, tmp_path, session
):
    api = spawn_taskd("serve", "--no-worker", env=env_for(tmp_path / "data"))
    spawn_taskd("worker", env=env_for(tmp_path / "data"), wait_listening=False)
    client = Client(session, api.base_url)
    async with asyncio.timeout(30):
        while (await client.call("GET", "/api/v1/health"))[1]["worker_count"] != 1:
            await asyncio.sleep(0.05)

    url = EmbeddedValkey.running_url(tmp_path / "data")
    assert url is not None and url.startswith("unix://")
    redis = Redis.from_url(url)
    try:
        clients = await redis.client_list()
    finally:
        await redis.aclose()
    # Flag U: a client on the unix socket. The API's and the worker's connections, and this one.
    assert len(clients) > 2
    assert all("U" in entry["flags"] for entry in clients)


async def test_worker_restricted_to_queues_leaves_the_others(spawn_taskd, tmp_path, session, fake_llm):
    api = spawn_taskd("serve", "--no-worker", env=env_for(tmp_path / "data"))
    client = Client(session, api.base_url)
    spawn_taskd(
        "worker",
        "--queues",
        "cpu_intensive,gpu_heavy",
        env=env_for(tmp_path / "data", TASKD_PROVIDERS__LLM__BASE_URL=fake_llm.base_url),
        wait_listening=False,
    )

    burn = await client.submit("cpu", {"seconds": 0.1})
    prompt = await client.submit("test_prompt", TASK_DATA["test_prompt"])
    burn_body = await client.wait_terminal(burn)
    await asyncio.sleep(0.5)
    _, prompt_body = await client.call("GET", f"/api/v1/tasks/{prompt}/status")

    assert burn_body["status"] == "completed"
    assert prompt_body["status"] == "queued"


async def test_worker_with_no_redis_and_no_serve_says_what_to_do(tmp_path):
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "taskd",
        "worker",
        env={"TASKD_DATA_DIR": str(tmp_path / "none"), "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await proc.communicate()

    assert proc.returncode == 2
    assert "no redis.url is set and no embedded server runs" in stderr.decode()


async def test_restart_on_the_same_data_dir_keeps_tasks_and_metrics(spawn_taskd, tmp_path, session, fake_llm):
    env = env_for(tmp_path / "data", TASKD_PROVIDERS__LLM__BASE_URL=fake_llm.base_url)
    first = spawn_taskd("serve", env=env)
    client = Client(session, first.base_url)
    done = await client.submit("test_prompt", TASK_DATA["test_prompt"])
    await client.wait_terminal(done)
    _, metrics_before = await client.call("GET", "/api/v1/tasks/metrics")
    assert first.stop(signal.SIGTERM) == 0

    second = spawn_taskd("serve", env=env)
    client = Client(session, second.base_url)
    _, body = await client.call("GET", f"/api/v1/tasks/{done}/status")
    _, metrics_after = await client.call("GET", "/api/v1/tasks/metrics")

    assert body["status"] == "completed"
    assert metrics_after["metrics"]["total_tasks"] == metrics_before["metrics"]["total_tasks"] == 1
    assert metrics_after["metrics"]["completed_tasks"] == 1


async def test_restart_after_sigkill_keeps_acknowledged_tasks(spawn_taskd, tmp_path, session):
    env = env_for(tmp_path / "data")
    first = spawn_taskd("serve", "--no-worker", env=env)
    client = Client(session, first.base_url)
    queued = await client.submit("generate_video", {"duration": 7})
    # appendfsync everysec: a killed process (not a crashed machine) loses nothing already written.
    first.stop(signal.SIGKILL)

    second = spawn_taskd("serve", "--no-worker", env=env)
    status, body = await Client(session, second.base_url).call("GET", f"/api/v1/tasks/{queued}/status")

    assert status == 200
    assert body["status"] == "queued"


async def test_generated_api_key_is_printed_and_kept(spawn_taskd, tmp_path, session):
    env = env_for(tmp_path / "data")
    del env["TASKD_AUTH__API_KEYS"]
    proc = spawn_taskd("serve", "--no-worker", env=env)
    key = (tmp_path / "data" / "api_key").read_text().strip()

    async with session.get(proc.base_url + "/api/v1/tasks/metrics", headers={"X-API-Key": key}) as response:
        assert response.status == 200
    assert (tmp_path / "data" / "api_key").stat().st_mode & 0o777 == 0o600


async def test_embedded_valkey_stops_with_serve(spawn_taskd, tmp_path):
    proc = spawn_taskd("serve", "--no-worker", env=env_for(tmp_path / "data"))
    assert EmbeddedValkey.running_url(tmp_path / "data") is not None

    assert proc.stop(signal.SIGTERM) == 0

    assert EmbeddedValkey.running_url(tmp_path / "data") is None
