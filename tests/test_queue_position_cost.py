"""What a queue position costs Redis as more projects wait (lib/fair.lua's place): a project's head is
placed among the other heads in one read of their scores, and a later task reads each other
project's line length once, so a submit or a status read does not slow down by two commands for
every project waiting on the queue."""

from __future__ import annotations

import asyncio
from typing import Any

import attrs
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from redis_probes import sent_to_valkey

from taskd import keys
from taskd.config import LimitsConfig
from taskd.store import TaskStore

# The commands place() may spend per other project: a line's count of due jobs, a head's score.
PER_PROJECT_READS = ("zcard", "zcount", "zscore", "zmscore")


async def waiting_projects(api: Any, names: range, each: int) -> None:
    """`each` queued noop tasks for each project `waiting-<n>`, n in `names`."""
    for n in names:
        for _ in range(each):
            await api.submit("noop", {}, project_id=f"waiting-{n}")


async def projects_waiting_in_batches(api: Any, names: range) -> None:
    """One queued noop task for each project `many-<n>`, n in `names`, submitted 100 to a batch."""
    for first in range(names.start, names.stop, 100):
        tasks = [
            {"project_id": f"many-{n}", "task_type": "noop", "task_data": {}}
            for n in range(first, min(first + 100, names.stop))
        ]
        async with api.client.post("/api/v1/tasks/batch", json={"tasks": tasks}) as response:
            assert response.status == 200, await response.text()


async def reads_during(redis: Redis, action: Any) -> tuple[Any, int]:
    """What `action()` returned, and how many of PER_PROJECT_READS Valkey ran meanwhile."""
    await redis.config_resetstat()
    returned = await action()
    stats = await redis.info("commandstats")
    return returned, sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in PER_PROJECT_READS)


async def test_a_projects_first_task_is_placed_in_as_many_reads_whether_one_project_waits_or_twenty(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    await waiting_projects(api, range(1), 2)
    first, reads_behind_one = await reads_during(redis, lambda: api.submit("noop", {}, project_id="one"))
    await waiting_projects(api, range(1, 20), 2)

    second, reads_behind_twenty = await reads_during(redis, lambda: api.submit("noop", {}, project_id="two"))

    assert (first["queue_position"], second["queue_position"]) == (2, 22)
    assert reads_behind_twenty == reads_behind_one


async def test_a_later_tasks_position_reads_each_other_projects_line_once(start_service: Any, redis: Redis):
    api = await start_service(workers=False)
    await api.submit("noop", {}, project_id="mine")
    later = (await api.submit("noop", {}, project_id="mine"))["task_id"]
    await waiting_projects(api, range(2), 3)
    status, reads_behind_two = await reads_during(redis, lambda: api.status(later))
    await waiting_projects(api, range(2, 20), 3)

    status_then, reads_behind_twenty = await reads_during(redis, lambda: api.status(later))

    # Its own head, then one turn of each other project, then itself.
    assert (status["queue_position"], status_then["queue_position"]) == (4, 22)
    assert reads_behind_twenty - reads_behind_two == 18


async def test_a_submit_behind_its_projects_head_leaves_the_head_as_it_is_without_reading_it(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    head = (await api.submit("noop", {}, project_id="p"))["task_id"]
    await api.submit("noop", {}, project_id="p")
    answers = []

    async def submit() -> None:
        answers.append(await api.submit("noop", {}, project_id="p"))

    ran = await sent_to_valkey(redis, submit, by_scripts=True)

    # Its place in the line is read once (for its position too); the line's first job and the
    # head's record are not, only whether the head is still on arq's set.
    line = keys.project_waiting("default", "p")
    assert [c.split()[0] for c in ran if c.split()[1:2] == [line]] == ["ZADD", "ZRANK"]
    assert not any(c.split()[1:2] == [keys.task(head)] for c in ran)
    assert [c.split()[:2] for c in ran if c.startswith("ZSCORE")] == [["ZSCORE", keys.queue("default")]]
    assert answers[0]["queue_position"] == 3
    assert await redis.hget(keys.heads("default"), "p") == await redis.hget(keys.task(head), "job_id")


async def test_a_submit_behind_a_head_gone_from_the_queue_seats_the_next_job_of_the_line(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    gone = (await api.submit("noop", {}, project_id="p"))["task_id"]
    behind = (await api.submit("noop", {}, project_id="p"))["task_id"]
    # What a take does with a head whose record expired while it waited: the job leaves arq's set.
    gone_job = await redis.hget(keys.task(gone), "job_id")
    await redis.delete(keys.task(gone))
    await redis.zrem(keys.queue("default"), gone_job)

    await api.submit("noop", {}, project_id="p")

    behind_job = await redis.hget(keys.task(behind), "job_id")
    assert await redis.hget(keys.heads("default"), "p") == behind_job
    assert await redis.zscore(keys.queue("default"), behind_job) is not None
    assert await redis.zscore(keys.project_waiting("default", "p"), gone_job) is None


async def test_the_tasks_of_one_call_read_each_other_projects_head_and_line_once_for_all_their_positions(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    await waiting_projects(api, range(20), 2)
    # A batch's items are created a millisecond apart, the last now: its first after every head.
    await asyncio.sleep(0.05)
    answers: list[Any] = []

    async def batch() -> None:
        body = {"tasks": [{"project_id": "mine", "task_type": "noop", "task_data": {}} for _ in range(10)]}
        async with api.client.post("/api/v1/tasks/batch", json=body) as response:
            assert response.status == 200, await response.text()
            answers.extend((await response.json())["tasks"])

    ran = await sent_to_valkey(redis, batch, by_scripts=True)

    # The first task is the project's head, behind the 20 others; the second waits for one turn of
    # every project; from the third on, each other project has no more waiting than it.
    assert [answer["queue_position"] for answer in answers] == [21, 42, *range(43, 51)]
    lines = [keys.project_waiting("default", f"waiting-{n}") for n in range(20)]
    assert sorted(c.split()[1] for c in ran if c.startswith("ZCOUNT") and c.split()[1] in lines) == sorted(
        lines
    )
    assert [c.split()[:2] for c in ran if c.startswith("ZMSCORE")] == [["ZMSCORE", keys.queue("default")]]


async def test_status_reads_made_at_once_read_each_other_projects_head_and_line_once_for_all_their_positions(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    await waiting_projects(api, range(20), 2)
    mine = [(await api.submit("noop", {}, project_id="mine"))["task_id"] for _ in range(5)]
    store = TaskStore(redis, 3600)
    records = [await store.get(task_id) for task_id in mine]
    positions: list[int] = []

    async def read_them() -> None:
        positions.extend(await asyncio.gather(*(store.position(record) for record in records)))

    ran = await sent_to_valkey(redis, read_them, by_scripts=True)

    assert positions == [21, 42, 43, 44, 45]
    lines = [keys.project_waiting("default", f"waiting-{n}") for n in range(20)]
    assert sorted(c.split()[1] for c in ran if c.startswith("ZCOUNT") and c.split()[1] in lines) == sorted(
        lines
    )
    assert [c.split()[:2] for c in ran if c.startswith("ZMSCORE")] == [["ZMSCORE", keys.queue("default")]]


async def test_a_position_that_cannot_be_read_fails_that_read_alone(start_service: Any, redis: Redis):
    api = await start_service(workers=False)
    store = TaskStore(redis, 3600)
    record = await store.get((await api.submit("noop", {}, project_id="p"))["task_id"])
    # A malformed record: queued with a job, but no queue or project to find its line by.
    broken = attrs.evolve(record, task_id=keys.new_task_id("p"), job_id="broken.1")
    await redis.hset(keys.task(broken.task_id), mapping={"status": "queued", "job_id": "broken.1"})

    read, failed = await asyncio.gather(
        store.position(record), store.position(broken), return_exceptions=True
    )

    assert read == 1
    assert isinstance(failed, ResponseError)


async def test_past_the_exact_limit_a_submit_and_a_status_read_cost_the_same_however_many_projects_wait(
    start_service: Any, redis: Redis
):
    # A tenant that spreads one task over each of thousands of projects (scheduled tasks queue past
    # limits.max_queue_length) must not make every submit and status read on the queue cost Redis
    # a read of every project's head and line.
    api = await start_service(workers=False, limits=LimitsConfig(submit_per_minute=0))
    await projects_waiting_in_batches(api, range(keys.EXACT_PLACE_HEADS + 1))
    await api.submit("noop", {}, project_id="mine")
    later = (await api.submit("noop", {}, project_id="mine"))["task_id"]
    await api.status(later)  # the position script loaded: not counted below
    await asyncio.sleep(0.01)  # created after every head: its own comes after them on arq's set
    submitted: list[Any] = []
    read: list[Any] = []

    async def submit_and_read() -> None:
        submitted.append(await api.submit("noop", {}, project_id=f"new-{len(submitted)}"))
        read.append(await api.status(later))

    ran = await sent_to_valkey(redis, submit_and_read, by_scripts=True)
    await projects_waiting_in_batches(api, range(keys.EXACT_PLACE_HEADS + 1, keys.EXACT_PLACE_HEADS + 201))
    await asyncio.sleep(0.01)

    ran_then = await sent_to_valkey(redis, submit_and_read, by_scripts=True)

    # As many commands on the queue's lines and heads, and none that reads every project's head
    # (HGETALL of the heads, ZMSCORE of their scores) or line (a ZCOUNT each).
    queue = (
        keys.heads("default"),
        keys.queue("default"),
        keys.waiting("default"),
        keys.project_waiting("default", ""),
    )
    assert len([c for c in ran_then if c.split()[1:2] and c.split()[1].startswith(queue)]) == len(
        [c for c in ran if c.split()[1:2] and c.split()[1].startswith(queue)]
    )
    lines = keys.project_waiting("default", "many-")
    every = ("HGETALL " + keys.heads("default"), "ZMSCORE", "ZCARD " + lines, "ZCOUNT " + lines)
    assert not [c for c in ran + ran_then if c.startswith(every)]
    # Every other project has one task waiting, so the counts are exact here: a new project's head
    # after every other head; mine's second task after its head and one turn of every other project.
    waiting = keys.EXACT_PLACE_HEADS + 1
    assert [answer["queue_position"] for answer in submitted] == [waiting + 2, waiting + 203]
    assert [answer["queue_position"] for answer in read] == [waiting + 3, waiting + 204]
