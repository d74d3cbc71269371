"""The webhook path inside one process: a completion wakes the local sender, which keeps its connections."""

from __future__ import annotations

import asyncio

from conftest import RunningService
from examples import TASK_DATA
from webhook_receiver import WebhookReceiver

from taskd.config import WebhooksConfig
from taskd.webhooks import sender


async def submit_prompt(service: RunningService, receiver: WebhookReceiver) -> str:
    body = await service.submit("test_prompt", TASK_DATA["test_prompt"], callback_url=receiver.url())
    return str(body["task_id"])


async def test_a_completion_wakes_the_sender_of_its_own_process(
    start_service, fake_llm, receiver, monkeypatch
):
    # With no pub/sub wake-up and an hour between polls, only the worker's own call to the
    # sender of its process can get the webhook out within the test.
    async def deaf(self: sender.WebhookSender) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(sender, "POLL_INTERVAL", 3600.0)
    monkeypatch.setattr(sender.WebhookSender, "_listen", deaf)
    service = await start_service(llm_url=fake_llm.base_url, webhooks=WebhooksConfig(allow_private=True))
    fake_llm.reply("done")
    task_id = await submit_prompt(service, receiver)
    [request] = await receiver.wait_for(1, timeout=20)
    assert request.json["task_id"] == task_id


async def test_webhooks_to_one_receiver_share_one_connection(start_service, fake_llm, receiver):
    service = await start_service(llm_url=fake_llm.base_url, webhooks=WebhooksConfig(allow_private=True))
    for count in range(1, 6):
        fake_llm.reply("done")
        await submit_prompt(service, receiver)
        await receiver.wait_for(count, timeout=20)
    assert len({request.peer for request in receiver.received}) == 1
