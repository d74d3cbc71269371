"""Issue 16, items 2 and 3, with real servers: a project's concurrency is a throttle that every worker
process obeys (Redis decides, in start.lua), and projects take turns on a queue (lib/fair.lua)."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from taskd import keys
from taskd.config import ExecutionConfig, LimitsConfig, QueueConfig, RetryConfig, load_config

SLEEP = "sleep"


def one_at_a_time(concurrency: int = 1) -> dict[str, QueueConfig]:
    """The queues, with `default` (where sleep and noop run) taking `concurrency` tasks at a time per
    process (one by default)."""
    return {**load_config(None, {}).queues, "default": QueueConfig(concurrency=concurrency, timeout=120)}


def naps(seconds: float) -> dict[str, Any]:
    return {"seconds": seconds, "steps": 1}


async def started_at(redis: Redis, task_ids: list[str]) -> dict[str, float]:
    """When each task started (its record's started_at, as the worker stamped it)."""
    values = [await redis.hget(keys.task(task_id), "started_at") for task_id in task_ids]
    return {task_id: float(value) for task_id, value in zip(task_ids, values, strict=True) if value}


def start_order(starts: dict[str, float]) -> list[str]:
    return sorted(starts, key=starts.__getitem__)


async def most_overlapping_runs(redis: Redis, task_ids: list[str]) -> int:
    """The most tasks whose runs (started_at to completed_at, as their workers stamped them) overlap."""
    edges = []
    for task_id in task_ids:
        started, completed = await redis.hmget(keys.task(task_id), "started_at", "completed_at")
        edges += [(float(started), 1), (float(completed), -1)]
    most = running = 0
    for _, change in sorted(edges):  # an end sorts before a start at the same instant
        running += change
        most = max(most, running)
    return most


async def most_processing_at_once(redis: Redis, task_ids: list[str], done: asyncio.Event) -> int:
    """Sample the tasks' statuses every few ms until `done`; the most seen processing at one time."""
    most = 0
    while not done.is_set():
        async with redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hget(keys.task(task_id), "status")
            statuses = await pipe.execute()
        most = max(most, statuses.count(b"processing"))
        await asyncio.sleep(0.005)
    return most


async def test_sixty_tasks_of_one_project_are_accepted_and_never_more_than_the_limit_run_across_two_processes(
    start_service, redis
):
    limits = LimitsConfig(concurrent_per_project=5)
    # Three slots each: one process alone cannot reach the limit, so reaching it takes both.
    first = await start_service(limits=limits, queues=one_at_a_time(3))
    second = await start_service(limits=limits, queues=one_at_a_time(3))
    accepted = [
        await (first if i % 2 else second).submit(SLEEP, naps(0.3), project_id="episode") for i in range(60)
    ]
    ids = [task["task_id"] for task in accepted]
    done = asyncio.Event()
    watcher = asyncio.create_task(most_processing_at_once(redis, ids, done))

    ended = [await first.wait_terminal(task_id, timeout=60) for task_id in ids]
    done.set()
    most = await watcher
    workers = {(await redis.hget(keys.task(task_id), "worker_id")) for task_id in ids}

    assert {task["status"] for task in accepted} == {"queued"}
    assert {task["status"] for task in ended} == {"completed"}
    # Two processes with 3 slots each could run 6: the throttle held them to 5 whenever looked at...
    assert most <= 5
    # ...and was reached (the stamps, not the sampling, which can fall between an end and the next start).
    assert await most_overlapping_runs(redis, ids) >= 5
    assert len(workers) == 2  # both processes ran some


async def test_a_throttled_project_leaves_the_free_slots_to_other_projects(start_service, redis):
    taskd = await start_service(limits=LimitsConfig(concurrent_per_project=1))
    busy = [(await taskd.submit(SLEEP, naps(1.5), project_id="busy"))["task_id"] for _ in range(3)]
    calm = [(await taskd.submit(SLEEP, naps(0.1), project_id="calm"))["task_id"] for _ in range(2)]

    for task_id in calm:
        assert (await taskd.wait_terminal(task_id))["status"] == "completed"
    statuses = [(await taskd.status(task_id))["status"] for task_id in busy]

    # One of busy's tasks runs; the other two wait, holding no worker slot, while calm's ran.
    assert statuses == ["processing", "queued", "queued"]


async def test_a_project_with_one_task_starts_among_the_next_few_behind_a_project_with_many(
    start_service, redis
):
    taskd = await start_service(queues=one_at_a_time())
    many = [(await taskd.submit(SLEEP, naps(0.05), project_id="many"))["task_id"] for _ in range(30)]
    submitted = await redis.time()
    one = (await taskd.submit(SLEEP, naps(0.05), project_id="one"))["task_id"]

    await taskd.wait_terminal(one)
    starts = await started_at(redis, [*many, one])
    since = submitted[0] + submitted[1] / 1e6
    before_one = [task_id for task_id in many if task_id in starts and since <= starts[task_id] < starts[one]]

    # Without turns it would wait behind the ~29 of `many` still queued.
    assert len(before_one) <= 2


async def test_a_projects_tasks_start_in_the_order_they_were_submitted_while_others_take_turns(
    start_service, redis
):
    taskd = await start_service(queues=one_at_a_time())
    ids: dict[str, list[str]] = {"a": [], "b": []}
    for i in range(12):
        project = "a" if i % 3 else "b"
        ids[project].append((await taskd.submit("noop", {}, project_id=project))["task_id"])

    for task_id in [*ids["a"], *ids["b"]]:
        await taskd.wait_terminal(task_id)
    order = start_order(await started_at(redis, [*ids["a"], *ids["b"]]))

    assert [task_id for task_id in order if task_id in ids["a"]] == ids["a"]
    assert [task_id for task_id in order if task_id in ids["b"]] == ids["b"]


async def behind_a_blocker(taskd):
    """Start a one-second task in a one-slot queue, then submit three priority-3 tasks of project
    `a`, a priority-1 task of `b` and one of `a` behind it: the ids, (low, urgent_b, urgent_a)."""
    blocker = (await taskd.submit(SLEEP, naps(1.0), project_id="blocker"))["task_id"]
    await taskd.wait_for(blocker, lambda body: body["status"] == "processing")
    low = [(await taskd.submit("noop", {}, project_id="a", priority=3))["task_id"] for _ in range(3)]
    urgent_b = (await taskd.submit("noop", {}, project_id="b", priority=1))["task_id"]
    urgent_a = (await taskd.submit("noop", {}, project_id="a", priority=1))["task_id"]
    return low, urgent_b, urgent_a


async def order_started(taskd, redis, task_ids: list[str]) -> list[str]:
    """`task_ids` in the order they started, once every one has ended."""
    for task_id in task_ids:
        await taskd.wait_terminal(task_id)
    return start_order(await started_at(redis, task_ids))


async def test_higher_priorities_start_first_across_projects_and_within_one(start_service, redis):
    taskd = await start_service(queues=one_at_a_time())
    low, urgent_b, urgent_a = await behind_a_blocker(taskd)

    order = await order_started(taskd, redis, [*low, urgent_b, urgent_a])

    assert order == [urgent_b, urgent_a, *low]


async def test_with_priority_aging_zero_a_priority_jumps_no_line_and_projects_just_take_turns(
    start_service, redis
):
    # priority_aging = 0 is the operator's way to stop tenants jumping each other's line with
    # priority 1 (docs/api.md, "What one key can take from another"): every task then waits its
    # project's turn, first in first out, whatever priority it was sent with.
    execution = ExecutionConfig(cancel_grace=2, reclaim_interval=0.5, shutdown_grace=2, priority_aging=0)
    taskd = await start_service(queues=one_at_a_time(), execution=execution)
    low, urgent_b, urgent_a = await behind_a_blocker(taskd)

    order = await order_started(taskd, redis, [*low, urgent_b, urgent_a])

    assert order == [low[0], urgent_b, low[1], low[2], urgent_a]


async def test_aging_lets_a_long_waiting_low_priority_task_start_before_a_new_high_priority_one(
    start_service, redis
):
    execution = ExecutionConfig(cancel_grace=2, reclaim_interval=0.5, shutdown_grace=2, priority_aging=0.2)
    taskd = await start_service(queues=one_at_a_time(), execution=execution)
    blocker = (await taskd.submit(SLEEP, naps(1.0), project_id="blocker"))["task_id"]
    await taskd.wait_for(blocker, lambda body: body["status"] == "processing")
    patient = (await taskd.submit("noop", {}, project_id="a", priority=3))["task_id"]
    await asyncio.sleep(0.6)  # longer than the two aging windows between priority 3 and 1
    urgent = (await taskd.submit("noop", {}, project_id="b", priority=1))["task_id"]

    assert await order_started(taskd, redis, [patient, urgent]) == [patient, urgent]


async def test_queue_position_counts_the_turns_of_other_projects(start_service):
    taskd = await start_service(workers=False)
    many = [(await taskd.submit("noop", {}, project_id="many"))["task_id"] for _ in range(5)]
    one = (await taskd.submit("noop", {}, project_id="one"))["task_id"]

    positions = [(await taskd.status(task_id))["queue_position"] for task_id in [*many, one]]

    # Turns: many's 1st, one's only task, then the rest of many.
    assert positions == [1, 3, 4, 5, 6, 2]


async def test_queue_position_does_not_count_a_retry_waiting_for_its_back_off(start_service):
    retry = RetryConfig(base_delay=3600)
    api = await start_service(workers=False, retry=retry)
    worker = await start_service(http=False, retry=retry)
    flaky = (await api.submit("fail", {"transient": True}, project_id="flaky"))["task_id"]
    await api.wait_for(flaky, lambda body: body["attempt"] == 1 and body["status"] == "queued")
    await worker.service.stop(grace=1)
    waiting = [(await api.submit("noop", {}, project_id="p"))["task_id"] for _ in range(2)]

    positions = [(await api.status(task_id))["queue_position"] for task_id in waiting]

    # The retry is due in an hour: both of p's tasks start before it.
    assert positions == [1, 2]


async def test_a_projects_tasks_submitted_within_one_millisecond_keep_their_order(
    start_service, submits_within_one_millisecond
):
    taskd = await start_service(workers=False)
    ids = [(await taskd.submit("noop", {}, project_id="p"))["task_id"] for _ in range(6)]

    positions = [(await taskd.status(task_id))["queue_position"] for task_id in ids]

    assert positions == [1, 2, 3, 4, 5, 6]


async def test_a_cancelled_waiting_head_hands_its_projects_turn_to_the_next_task(start_service):
    api = await start_service(workers=False)
    first = (await api.submit("noop", {}, project_id="p"))["task_id"]
    second = (await api.submit("noop", {}, project_id="p"))["task_id"]

    async with api.client.delete(f"/api/v1/tasks/{first}") as cancelled:
        assert cancelled.status == 200
    position = (await api.status(second))["queue_position"]
    await start_service(http=False)

    assert position == 1
    assert (await api.wait_terminal(second))["status"] == "completed"
