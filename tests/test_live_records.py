"""A task's record lives while the task is queued or processing, however long it waits or runs
(taskd.engine.keeper); once it has ended it is kept `storage.task_ttl` (or `keep_for`), no longer.

Each test shortens a live record's expiry to a few seconds, as a day of waiting or running would
have, and checks the task still ends with its record."""

from __future__ import annotations

import orjson
import pytest
from redis.asyncio import Redis

from taskd import keys
from taskd.config import LimitsConfig
from taskd.engine import keeper
from taskd.store import TaskStore, records

# As if the task had already waited, or run, all but this many seconds of storage.task_ttl.
LEFT_S = 3


@pytest.fixture(autouse=True)
def look_often(monkeypatch: pytest.MonkeyPatch) -> None:
    """The keeper looks every 0.2 s, not every hour."""
    monkeypatch.setattr(keeper, "KEEP_EVERY_MAX_S", 0.2)


async def test_a_task_running_past_its_records_expiry_ends_with_its_record(start_service, redis: Redis):
    service = await start_service()
    task_id = (await service.submit("sleep", {"seconds": LEFT_S + 3}))["task_id"]
    await service.wait_for(task_id, lambda body: body["status"] == "processing")
    await redis.expire(keys.task(task_id), LEFT_S)

    body = await service.wait_terminal(task_id, timeout=60)

    assert body["status"] == "completed"


async def test_a_task_queued_past_its_records_expiry_still_runs(start_service, redis: Redis):
    service = await start_service(limits=LimitsConfig(concurrent_per_project=1))
    first = (await service.submit("sleep", {"seconds": LEFT_S + 3}))["task_id"]
    await service.wait_for(first, lambda body: body["status"] == "processing")
    behind = (await service.submit("noop", {}))["task_id"]
    await redis.expire(keys.task(behind), LEFT_S)

    body = await service.wait_terminal(behind, timeout=60)

    assert body["status"] == "completed"


async def test_a_task_waiting_for_a_dependency_past_its_records_expiry_still_runs(
    start_service, redis: Redis
):
    service = await start_service()
    first = (await service.submit("sleep", {"seconds": LEFT_S + 3}))["task_id"]
    waiting = (await service.submit("noop", {}, depends_on=[first]))["task_id"]
    await redis.expire(keys.task(waiting), LEFT_S)

    body = await service.wait_terminal(waiting, timeout=60)

    assert body["status"] == "completed"


async def test_a_task_running_past_its_event_streams_expiry_keeps_its_first_events(
    start_service, redis: Redis
):
    service = await start_service()
    task_id = (await service.submit("sleep", {"seconds": LEFT_S + 3, "steps": 1}))["task_id"]
    await service.wait_for(task_id, lambda body: body["status"] == "processing")
    await redis.expire(keys.task_events(task_id), LEFT_S)

    await service.wait_terminal(task_id, timeout=60)
    events = [orjson.loads(fields[b"event"]) for _, fields in await redis.xrange(keys.task_events(task_id))]

    assert [event["status"] for event in events][:2] == ["queued", "processing"]


async def test_an_ended_tasks_record_is_not_renewed(start_service, redis: Redis):
    service = await start_service()
    task_id = (await service.submit("noop", {}))["task_id"]
    await service.wait_terminal(task_id)
    await redis.expire(keys.task(task_id), 600)

    renewed = await keeper.LiveRecords(TaskStore(redis, 24 * 3600), ["default"]).once()

    assert renewed == 0
    assert await redis.ttl(keys.task(task_id)) <= 600


async def test_one_look_renews_no_more_than_a_batch_of_records_per_script_call(
    start_service, redis: Redis, monkeypatch: pytest.MonkeyPatch
):
    # The tasks waiting for a live one were walked inside the script of the batch that named it:
    # a task with tens of thousands of dependents (and theirs) held Valkey for the whole walk, in
    # every process, at every look.
    monkeypatch.setattr(records, "LIVE_BATCH", 2)
    service = await start_service()
    running = (await service.submit("sleep", {"seconds": 30}))["task_id"]
    await service.wait_for(running, lambda body: body["status"] == "processing")
    fanned = [(await service.submit("noop", {}, depends_on=[running]))["task_id"] for _ in range(3)]
    chained = [fanned[0]]
    for _ in range(3):
        chained.append((await service.submit("noop", {}, depends_on=[chained[-1]]))["task_id"])
    # A store whose TTL is ten times the service's: every live record has under half of it left.
    store = TaskStore(redis, 10 * 24 * 3600)
    script = store._live
    per_call: list[int] = []

    async def counted(**kwargs: object) -> object:
        reply = await script(**kwargs)
        per_call.append(int(reply[0] if isinstance(reply, list) else reply))
        return reply

    monkeypatch.setattr(store, "_live", counted)

    renewed = await keeper.LiveRecords(store, ["default"]).once()

    assert renewed == 1 + 3 + 3
    assert max(per_call) <= 2
