"""The outbox is durable: a taskd killed between attempts makes the remaining ones after a restart."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest
from conftest import API_KEY
from examples import TASK_DATA
from webhook_receiver import WebhookReceiver


def env_for(data_dir, llm_url: str) -> dict[str, str]:
    return {
        "TASKD_DATA_DIR": str(data_dir),
        "TASKD_HTTP__PORT": "0",
        "TASKD_AUTH__API_KEYS": API_KEY,
        "TASKD_WORKER__POLL_DELAY": "0.02",
        "TASKD_PROVIDERS__LLM__BASE_URL": llm_url,
        "TASKD_WEBHOOKS__ALLOW_PRIVATE": "true",
    }


async def submit_with_callback(session: aiohttp.ClientSession, base_url: str, callback_url: str) -> str:
    body = {
        "project_id": "proj-1",
        "task_type": "test_prompt",
        "task_data": TASK_DATA["test_prompt"],
        "callback_url": callback_url,
    }
    async with session.post(
        f"{base_url}/api/v1/tasks/submit", json=body, headers={"X-API-Key": API_KEY}
    ) as r:
        return (await r.json())["task_id"]


async def webhook_of(session: aiohttp.ClientSession, base_url: str, task_id: str) -> dict | None:
    async with session.get(f"{base_url}/api/v1/tasks/{task_id}/status", headers={"X-API-Key": API_KEY}) as r:
        return (await r.json())["webhook"]


async def test_taskd_killed_after_the_first_failed_attempt_makes_the_rest_after_restart(
    spawn_taskd, tmp_path, fake_llm
):
    env = env_for(tmp_path / "data", fake_llm.base_url)
    async with WebhookReceiver() as receiver, aiohttp.ClientSession() as session:
        receiver.always(500)
        first = spawn_taskd("serve", env=env)
        task_id = await submit_with_callback(session, first.base_url, receiver.url())
        async with asyncio.timeout(20):
            while ((await webhook_of(session, first.base_url, task_id)) or {}).get("attempts") != 1:
                await asyncio.sleep(0.02)
        first.stop(signal.SIGKILL)
        killed_at = len(receiver.received)

        second = spawn_taskd("serve", env=env)
        await receiver.wait_for(4, timeout=20)
        async with asyncio.timeout(10):
            while not ((webhook := await webhook_of(session, second.base_url, task_id)) or {}).get(
                "failed_at"
            ):
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)

    times = [request.at for request in receiver.received]
    assert killed_at == 1
    assert len(times) == 4
    assert webhook["attempts"] == 4
    assert 3 <= times[3] - times[2] <= 6  # the documented 4 s back-off survives the restart
    assert {request.headers["webhook-id"] for request in receiver.received} == {f"msg_{task_id}_completed"}


@pytest.mark.long
async def test_taskd_killed_while_posting_a_webhook_its_finish_leased_sends_it_after_restart(
    spawn_taskd, tmp_path, fake_llm
):
    # The finish leases the end's webhook to its own process's sender (timeout 1 s + 30 s). Killed
    # with that POST in flight, before its outcome is recorded, the webhook waits out the lease in
    # the outbox and the next taskd sends it.
    env = {**env_for(tmp_path / "data", fake_llm.base_url), "TASKD_WEBHOOKS__TIMEOUT": "1"}
    async with WebhookReceiver() as receiver, aiohttp.ClientSession() as session:
        receiver.hang(10)
        first = spawn_taskd("serve", env=env)
        task_id = await submit_with_callback(session, first.base_url, receiver.url())
        await receiver.wait_for(1, timeout=20)
        first.stop(signal.SIGKILL)

        second = spawn_taskd("serve", env=env)
        [hung, sent] = await receiver.wait_for(2, timeout=60)
        async with asyncio.timeout(10):
            while not ((webhook := await webhook_of(session, second.base_url, task_id)) or {}).get(
                "delivered_at"
            ):
                await asyncio.sleep(0.05)

    assert hung.headers["webhook-id"] == sent.headers["webhook-id"] == f"msg_{task_id}_completed"
    assert sent.at - hung.at >= 25  # not before the finish's lease ran out
    assert webhook["attempts"] == 1
