"""`webhook_events` on submit: which of a task's events send a webhook, each naming its `event`."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

import pytest
from conftest import RunningService
from webhook_receiver import WebhookReceiver

from taskd import keys
from taskd.config import RetryConfig, WebhooksConfig


@pytest.fixture
def start(start_service) -> Callable[..., Any]:
    """Start taskd with webhook options; loopback receivers need allow_private."""

    async def start_with(*, workers: bool = True, **options: Any) -> RunningService:
        options.setdefault("allow_private", True)
        return await start_service(workers=workers, webhooks=WebhooksConfig(**options))

    return start_with


async def submit_sleep(
    service: RunningService, receiver: WebhookReceiver, seconds: float, steps: int, **fields: Any
) -> str:
    body = await service.submit(
        "sleep", {"seconds": seconds, "steps": steps}, callback_url=receiver.url(), **fields
    )
    return body["task_id"]


async def test_started_and_completed_are_each_sent_naming_their_event(start, receiver):
    service = await start()

    task_id = await submit_sleep(service, receiver, 1.0, 4, webhook_events=["started", "completed"])
    started, completed = await receiver.wait_for(2)
    await service.wait_terminal(task_id)
    status = await service.status(task_id)

    assert started.json == {
        "task_id": task_id,
        "project_id": "proj-1",
        "event": "started",
        "status": "processing",
        "attempt": 1,
        "started_at": status["started_at"],
        "metadata": {},
    }
    assert completed.json["event"] == "completed"
    assert completed.json["status"] == "completed"
    assert completed.json["result"] == status["result"]
    assert started.headers["webhook-id"] != completed.headers["webhook-id"]
    assert all(request.headers["webhook-signature"].startswith("v1,") for request in (started, completed))


async def test_by_default_only_the_end_is_sent_and_it_names_its_event(start, receiver):
    service = await start()

    task_id = await submit_sleep(service, receiver, 0.4, 4)
    await receiver.wait_for(1)
    await asyncio.sleep(0.5)  # time for any webhook that should not come

    (request,) = receiver.received
    assert request.json["task_id"] == task_id
    assert request.json["event"] == "completed"
    assert request.json["status"] == "completed"


async def test_an_end_left_out_of_webhook_events_sends_nothing(start, receiver):
    service = await start()

    task_id = await submit_sleep(service, receiver, 0.2, 1, webhook_events=["started"])
    (started,) = await receiver.wait_for(1)
    await service.wait_terminal(task_id)
    await asyncio.sleep(0.5)  # time for any webhook that should not come

    assert started.json["event"] == "started"
    assert len(receiver.received) == 1


async def test_progress_webhooks_are_coalesced_to_one_per_interval_carrying_the_latest(start, receiver):
    service = await start(progress_interval=0.5)
    steps = 40  # one progress every 50 ms for 2 s: ten for each interval

    task_id = await submit_sleep(service, receiver, 2.0, steps, webhook_events=["progress", "completed"])
    await service.wait_terminal(task_id)
    await receiver.wait_for(1)
    await asyncio.sleep(0.7)  # the completed webhook, and any progress one that should not come
    progress = [request for request in receiver.received if request.json["event"] == "progress"]

    assert 2 <= len(progress) <= 2.0 / 0.5 + 1
    # Each is due an interval after the last one was due; the spacing shows it. The first may be
    # delivered late on a loaded machine (the next is still due on time): one gap is not counted.
    assert progress[-1].at - progress[0].at >= 0.45 * (len(progress) - 2)
    values = [request.json["progress"] for request in progress]
    # The latest progress when each is sent, not the next one after the last webhook's (that would
    # make every step one report). As for the spacing, one sent late lets the next, due on time,
    # follow it closely: one small step is not counted.
    small = [later - earlier <= 2 / steps for earlier, later in itertools.pairwise(values)]
    assert sorted(values) == values and small.count(True) <= 1, values
    assert len({request.headers["webhook-id"] for request in progress}) == len(progress)
    assert all(request.json["status"] == "processing" for request in progress)
    # One end's webhook; a progress one sent as the task ended may arrive after it (docs/webhooks.md:
    # webhooks of different events are sent independently).
    assert [request.json["event"] for request in receiver.received].count("completed") == 1


async def test_a_progress_webhook_names_the_run_it_reports(start, receiver):
    service = await start(progress_interval=0.1)

    task_id = await submit_sleep(service, receiver, 0.2, 2, webhook_events=["progress"])
    progress = await receiver.wait_for(1)
    await service.wait_terminal(task_id)

    assert progress[0].json["attempt"] == 1
    assert set(progress[0].json) == {
        "task_id",
        "project_id",
        "event",
        "status",
        "attempt",
        "progress",
        "current_step",
        "updated_at",
        "metadata",
    }


async def test_a_progress_webhook_left_by_an_earlier_run_is_not_sent_before_the_next_run_reports(
    start, receiver, redis
):
    service = await start(progress_interval=0.1)
    task_id = await submit_sleep(service, receiver, 60, 1, webhook_events=["progress", "cancelled"])
    await service.wait_for(task_id, lambda body: body["status"] == "processing")
    # As a run handed back at a stop leaves it: its progress webhook due, the next run started.
    member = keys.webhook_member(task_id, "progress")
    outbox = keys.webhooks_due(keys.task_partition(task_id))
    await redis.zadd(outbox, {member: 0})
    await redis.publish(keys.WEBHOOKS_WAKE, member)
    async with asyncio.timeout(10):
        while await redis.zscore(outbox, member) is not None:
            await asyncio.sleep(0.05)

    async with service.client.delete(f"/api/v1/tasks/{task_id}") as response:
        assert response.status == 200
    await receiver.wait_for(1)

    assert [request.json["event"] for request in receiver.received] == ["cancelled"]


async def test_a_progress_webhook_dropped_after_the_end_asks_redis_for_nothing_more(
    start, receiver, redis, monkeypatch
):
    service = await start(progress_interval=0.1)
    task_id = await submit_sleep(service, receiver, 60, 1, webhook_events=["progress", "cancelled"])
    await service.wait_for(task_id, lambda body: body["status"] == "processing")
    async with service.client.delete(f"/api/v1/tasks/{task_id}") as response:
        assert response.status == 200
    await receiver.wait_for(1)
    store = service.service._executor.webhooks.store
    asked: list[str] = []
    checked = store.progress_again

    async def progress_again(record: Any, at: float) -> bool:
        asked.append(record.status.value)
        return await checked(record, at)

    monkeypatch.setattr(store, "progress_again", progress_again)
    # As a task that ends with a progress webhook still waiting for its interval leaves it.
    member = keys.webhook_member(task_id, "progress")
    outbox = keys.webhooks_due(keys.task_partition(task_id))
    await redis.zadd(outbox, {member: 0})
    await redis.publish(keys.WEBHOOKS_WAKE, member)
    async with asyncio.timeout(10):
        while await redis.zscore(outbox, member) is not None:
            await asyncio.sleep(0.05)

    # Dropped: the end's webhook said more, and no later report of the task can come.
    assert asked == []
    assert [request.json["event"] for request in receiver.received] == ["cancelled"]


@pytest.mark.parametrize(("event", "seconds"), [("started", 0.1), ("progress", 12.0)])
async def test_a_started_or_progress_webhook_to_a_receiver_that_always_fails_logs_nothing_above_info(
    start, receiver, caplog, event, seconds
):
    # A progress webhook is retried only while its task runs: the first, a second in, has the 1 + 2 + 4 s
    # of its retries before the task ends; the next would be due 30 s later.
    caplog.set_level(logging.DEBUG, logger="taskd.webhooks")
    service = await start(progress_interval=30)
    receiver.always(500)

    await submit_sleep(service, receiver, seconds, max(1, int(seconds)), webhook_events=[event])
    await receiver.wait_for(4)
    async with asyncio.timeout(20):
        while not (given_up := [r for r in caplog.records if "after all retries" in r.getMessage()]):
            await asyncio.sleep(0.05)

    lines = [record for record in caplog.records if record.name == "taskd.webhooks"]
    assert [r.levelname for r in lines if r.getMessage().startswith("Webhook request failed")] == [
        "DEBUG"
    ] * 4
    assert max(record.levelno for record in lines) == logging.INFO
    assert [(r.levelname, r.event, r.error) for r in given_up] == [("INFO", event, "HTTP 500")]


async def test_an_end_left_out_of_webhook_events_cannot_be_redelivered(start, receiver):
    service = await start()
    task_id = await submit_sleep(service, receiver, 0.1, 1, webhook_events=[])
    await service.wait_terminal(task_id)

    async with service.client.post(f"/api/v1/tasks/{task_id}/webhook/redeliver") as response:
        assert response.status == 400
        assert "webhook_events" in (await response.json())["detail"]


async def test_a_started_webhook_retried_while_its_task_waits_for_its_next_run_is_sent_as_that_run(
    start_service, receiver
):
    # The task's retry waits up to a day (full jitter): it is cancelled long before, so no later run
    # replaces the started webhook, whose retry comes 1 s after its failed first attempt.
    service = await start_service(
        webhooks=WebhooksConfig(allow_private=True), retry=RetryConfig(base_delay=86400, max_delay=86400)
    )
    receiver.respond(500)  # the started webhook's first attempt
    body = await service.submit(
        "fail",
        {"transient": True, "fail_times": 1},
        callback_url=receiver.url(),
        webhook_events=["started", "cancelled"],
    )
    task_id = body["task_id"]
    async with asyncio.timeout(20):
        while "next_retry_at" not in await service.status(task_id):
            await asyncio.sleep(0.02)
    async with service.client.delete(f"/api/v1/tasks/{task_id}") as response:
        assert response.status == 200

    await receiver.wait_for(3)
    first, again = [request for request in receiver.received if request.json["event"] == "started"]

    # Before, the retry found the record back at `queued` without a started_at and dropped the
    # webhook as no longer news: the start was never delivered.
    assert again.headers["webhook-id"] == first.headers["webhook-id"]
    assert first.headers["webhook-id"].startswith(f"msg_{task_id}_started_1_")
    assert again.json == first.json
    assert again.json["attempt"] == 1 and again.json["started_at"] is not None


@pytest.mark.parametrize("events", ["completed", ["done"], [1], {"started": True}])
async def test_webhook_events_must_be_a_list_of_known_events(start, receiver, events):
    service = await start(workers=False)
    body = {
        "project_id": "proj-1",
        "task_type": "sleep",
        "task_data": {"seconds": 1},
        "callback_url": receiver.url(),
        "webhook_events": events,
    }

    async with service.client.post("/api/v1/tasks/submit", json=body) as response:
        assert response.status == 400
        refused = await response.json()

    assert refused["error"] == "validation_error"
    assert set(refused["details"]) == {"webhook_events"}
    assert "started, progress, completed, failed, cancelled" in refused["details"]["webhook_events"]
