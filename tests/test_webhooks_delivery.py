"""Webhook delivery end to end: a real taskd, a real receiver on loopback, the API document's behaviour."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import API_KEY, RunningService
from dns_server import DnsServer
from examples import TASK_DATA
from redis.exceptions import ConnectionError as RedisConnectionError
from test_webhooks_connections import answering, scripted
from webhook_receiver import WebhookReceiver, documented_verify

from taskd import keys
from taskd.config import AuthConfig, LimitsConfig, WebhooksConfig
from taskd.net import guard
from taskd.webhooks import outbox, sender

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
METADATA = {"userId": "user-123", "testResultId": "result-456", "sessionId": "session-789"}


verify = documented_verify()


@pytest.fixture
def start(start_service, fake_llm) -> Callable[..., Any]:
    """Start taskd with webhook options; loopback receivers need allow_private."""

    async def start_with(*, workers: bool = True, **options: Any) -> RunningService:
        options.setdefault("allow_private", True)
        return await start_service(
            workers=workers, llm_url=fake_llm.base_url, webhooks=WebhooksConfig(**options)
        )

    return start_with


async def submit_prompt(service: RunningService, receiver: WebhookReceiver, **fields: Any) -> str:
    body = await service.submit(
        "test_prompt", TASK_DATA["test_prompt"], callback_url=receiver.url(), **fields
    )
    return body["task_id"]


async def webhook_settled(service: RunningService, task_id: str, timeout: float = 20) -> dict[str, Any]:
    """The status once its webhook was delivered or given up."""
    body = await service.wait_for(
        task_id,
        lambda body: (
            body["webhook"] is not None and (body["webhook"]["delivered_at"] or body["webhook"]["failed_at"])
        ),
        timeout,
    )
    return body["webhook"]


async def metrics(service: RunningService) -> dict[str, Any]:
    async with service.client.get("/api/v1/tasks/metrics") as response:
        return (await response.json())["metrics"]


async def test_completed_task_posts_the_documented_success_payload(start, receiver, fake_llm):
    service = await start()
    fake_llm.reply("A librarian who knows every secret.")
    task_id = await submit_prompt(service, receiver)

    (request,) = await receiver.wait_for(1)
    status = await service.status(task_id)

    assert request.json == {
        "task_id": task_id,
        "project_id": "proj-1",
        "event": "completed",
        "status": "completed",
        "result": status["result"],
        "processing_time": status["processing_time"],
        "completed_at": status["completed_at"],
        "metadata": {},
    }
    assert request.json["result"]["response"] == "A librarian who knows every secret."
    assert request.headers["content-type"] == "application/json"


async def test_failed_task_posts_the_documented_failure_payload(start, receiver, fake_llm):
    service = await start()
    for _ in range(5):  # enough for any automatic retries of the task
        fake_llm.fail(400, "Invalid prompt")
    task_id = await submit_prompt(service, receiver)

    (request,) = await receiver.wait_for(1)
    status = await service.status(task_id)

    assert status["status"] == "failed"
    assert request.json == {
        "task_id": task_id,
        "project_id": "proj-1",
        "event": "failed",
        "status": "failed",
        "error": status["error"],
        "traceback": status.get("traceback"),
        "failed_at": status["completed_at"],
        "metadata": {},
    }


async def test_cancelled_task_posts_a_cancelled_payload(start, receiver):
    service = await start(workers=False)
    task_id = await submit_prompt(service, receiver)
    async with service.client.delete(f"/api/v1/tasks/{task_id}") as response:
        cancelled = await response.json()

    (request,) = await receiver.wait_for(1)

    assert request.json == {
        "task_id": task_id,
        "project_id": "proj-1",
        "event": "cancelled",
        "status": "cancelled",
        "previous_state": "queued",
        "cancelled_at": cancelled["cancelled_at"],
        "metadata": {},
    }


async def test_a_task_cancelled_because_its_dependency_failed_posts_the_reason(start, receiver):
    service = await start()
    failing = (await service.submit("fail", {"message": "no good"}))["task_id"]
    dependent = (
        await service.submit(
            "noop", {}, depends_on=[failing], callback_url=receiver.url(), webhook_events=["cancelled"]
        )
    )["task_id"]

    (request,) = await receiver.wait_for(1)
    status = await service.status(dependent)

    assert request.json["error"] == status["error"] == f"Dependency '{failing}' failed"
    assert request.json["cancelled_at"] == status["cancelled_at"]


async def test_metadata_is_passed_through_unchanged(start, receiver):
    service = await start()
    await submit_prompt(service, receiver, metadata=METADATA)

    (request,) = await receiver.wait_for(1)

    assert request.json["metadata"] == METADATA


async def test_webhook_id_is_stable_per_task_and_status_and_timestamp_is_now(start, receiver):
    service = await start()
    task_id = await submit_prompt(service, receiver)

    (request,) = await receiver.wait_for(1)

    assert request.headers["webhook-id"] == f"msg_{task_id}_completed"
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 5


async def test_signature_verifies_with_the_shared_secret(start, receiver):
    service = await start(secret=SECRET)
    await submit_prompt(service, receiver)

    (request,) = await receiver.wait_for(1)

    assert request.headers["webhook-signature"].startswith("v1,")
    assert verify(SECRET, request.headers, request.body)


async def test_a_retried_attempt_is_the_same_message_signed_again_when_sent(start, receiver):
    service = await start(secret=SECRET)
    receiver.respond(500)
    await submit_prompt(service, receiver)

    first, retried = await receiver.wait_for(2)

    assert (retried.headers["webhook-id"], retried.body) == (first.headers["webhook-id"], first.body)
    assert int(retried.headers["webhook-timestamp"]) >= int(first.headers["webhook-timestamp"])
    assert verify(SECRET, first.headers, first.body) and verify(SECRET, retried.headers, retried.body)


async def test_signature_fails_when_the_body_is_altered(start, receiver):
    service = await start(secret=SECRET)
    await submit_prompt(service, receiver)

    (request,) = await receiver.wait_for(1)
    altered = request.body.replace(b'"completed"', b'"failed"')

    assert altered != request.body
    assert not verify(SECRET, request.headers, altered)


async def test_without_a_configured_secret_the_secret_taskd_made_signs(start, receiver):
    service = await start()
    await submit_prompt(service, receiver)

    (request,) = await receiver.wait_for(1)
    made = service.service.webhook_secret_file.read_text().strip()

    assert verify(made, request.headers, request.body)


async def test_receiver_failing_twice_gets_the_third_attempt_about_3s_after_the_first(start, receiver):
    service = await start()
    receiver.respond(500, 503)
    task_id = await submit_prompt(service, receiver)

    first, second, third = await receiver.wait_for(3)
    webhook = await webhook_settled(service, task_id)

    assert 0.8 <= second.at - first.at <= 3
    assert 2.5 <= third.at - first.at <= 6
    assert webhook["attempts"] == 3
    assert webhook["last_status"] == 200
    assert webhook["delivered_at"] is not None


async def test_always_failing_receiver_gets_exactly_four_attempts_and_the_failure_is_recorded(
    start, receiver, caplog
):
    caplog.set_level(logging.INFO, logger="taskd.webhooks")
    service = await start()
    receiver.always(500)
    task_id = await submit_prompt(service, receiver)

    webhook = await webhook_settled(service, task_id)
    await receiver.wait_for(4)
    await asyncio.sleep(0.5)  # room for a fifth attempt that must not come

    assert len(receiver.received) == 4
    assert webhook["attempts"] == 4
    assert webhook["last_status"] == 500
    assert webhook["last_error"] == "HTTP 500"
    assert webhook["failed_at"] is not None and webhook["delivered_at"] is None
    assert webhook["next_attempt_at"] is None
    assert (await metrics(service))["webhooks_failed"] == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "taskd.webhooks"]
    assert f"Webhook request failed callback_url={receiver.url()} error=HTTP 500 attempt=4" in messages
    assert (
        f"Failed to send webhook after all retries callback_url={receiver.url()} task_id={task_id}"
        in messages
    )


async def test_delivered_webhook_is_logged_and_counted(start, receiver, caplog):
    caplog.set_level(logging.INFO, logger="taskd.webhooks")
    service = await start()
    task_id = await submit_prompt(service, receiver)

    await webhook_settled(service, task_id)

    assert (await metrics(service))["webhooks_delivered"] == 1
    assert (
        f"Webhook sent successfully callback_url={receiver.url()} status_code=200 task_id={task_id}"
        in caplog.messages
    )


async def test_a_delivered_webhook_is_logged_with_the_credential_query_values_of_its_url_masked(
    start, receiver, caplog
):
    caplog.set_level(logging.INFO, logger="taskd.webhooks")
    service = await start()
    callback = receiver.url() + "?token=s3cret-token&scene=12"
    submitted = await service.submit("test_prompt", TASK_DATA["test_prompt"], callback_url=callback)

    await webhook_settled(service, submitted["task_id"])

    assert (
        f"Webhook sent successfully callback_url={receiver.url()}?token=***&scene=12 status_code=200 "
        f"task_id={submitted['task_id']}"
    ) in caplog.messages


async def test_receiver_hanging_40s_is_a_timed_out_attempt(start, receiver, caplog):
    caplog.set_level(logging.WARNING, logger="taskd.webhooks")
    service = await start(timeout=1)  # the default is 30 s
    receiver.hang(40)
    task_id = await submit_prompt(service, receiver)

    first, second = await receiver.wait_for(2)
    webhook = await webhook_settled(service, task_id)

    assert 1.5 <= second.at - first.at <= 5  # 1 s timeout, then the 1 s back-off
    assert (
        f"Webhook request failed callback_url={receiver.url()} error=timeout after 1s attempt=1"
        in caplog.messages
    )
    assert webhook["attempts"] == 2 and webhook["delivered_at"] is not None


async def test_an_attempt_whose_record_loses_redis_is_one_warning_and_is_made_again_after_its_lease(
    start, receiver, caplog, monkeypatch
):
    # A Redis failover (a Cluster slot moving reads the same, taskd.redis_conn) as the first
    # attempt's outcome is written: the delivery is not broken, only not recorded yet.
    caplog.set_level(logging.WARNING, logger="taskd.webhooks")
    monkeypatch.setattr(sender, "LEASE_MARGIN", 1.0)  # lease: webhooks.timeout + 1 s
    real_record = outbox.Outbox.record
    failures = [RedisConnectionError("Connection closed by server.")]

    async def record(self: outbox.Outbox, *args: Any) -> bool:
        if failures:
            raise failures.pop()
        return await real_record(self, *args)

    monkeypatch.setattr(outbox.Outbox, "record", record)
    service = await start(timeout=1)
    task_id = await submit_prompt(service, receiver)

    first, second = await receiver.wait_for(2)
    webhook = await webhook_settled(service, task_id)

    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert webhook["delivered_at"] is not None
    [warning] = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert warning.levelno == logging.WARNING and warning.exc_info is None
    assert "what it did not record is made again once its lease runs out" in warning.getMessage()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_redirect_is_not_followed_and_counts_as_a_failed_attempt(start, receiver, caplog):
    caplog.set_level(logging.WARNING, logger="taskd.webhooks")
    service = await start()
    receiver.redirect(receiver.url("/elsewhere"))
    task_id = await submit_prompt(service, receiver)

    await receiver.wait_for(2)
    webhook = await webhook_settled(service, task_id)

    assert receiver.at("/elsewhere") == []
    assert len(receiver.at("/hook")) == 2
    assert webhook["attempts"] == 2
    assert any("error=HTTP 302 (redirects are not followed) attempt=1" in m for m in caplog.messages)


async def test_extra_delays_add_attempts_after_the_documented_four(start, receiver):
    service = await start(extra_delays=[0.2, 0.4])
    receiver.always(500)
    task_id = await submit_prompt(service, receiver)

    webhook = await webhook_settled(service, task_id, timeout=25)
    times = [request.at for request in receiver.received]

    assert webhook["attempts"] == 6 and len(times) == 6
    assert 0.1 <= times[4] - times[3] <= 1.5
    assert 0.3 <= times[5] - times[4] <= 1.7


async def test_a_retried_webhook_keeps_its_tasks_record_until_its_last_attempt(start, receiver, redis):
    # The last attempt comes 1 + 2 + 4 + 8 s after the first: past the 12 s left to the record, as
    # if its keep_for's minute had run out while the receiver hung through two 30 s timeouts.
    service = await start(extra_delays=[8])
    receiver.always(500)
    task_id = await submit_prompt(service, receiver, keep_for=60)
    await service.wait_terminal(task_id)
    await redis.expire(keys.task(task_id), 12)

    await receiver.wait_for(5, timeout=60)
    webhook = await webhook_settled(service, task_id, timeout=30)

    assert webhook["attempts"] == 5


async def test_a_retried_webhook_keeps_its_tasks_event_stream_as_long_as_its_record(start, receiver, redis):
    # As if its keep_for had all but run out: the next retry keeps its record on, and its event
    # stream, which its end had expired with the record, went first (no 204 for the end's id then).
    service = await start()
    receiver.always(500)
    task_id = await submit_prompt(service, receiver, keep_for=60)
    await service.wait_terminal(task_id)
    await receiver.wait_for(1, timeout=30)
    for key in (keys.task(task_id), keys.task_events(task_id)):
        await redis.expire(key, 3)

    async with asyncio.timeout(30):
        while await redis.ttl(keys.task(task_id)) <= 10:
            await asyncio.sleep(0.05)

    assert await redis.ttl(keys.task_events(task_id)) > 10


async def test_a_redelivery_to_a_failing_receiver_does_not_keep_the_tasks_record(start, receiver, redis):
    service = await start()
    task_id = await submit_prompt(service, receiver, keep_for=60)
    await webhook_settled(service, task_id)
    receiver.always(500)
    await redis.expire(keys.task(task_id), 30)

    async with service.client.post(f"/api/v1/tasks/{task_id}/webhook/redeliver") as response:
        assert response.status == 202, await response.text()
    await receiver.wait_for(3)  # the redelivery's first attempt and a retry have failed

    assert await redis.ttl(keys.task(task_id)) <= 30


async def test_a_delivered_webhooks_state_is_kept_as_long_as_a_long_keep_for(start, receiver, redis):
    service = await start()
    task_id = await submit_prompt(service, receiver, keep_for=30 * 24 * 3600)
    await webhook_settled(service, task_id)

    assert await redis.ttl(keys.webhook(task_id)) > 29 * 24 * 3600


async def test_a_redelivered_webhooks_state_is_kept_as_long_as_a_long_keep_for(start, receiver, redis):
    service = await start()
    task_id = await submit_prompt(service, receiver, keep_for=30 * 24 * 3600)
    await webhook_settled(service, task_id)
    await redis.expire(keys.webhook(task_id), 60)
    receiver.hang(60)  # the redelivered attempt records nothing while the test looks

    async with service.client.post(f"/api/v1/tasks/{task_id}/webhook/redeliver") as response:
        assert response.status == 202, await response.text()

    assert await redis.ttl(keys.webhook(task_id)) > 29 * 24 * 3600


async def test_a_slow_receiver_does_not_delay_other_deliveries(start, receiver):
    service = await start()
    async with WebhookReceiver() as slow:
        slow.hang(40)
        await submit_prompt(service, slow)
        await slow.wait_for(1)
        await submit_prompt(service, receiver)

        await receiver.wait_for(1, timeout=5)

        assert len(slow.received) == 1  # still hanging on the first attempt


async def test_a_hanging_receiver_holds_at_most_its_share_of_the_places_and_others_go_out_at_once(
    start, receiver
):
    service = await start(max_concurrency=4, max_per_receiver=2)
    async with WebhookReceiver() as slow:
        slow.hang(6)
        slow.hang(6)  # the first two; the rest are answered at once
        hanging = []
        for n in range(6):  # one after another: finishes at the same moment may each take a place
            hanging.append((await service.submit("noop", {}, callback_url=slow.url(f"/hang/{n}")))["task_id"])
            await service.wait_terminal(hanging[-1])
        await slow.wait_for(2)
        await service.submit("noop", {}, callback_url=receiver.url())

        await receiver.wait_for(1, timeout=4)  # not after a hanging POST's end, 6 s away

        assert len(slow.received) == 2  # the other four wait for the receiver's places
        # Each waited without an attempt spent: all six are delivered at their first.
        webhooks = [await webhook_settled(service, task_id) for task_id in hanging]
        assert [webhook["attempts"] for webhook in webhooks] == [1] * 6
        assert all(webhook["delivered_at"] for webhook in webhooks)


async def test_one_keys_hanging_receivers_hold_at_most_its_share_and_another_keys_webhook_goes_out_at_once(
    start_service, fake_llm, receiver
):
    # One tenant names two receivers that hang: between them they may hold max_per_tenant places, not
    # every place, so another tenant's webhook does not wait for their POSTs to time out.
    other_key = "other-tenant-key-5e6f7a8b"
    service = await start_service(
        llm_url=fake_llm.base_url,
        auth=AuthConfig(api_keys=[API_KEY, other_key]),
        webhooks=WebhooksConfig(allow_private=True, max_concurrency=4, max_per_receiver=2, max_per_tenant=2),
    )
    async with WebhookReceiver() as slow_a, WebhookReceiver() as slow_b:
        for slow in (slow_a, slow_b):
            slow.hang(60)
            slow.hang(60)
            for _ in range(2):  # one after another: finishes at the same moment may each take a place
                await service.wait_terminal(
                    (await service.submit("noop", {}, callback_url=slow.url()))["task_id"]
                )
        async with asyncio.timeout(20):
            while len(slow_a.received) + len(slow_b.received) < 2:
                await asyncio.sleep(0.02)
        async with service.client.post(
            "/api/v1/tasks/submit",
            json={"project_id": "p", "task_type": "noop", "task_data": {}, "callback_url": receiver.url()},
            headers={"X-API-Key": other_key},
        ) as response:
            assert response.status == 200

        await receiver.wait_for(1, timeout=20)  # not after a hanging POST's end, 60 s away

        assert len(slow_a.received) + len(slow_b.received) == 2


async def test_webhooks_waiting_for_a_full_receiver_come_due_at_its_share_a_second(start, redis):
    # A tenant's hanging receiver with many webhooks waiting: they come due again one after another,
    # max_per_receiver a second, rather than all of them every second (claimed and handed back each time).
    service = await start(max_per_receiver=2)
    async with WebhookReceiver() as slow:
        for _ in range(10):
            slow.hang(60)
        waiting = []
        for n in range(10):
            waiting.append((await service.submit("noop", {}, callback_url=slow.url(f"/hang/{n}")))["task_id"])
            await service.wait_terminal(waiting[-1])
        hanging = {f"/hang/{n}" for n in range(10)} & {request.path for request in await slow.wait_for(2)}
        waiting = [task_id for n, task_id in enumerate(waiting) if f"/hang/{n}" not in hanging]

        async def due_times() -> list[int] | None:
            # Each one's due time, once every one is handed back: due later, and not under a claim's lease.
            at = outbox.now_ms()
            scores = [await redis.zscore(keys.webhooks_due(keys.task_partition(t)), t) for t in waiting]
            if any(score is None or not at < score < at + 20_000 for score in scores):
                return None
            return sorted(int(score) for score in scores if score is not None)

        async with asyncio.timeout(20):
            while (due := await due_times()) is None:
                await asyncio.sleep(0.05)

    assert len(waiting) >= 7
    assert all(later - earlier >= 500 for earlier, later in itertools.pairwise(due))


async def test_a_webhook_waiting_for_a_full_receiver_comes_due_again_within_the_timeout(start, redis):
    # Twelve waiting in turns of one a second would wait up to 12 s; each comes due within the 5 s a
    # hanging POST can hold the receiver's place, so none waits long once the receiver is back.
    service = await start(max_per_receiver=1, timeout=5)
    async with WebhookReceiver() as slow:
        slow.hang(60)
        waiting = []
        for n in range(12):
            waiting.append((await service.submit("noop", {}, callback_url=slow.url(f"/hang/{n}")))["task_id"])
            await service.wait_terminal(waiting[-1])
        [hanging] = await slow.wait_for(1)
        waiting = [task_id for n, task_id in enumerate(waiting) if f"/hang/{n}" != hanging.path]

        async with asyncio.timeout(20):
            while True:
                at = outbox.now_ms()
                scores = [await redis.zscore(keys.webhooks_due(keys.task_partition(t)), t) for t in waiting]
                if all(score is not None and at < score < at + 20_000 for score in scores):
                    break  # every one handed back, none under a claim's lease
                await asyncio.sleep(0.05)

    assert all(score <= at + 5000 for score in scores if score is not None)


async def test_with_a_proxy_configured_the_post_goes_through_the_proxy(start, receiver):
    # The receiver stands in for an HTTP egress proxy: a forward proxy gets the request in absolute form.
    service = await start(proxy=receiver.url("/"))
    body = await service.submit(
        "test_prompt", TASK_DATA["test_prompt"], callback_url="http://hooks.example/task-done"
    )

    (request,) = await receiver.wait_for(1)

    assert request.headers["host"] == "hooks.example"
    assert (request.path, request.json["task_id"]) == ("/task-done", body["task_id"])


async def test_a_proxy_that_refuses_the_tunnel_is_named_in_the_webhooks_error_without_its_address_or_password(
    start, receiver
):
    # The receiver stands in for a proxy that refuses an https callback's CONNECT (it answers 405).
    proxy = receiver.url("/").replace("http://", "http://egress:proxy-pass-3@")
    service = await start(proxy=proxy, extra_delays=[])
    body = await service.submit(
        "test_prompt", TASK_DATA["test_prompt"], callback_url="https://hooks.example/task-done"
    )

    webhook = await webhook_settled(service, body["task_id"])

    assert webhook["failed_at"] is not None
    assert webhook["last_error"].startswith("the egress proxy (webhooks.proxy) refused the tunnel: HTTP ")
    assert "proxy-pass-3" not in webhook["last_error"] and "127.0.0.1" not in webhook["last_error"]


async def test_through_a_proxy_an_answer_that_is_not_http_is_named_without_the_receivers_bytes(start, caplog):
    # What the proxy passes on is the receiver's: a status line aiohttp refuses, 9 kB of it, with
    # text that would pass for fields of a text log line.
    caplog.set_level(logging.WARNING, logger="taskd.webhooks")
    forged = b"HTTP/1.1 99 x task_id=victim-task level=CRITICAL " + b"F" * 9000 + b"\r\n\r\n"
    async with scripted(answering(forged)) as proxy:
        service = await start(proxy=str(proxy.url("/")), extra_delays=[])
        body = await service.submit(
            "test_prompt", TASK_DATA["test_prompt"], callback_url="http://hooks.example/task-done"
        )

        webhook = await webhook_settled(service, body["task_id"])

    assert webhook["last_error"] == "BadResponse: the receiver's answer is not HTTP"
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Webhook request failed")]
    assert failed and not [message for message in failed if "victim" in message or "FFFF" in message]


async def test_a_proxy_answering_an_https_callbacks_tunnel_request_with_garbage_is_named_not_the_receiver(
    start,
):
    # The receiver of an https callback is reached through the proxy's tunnel: the answer to CONNECT
    # is the proxy's, and this one is not HTTP.
    async with scripted(answering(b"HTTP/1.1 99 x " + b"F" * 500 + b"\r\n\r\n")) as proxy:
        service = await start(
            proxy=str(proxy.url("/")).replace("http://", "http://egress:proxy-pass-5@"), extra_delays=[]
        )
        body = await service.submit(
            "test_prompt", TASK_DATA["test_prompt"], callback_url="https://hooks.example/task-done"
        )

        webhook = await webhook_settled(service, body["task_id"])

    assert (
        webhook["last_error"]
        == "the egress proxy (webhooks.proxy) refused the tunnel: its answer is not HTTP"
    )


async def test_a_proxy_that_cannot_be_reached_is_named_in_the_webhooks_error_without_its_address(start):
    service = await start(proxy="http://egress:proxy-pass-4@127.0.0.1:1/", extra_delays=[])
    body = await service.submit(
        "test_prompt", TASK_DATA["test_prompt"], callback_url="https://hooks.example/task-done"
    )

    webhook = await webhook_settled(service, body["task_id"])

    assert webhook["last_error"] == "the egress proxy (webhooks.proxy) could not be reached"


async def test_a_proxy_whose_name_does_not_resolve_is_named_in_the_webhooks_error(start, monkeypatch):
    # aiohttp's error for it is no ClientProxyConnectionError, and its strerror alone ("Domain name
    # not found") read as the tenant's own callback host not resolving.
    async with DnsServer({}) as dns:  # every name is NXDOMAIN
        monkeypatch.setattr(guard, "NAMESERVERS", [dns.nameserver])
        service = await start(proxy="http://egress:proxy-pass-5@proxy.test:3128/", extra_delays=[])
        body = await service.submit(
            "test_prompt", TASK_DATA["test_prompt"], callback_url="https://hooks.example/task-done"
        )

        webhook = await webhook_settled(service, body["task_id"])

    assert webhook["last_error"] == "the egress proxy (webhooks.proxy) could not be reached"


async def test_status_shows_no_webhook_without_a_callback_url(start):
    service = await start()
    body = await service.submit("test_prompt", TASK_DATA["test_prompt"])

    status = await service.wait_terminal(body["task_id"])

    assert status["webhook"] is None


async def test_status_shows_a_pending_webhook_of_a_queued_task(start, receiver):
    service = await start(workers=False)
    task_id = await submit_prompt(service, receiver)

    status = await service.status(task_id)

    assert status["webhook"] == {
        "attempts": 0,
        "last_status": None,
        "last_error": None,
        "last_attempt_at": None,
        "delivered_at": None,
        "failed_at": None,
        "next_attempt_at": None,
    }


async def test_redeliver_sends_the_webhook_again_with_the_same_id(start, receiver):
    service = await start()
    task_id = await submit_prompt(service, receiver)
    await webhook_settled(service, task_id)

    async with service.client.post(f"/api/v1/tasks/{task_id}/webhook/redeliver") as response:
        status, body = response.status, await response.json()
    first, again = await receiver.wait_for(2)
    webhook = await webhook_settled(service, task_id)

    assert status == 202
    assert body["task_id"] == task_id
    assert body["webhook_id"] == f"msg_{task_id}_completed"
    assert body["message"] == "Webhook redelivery scheduled"
    assert again.headers["webhook-id"] == first.headers["webhook-id"]
    assert again.json == first.json
    assert webhook["attempts"] == 1


async def test_redeliver_answers_with_the_callback_url_password_masked(start, receiver):
    service = await start()
    callback = receiver.url().replace("http://", "http://hook:s3cret-password@")
    submitted = await service.submit("test_prompt", TASK_DATA["test_prompt"], callback_url=callback)
    task_id = submitted["task_id"]
    await webhook_settled(service, task_id)

    async with service.client.post(f"/api/v1/tasks/{task_id}/webhook/redeliver") as response:
        body = await response.json()

    assert body["callback_url"] == callback.replace("s3cret-password", "***")


async def test_redeliver_restarts_the_attempt_count(start, receiver):
    service = await start()
    receiver.respond(500)
    task_id = await submit_prompt(service, receiver)
    await service.wait_for(task_id, lambda body: body["webhook"]["attempts"] == 1)

    async with service.client.post(f"/api/v1/tasks/{task_id}/webhook/redeliver") as response:
        assert response.status == 202
    await receiver.wait_for(2)
    webhook = await webhook_settled(service, task_id)

    assert webhook["attempts"] == 1  # a fresh delivery, not attempt 2 of the old one
    assert webhook["delivered_at"] is not None


async def test_a_redelivery_spends_a_submission_of_the_keys_quota(start_service, fake_llm, receiver):
    # Each redelivery to a receiver that fails writes the end's WARNING lines: unspent, one task
    # redelivered in a loop wrote them as fast as the key asked.
    service = await start_service(
        llm_url=fake_llm.base_url,
        webhooks=WebhooksConfig(allow_private=True, extra_delays=[]),
        limits=LimitsConfig(submit_per_minute=2),
    )
    receiver.always(500)
    task_id = await submit_prompt(service, receiver)
    await webhook_settled(service, task_id)

    answers = []
    for _ in range(2):
        async with service.client.post(f"/api/v1/tasks/{task_id}/webhook/redeliver") as response:
            answers.append((response.status, (await response.json()).get("error")))

    assert answers == [(202, None), (429, "rate_limited")]


async def test_redeliver_of_an_unknown_task_is_404(start):
    service = await start()

    async with service.client.post("/api/v1/tasks/nope/webhook/redeliver") as response:
        status, body = response.status, await response.json()

    assert status == 404
    assert body == {"error": "task_not_found", "message": "Task with ID 'nope' not found"}


async def test_redeliver_of_a_task_without_callback_url_is_400(start):
    service = await start(workers=False)
    task_id = (await service.submit("test_prompt", TASK_DATA["test_prompt"]))["task_id"]
    async with service.client.delete(f"/api/v1/tasks/{task_id}"):
        pass

    async with service.client.post(f"/api/v1/tasks/{task_id}/webhook/redeliver") as response:
        status, body = response.status, await response.json()

    assert status == 400
    assert body == {"detail": "Task has no callback_url, so there is no webhook to redeliver"}


async def test_redeliver_of_a_task_that_has_not_ended_is_400(start, receiver):
    service = await start(workers=False)
    task_id = await submit_prompt(service, receiver)

    async with service.client.post(f"/api/v1/tasks/{task_id}/webhook/redeliver") as response:
        status, body = response.status, await response.json()

    assert status == 400
    assert body == {"detail": "Task is queued; its webhook is sent once it has ended"}


async def test_a_start_warns_of_webhook_caps_at_or_above_max_concurrency(start_service, caplog):
    caplog.set_level(logging.WARNING, "taskd")

    await start_service(workers=False, webhooks=WebhooksConfig(max_concurrency=16))

    warned = [
        r.getMessage() for r in caplog.records if "is not below webhooks.max_concurrency" in r.getMessage()
    ]
    assert [message.split(" (")[0] for message in warned] == [
        "webhooks.max_per_receiver",
        "webhooks.max_per_tenant",
    ]
