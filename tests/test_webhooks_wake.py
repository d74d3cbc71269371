"""The webhook path inside one process: a completion hands its webhook, leased by the finish, to the
local sender, which POSTs it on a kept connection; the outbox still has it if that POST never happens."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from conftest import RunningService
from examples import TASK_DATA
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from webhook_receiver import WebhookReceiver

from taskd import keys
from taskd.config import WebhooksConfig
from taskd.model import TaskRecord
from taskd.webhooks import connections, outbox, sender


async def submit_prompt(service: RunningService, receiver: WebhookReceiver) -> str:
    body = await service.submit("test_prompt", TASK_DATA["test_prompt"], callback_url=receiver.url())
    return str(body["task_id"])


@pytest.fixture
def claimed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The outbox members every claim in this test took (the claims themselves run as usual)."""
    taken: list[str] = []
    real_claim = outbox.Outbox.claim

    async def claim(self: outbox.Outbox, *args: Any) -> tuple[list[outbox.Claim], int | None]:
        claims, first_due = await real_claim(self, *args)
        taken.extend(claim.task_id for claim in claims)
        return claims, first_due

    monkeypatch.setattr(outbox.Outbox, "claim", claim)
    return taken


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


async def test_a_webhook_made_due_while_the_wake_up_listener_was_away_is_sent_when_it_subscribes_again(
    start_service, receiver, monkeypatch, redis: Redis
):
    # The listener's connection is cut and its next subscription held back while a cancel makes the
    # cancel's webhook due and publishes the wake-up, which no one hears. With an hour between polls,
    # only the look the listener asks for once subscribed again gets the webhook out within the test.
    subscriptions = 0
    resubscribe = asyncio.Event()
    real_subscribe = PubSub.subscribe

    async def held_subscribe(self: PubSub, *channels: Any, **handlers: Any) -> None:
        nonlocal subscriptions
        if keys.WEBHOOKS_WAKE in channels:
            subscriptions += 1
            if subscriptions > 1:
                await resubscribe.wait()
        await real_subscribe(self, *channels, **handlers)

    async def until(condition: Callable[[], Awaitable[bool]]) -> None:
        async with asyncio.timeout(10):
            while not await condition():
                await asyncio.sleep(0.01)

    async def listening() -> bool:
        [(_, count)] = await redis.pubsub_numsub(keys.WEBHOOKS_WAKE)
        return int(count) > 0

    async def held() -> bool:
        return subscriptions > 1

    monkeypatch.setattr(sender, "POLL_INTERVAL", 3600.0)
    monkeypatch.setattr(PubSub, "subscribe", held_subscribe)
    service = await start_service(workers=False, webhooks=WebhooksConfig(allow_private=True))
    await until(listening)
    body = await service.submit("test_prompt", TASK_DATA["test_prompt"], callback_url=receiver.url())
    await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    await until(held)
    async with service.client.delete(f"/api/v1/tasks/{body['task_id']}") as response:
        assert response.status == 200
    assert not await listening()  # the cancel's wake-up went unheard
    resubscribe.set()

    [request] = await receiver.wait_for(1, timeout=10)
    assert request.json["task_id"] == body["task_id"]
    assert request.json["event"] == "cancelled"


async def test_webhooks_to_one_receiver_share_one_connection(start_service, fake_llm, receiver):
    service = await start_service(llm_url=fake_llm.base_url, webhooks=WebhooksConfig(allow_private=True))
    for count in range(1, 6):
        fake_llm.reply("done")
        await submit_prompt(service, receiver)
        await receiver.wait_for(count, timeout=20)
    assert len({request.peer for request in receiver.received}) == 1


async def test_a_completions_webhook_on_a_kept_connection_is_written_by_the_finishs_own_call_to_the_sender(
    start_service, fake_llm, receiver, monkeypatch
):
    # Written before the worker goes on with its bookkeeping, not a turn of the loop later.
    inside_send_ended = False
    written_inside: list[bool] = []
    real_send_ended = sender.WebhookSender.send_ended
    real_request = connections._Connection.request

    def send_ended(self: sender.WebhookSender, record: TaskRecord, lease: int) -> None:
        nonlocal inside_send_ended
        inside_send_ended = True
        try:
            real_send_ended(self, record, lease)
        finally:
            inside_send_ended = False

    def request(self: connections._Connection, data: list[bytes]) -> asyncio.Future[int]:
        written_inside.append(inside_send_ended)
        return real_request(self, data)

    monkeypatch.setattr(sender.WebhookSender, "send_ended", send_ended)
    monkeypatch.setattr(connections._Connection, "request", request)
    service = await start_service(llm_url=fake_llm.base_url, webhooks=WebhooksConfig(allow_private=True))
    for count in (1, 2):
        fake_llm.reply("done")
        await submit_prompt(service, receiver)
        await receiver.wait_for(count, timeout=20)

    # The first opened the connection (a new one is written once connected); the second reused it.
    assert written_inside == [False, True]


async def test_a_completions_webhook_that_cannot_be_built_in_the_finishs_call_is_made_by_its_delivery(
    start_service, fake_llm, receiver, monkeypatch
):
    # Whatever fails while the finish's call to the sender builds the POST stays out of the worker:
    # the delivery's task builds it again (here it works the second time) and sends it.
    calls = 0
    real_build = sender.build_payload

    def fails_once(record: TaskRecord, event: str | None = None) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("built in the finish's call")
        return real_build(record, event)

    monkeypatch.setattr(sender, "build_payload", fails_once)
    service = await start_service(llm_url=fake_llm.base_url, webhooks=WebhooksConfig(allow_private=True))
    fake_llm.reply("done")
    task_id = await submit_prompt(service, receiver)
    [request] = await receiver.wait_for(1, timeout=5)
    assert (request.json["task_id"], calls) == (task_id, 2)


async def test_a_completions_webhook_is_posted_without_a_claim_of_the_outbox(
    start_service, fake_llm, receiver, claimed
):
    service = await start_service(llm_url=fake_llm.base_url, webhooks=WebhooksConfig(allow_private=True))
    fake_llm.reply("done")
    task_id = await submit_prompt(service, receiver)
    [request] = await receiver.wait_for(1, timeout=20)
    assert request.json["task_id"] == task_id
    assert task_id not in claimed  # the finish leased it to this process's sender


async def test_a_completion_sent_by_its_own_process_wakes_no_other_sender(
    start_service, fake_llm, receiver, redis: Redis
):
    service = await start_service(llm_url=fake_llm.base_url, webhooks=WebhooksConfig(allow_private=True))
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(keys.WEBHOOKS_WAKE)
        await pubsub.get_message(timeout=1)  # the subscription's confirmation
        fake_llm.reply("done")
        await submit_prompt(service, receiver)
        await receiver.wait_for(1, timeout=20)
        woken = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
    assert woken is None


async def test_a_completion_whose_post_never_starts_is_sent_once_the_finishs_lease_runs_out(
    start_service, fake_llm, receiver, monkeypatch, redis: Redis
):
    # The process stops being able to send right after the finish (as if killed there): the
    # webhook is in the outbox under the finish's lease, and the claim loop sends it after that.
    def dies_before_the_post(self: sender.WebhookSender, record: TaskRecord, lease: int) -> None:
        pass

    monkeypatch.setattr(sender, "LEASE_MARGIN", 1.0)
    monkeypatch.setattr(sender.WebhookSender, "send_ended", dies_before_the_post)
    service = await start_service(
        llm_url=fake_llm.base_url, webhooks=WebhooksConfig(allow_private=True, timeout=1)
    )
    fake_llm.reply("done")
    task_id = await submit_prompt(service, receiver)
    [request] = await receiver.wait_for(1, timeout=20)
    status = await service.wait_for(task_id, lambda body: (body["webhook"] or {}).get("delivered_at"))
    completed_at = float(await redis.hget(keys.task(task_id), "completed_at"))
    assert request.json["task_id"] == task_id
    # Not before the lease (timeout 1 s + margin 1 s) ran out: the finish had leased it.
    assert request.wall - completed_at >= 1.9
    assert status["webhook"]["attempts"] == 1


async def test_with_no_room_in_its_sender_a_completions_webhook_waits_in_the_outbox(
    start_service, fake_llm, receiver, claimed
):
    service = await start_service(
        llm_url=fake_llm.base_url, webhooks=WebhooksConfig(allow_private=True, max_concurrency=1)
    )
    receiver.hang(1.5)  # the first POST holds the sender's only place
    fake_llm.reply("first")
    first = await submit_prompt(service, receiver)
    await receiver.wait_for(1, timeout=20)
    fake_llm.reply("second")
    second = await submit_prompt(service, receiver)
    requests = await receiver.wait_for(2, timeout=20)
    assert [request.json["task_id"] for request in requests] == [first, second]
    assert requests[1].at - requests[0].at >= 1.4  # sent once the first POST gave its place back
    assert claimed == [second]  # queued due now by its finish, then claimed
