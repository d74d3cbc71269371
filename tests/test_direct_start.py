"""Issue 19, start latency: a submit starts its task for its own process's idle worker in the submit
script itself (submit.lua's `taker`), with no wake-up and no take between the submit and the start,
and within every rule a take keeps: the worker's free slots, the project throttle, fair turns; a
submit whose reply is lost leaves what its script started to the worker's next take."""

from __future__ import annotations

import asyncio
from typing import Any

import attrs
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis_probes import idle_worker, statuses
from test_submit_together import new_task

from taskd import keys
from taskd.config import Config, LimitsConfig, QueueConfig, WorkerConfig
from taskd.store import TaskStore, coalesce
from taskd.store.records import Admission, Takes

SLEEP = {"seconds": 0.4, "steps": 1}
# A poll that never comes within a test: a task that starts did so because of the submit or a take
# the worker made for a reason of its own.
NO_POLL = WorkerConfig(heartbeat_interval=0.5, heartbeat_ttl=3, poll_delay=60)


async def stored(redis: Redis, task_id: str, field: str) -> str:
    return (await redis.hget(keys.task(task_id), field) or b"").decode()


async def submitted(
    serve: Any, redis: Redis, project_id: str = "proj-1", data: dict[str, Any] = SLEEP
) -> tuple[str, str]:
    """A sleep task submitted, and its status read as soon as the submit answered."""
    task_id: str = (await serve.submit("sleep", data, project_id=project_id))["task_id"]
    return task_id, await stored(redis, task_id, "status")


async def test_a_task_submitted_while_the_services_worker_is_idle_is_processing_when_the_submit_answers(
    start_service: Any, redis: Redis
):
    serve = await start_service(worker=NO_POLL)
    worker_id = await idle_worker(redis, serve)

    task_id = (await serve.submit("sleep", SLEEP))["task_id"]

    assert await stored(redis, task_id, "status") == "processing"
    assert await stored(redis, task_id, "worker_id") == worker_id
    assert (await serve.wait_terminal(task_id))["status"] == "completed"


async def test_a_task_started_by_its_submit_on_an_idle_queue_never_waits_in_a_line_on_arqs_set_or_as_a_head(
    start_service: Any, redis: Redis
):
    serve = await start_service(worker=NO_POLL)
    await idle_worker(redis, serve)
    waiting_keys = [
        keys.queue("default"),
        keys.waiting("default"),
        keys.heads("default"),
        keys.project_waiting("default", "proj-1"),
    ]
    await redis.config_set("notify-keyspace-events", "Kgzh")
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(*(f"__keyspace@0__:{key}" for key in waiting_keys), "submitted")
        # Every notification of the submit's script comes before a message published after it.
        task_id, status = await submitted(serve, redis)
        await redis.publish("submitted", "1")
        touched = []
        async with asyncio.timeout(10):
            async for message in pubsub.listen():
                if message["type"] != "message":
                    continue
                if message["channel"] == b"submitted":
                    break
                touched.append((message["channel"].decode(), message["data"].decode()))

    assert status == "processing"
    assert touched == []
    assert (await serve.wait_terminal(task_id))["status"] == "completed"


@attrs.define
class IdleSlot:
    """A free slot of an idle worker held for one submit (taskd.store.records.Taker), keeping what
    the submit script started for it."""

    worker_id: str
    room: int = 1
    takes: Takes | None = None

    def handed(self, takes: Takes | None) -> None:
        self.takes = takes

    def lost(self) -> None:
        raise AssertionError("the submit's reply was lost")


async def submitted_for_idle_worker(redis: Redis, store: TaskStore, project: str) -> tuple[str, list[str]]:
    """A task of `project` submitted with a slot of the idle worker-a held; the ids its script started."""
    await redis.zadd(keys.idle("default"), {"worker-a": 0})
    record, job = new_task(project)
    slot = IdleSlot("worker-a")
    await store.create(record, job, Admission(), taker=slot)
    assert slot.takes is not None
    return record.task_id, [taken.record.task_id for taken in slot.takes.started if taken.record]


async def test_a_submit_for_an_idle_worker_starts_another_projects_due_head_first_as_a_take_would(
    redis: Redis,
):
    store = TaskStore(redis, 3600)
    due, due_job = new_task("first")
    await store.create(due, due_job, Admission())  # no worker took it: its project's head, due

    new_id, started = await submitted_for_idle_worker(redis, store, "second")

    assert started == [due.task_id]
    assert await statuses(redis, [due.task_id, new_id]) == ["processing", "queued"]


async def test_a_submit_for_an_idle_worker_starts_its_projects_head_before_itself(redis: Redis):
    store = TaskStore(redis, 3600)
    head, head_job = new_task("same")
    await store.create(head, head_job, Admission())

    new_id, started = await submitted_for_idle_worker(redis, store, "same")

    assert started == [head.task_id]
    assert await statuses(redis, [head.task_id, new_id]) == ["processing", "queued"]


async def test_the_worker_stays_idle_while_a_started_task_leaves_it_free_slots(
    start_service: Any, redis: Redis
):
    serve = await start_service(worker=NO_POLL)
    worker_id = await idle_worker(redis, serve)

    first = await submitted(serve, redis)
    second = await submitted(serve, redis, "proj-2")

    assert [first[1], second[1]] == ["processing"] * 2
    assert await redis.zscore(keys.idle("default"), worker_id) is not None


async def test_a_submit_that_fills_the_workers_last_slot_takes_it_out_of_the_idle_set_and_the_next_waits(
    start_service: Any, redis: Redis
):
    one_slot = {**Config().queues, "default": QueueConfig(concurrency=1, timeout=60)}
    serve = await start_service(worker=NO_POLL, queues=one_slot)
    worker_id = await idle_worker(redis, serve)

    first = await submitted(serve, redis)
    full = await redis.zscore(keys.idle("default"), worker_id)
    second = await submitted(serve, redis, "proj-2")

    assert full is None
    assert [first[1], second[1]] == ["processing", "queued"]
    ended = [await serve.wait_terminal(task_id) for task_id, _ in (first, second)]
    assert [body["status"] for body in ended] == ["completed"] * 2
    assert ended[1]["started_at"] >= ended[0]["completed_at"]


async def test_a_throttled_projects_task_waits_at_its_submit_while_another_projects_task_starts(
    start_service: Any, redis: Redis
):
    serve = await start_service(worker=NO_POLL, limits=LimitsConfig(concurrent_per_project=1))
    await idle_worker(redis, serve)

    running = await submitted(serve, redis, "busy", {"seconds": 1.5, "steps": 1})
    throttled = await submitted(serve, redis, "busy")
    # The throttled head passed over leaves the worker to look again when a slot frees, as after a
    # take: this one starts through the wake-up its submit sends.
    other = (await serve.submit("sleep", SLEEP, project_id="other"))["task_id"]

    assert [running[1], throttled[1]] == ["processing", "queued"]
    first, waited, meanwhile = [
        await serve.wait_terminal(task_id) for task_id in (running[0], throttled[0], other)
    ]
    assert meanwhile["status"] == "completed"
    assert meanwhile["started_at"] < first["completed_at"]
    assert waited["status"] == "completed"
    assert waited["started_at"] >= first["completed_at"]


async def test_a_submit_whose_reply_is_lost_leaves_the_task_its_script_started_to_the_workers_next_take(
    start_service: Any, redis: Redis, monkeypatch: pytest.MonkeyPatch
):
    serve = await start_service(worker=NO_POLL)
    worker_id = await idle_worker(redis, serve)
    sent = coalesce.Merged._run

    async def reply_lost(self: coalesce.Merged, calls: list[list[Any]]) -> list[Any]:
        replies = await sent(self, calls)  # the script ran in Redis
        if self.script.name == "submit":
            raise RedisConnectionError("connection lost before the reply")
        return replies

    monkeypatch.setattr(coalesce.Merged, "_run", reply_lost)
    async with serve.client.post(
        "/api/v1/tasks/submit", json={"project_id": "proj-1", "task_type": "noop", "task_data": {}}
    ) as response:
        assert response.status == 503
    monkeypatch.undo()
    [task_id] = [member.decode() for member in await redis.zrange(keys.project("proj-1"), 0, -1)]

    assert await stored(redis, task_id, "worker_id") == worker_id
    assert (await serve.wait_terminal(task_id, timeout=10))["status"] == "completed"


async def test_a_held_slot_given_back_after_a_wake_up_came_for_it_looks_for_the_job_that_sent_it(
    start_service: Any, redis: Redis
):
    one_slot = {**Config().queues, "default": QueueConfig(concurrency=1, timeout=60)}
    serve = await start_service(worker=NO_POLL, queues=one_slot)
    worker_id = await idle_worker(redis, serve)
    api_only = await start_service(workers=False)
    # A submit of the serve's own holds the worker's only slot...
    slot = await serve.service._pool.hold("default")
    assert slot is not None

    # ...while another node's submit wakes that worker, idle in Redis, whose look finds no free slot.
    task_id = (await api_only.submit("noop", {}))["task_id"]
    async with asyncio.timeout(10):
        while await redis.zscore(keys.idle("default"), worker_id) is not None:
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # the wake-up's message reaches the worker
    slot.handed(None)  # the held slot's submit started nothing: the slot comes back

    assert (await api_only.wait_terminal(task_id, timeout=10))["status"] == "completed"
