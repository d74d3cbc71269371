"""`run_at` and `delay_seconds` (issue 17, item 5): a task that waits for its time, queued, then runs."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import UTC, datetime, timedelta, timezone

import aiohttp
from conftest import API_KEY, child_env

from taskd import keys
from taskd.config import LimitsConfig
from taskd.engine import scheduled
from taskd.shapes import MAX_SCHEDULE_AHEAD
from taskd.store import TaskStore


def rfc3339(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


async def refused(service, **fields):
    body = {"project_id": "proj-1", "task_type": "noop", "task_data": {}, **fields}
    async with service.client.post("/api/v1/tasks/submit", json=body) as response:
        assert response.status == 400, await response.text()
        return await response.json()


async def started_at(redis, task_id):
    """The start time as the record holds it (the status document gives whole seconds)."""
    return float(await redis.hget(keys.task(task_id), "started_at"))


async def test_a_delayed_task_waits_queued_with_scheduled_for_then_runs(start_service, redis):
    taskd = await start_service()

    accepted = await taskd.submit("noop", {}, delay_seconds=1.5)
    waiting = await taskd.status(accepted["task_id"])
    body = await taskd.wait_terminal(accepted["task_id"])

    created = float(await redis.hget(keys.task(accepted["task_id"]), "created_at"))
    assert accepted["status"] == "queued"
    assert accepted["queue_position"] == 0
    assert waiting["status"] == "queued"
    assert waiting["queue_position"] == 0
    # To the second, as the document's times are; the delay counts from the parse of the request,
    # a moment before the record's created_at, so the two may fall either side of a second.
    scheduled = datetime.fromisoformat(waiting["scheduled_for"].replace("Z", "+00:00")).timestamp()
    assert abs(scheduled - (created + 1.5)) <= 1.1
    assert body["status"] == "completed", body
    assert "scheduled_for" not in body
    # Not before its time (the record's times are in ms), and well within generous bounds after it.
    assert created + 1.5 - 0.002 <= await started_at(redis, accepted["task_id"]) <= created + 1.5 + 10


async def test_a_task_scheduled_days_ahead_is_kept_until_then_and_a_day_after(start_service, redis):
    api_only = await start_service(workers=False)
    days = 3 * 24 * 3600

    accepted = await api_only.submit("noop", {}, delay_seconds=days)

    ttl = await redis.ttl(keys.task(accepted["task_id"]))
    assert days + 24 * 3600 - 60 <= ttl <= days + 24 * 3600 + 1
    assert await redis.ttl(keys.project("proj-1")) >= days + 24 * 3600 - 60
    assert await redis.ttl(keys.project_active("proj-1")) >= days + 24 * 3600 - 60


async def test_a_task_waiting_for_one_scheduled_days_ahead_is_kept_while_that_one_is(start_service, redis):
    api_only = await start_service(workers=False)
    first = await api_only.submit("noop", {}, delay_seconds=3 * 24 * 3600)

    waiting = await api_only.submit("noop", {}, depends_on=[first["task_id"]])

    first_kept = await redis.ttl(keys.task(first["task_id"]))
    assert first_kept >= 3 * 24 * 3600
    assert await redis.ttl(keys.task(waiting["task_id"])) >= first_kept
    assert await redis.ttl(keys.dependents(first["task_id"])) >= first_kept
    assert await redis.ttl(keys.project_active("proj-1")) >= first_kept


async def test_a_completed_dependency_is_kept_as_long_as_a_task_scheduled_days_ahead_that_reads_it(
    start_service, redis
):
    taskd = await start_service()
    first = await taskd.submit("noop", {})
    await taskd.wait_terminal(first["task_id"])

    later = await taskd.submit("noop", {}, depends_on=[first["task_id"]], delay_seconds=3 * 24 * 3600)

    kept = await redis.ttl(keys.task(later["task_id"]))
    assert kept >= 3 * 24 * 3600
    assert await redis.ttl(keys.task(first["task_id"])) >= kept
    assert await redis.ttl(keys.project("proj-1")) >= kept


async def test_a_dependency_that_completes_is_kept_as_long_as_a_task_scheduled_days_ahead_that_reads_it(
    start_service, redis
):
    taskd = await start_service()
    first = await taskd.submit("sleep", {"seconds": 0.5, "steps": 1})
    later = await taskd.submit("noop", {}, depends_on=[first["task_id"]], delay_seconds=3 * 24 * 3600)

    assert (await taskd.wait_terminal(first["task_id"]))["status"] == "completed"

    kept = await redis.ttl(keys.task(later["task_id"]))
    assert kept >= 3 * 24 * 3600
    assert await redis.ttl(keys.task(first["task_id"])) >= kept - 5


async def test_a_completed_dependency_is_kept_as_long_as_a_task_that_also_waits_for_one_scheduled_days_ahead(
    start_service, redis
):
    taskd = await start_service()
    done = await taskd.submit("noop", {})
    await taskd.wait_terminal(done["task_id"])
    ahead = await taskd.submit("noop", {}, delay_seconds=3 * 24 * 3600)

    waiting = await taskd.submit("noop", {}, depends_on=[done["task_id"], ahead["task_id"]])

    kept = await redis.ttl(keys.task(waiting["task_id"]))
    assert kept >= 3 * 24 * 3600
    assert await redis.ttl(keys.task(done["task_id"])) >= kept


async def test_a_dependency_that_completes_is_kept_as_long_as_a_task_still_waiting_for_one_scheduled_days_ahead(
    start_service, redis
):
    taskd = await start_service()
    first = await taskd.submit("sleep", {"seconds": 0.5, "steps": 1})
    ahead = await taskd.submit("noop", {}, delay_seconds=3 * 24 * 3600)
    waiting = await taskd.submit("noop", {}, depends_on=[first["task_id"], ahead["task_id"]])

    assert (await taskd.wait_terminal(first["task_id"]))["status"] == "completed"

    kept = await redis.ttl(keys.task(waiting["task_id"]))
    assert kept >= 3 * 24 * 3600
    assert await redis.ttl(keys.task(first["task_id"])) >= kept - 5


async def test_a_later_submit_to_the_project_keeps_a_task_scheduled_days_ahead_in_its_list(
    start_service, redis
):
    api_only = await start_service(workers=False)
    days = 3 * 24 * 3600
    await api_only.submit("noop", {}, delay_seconds=days)

    await api_only.submit("noop", {})

    assert await redis.ttl(keys.project("proj-1")) >= days + 24 * 3600 - 60
    assert await redis.ttl(keys.project_active("proj-1")) >= days + 24 * 3600 - 60


async def test_a_run_at_in_the_past_runs_now(start_service):
    taskd = await start_service()

    accepted = await taskd.submit("noop", {}, run_at="2020-01-01T00:00:00Z")
    body = await taskd.wait_terminal(accepted["task_id"], timeout=10)

    assert accepted["queue_position"] >= 1
    assert body["status"] == "completed"
    assert "scheduled_for" not in body


async def test_a_run_at_with_an_offset_is_the_same_instant(start_service):
    api_only = await start_service(workers=False)
    at = datetime.now(UTC) + timedelta(hours=2)

    in_paris_summer = at.astimezone(timezone(timedelta(hours=2))).isoformat(timespec="seconds")

    accepted = await api_only.submit("noop", {}, run_at=in_paris_summer)

    assert in_paris_summer.endswith("+02:00")
    assert (await api_only.status(accepted["task_id"]))["scheduled_for"] == rfc3339(at)


async def test_a_run_at_on_a_leap_second_is_the_instant_after_second_59(start_service):
    api_only = await start_service(workers=False)
    day = (datetime.now(UTC) + timedelta(days=1)).date()

    accepted = await api_only.submit("noop", {}, run_at=f"{day}T23:59:60Z")

    midnight = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)
    assert (await api_only.status(accepted["task_id"]))["scheduled_for"] == rfc3339(midnight)


async def test_more_than_the_limit_ahead_is_a_400_naming_the_field(start_service):
    api_only = await start_service(workers=False)
    too_late = datetime.now(UTC) + timedelta(seconds=MAX_SCHEDULE_AHEAD + 3600)

    by_time = await refused(api_only, run_at=rfc3339(too_late))
    by_delay = await refused(api_only, delay_seconds=MAX_SCHEDULE_AHEAD + 60)

    assert by_time["error"] == "validation_error"
    assert set(by_time["details"]) == {"run_at"}
    assert set(by_delay["details"]) == {"delay_seconds"}


async def test_the_limit_ahead_is_configurable(start_service):
    api_only = await start_service(workers=False, limits=LimitsConfig(max_schedule_ahead=60))

    body = await refused(api_only, delay_seconds=61)
    accepted = await api_only.submit("noop", {}, delay_seconds=59)

    assert body["details"]["delay_seconds"] == "delay_seconds may schedule a task at most 60 seconds ahead"
    assert accepted["status"] == "queued"


async def test_a_batch_item_is_held_to_the_configured_limit_ahead(start_service):
    api_only = await start_service(workers=False, limits=LimitsConfig(max_schedule_ahead=60))
    item = {"project_id": "proj-1", "task_type": "noop", "task_data": {}}

    async with api_only.client.post(
        "/api/v1/tasks/batch", json={"tasks": [item, {**item, "delay_seconds": 61}]}
    ) as response:
        body = await response.json()

    assert response.status == 400, body
    assert body["details"] == {
        "tasks[1].delay_seconds": "delay_seconds may schedule a task at most 60 seconds ahead"
    }


async def test_a_task_whose_time_comes_joins_its_queue_even_when_the_queue_is_full(start_service):
    api_only = await start_service(workers=False, limits=LimitsConfig(max_queue_length=2))
    later = [await api_only.submit("noop", {}, delay_seconds=0.3) for _ in range(2)]
    for _ in range(2):
        await api_only.submit("noop", {})

    for task in later:
        await api_only.wait_for(task["task_id"], lambda body: "scheduled_for" not in body)
    async with api_only.client.get("/api/v1/health") as response:
        sizes = (await response.json())["queue_sizes"]
    async with api_only.client.post(
        "/api/v1/tasks/submit", json={"project_id": "proj-1", "task_type": "noop", "task_data": {}}
    ) as refused:
        pass

    assert sizes["default"] == 4
    assert refused.status == 503


async def test_run_at_and_delay_seconds_together_are_a_400(start_service):
    api_only = await start_service(workers=False)

    body = await refused(api_only, run_at=rfc3339(datetime.now(UTC)), delay_seconds=5)

    assert body["error"] == "validation_error"
    assert set(body["details"]) == {"run_at", "delay_seconds"}


async def test_a_malformed_time_or_delay_is_a_400_naming_the_field(start_service):
    api_only = await start_service(workers=False)
    # Within the limit ahead, so that only the form can be what is refused.
    day = (datetime.now(UTC) + timedelta(days=1)).date()

    for fields in (
        {"run_at": "tomorrow"},
        {"run_at": f"{day}T00:00:00"},  # no offset: which 00:00?
        {"run_at": f"{day}"},
        {"run_at": f"{day}T00:00:00+05:60"},  # offset minutes past 59 (not +06:00)
        {"run_at": f"{day}T00:00:00+24:00"},
        {"run_at": f"{day}T00:00:61Z"},
        {"run_at": 1893456000},
        {"delay_seconds": -1},
        {"delay_seconds": "5"},
        {"delay_seconds": True},
    ):
        body = await refused(api_only, **fields)
        assert set(body["details"]) == set(fields), fields


async def test_a_scheduled_task_cancelled_while_it_waits_never_runs(start_service, redis):
    taskd = await start_service()
    accepted = await taskd.submit("noop", {}, delay_seconds=1.5)

    async with taskd.client.delete(f"/api/v1/tasks/{accepted['task_id']}") as response:
        assert response.status == 200, await response.text()
        cancelled = await response.json()
    await asyncio.sleep(3)  # past its time, and several looks for due tasks
    body = await taskd.status(accepted["task_id"])

    assert cancelled["status"] == "cancelled"
    assert body["status"] == "cancelled"
    assert body["previous_state"] == "queued"
    assert body["started_at"] is None
    assert body["attempt"] == 0
    assert "scheduled_for" not in body
    assert await redis.zscore(keys.SCHEDULED, accepted["task_id"]) is None


async def test_a_scheduled_task_does_not_hold_up_its_projects_due_tasks(start_service):
    api_only = await start_service(workers=False)
    # High priority and submitted first: had it a place in its project's line, it would be ahead.
    later = await api_only.submit("noop", {}, delay_seconds=300, priority=1)
    due = await api_only.submit("noop", {}, priority=3)
    position = (await api_only.status(due["task_id"]))["queue_position"]

    await start_service(http=False)
    body = await api_only.wait_terminal(due["task_id"])

    assert due["queue_position"] == 1
    assert position == 1
    assert body["status"] == "completed"
    waiting = await api_only.status(later["task_id"])
    assert waiting["status"] == "queued"
    assert "scheduled_for" in waiting


async def test_a_scheduled_task_waits_for_its_dependencies_and_its_time(start_service, redis):
    taskd = await start_service()
    quick = await taskd.submit("noop", {})
    slow = await taskd.submit("sleep", {"seconds": 2.5})

    # Its dependency completes first: it still waits for its time.
    after_time = await taskd.submit("noop", {}, depends_on=[quick["task_id"]], delay_seconds=1.5)
    # Its time comes first: it still waits for its dependency.
    after_dependency = await taskd.submit("noop", {}, depends_on=[slow["task_id"]], delay_seconds=0.5)
    first = await taskd.wait_terminal(after_time["task_id"])
    second = await taskd.wait_terminal(after_dependency["task_id"])

    assert first["status"] == second["status"] == "completed"
    created = float(await redis.hget(keys.task(after_time["task_id"]), "created_at"))
    assert await started_at(redis, after_time["task_id"]) >= created + 1.5 - 0.002
    slow_done = float(await redis.hget(keys.task(slow["task_id"]), "completed_at"))
    assert await started_at(redis, after_dependency["task_id"]) >= slow_done


async def test_a_full_batch_of_due_tasks_still_waiting_for_dependencies_does_not_hold_back_the_rest(
    start_service, redis, monkeypatch
):
    # Only the look below queues due tasks: the service's own looks are off.
    monkeypatch.setattr(scheduled.ScheduledRelease, "run", lambda _: asyncio.sleep(0))
    monkeypatch.setattr(scheduled, "BATCH", 2)
    api_only = await start_service(workers=False)
    first = await api_only.submit("noop", {})
    # Due first, but waiting for `first` too: taken off the schedule, not queued.
    for _ in range(2):
        await api_only.submit("noop", {}, depends_on=[first["task_id"]], delay_seconds=600)
    ready = [(await api_only.submit("noop", {}, delay_seconds=700))["task_id"] for _ in range(2)]
    monkeypatch.setattr(scheduled, "now", lambda: time.time() + 1200)

    queued = await scheduled.ScheduledRelease(TaskStore(redis, 3600)).once()

    assert queued == 2
    assert [(await api_only.status(task_id)).get("scheduled_for") for task_id in ready] == [None, None]


async def test_a_scheduled_task_survives_a_restart_and_runs(spawn_taskd, tmp_path):
    env = child_env(tmp_path / "data")
    headers = {"X-API-Key": API_KEY}
    body = {"project_id": "proj-1", "task_type": "noop", "task_data": {}, "delay_seconds": 3}
    async with aiohttp.ClientSession(headers=headers) as session:
        first = spawn_taskd("serve", env=env)
        async with session.post(f"{first.base_url}/api/v1/tasks/submit", json=body) as response:
            assert response.status == 200, await response.text()
            task_id = (await response.json())["task_id"]
        async with session.get(f"{first.base_url}/api/v1/tasks/{task_id}/status") as response:
            before = await response.json()
        first.stop(signal.SIGKILL)

        second = spawn_taskd("serve", env=env)
        async with asyncio.timeout(30):
            while True:
                async with session.get(f"{second.base_url}/api/v1/tasks/{task_id}/status") as response:
                    after = await response.json()
                # Until it ends: a read while it runs (processing) is no answer yet.
                if after["status"] in ("completed", "failed", "cancelled"):
                    break
                await asyncio.sleep(0.1)

    assert before["status"] == "queued"
    assert "scheduled_for" in before
    assert after["status"] == "completed", after
    # Whole seconds in the document: it started no earlier than the second it was scheduled for.
    assert after["started_at"] >= before["scheduled_for"]
