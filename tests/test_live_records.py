"""A task's record lives while the task is queued or processing, however long it waits or runs
(taskd.engine.keeper); once it has ended it is kept `storage.task_ttl` (or `keep_for`), no longer.

Each test shortens a live record's expiry to a few seconds, as a day of waiting or running would
have, and checks the task still ends with its record."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from redis.asyncio import Redis
from redis_probes import keeper_looked

from taskd import keys
from taskd.config import LimitsConfig, StorageConfig
from taskd.engine import keeper
from taskd.store import TaskStore, records
from taskd.store.records import LIVE_BATCH

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


async def test_a_task_waiting_past_its_completed_dependencys_expiry_still_reads_its_result(
    start_service, redis: Redis
):
    service = await start_service()
    done = (await service.submit("append", {"text": "storyboard"}))["task_id"]
    await service.wait_terminal(done)
    running = (await service.submit("sleep", {"seconds": LEFT_S + 3}))["task_id"]
    waiting = (
        await service.submit("append", {"text": {"$ref": f"{done}#/text"}}, depends_on=[done, running])
    )["task_id"]
    # As if it had waited a day for the running one: its record and its completed dependency's
    # (kept as long as it at its submit) both near their expiry.
    await redis.expire(keys.task(waiting), LEFT_S)
    await redis.expire(keys.task(done), LEFT_S)

    body = await service.wait_terminal(waiting, timeout=60)

    assert body["status"] == "completed", body
    assert body["result"]["text"] == "storyboard!!"


async def test_a_task_queued_past_its_completed_dependencys_expiry_still_reads_its_result(
    start_service, redis: Redis
):
    service = await start_service(limits=LimitsConfig(concurrent_per_project=1))
    done = (await service.submit("append", {"text": "storyboard"}))["task_id"]
    await service.wait_terminal(done)
    first = (await service.submit("sleep", {"seconds": LEFT_S + 3}))["task_id"]
    await service.wait_for(first, lambda body: body["status"] == "processing")
    behind = (await service.submit("append", {"text": {"$ref": f"{done}#/text"}}, depends_on=[done]))[
        "task_id"
    ]
    await redis.expire(keys.task(behind), LEFT_S)
    await redis.expire(keys.task(done), LEFT_S)

    body = await service.wait_terminal(behind, timeout=60)

    assert body["status"] == "completed", body
    assert body["result"]["text"] == "storyboard!!"


async def test_a_task_running_past_its_completed_dependencys_expiry_keeps_it_for_its_next_run(
    start_service, redis: Redis
):
    # A run handed back at a stop, or retried, reads its $refs again.
    service = await start_service()
    done = (await service.submit("append", {"text": "storyboard"}))["task_id"]
    await service.wait_terminal(done)
    running = (
        await service.submit(
            "long_first_run_then_transient", {"text": {"$ref": f"{done}#/text"}}, depends_on=[done]
        )
    )["task_id"]
    await service.wait_for(running, lambda body: body["status"] == "processing")
    await redis.expire(keys.task(running), LEFT_S)
    await redis.expire(keys.task(done), LEFT_S)

    async with asyncio.timeout(60):
        while await redis.ttl(keys.task(running)) <= LEFT_S:
            await asyncio.sleep(0.1)

    assert await redis.ttl(keys.task(done)) > LEFT_S


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


async def _queued(redis: Redis, left_s: int) -> str:
    """A queued task's record with `left_s` seconds left, on the default queue: what a look reads."""
    task_id = keys.new_task_id("p")
    await redis.hset(keys.task(task_id), mapping={"status": "queued", "project_id": "p", "dependents": "0"})
    await redis.expire(keys.task(task_id), left_s)
    await redis.zadd(keys.waiting("default"), {keys.job_id(task_id, 1): 1})
    return task_id


@pytest.fixture
def turns_of_a_real_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """The keeper's interval is a quarter of the store's TTL, as in production: a turn rests long
    enough that a process's look cannot lapse while the test asks."""
    monkeypatch.setattr(keeper, "KEEP_EVERY_MAX_S", 3600.0)


@pytest.mark.usefixtures("turns_of_a_real_length")
async def test_of_processes_asking_at_once_only_one_looks(redis: Redis):
    # Every process looked at every live record each interval: 4 processes, 4 looks of ~4 µs of
    # Valkey per live task each (a second of Valkey per look of 100,000 queued tasks).
    await _queued(redis, 600)
    processes = [keeper.LiveRecords(TaskStore(redis, 24 * 3600), ["default"], f"p{n}") for n in range(4)]

    looks = await asyncio.gather(*(process.turn() for process in processes))

    assert sorted(looks, key=lambda look: look != [None]) == [[None], [None], [None], [1]]


@pytest.mark.usefixtures("turns_of_a_real_length")
async def test_a_process_starting_right_after_anothers_look_does_not_look_at_once(redis: Redis):
    # Its first look read every live record at its start, when a worker starts draining a backlog.
    first = keeper.LiveRecords(TaskStore(redis, 24 * 3600), ["default"], "first")
    await first.turn()
    task_id = await _queued(redis, 600)

    look = await keeper.LiveRecords(TaskStore(redis, 24 * 3600), ["default"], "starting").turn()

    assert look == [None]
    assert await redis.ttl(keys.task(task_id)) <= 600


@pytest.mark.usefixtures("turns_of_a_real_length")
async def test_the_turn_of_a_process_that_failed_mid_look_passes_to_the_next_soon(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
):
    # A look that dies keeps the turn a sixteenth of the interval, not the rest between two looks:
    # the next process looks before a live record comes near its expiry.
    store = TaskStore(redis, 40)
    ids = [await _queued(redis, 15) for _ in range(LIVE_BATCH + 1)]
    script = store._live
    calls = 0

    async def dies_after_one_call(**kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise ConnectionError("the process died")
        return await script(**kwargs)

    monkeypatch.setattr(store, "_live", dies_after_one_call)
    dying = keeper.LiveRecords(store, ["default"], "dying")
    with pytest.raises(ConnectionError):
        await dying.turn()
    assert await redis.pttl(dying.turn_key(0)) <= dying.ask_every * 1000
    next_one = keeper.LiveRecords(TaskStore(redis, 40), ["default"], "next")

    async def its_turn() -> list[int | None]:
        while (look := await next_one.turn()) == [None]:
            await asyncio.sleep(0.05)
        return look

    look = await asyncio.wait_for(its_turn(), 30)

    assert look == [1]  # the one the dying look did not reach
    assert all([await redis.ttl(keys.task(task_id)) > 15 for task_id in ids])


@pytest.mark.usefixtures("turns_of_a_real_length")
async def test_a_look_whose_turn_lapsed_on_the_way_still_rests_after_it(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
):
    # The turn was renewed with PEXPIRE, a no-op on a key that is gone: one that lapsed during a
    # long look (a scan of 100,000 waiting jobs outlasts a short interval's sixteenth) stayed gone,
    # rest included, and the next ask looked again at once, look after look.
    await _queued(redis, 600)
    store = TaskStore(redis, 24 * 3600)
    script = store._live

    looking = keeper.LiveRecords(store, ["default"], "looking")

    async def after_a_stall(**kwargs: object) -> object:
        await redis.delete(looking.turn_key(0))
        return await script(**kwargs)

    monkeypatch.setattr(store, "_live", after_a_stall)

    await looking.turn()

    assert await redis.pttl(looking.turn_key(0)) > looking.ask_every * 1000


@pytest.mark.usefixtures("turns_of_a_real_length")
async def test_a_process_with_a_shorter_task_ttl_looks_while_one_with_a_longer_rests(
    start_service, redis: Redis
):
    # Hosts whose storage.task_ttl differ (a deploy, a mistake: warned as settings_mismatch) took
    # the same turns: the day-long TTL's look rested ~49 minutes, during which the process with a
    # minute's TTL, whose records have less than a minute, did not look, and they expired while
    # their tasks waited.
    long_ttl = await start_service(workers=False)
    await keeper_looked(redis)
    task_id = (await long_ttl.submit("noop", {}))["task_id"]
    # As a record the one-minute process admitted 40 s ago: under half of its TTL left.
    await redis.expire(keys.task(task_id), 20)

    await start_service(workers=False, storage=StorageConfig(task_ttl=60))

    async with asyncio.timeout(30):
        while await redis.ttl(keys.task(task_id)) <= 20:
            await asyncio.sleep(0.1)


@pytest.mark.usefixtures("turns_of_a_real_length")
async def test_a_look_that_stalled_while_another_took_the_turn_leaves_the_turn_to_that_one(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
):
    # A look that stalled past its hold (SIGSTOP, a paused VM) while another process took the turn
    # and looked afresh went on, on resuming, with the ids it had read before the stall, then set
    # the turn its own, resting from its own end: the next look came up to twice the interval after
    # the last fresh one, and the tasks queued during the stall were not read meanwhile.
    await _queued(redis, 600)
    store = TaskStore(redis, 24 * 3600)
    stalled = keeper.LiveRecords(store, ["default"], "stalled")
    other = keeper.LiveRecords(TaskStore(redis, 24 * 3600), ["default"], "other")
    script = store._live
    fresh: list[list[int | None]] = []

    async def after_a_stall(**kwargs: object) -> object:
        await redis.delete(stalled.turn_key(0))  # its hold lapsed
        fresh.append(await other.turn())
        return await script(**kwargs)

    monkeypatch.setattr(store, "_live", after_a_stall)
    await stalled.turn()
    rest_ms = await redis.pttl(other.turn_key(0))

    assert fresh == [[1]]
    assert await redis.get(other.turn_key(0)) == b"other"
    assert rest_ms > other.ask_every * 1000
