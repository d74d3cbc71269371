"""Issue 19, a second worker adds throughput: a worker takes its free slots' worth of due jobs in one
script (take.lua), no job is taken twice, and a submit wakes one idle worker (lib/wake.lua)
instead of every one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from arq.worker import func
from conftest import API_KEY, TaskdProcess, child_env
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis_probes import alive, monitored, sent_to_valkey, statuses

from taskd import keys
from taskd.backoff import Backoff
from taskd.config import GpuConfig, WorkerConfig
from taskd.engine import executor as executor_module
from taskd.gpu.devices import SimulatedBackend
from taskd.queue.workers import TaskdWorker
from taskd.store import TaskStore, scripts
from taskd.store.records import Takes

SLEEP = {"seconds": 0.3, "steps": 1}


@pytest.fixture
async def wakes(redis: Redis) -> AsyncIterator[PubSub]:
    async with redis.pubsub() as pubsub:
        await pubsub.psubscribe(keys.WAKE_CHANNEL + "*")  # every process's channel and each worker's
        await pubsub.get_message(timeout=1)  # the subscribe confirmation
        yield pubsub


async def messages(pubsub: PubSub, wait: float = 0.3) -> list[str]:
    """What was published on the wake channels within `wait` seconds: "{channel} {partition prefix}{queue}" each."""
    seen = []
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is not None:
            seen.append(f"{message['channel'].decode()} {message['data'].decode()}")
    return seen


async def watched_take(redis: Redis, count: int, store: TaskStore | None = None) -> tuple[Takes, list[str]]:
    """One take of up to `count` jobs by worker-a, and the commands its script ran (MONITOR)."""
    taker = store or TaskStore(redis, 3600)
    taken, _, ran = await monitored(redis, lambda: taker.take("default", "worker-a", time.time(), count, 100))
    return taken, ran


async def test_one_take_starts_a_projects_queued_tasks_up_to_the_free_slots_in_submit_order(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    ids = [(await api.submit("noop", {}))["task_id"] for _ in range(5)]
    await alive(redis, "worker-a")

    taken = (await TaskStore(redis, 3600).take("default", "worker-a", time.time(), 3, 100)).started

    assert [t.record.task_id for t in taken if t.record] == ids[:3]
    assert await statuses(redis, ids) == ["processing"] * 3 + ["queued"] * 2


async def test_one_take_of_a_projects_tasks_reads_its_line_arqs_set_and_each_record_once(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    ids = [(await api.submit("noop", {}))["task_id"] for _ in range(5)]
    await alive(redis, "worker-a")

    taken, ran = await watched_take(redis, 3)

    # Each start finds its project's next job due first, so the next turn starts it straight from
    # its line, its record read whole once: only the job left waiting goes on arq's set and becomes
    # the head.
    assert [t.record.task_id for t in taken.started if t.record] == ids[:3]
    queue = keys.queue("default")

    def ran_on(command: str, key: str) -> int:
        return sum(1 for c in ran if c.startswith(f"{command} {key}"))

    assert ran_on("ZRANGEBYSCORE", queue) == 1
    assert (ran_on("ZADD", queue), ran_on("ZREM", queue)) == (1, 1)
    assert ran_on("ZREM", keys.waiting("default")) == 1  # the three leave the queue's line at once
    # The project's line read once, as far as the take's slots go; the first leaves it at once (its
    # start reads what follows), the two after it together.
    line = keys.project_waiting("default", "proj-1")
    assert (ran_on("ZRANGE", line), ran_on("ZREM", line)) == (1, 2)
    assert [c.split()[0] for c in ran if c.split()[1:2] == [keys.heads("default")]] == ["HSET"]
    assert [ran_on("HGETALL", keys.task(i)) + ran_on("HMGET", keys.task(i)) for i in ids] == [1, 1, 1, 1, 0]
    fourth = await redis.hget(keys.task(ids[3]), "job_id")
    assert await redis.zrange(keys.queue("default"), 0, -1) == [fourth]
    assert await redis.hget(keys.heads("default"), "proj-1") == fourth


async def test_a_take_reading_a_projects_line_ahead_passes_over_a_job_whose_record_expired(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    ids = [(await api.submit("noop", {}))["task_id"] for _ in range(5)]
    await redis.delete(keys.task(ids[2]))  # its TTL ran out while it waited
    await alive(redis, "worker-a")

    taken = (await TaskStore(redis, 3600).take("default", "worker-a", time.time(), 5, 100)).started

    assert [t.record.task_id for t in taken if t.record] == [ids[0], ids[1], ids[3], ids[4]]
    assert await redis.exists(keys.project_waiting("default", "proj-1"), keys.waiting("default")) == 0
    assert await redis.hgetall(keys.heads("default")) == {}
    assert await redis.zcard(keys.queue("default")) == 0


async def test_one_take_gives_two_projects_queued_tasks_their_turns(start_service: Any, redis: Redis):
    api = await start_service(workers=False)
    ids = {p: [(await api.submit("noop", {}, project_id=p))["task_id"] for _ in range(3)] for p in "ab"}
    await alive(redis, "worker-a")

    taken = (await TaskStore(redis, 3600).take("default", "worker-a", time.time(), 6, 100)).started

    # a's next job goes on the set behind b's waiting head: b's turn comes first. (The jobs put on
    # the set in one take share its time, so which of two such comes next is the set's order of
    # their ids, as it was one take after another at the same millisecond.)
    started = [t.record.task_id for t in taken if t.record]
    assert started[:2] == [ids["a"][0], ids["b"][0]]
    assert [i for i in started if i in ids["a"]] == ids["a"]
    assert [i for i in started if i in ids["b"]] == ids["b"]


async def test_a_take_seats_a_projects_next_job_behind_another_projects_head_reading_three_of_its_fields(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    a = [(await api.submit("noop", {}, project_id="a"))["task_id"] for _ in range(2)]
    b = (await api.submit("noop", {}, project_id="b"))["task_id"]
    await alive(redis, "worker-a")

    taken, ran = await watched_take(redis, 3)

    # a's second job waits behind b's head: seated on its status, job and priority, not its whole
    # record (read once, when its turn comes), and a's line read one job at a time.
    assert [t.record.task_id for t in taken.started if t.record] == [a[0], b, a[1]]
    record = keys.task(a[1])
    assert [sum(1 for c in ran if c.startswith(f"{cmd} {record}")) for cmd in ("HMGET", "HGETALL")] == [1, 1]
    line = keys.project_waiting("default", "a")
    assert [c.split()[2:4] for c in ran if c.startswith(f"ZRANGE {line} ")] == [["0", "0"]] * 2


async def test_a_take_starts_a_projects_job_straight_once_the_other_projects_are_done(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    a = [(await api.submit("noop", {}, project_id="a"))["task_id"] for _ in range(3)]
    b = (await api.submit("noop", {}, project_id="b"))["task_id"]
    await alive(redis, "worker-a")

    taken, ran = await watched_take(redis, 4)

    # a's second job waits for b's turn on arq's set; after it nothing else is due, so a's third
    # starts straight from a's line, never put on the set.
    assert [t.record.task_id for t in taken.started if t.record] == [a[0], b, a[1], a[2]]
    third = (await redis.hget(keys.task(a[2]), "job_id")).decode()
    assert not [c for c in ran if c.startswith(f"ZADD {keys.queue('default')} ") and c.endswith(f" {third}")]


async def test_one_take_starts_an_urgent_projects_next_jobs_before_another_projects_waiting_head(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    calm = (await api.submit("noop", {}, project_id="calm", priority=3))["task_id"]
    urgent = [(await api.submit("noop", {}, project_id="urgent", priority=1))["task_id"] for _ in range(3)]
    await alive(redis, "worker-a")

    taken = (await TaskStore(redis, 3600).take("default", "worker-a", time.time(), 4, 100)).started

    # Each urgent job's turn, priority moving it two aging steps earlier, comes before calm's head.
    assert [t.record.task_id for t in taken if t.record] == [*urgent, calm]


async def test_a_take_of_several_jobs_counts_their_waits_and_enters_the_running_set_in_one_write_each(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    for _ in range(6):
        await api.submit("noop", {})
    await alive(redis, "worker-a")
    store = TaskStore(redis, 3600)
    taken = []

    async def take() -> None:
        taken.extend((await store.take("default", "worker-a", time.time(), 6, 100)).started)

    ran = await sent_to_valkey(redis, take, by_scripts=True)

    def writes(command: str, key: str, field: str = "") -> int:
        return sum(1 for c in ran if c.startswith(f"{command} {key} {field}"))

    assert len(taken) == 6
    assert writes("HINCRBYFLOAT", keys.METRICS, "wait_sum:default:noop") == 1
    assert writes("HINCRBY", keys.METRICS, "wait_count:default:noop") == 1
    assert writes("ZADD", keys.running("default")) == 1
    counters = await redis.hgetall(keys.METRICS)
    assert int(counters[b"wait_count:default:noop"]) == 6
    assert sum(int(v) for k, v in counters.items() if k.startswith(b"wait_in:default:noop:")) == 6
    assert await redis.zcard(keys.running("default")) == 6


async def test_a_started_head_hands_its_projects_head_field_to_the_next_job_in_one_write_without_reading_it(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    first, second = [(await api.submit("noop", {}))["task_id"] for _ in range(2)]
    await alive(redis, "worker-a")
    store = TaskStore(redis, 3600)

    async def take() -> None:
        await store.take("default", "worker-a", time.time(), 1, 100)

    ran = await sent_to_valkey(redis, take, by_scripts=True)

    # Taken off arq's set as the queued task's job, it was its project's head: no need to ask.
    head_writes = [c.split()[0] for c in ran if c.split()[1:2] == [keys.heads("default")]]
    assert head_writes == ["HSET"]
    assert await redis.hget(keys.heads("default"), "proj-1") == (
        await redis.hget(keys.task(second), "job_id")
    )
    assert await statuses(redis, [first, second]) == ["processing", "queued"]


async def test_the_last_job_of_a_line_leaving_deletes_its_projects_head_field(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    await api.submit("noop", {})
    await alive(redis, "worker-a")

    await TaskStore(redis, 3600).take("default", "worker-a", time.time(), 1, 100)

    assert await redis.hgetall(keys.heads("default")) == {}


async def test_a_take_that_drops_a_head_whose_record_expired_starts_the_next_job_of_its_project(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    expired = (await api.submit("noop", {}))["task_id"]
    behind = (await api.submit("noop", {}))["task_id"]
    await redis.delete(keys.task(expired))  # its TTL ran out while it waited
    await alive(redis, "worker-a")

    taken = (await TaskStore(redis, 3600).take("default", "worker-a", time.time(), 2, 100)).started

    assert [t.record.task_id for t in taken if t.record] == [behind]
    assert await redis.hgetall(keys.heads("default")) == {}


async def test_two_workers_taking_at_once_never_start_the_same_task(start_service: Any, redis: Redis):
    api = await start_service(workers=False)
    ids = {(await api.submit("noop", {}, project_id=f"p{n % 3}"))["task_id"] for n in range(30)}
    store = TaskStore(redis, 3600)
    await alive(redis, "worker-a", "worker-b")

    async def drain(worker_id: str) -> list[str]:
        mine: list[str] = []
        while taken := (await store.take("default", worker_id, time.time(), 2, 100)).started:
            mine += [t.record.task_id for t in taken if t.record]
        return mine

    first, second = await asyncio.gather(drain("worker-a"), drain("worker-b"))

    assert not set(first) & set(second)
    assert set(first) | set(second) == ids
    assert len(first) + len(second) == len(ids)


async def test_a_take_passes_over_a_throttled_projects_head_to_the_next_project(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    busy = [(await api.submit("noop", {}, project_id="busy"))["task_id"] for _ in range(2)]
    other = (await api.submit("noop", {}, project_id="other"))["task_id"]
    store = TaskStore(redis, 3600, concurrent_per_project=1)
    await alive(redis, "worker-a")

    first = await store.take("default", "worker-a", time.time(), 1, 100)
    second = await store.take("default", "worker-a", time.time(), 5, 100)

    assert [t.record.task_id for t in first.started if t.record] == [busy[0]]
    assert [t.record.task_id for t in second.started if t.record] == [other]
    assert second.look_when_freed  # the passed-over head may start when a slot frees
    assert await statuses(redis, busy) == ["processing", "queued"]


async def test_a_take_of_a_throttled_projects_jobs_counts_its_running_tasks_once(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    ids = [(await api.submit("noop", {}, project_id="busy"))["task_id"] for _ in range(5)]
    await alive(redis, "worker-a")

    taken, ran = await watched_take(redis, 5, TaskStore(redis, 3600, concurrent_per_project=10))

    assert [t.record.task_id for t in taken.started if t.record] == ids
    assert sum(1 for c in ran if c.startswith(f"SCARD {keys.project_processing('busy')}")) == 1


async def test_a_throttle_place_held_by_a_task_whose_record_is_gone_is_given_back(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    busy = [(await api.submit("noop", {}, project_id="busy"))["task_id"] for _ in range(2)]
    store = TaskStore(redis, 3600, concurrent_per_project=1)
    await alive(redis, "worker-a")
    await store.take("default", "worker-a", time.time(), 1, 100)
    await redis.delete(keys.task(busy[0]))  # gone while it ran

    taken = await store.take("default", "worker-a", time.time(), 1, 100)

    assert [t.record.task_id for t in taken.started if t.record] == [busy[1]]


async def test_takes_passing_over_a_throttled_project_read_its_running_records_once_a_minute(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    busy = [(await api.submit("noop", {}, project_id="busy"))["task_id"] for _ in range(2)]
    store = TaskStore(redis, 3600, concurrent_per_project=1)
    await alive(redis, "worker-a")
    await store.take("default", "worker-a", time.time(), 1, 100)  # busy's first: busy is at its limit
    for n in range(4):  # behind busy's next job
        await api.submit("noop", {}, project_id=f"other-{n}")

    first, first_ran = await watched_take(redis, 2, store)
    second, second_ran = await watched_take(redis, 2, store)

    running_record = f"HGET {keys.task(busy[0])} status"
    assert [len(t.started) for t in (first, second)] == [2, 2]  # the others' tasks, busy's head passed over
    assert first_ran.count(running_record) == 1
    assert second_ran.count(running_record) == 0
    assert 0 < await redis.pttl(keys.project_processing_pruned("busy")) <= keys.PRUNE_EVERY_MS


async def test_one_take_starts_no_more_of_a_project_than_its_limit_with_their_processing_places_written_at_once(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    ids = [(await api.submit("noop", {}, project_id="busy"))["task_id"] for _ in range(5)]
    await alive(redis, "worker-a")

    taken, ran = await watched_take(redis, 5, TaskStore(redis, 3600, concurrent_per_project=2))

    # The throttle counts the starts made before in the same take, though the processing set gets
    # them only when the take ends, in one SADD.
    assert [t.record.task_id for t in taken.started if t.record] == ids[:2]
    processing = keys.project_processing("busy")
    assert sum(1 for c in ran if c.startswith(f"SADD {processing} ")) == 1
    assert await redis.smembers(processing) == {i.encode() for i in ids[:2]}
    assert await statuses(redis, ids) == ["processing"] * 2 + ["queued"] * 3


async def test_a_take_after_a_lost_reply_returns_the_tasks_the_worker_already_runs(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    task_id = (await api.submit("noop", {}))["task_id"]
    store = TaskStore(redis, 3600)
    await alive(redis, "worker-a")
    await store.take("default", "worker-a", time.time(), 1, 100)  # its reply "lost"

    again = await store.take("default", "worker-a", time.time(), 1, 100, recover=True)
    other = await store.take("default", "worker-b", time.time(), 1, 100, recover=True)

    assert [t.record.task_id for t in again.started if t.record] == [task_id]
    assert other.started == []


async def test_a_submit_wakes_only_the_worker_idle_longest(start_service: Any, redis: Redis, wakes: PubSub):
    api = await start_service(workers=False)
    store = TaskStore(redis, 3600)
    await alive(redis, "worker-a", "worker-b")
    await store.take("default", "worker-a", time.time(), 4, 100)  # finds nothing: idle
    await store.take("default", "worker-b", time.time(), 4, 100)

    await api.submit("noop", {})

    assert await messages(wakes) == ["{taskd}:wake:worker-a {taskd}:default"]
    assert await redis.zrange(keys.idle("default"), 0, -1) == [b"worker-b"]


async def test_a_submit_behind_its_projects_head_wakes_no_worker(start_service: Any, redis: Redis):
    api = await start_service(workers=False)

    async def submit() -> None:
        await api.submit("noop", {})

    as_head = await sent_to_valkey(redis, submit, by_scripts=True)
    behind = await sent_to_valkey(redis, submit, by_scripts=True)

    # The head goes on arq's set: one worker is woken (none idle: the channel of every process).
    # Behind it the job is not on arq's set: no worker could take it, none is woken.
    assert [c for c in as_head if c.startswith("PUBLISH")] == [
        f"PUBLISH {keys.WAKE_CHANNEL} {{taskd}}:default"
    ]
    assert not [c for c in behind if c.startswith(("PUBLISH", "ZPOPMIN"))]


async def test_a_claimed_head_wakes_a_worker_for_the_next_job_of_its_project(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    head = await api.submit("noop", {})
    behind = await api.submit("noop", {})
    job_id = (await redis.hget(keys.task(head["task_id"]), "job_id") or b"").decode()
    started = []

    async def claim() -> None:
        store = TaskStore(redis, 3600)
        started.append(await store.start(head["task_id"], job_id, "default", "worker-a", time.time(), 60_000))

    ran = await sent_to_valkey(redis, claim, by_scripts=True)

    assert started[0].claimed
    next_job = await redis.hget(keys.task(behind["task_id"]), "job_id")
    assert await redis.zscore(keys.queue("default"), next_job) is not None
    # No worker idle: the queue's name on the channel of every process.
    assert [c for c in ran if c.startswith("PUBLISH")] == [f"PUBLISH {keys.WAKE_CHANNEL} {{taskd}}:default"]


async def test_a_claimed_head_whose_record_expired_gives_its_projects_turn_to_the_next_job(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    expired = (await api.submit("noop", {}))["task_id"]
    behind = (await api.submit("noop", {}))["task_id"]
    job_id = (await redis.hget(keys.task(expired), "job_id") or b"").decode()
    await redis.delete(keys.task(expired))  # its TTL ran out while it waited
    started = []

    async def claim() -> None:
        store = TaskStore(redis, 3600)
        started.append(await store.start(expired, job_id, "default", "worker-a", time.time(), 60_000))

    ran = await sent_to_valkey(redis, claim, by_scripts=True)

    assert started[0].record is None  # the worker drops the job
    next_job = await redis.hget(keys.task(behind), "job_id")
    assert await redis.hget(keys.heads("default"), "proj-1") == next_job
    assert await redis.zscore(keys.queue("default"), next_job) is not None
    assert [c for c in ran if c.startswith("PUBLISH")] == [f"PUBLISH {keys.WAKE_CHANNEL} {{taskd}}:default"]


async def test_cancelling_a_queued_head_wakes_a_worker_for_the_next_job_of_its_project(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    head = await api.submit("noop", {})
    await api.submit("noop", {})

    async def cancel() -> None:
        async with api.client.delete(f"/api/v1/tasks/{head['task_id']}") as response:
            assert response.status == 200, await response.text()

    ran = await sent_to_valkey(redis, cancel, by_scripts=True)

    assert [c for c in ran if c.startswith("PUBLISH")] == [f"PUBLISH {keys.WAKE_CHANNEL} {{taskd}}:default"]


async def test_a_submit_with_no_worker_idle_is_announced_on_the_channel_of_every_process(
    start_service: Any, redis: Redis, wakes: PubSub
):
    api = await start_service(workers=False)

    await api.submit("noop", {})

    assert await messages(wakes) == ["{taskd}:wake {taskd}:default"]


async def test_an_idle_worker_without_a_heartbeat_is_dropped_and_the_next_one_woken(
    start_service: Any, redis: Redis, wakes: PubSub
):
    api = await start_service(workers=False)
    store = TaskStore(redis, 3600)
    await alive(redis, "worker-b")
    await store.take("default", "worker-dead", time.time(), 4, 100)
    await store.take("default", "worker-b", time.time(), 4, 100)

    await api.submit("noop", {})

    assert await messages(wakes) == ["{taskd}:wake:worker-b {taskd}:default"]
    assert await redis.zcard(keys.idle("default")) == 0


async def test_a_worker_that_takes_its_fill_with_jobs_left_wakes_another_idle_worker(
    start_service: Any, redis: Redis, wakes: PubSub
):
    api = await start_service(workers=False)
    store = TaskStore(redis, 3600)
    for _ in range(3):
        await api.submit("noop", {})
    await messages(wakes)  # the submits' own wake-ups
    await alive(redis, "worker-a", "worker-b")
    await redis.zadd(keys.idle("default"), {"worker-b": 0})

    taken = await store.take("default", "worker-a", time.time(), 1, 100)

    assert len(taken.started) == 1
    assert taken.look_when_freed
    assert await messages(wakes) == ["{taskd}:wake:worker-b {taskd}:default"]


async def test_two_worker_processes_both_run_tasks_and_each_task_once(start_service: Any, redis: Redis):
    api = await start_service(workers=False)
    first = await start_service(http=False)
    second = await start_service(http=False)
    # Sixteen naps: one worker's default queue (concurrency 8) cannot take them all at once.
    ids = [(await api.submit("sleep", SLEEP, project_id=f"p{n % 4}"))["task_id"] for n in range(16)]

    bodies = [await api.wait_terminal(task_id) for task_id in ids]

    assert {body["status"] for body in bodies} == {"completed"}
    assert {body["attempt"] for body in bodies} == {1}
    runners = {(await redis.hget(keys.task(task_id), "worker_id") or b"").decode() for task_id in ids}
    assert runners == {first.service.worker_id, second.service.worker_id}


async def test_a_worker_that_found_no_more_jobs_waits_to_be_woken_instead_of_looking_when_a_slot_frees(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    await api.submit("noop", {})
    await alive(redis, "worker-a")

    taken = await TaskStore(redis, 3600).take("default", "worker-a", time.time(), 4, 100)

    assert len(taken.started) == 1
    assert not taken.look_when_freed
    assert await redis.zrange(keys.idle("default"), 0, -1) == [b"worker-a"]


async def listeners(redis: Redis, channel: str) -> int:
    """Subscribers of a pub/sub channel."""
    [(_, count)] = await redis.pubsub_numsub(channel)
    return int(count)


async def test_only_a_worker_that_claims_one_job_at_a_time_listens_to_the_wake_of_every_process(
    start_service: Any, redis: Redis
):
    taking = await start_service(http=False)
    async with asyncio.timeout(10):
        while await listeners(redis, keys.wake_worker(taking.service.worker_id)) == 0:
            await asyncio.sleep(0.02)
    alone = await listeners(redis, keys.WAKE_CHANNEL)

    claiming = await start_service(http=False, gpu_backend=SimulatedBackend(1), gpu=GpuConfig(slots=1))
    async with asyncio.timeout(10):
        while await listeners(redis, keys.wake_worker(claiming.service.worker_id)) == 0:
            await asyncio.sleep(0.02)

    assert alone == 0
    assert await listeners(redis, keys.WAKE_CHANNEL) == 1


NOOP = {"project_id": "proj-1", "task_type": "noop", "task_data": {}}
# A poll that never comes within a test: a task that starts did so because its worker was woken.
NO_POLL = WorkerConfig(heartbeat_interval=0.5, heartbeat_ttl=3, poll_delay=60)


async def takes_run(redis: Redis, run: Callable[[], Awaitable[None]]) -> int:
    """How many times take.lua ran in Redis while `run` ran (from the server's SLOWLOG)."""
    sha = scripts.load(redis, "take").registered.sha
    await redis.config_set("slowlog-max-len", 10_000)
    await redis.config_set("slowlog-log-slower-than", 0)  # every command
    await redis.slowlog_reset()
    await run()
    entries = await redis.slowlog_get(10_000)
    await redis.config_set("slowlog-log-slower-than", 10_000)
    return sum(1 for entry in entries if entry["command"].startswith(f"EVALSHA {sha}".encode()))


async def test_a_task_submitted_to_an_idle_serve_is_started_by_its_submit_with_no_take_or_wake_up(
    spawn_taskd: Callable[..., TaskdProcess], valkey_url: str, tmp_path: Path, redis: Redis, wakes: PubSub
):
    # A process of its own, as deployed. Its worker waits in the idle set between tasks, so each
    # submit script starts its task for it (tests/test_direct_start.py).
    env = child_env(tmp_path / "serve", TASKD_REDIS__URL=valkey_url, TASKD_WORKER__POLL_DELAY="60")
    serve = spawn_taskd("serve", "--queues", "default", env=env)
    async with aiohttp.ClientSession(serve.base_url, headers={"X-API-Key": API_KEY}) as client:

        async def run_one() -> None:
            async with client.post("/api/v1/tasks/submit", json=NOOP) as response:
                task_id = (await response.json())["task_id"]
            async with asyncio.timeout(10):
                while True:
                    async with client.get(f"/api/v1/tasks/{task_id}/status") as response:
                        if (await response.json())["status"] == "completed":
                            return
                    await asyncio.sleep(0.02)

        async def ten_in_a_row() -> None:
            for _ in range(10):
                await run_one()

        await run_one()  # warm; the worker is idle again
        await messages(wakes)
        # Before, the submit script woke the idle worker, whose take started the task: ten takes
        # (and a second, direct wake-up had made it take again for nothing, in two tasks out of three).
        assert await takes_run(redis, ten_in_a_row) == 0
        assert await messages(wakes) == []


class ReconnectAfterOneSecond(Backoff):
    """The listener comes back a whole second after it lost Redis: time to submit while it is away."""

    @classmethod
    def reconnect(cls) -> Backoff:
        return cls(1.0, 1.0)


async def test_a_wake_up_published_while_the_listener_was_away_is_not_left_to_the_poll(
    start_service: Any, redis: Redis, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(executor_module, "Backoff", ReconnectAfterOneSecond)
    taskd = await start_service(serve_queues=["default"], worker=NO_POLL)
    channel = keys.wake_worker(taskd.service.worker_id)
    await taskd.wait_terminal((await taskd.submit("noop", {}))["task_id"], timeout=10)  # idle again
    await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    async with asyncio.timeout(5):
        while await listeners(redis, channel):
            await asyncio.sleep(0.01)

    task_id = (await taskd.submit("noop", {}))["task_id"]  # its wake-up reaches no one

    # Once subscribed again, the worker looks: well before its poll (60 s).
    assert (await taskd.wait_terminal(task_id, timeout=5))["status"] == "completed"


async def test_a_take_after_a_lost_submit_reply_leaves_a_slot_for_the_task_that_submit_started(redis: Redis):
    asked: list[tuple[int, bool]] = []

    async def take(count: int, where: Any, recover: bool) -> Takes:
        asked.append((count, recover))
        return Takes([], False)  # nothing more: the worker waits in the idle set

    async def claim(job_id: str, timeout_ms: int) -> Any:
        raise AssertionError("a worker that takes never claims")

    async def job(ctx: Any, task_id: str) -> None:
        raise AssertionError("nothing runs here")

    worker = TaskdWorker(
        claim=claim,
        run_of=lambda task_id: None,
        lines=[(redis, keys.queue("default"))],
        take=take,
        functions=[func(job, name="job")],
        queue_name=keys.queue("default"),
        redis_pool=redis,
        max_jobs=3,
        handle_signals=False,
    )
    await worker._poll_iteration()  # a take of its three free slots that found nothing more
    assert await worker.hold() == 3

    worker.lost()  # the submit's script may have started a task for this worker: one slot is for it
    await worker._poll_iteration()

    assert asked == [(3, False), (2, True)]
