"""`redis.partitions`: every project's tasks, lines, limits and streams under one of several hash tags,
so that a Redis Cluster spreads taskd over its shards (docs/cluster.md). Here on one Valkey with three
partitions, through the HTTP API: every path a task takes works whichever partition it is in, and what
is counted across partitions (metrics, queue lengths, rate limits) adds up."""

from __future__ import annotations

import asyncio
import time
import zlib

import pytest
from conftest import make_config
from redis.asyncio import Redis
from redis.crc import key_slot
from redis_probes import idle_worker
from sse import read_events

from taskd import keys
from taskd.admin import operator
from taskd.config import ConfigError, LimitsConfig, RedisConfig, WebhooksConfig, WorkerConfig
from taskd.engine import keeper, scheduled
from taskd.service import Service
from taskd.store import TaskStore

PARTITIONS = 3


def project_in(partition: int) -> str:
    """A project id whose tasks live in `partition` of three."""
    return next(
        name
        for name in (f"film-{n}" for n in range(100))
        if zlib.crc32(name.encode()) % PARTITIONS == partition
    )


PROJECTS = [project_in(partition) for partition in range(PARTITIONS)]


@pytest.fixture
def partitioned(valkey_url: str) -> RedisConfig:
    return RedisConfig(url=valkey_url, partitions=PARTITIONS)


async def stored_under(redis: Redis, task_id: str) -> set[str]:
    """The hash tags of every key that names the task."""
    names = [name.decode() async for name in redis.scan_iter(match=f"*{task_id}*")]
    return {name[: name.index("}") + 1] for name in names}


async def test_the_tasks_of_each_project_are_stored_under_its_partitions_tag_and_complete(
    start_service, partitioned, redis
):
    taskd = await start_service(redis=partitioned)
    tasks = [await taskd.submit("noop", {}, project_id=project) for project in PROJECTS]

    ended = [await taskd.wait_terminal(task["task_id"]) for task in tasks]

    assert [body["status"] for body in ended] == ["completed"] * PARTITIONS
    tags = [await stored_under(redis, task["task_id"]) for task in tasks]
    assert tags == [{"{taskd}"}, {keys.partition_prefix(1)[:-1]}, {keys.partition_prefix(2)[:-1]}]


async def test_the_partitions_tags_hash_to_slots_in_three_equal_ranges():
    keys.configure_partitions(PARTITIONS)

    slots = [key_slot(keys.partition_prefix(partition).encode()) for partition in range(PARTITIONS)]

    assert [slot * PARTITIONS // 16384 for slot in slots] == [0, 1, 2]


async def test_a_task_id_names_its_projects_partition():
    keys.configure_partitions(PARTITIONS)

    ids = [keys.new_task_id(project) for project in PROJECTS for _ in range(20)]

    assert [keys.task_partition(task_id) for task_id in ids] == [
        p for p in range(PARTITIONS) for _ in range(20)
    ]


async def test_metrics_add_up_the_counters_of_every_partition(start_service, partitioned):
    taskd = await start_service(redis=partitioned)
    for project in PROJECTS:
        await taskd.wait_terminal((await taskd.submit("noop", {}, project_id=project))["task_id"])

    async with taskd.client.get("/api/v1/tasks/metrics") as response:
        metrics = (await response.json())["metrics"]

    assert (metrics["total_tasks"], metrics["completed_tasks"]) == (PARTITIONS, PARTITIONS)


async def test_health_counts_the_tasks_waiting_in_every_partition(start_service, partitioned):
    api_only = await start_service(redis=partitioned, workers=False)
    for project in PROJECTS:
        await api_only.submit("noop", {}, project_id=project)

    async with api_only.client.get("/api/v1/health") as response:
        body = await response.json()

    assert body["queue_sizes"]["default"] == PARTITIONS


async def test_a_submit_that_waits_for_its_end_gets_it_outside_partition_zero(start_service, partitioned):
    taskd = await start_service(redis=partitioned)
    body = {"project_id": PROJECTS[2], "task_type": "noop", "task_data": {}}

    async with taskd.client.post("/api/v1/tasks/submit", json=body, headers={"Prefer": "wait=5"}) as response:
        waited = await response.json()

    assert (response.status, waited["status"]) == (200, "completed")


async def test_the_operators_queue_view_and_purge_cover_every_partition(
    start_service, partitioned, valkey_url, tmp_path
):
    api_only = await start_service(redis=partitioned, workers=False)
    ids = [(await api_only.submit("noop", {}, project_id=project))["task_id"] for project in PROJECTS]

    async with operator(make_config(tmp_path, valkey_url, redis=partitioned), valkey_url) as ops:
        waiting = {state.name: state.waiting for state in await ops.queue_states()}
        purged = await ops.purge("default")

    assert waiting["default"] == PARTITIONS
    assert sorted(purged) == sorted(ids)
    assert [(await api_only.status(task_id))["status"] for task_id in ids] == ["cancelled"] * PARTITIONS


async def test_a_queued_task_outside_partition_zero_is_listed_and_cancelled(start_service, partitioned):
    api_only = await start_service(redis=partitioned, workers=False)
    task = await api_only.submit("noop", {}, project_id=PROJECTS[2])

    async with api_only.client.get(f"/api/v1/projects/{PROJECTS[2]}/tasks") as response:
        listed = [item["task_id"] for item in (await response.json())["tasks"]]
    async with api_only.client.delete(f"/api/v1/tasks/{task['task_id']}") as response:
        cancelled = await response.json()

    assert listed == [task["task_id"]]
    assert (cancelled["status"], cancelled["previous_state"]) == ("cancelled", "queued")


async def test_a_queued_tasks_record_outside_partition_zero_is_kept_while_it_waits(
    start_service, partitioned, monkeypatch, redis: Redis
):
    monkeypatch.setattr(keeper, "KEEP_EVERY_MAX_S", 0.2)
    api_only = await start_service(redis=partitioned, workers=False)
    task_id = (await api_only.submit("noop", {}, project_id=PROJECTS[2]))["task_id"]
    await redis.expire(keys.task(task_id), 3)

    async with asyncio.timeout(30):
        while await redis.ttl(keys.task(task_id)) <= 3:
            await asyncio.sleep(0.1)

    assert (await api_only.status(task_id))["status"] == "queued"


async def test_the_event_stream_of_a_task_outside_partition_zero_ends_with_its_completion(
    start_service, partitioned
):
    taskd = await start_service(redis=partitioned)
    task = await taskd.submit("sleep", {"seconds": 0.2, "steps": 2}, project_id=PROJECTS[1])

    async with asyncio.timeout(10), taskd.client.get(f"/api/v1/tasks/{task['task_id']}/events") as response:
        seen = await read_events(response)

    assert seen[0].data["status"] == "queued"
    assert seen[-1].data["status"] == "completed"


async def test_a_webhook_of_a_task_outside_partition_zero_is_delivered(start_service, partitioned, receiver):
    taskd = await start_service(redis=partitioned, webhooks=WebhooksConfig(allow_private=True))
    task = await taskd.submit("noop", {}, project_id=PROJECTS[2], callback_url=receiver.url())

    received = await receiver.wait_for(1)
    body = await taskd.wait_for(
        task["task_id"], lambda status: bool((status.get("webhook") or {}).get("delivered_at"))
    )

    assert (received[0].json["task_id"], received[0].json["status"]) == (task["task_id"], "completed")
    assert body["webhook"]["attempts"] == 1


async def test_a_task_delayed_in_another_partition_starts_when_due(start_service, partitioned):
    taskd = await start_service(redis=partitioned)
    task = await taskd.submit("noop", {}, project_id=PROJECTS[1], delay_seconds=1)

    assert (await taskd.status(task["task_id"]))["status"] == "queued"
    assert (await taskd.wait_terminal(task["task_id"]))["status"] == "completed"


async def test_one_look_queues_every_due_task_of_every_partition_past_a_batch_in_each(
    start_service, partitioned, redis, monkeypatch
):
    # Only the look below queues due tasks: the service's own looks are off.
    monkeypatch.setattr(scheduled.ScheduledRelease, "run", lambda _: asyncio.sleep(0))
    monkeypatch.setattr(scheduled, "BATCH", 2)
    api_only = await start_service(redis=partitioned, workers=False)
    for project in PROJECTS:
        for _ in range(3):
            await api_only.submit("noop", {}, project_id=project, delay_seconds=600)
    monkeypatch.setattr(scheduled, "now", lambda: time.time() + 1200)

    queued = await scheduled.ScheduledRelease(TaskStore(redis, 3600)).once()

    assert queued == 3 * PARTITIONS
    assert [await redis.zcard(keys.scheduled(partition)) for partition in range(PARTITIONS)] == [
        0
    ] * PARTITIONS


async def test_a_batch_chain_of_one_project_runs_in_order(start_service, partitioned):
    taskd = await start_service(redis=partitioned)
    items = [
        {"project_id": PROJECTS[1], "task_type": "noop", "task_data": {}},
        {"project_id": PROJECTS[1], "task_type": "noop", "task_data": {}, "depends_on": ["@0"]},
    ]

    async with taskd.client.post("/api/v1/tasks/batch", json={"tasks": items}) as response:
        first, second = (await response.json())["tasks"]
    ended = [await taskd.wait_terminal(item["task_id"]) for item in (first, second)]

    assert [body["status"] for body in ended] == ["completed", "completed"]
    assert ended[0]["completed_at"] <= ended[1]["started_at"]


async def test_a_batch_of_projects_in_two_partitions_is_refused_and_stores_nothing(
    start_service, partitioned, redis
):
    api_only = await start_service(redis=partitioned, workers=False)
    items = [{"project_id": project, "task_type": "noop", "task_data": {}} for project in PROJECTS[:2]]

    async with api_only.client.post("/api/v1/tasks/batch", json={"tasks": items}) as response:
        body = await response.json()

    assert (response.status, body["error"]) == (400, "validation_error")
    assert "one partition" in body["details"]["tasks"]
    assert [name async for name in redis.scan_iter(match="*task:*")] == []


async def test_a_dependency_of_another_partition_is_named_as_another_projects_task(
    start_service, partitioned
):
    taskd = await start_service(redis=partitioned)
    other = await taskd.submit("noop", {}, project_id=PROJECTS[0])
    body = {"project_id": PROJECTS[1], "task_type": "noop", "task_data": {}, "depends_on": [other["task_id"]]}

    async with taskd.client.post("/api/v1/tasks/submit", json=body) as response:
        refused = await response.json()

    assert response.status == 400
    assert refused["details"]["depends_on"] == f"Task '{other['task_id']}' belongs to another project"


async def test_the_queue_length_limit_counts_the_tasks_waiting_in_every_partition(start_service, partitioned):
    api_only = await start_service(redis=partitioned, workers=False, limits=LimitsConfig(max_queue_length=2))
    await api_only.submit("noop", {}, project_id=PROJECTS[0])
    await api_only.submit("noop", {}, project_id=PROJECTS[1])

    body = {"project_id": PROJECTS[2], "task_type": "noop", "task_data": {}}
    async with api_only.client.post("/api/v1/tasks/submit", json=body) as response:
        assert response.status == 503


async def test_the_submit_rate_limit_counts_submits_to_every_partition(start_service, partitioned):
    api_only = await start_service(redis=partitioned, workers=False, limits=LimitsConfig(submit_per_minute=2))
    await api_only.submit("noop", {}, project_id=PROJECTS[1])
    await api_only.submit("noop", {}, project_id=PROJECTS[2])

    body = {"project_id": PROJECTS[0], "task_type": "noop", "task_data": {}}
    async with api_only.client.post("/api/v1/tasks/submit", json=body) as response:
        assert response.status == 429
        assert int(response.headers["Retry-After"]) > 0


async def test_an_idempotency_key_replays_the_first_answer_in_its_projects_partition(
    start_service, partitioned
):
    api_only = await start_service(redis=partitioned, workers=False)
    body = {"project_id": PROJECTS[2], "task_type": "noop", "task_data": {}}

    answers = []
    for _ in range(2):
        async with api_only.client.post(
            "/api/v1/tasks/submit", json=body, headers={"Idempotency-Key": "scene-1"}
        ) as response:
            answers.append(
                (
                    response.status,
                    (await response.json())["task_id"],
                    response.headers.get("Idempotent-Replayed"),
                )
            )

    assert answers[0][:2] == answers[1][:2]
    assert answers[1][2] == "true"


async def test_an_idempotency_key_used_for_a_project_of_another_partition_is_refused(
    start_service, partitioned, redis
):
    api_only = await start_service(redis=partitioned, workers=False)
    headers = {"Idempotency-Key": "scene-1"}
    first = {"project_id": PROJECTS[0], "task_type": "noop", "task_data": {}}
    async with api_only.client.post("/api/v1/tasks/submit", json=first, headers=headers) as response:
        assert response.status == 200

    other = {**first, "project_id": PROJECTS[1]}
    async with api_only.client.post("/api/v1/tasks/submit", json=other, headers=headers) as response:
        body = await response.json()

    assert (response.status, body["error"]) == (422, "idempotency_key_reused")
    assert await redis.zcard(keys.project(PROJECTS[1])) == 0


async def test_a_take_filled_from_a_later_partition_leaves_the_worker_in_no_idle_set(
    start_service, partitioned, redis
):
    api_only = await start_service(redis=partitioned, workers=False)
    store = TaskStore(redis, 3600)
    # A take that finds nothing puts the worker in every partition's idle set.
    assert not (await store.take("default", "worker-a", time.time(), 1, 100)).started
    task = await api_only.submit("noop", {}, project_id=PROJECTS[1])

    # Partition 1 fills its one slot; the partitions after it are not looked in.
    takes = await store.take("default", "worker-a", time.time(), 1, 100)

    assert [taken.record.task_id for taken in takes.started if taken.record] == [task["task_id"]]
    assert takes.look_when_freed
    # A job of partition 0 must wake a worker with room, not this full one.
    assert await redis.zscore(keys.idle("default", 0), "worker-a") is None


async def test_projects_take_turns_across_partitions_not_the_partitions_themselves(
    start_service, partitioned, redis
):
    api_only = await start_service(redis=partitioned, workers=False)
    alone = PROJECTS[0]
    # Two projects in partition 1 against one in partition 0.
    crowd = [
        PROJECTS[1],
        next(name for name in (f"reel-{n}" for n in range(100)) if zlib.crc32(name.encode()) % 3 == 1),
    ]
    submitted = []
    for _ in range(2):
        for project in (alone, *crowd):
            submitted.append((await api_only.submit("noop", {}, project_id=project))["task_id"])
    store = TaskStore(redis, 3600)

    started = []
    for _ in submitted:
        takes = await store.take("default", "worker-a", time.time(), 1, 100)
        started += [taken.record.task_id for taken in takes.started if taken.record]

    # Each project's next task starts when its turn comes round, wherever its partition: taken in
    # rotation, the project alone in its partition had every other start. (Within a partition, two
    # heads whose turns began in the same millisecond go in either order.)
    assert (set(started[:3]), set(started[3:])) == (set(submitted[:3]), set(submitted[3:]))


async def test_a_take_of_several_jobs_starts_the_heads_that_waited_longest_in_every_partition(
    start_service, partitioned, redis
):
    api_only = await start_service(redis=partitioned, workers=False)
    alone, other = PROJECTS[0], PROJECTS[1]
    first = (await api_only.submit("noop", {}, project_id=alone))["task_id"]
    then = (await api_only.submit("noop", {}, project_id=other))["task_id"]
    await api_only.submit("noop", {}, project_id=alone)
    store = TaskStore(redis, 3600)

    takes = await store.take("default", "worker-a", time.time(), 2, 100)

    # Filled from one partition, the second slot went to `alone`'s next task, whose turn comes after
    # `other`'s.
    assert [taken.record.task_id for taken in takes.started if taken.record] == [first, then]


async def test_a_job_running_on_a_claiming_worker_takes_no_share_of_a_take_across_partitions(
    start_service, partitioned, redis
):
    # A host with GPUs claims one job at a time (start.lua) and its running jobs stay on arq's set,
    # in front; a host without takes batches from the same queue. The claimed job's partition is
    # the last, so that it loses a tie of scores (the same millisecond) to the other's heads.
    api_only = await start_service(redis=partitioned, workers=False)
    first, second = [
        name for name in (f"reel-{n}" for n in range(200)) if zlib.crc32(name.encode()) % PARTITIONS == 1
    ][:2]
    claimed = (await api_only.submit("noop", {}, project_id=PROJECTS[2]))["task_id"]
    older = (await api_only.submit("noop", {}, project_id=first))["task_id"]
    old = (await api_only.submit("noop", {}, project_id=second))["task_id"]
    await api_only.submit("noop", {}, project_id=PROJECTS[2])  # its turn comes after both
    store = TaskStore(redis, 3600)
    record = await store.get(claimed)
    assert record.job_id is not None
    start = await store.start(claimed, record.job_id, "default", "gpu-worker", time.time(), 60_000)
    assert start.record is not None

    takes = await store.take("default", "worker-a", time.time(), 2, 100)

    # Counted among the heads, the running job gave its partition a share, which started its
    # project's next task ahead of the two heads of the other partition.
    assert {taken.record.task_id for taken in takes.started if taken.record} == {older, old}


async def test_the_wake_up_of_an_idle_worker_names_the_partition_of_the_job(
    start_service, partitioned, redis
):
    api_only = await start_service(redis=partitioned, workers=False)
    # An idle worker of partition 2, as take.lua leaves one, alive by its heartbeat's mark there.
    await redis.set(keys.worker("worker-a", 2), b"1")
    await redis.zadd(keys.idle("default", 2), {"worker-a": 1})
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(keys.wake_worker("worker-a"))
        await pubsub.get_message(timeout=1)  # the subscribe confirmation

        await api_only.submit("noop", {}, project_id=PROJECTS[2])
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)

    assert message is not None
    assert keys.woken(message["data"].decode()) == ("default", 2)


async def test_a_take_after_a_wake_up_looks_only_in_the_partitions_it_named(
    start_service, partitioned, redis
):
    api_only = await start_service(redis=partitioned, workers=False)
    elsewhere = await api_only.submit("noop", {}, project_id=PROJECTS[1])
    wanted = await api_only.submit("noop", {}, project_id=PROJECTS[2])
    store = TaskStore(redis, 3600)

    takes = await store.take("default", "worker-a", time.time(), 4, 100, where={2})

    assert [taken.record.task_id for taken in takes.started if taken.record] == [wanted["task_id"]]
    assert (await api_only.status(elsewhere["task_id"]))["status"] == "queued"


async def test_a_worker_filled_by_a_woken_take_leaves_every_idle_set_it_waited_in(
    start_service, partitioned, redis
):
    api_only = await start_service(redis=partitioned, workers=False)
    store = TaskStore(redis, 3600)
    await store.take("default", "worker-a", time.time(), 1, 100)  # nothing anywhere: idle in all three
    idle = [await redis.zscore(keys.idle("default", p), "worker-a") is not None for p in range(PARTITIONS)]
    await api_only.submit("noop", {}, project_id=PROJECTS[2])  # pops it from partition 2's idle set

    takes = await store.take("default", "worker-a", time.time(), 1, 100, where={2})

    assert idle == [True] * PARTITIONS
    assert len(takes.started) == 1 and takes.look_when_freed
    assert [await redis.zscore(keys.idle("default", p), "worker-a") for p in range(PARTITIONS)] == [None] * 3


async def test_a_submit_starts_its_task_for_the_services_idle_worker_in_the_tasks_partition(
    start_service, partitioned, redis
):
    no_poll = WorkerConfig(heartbeat_interval=0.5, heartbeat_ttl=3, poll_delay=60)
    serve = await start_service(redis=partitioned, worker=no_poll)
    worker_id = await idle_worker(redis, serve, partition=2)

    task = await serve.submit("sleep", {"seconds": 0.3, "steps": 1}, project_id=PROJECTS[2])
    started = await redis.hmget(keys.task(task["task_id"]), "status", "worker_id")

    assert started == [b"processing", worker_id.encode()]
    assert await stored_under(redis, task["task_id"]) == {keys.partition_prefix(2)[:-1]}
    assert (await serve.wait_terminal(task["task_id"]))["status"] == "completed"


def test_a_bare_queue_name_wakes_without_a_partition():
    assert keys.woken("default") == ("default", None)


async def test_a_start_with_another_number_of_partitions_than_the_data_is_refused(tmp_path, valkey_url):
    first = Service(
        make_config(tmp_path, valkey_url, redis=RedisConfig(url=valkey_url, partitions=3)),
        http=True,
        workers=False,
    )
    await first.start()
    await first.stop(grace=1)

    again = Service(
        make_config(tmp_path, valkey_url, redis=RedisConfig(url=valkey_url, partitions=2)),
        http=True,
        workers=False,
    )
    with pytest.raises(ConfigError, match=r"every process must use redis\.partitions = 3"):
        await again.start()


async def test_a_store_made_with_one_partition_is_not_opened_with_more(start_service, tmp_path, valkey_url):
    taskd = await start_service()
    await taskd.wait_terminal((await taskd.submit("noop", {}))["task_id"])

    again = Service(
        make_config(tmp_path, valkey_url, redis=RedisConfig(url=valkey_url, partitions=3)),
        http=True,
        workers=False,
    )
    with pytest.raises(ConfigError, match=r"every process must use redis\.partitions = 1"):
        await again.start()


async def test_tasks_stored_before_the_number_was_kept_keep_one_partition(
    start_service, tmp_path, valkey_url, redis
):
    taskd = await start_service()
    await taskd.wait_terminal((await taskd.submit("noop", {}))["task_id"])
    await redis.delete(keys.PARTITIONS)  # as a version before the marker left its data

    again = Service(
        make_config(tmp_path, valkey_url, redis=RedisConfig(url=valkey_url, partitions=3)),
        http=True,
        workers=False,
    )
    with pytest.raises(ConfigError, match="holds tasks stored in one partition"):
        await again.start()
    assert await redis.get(keys.PARTITIONS) is None
