"""Tasks left on a queue that no process's config names any more (a queue removed or renamed, a
type routed elsewhere by `tasks.routes`), or that only another node's config names: they are kept
until a worker serves their queue, and every node's health, `/metrics` and `taskd queues` show
them (docs/guarantees.md#a-task-on-a-queue-nobody-serves).

Each test submits through a node whose config routes `noop` to queue `old`, stops it, and looks
through a node of the default config, as after a restart with the queue gone from the config.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from conftest import TEST_TASK_MODULES, RunningService
from redis.asyncio import Redis
from redis.exceptions import RedisError
from test_cli_admin import operator_cli
from test_prometheus import parse, scrape, value

from taskd import keys
from taskd.config import Config, QueueConfig, TasksConfig
from taskd.engine import keeper
from taskd.store import layout

# The node that admitted the tasks: `noop` goes to queue `old`, which later configs drop.
WITH_OLD: dict[str, Any] = {
    "queues": {**Config().queues, "old": QueueConfig(concurrency=2, timeout=60)},
    "tasks": TasksConfig(modules=TEST_TASK_MODULES, routes={"noop": "old"}),
}


@pytest.fixture(autouse=True)
def look_often(monkeypatch: pytest.MonkeyPatch) -> None:
    """The keeper looks every 0.2 s, not every hour."""
    monkeypatch.setattr(keeper, "KEEP_EVERY_MAX_S", 0.2)


async def submit_on_old(start_service: Any, **fields: Any) -> str:
    """A `noop` admitted to queue `old` by a node (no worker) that is then stopped; its id."""
    admitting = await start_service(workers=False, **WITH_OLD)
    task_id = (await admitting.submit("noop", {}, **fields))["task_id"]
    await admitting.service.stop(grace=1)
    return str(task_id)


async def get_body(node: RunningService, path: str) -> dict[str, Any]:
    """The JSON body of a 200 answer to `GET path`."""
    async with node.client.get(path) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def wait_until_waiting_on_old(node: RunningService) -> dict[str, Any]:
    """The node's `/api/v1/health` once it counts a task waiting on `old`."""
    async with asyncio.timeout(30):
        while (body := await get_body(node, "/api/v1/health"))["queue_sizes"].get("old") != 1:
            await asyncio.sleep(0.1)
    return body


UNSERVED_OLD = {
    "severity": "critical",
    "message": "Queue old has 1 task waiting and no live worker serves it",
    "metric": "queue_without_worker",
    "value": 1,
    "queue": "old",
}


async def test_a_scheduled_task_due_on_a_queue_no_config_names_is_told_by_the_health(start_service):
    await submit_on_old(start_service, delay_seconds=1)
    node = await start_service()

    await wait_until_waiting_on_old(node)

    assert UNSERVED_OLD in (await get_body(node, "/api/v1/tasks/health"))["alerts"]


async def test_a_task_waiting_on_a_queue_no_config_names_is_kept_past_its_records_expiry(
    start_service, redis: Redis
):
    task_id = await submit_on_old(start_service)
    await start_service()
    # As if it had waited all but a few seconds of storage.task_ttl.
    await redis.expire(keys.task(task_id), 3)

    async with asyncio.timeout(30):
        while (left := await redis.ttl(keys.task(task_id))) <= 3600:
            assert left != -2, "the record expired while its task was queued"
            await asyncio.sleep(0.1)


async def test_a_task_on_a_queue_no_config_names_runs_once_a_worker_serves_it(start_service):
    task_id = await submit_on_old(start_service)
    node = await start_service()
    await start_service(http=False, serve_queues=["old"], **WITH_OLD)

    body = await node.wait_terminal(task_id, timeout=30)

    assert body["status"] == "completed"


async def test_a_dependent_released_onto_a_queue_no_process_named_is_told_by_the_health(
    start_service, redis: Redis
):
    admitting = await start_service(workers=False, **WITH_OLD)
    first = (await admitting.submit("sleep", {"seconds": 1}))["task_id"]  # queue default
    await admitting.submit("noop", {}, depends_on=[first])
    await admitting.service.stop(grace=1)
    # As an earlier version left it: no process ever said that queue `old` exists.
    await redis.delete(keys.queues(0))
    node = await start_service()

    await wait_until_waiting_on_old(node)

    assert UNSERVED_OLD in (await get_body(node, "/api/v1/tasks/health"))["alerts"]


async def test_a_task_an_earlier_version_queued_on_a_queue_no_config_names_is_told_by_the_health(
    start_service, redis: Redis
):
    await submit_on_old(start_service)
    # As an earlier version left it: no process ever said that queue `old` exists.
    await redis.delete(keys.queues(0))
    node = await start_service()

    await wait_until_waiting_on_old(node)

    assert UNSERVED_OLD in (await get_body(node, "/api/v1/tasks/health"))["alerts"]


async def test_a_queue_an_earlier_version_filled_after_a_downgrade_is_told_by_the_next_start(
    start_service, redis: Redis
):
    await submit_on_old(start_service)  # this version ran: the known queues are there
    # As a process of the earlier version (a downgrade, every process of this version stopped)
    # queued it: it named no queue.
    await redis.srem(keys.queues(0), "old")
    node = await start_service()

    await wait_until_waiting_on_old(node)
    assert UNSERVED_OLD in (await get_body(node, "/api/v1/tasks/health"))["alerts"]


async def test_a_start_with_no_other_process_of_this_version_alive_does_not_wait_for_its_look(
    start_service, monkeypatch: pytest.MonkeyPatch
):
    # An ordinary restart of a whole deployment: the known queues are there, no process is alive.
    await (await start_service()).service.stop(grace=1)
    looks = layout.know_queues
    looking = asyncio.Event()

    async def held_look(clients: list[Redis], *, again: bool = False) -> int:
        if again:  # a pass over a big keyspace: it lasts till the end of the test
            looking.set()
            await asyncio.Event().wait()
        return await looks(clients)

    monkeypatch.setattr(layout, "know_queues", held_look)

    async with asyncio.timeout(30):
        node = await start_service()
    await get_body(node, "/api/v1/health")
    async with asyncio.timeout(30):
        await looking.wait()  # the look is still made, after the start


async def keep_publishing_as_an_earlier_version(redis: Redis, process_id: str) -> None:
    """What a live process of a version before the known queues publishes of itself (taskd.agreement):
    a settings record without `names_queues`, renewed as its publish loop does, until cancelled."""
    record = {"process_id": process_id, "host": "old-host", "pid": 1, "roles": ["api"], "digests": {}}
    try:
        while True:
            await redis.set(keys.settings(process_id), orjson.dumps(record), px=60_000)
            await redis.zadd(keys.SETTINGS, {process_id: int(time.time() * 1000)})
            await asyncio.sleep(0.2)
    finally:
        await redis.delete(keys.settings(process_id))
        await redis.zrem(keys.SETTINGS, process_id)


@pytest.fixture
async def earlier_version(redis: Redis) -> AsyncIterator[asyncio.Task[None]]:
    """A live process of an earlier version, for as long as the task runs."""
    task = asyncio.create_task(keep_publishing_as_an_earlier_version(redis, "earlier-process"))
    yield task
    task.cancel()


async def test_a_queue_an_earlier_version_filled_during_a_rolling_upgrade_is_told_once_it_is_gone(
    start_service, redis: Redis, earlier_version: asyncio.Task[None]
):
    node = await start_service()  # the known queues are there: a later start does not look for others
    await submit_on_old(start_service)
    # As a process of the earlier version queued it after that start: it named no queue.
    await redis.srem(keys.queues(0), "old")

    earlier_version.cancel()  # it stops: its config, the only one that named `old`, is gone

    await wait_until_waiting_on_old(node)
    assert UNSERVED_OLD in (await get_body(node, "/api/v1/tasks/health"))["alerts"]


async def test_the_settings_record_is_renewed_while_the_look_after_an_earlier_version_lasts(
    start_service, redis: Redis, earlier_version: asyncio.Task[None], monkeypatch: pytest.MonkeyPatch
):
    await start_service()
    (mine,) = [member for member in await redis.zrange(keys.SETTINGS, 0, -1) if member != b"earlier-process"]
    looking = asyncio.Event()

    async def held_look(clients: list[Redis], *, again: bool = False) -> int:
        looking.set()
        await asyncio.Event().wait()  # a pass over a big keyspace: it lasts till the end of the test
        return 0

    monkeypatch.setattr(layout, "know_queues", held_look)
    earlier_version.cancel()
    async with asyncio.timeout(30):
        await looking.wait()
    published = await redis.zscore(keys.SETTINGS, mine)

    async with asyncio.timeout(30):
        while await redis.zscore(keys.SETTINGS, mine) == published:
            await asyncio.sleep(0.1)


async def test_a_look_after_an_earlier_version_that_fails_is_made_again(
    start_service, redis: Redis, earlier_version: asyncio.Task[None], monkeypatch: pytest.MonkeyPatch
):
    node = await start_service()
    await submit_on_old(start_service)
    await redis.srem(keys.queues(0), "old")  # queued by the earlier version
    looks = layout.know_queues

    async def failing_once(clients: list[Redis], *, again: bool = False) -> int:
        monkeypatch.setattr(layout, "know_queues", looks)
        raise RedisError("Redis went away mid-look")

    monkeypatch.setattr(layout, "know_queues", failing_once)
    earlier_version.cancel()

    await wait_until_waiting_on_old(node)


async def published_twice(redis: Redis, process_id: bytes) -> None:
    """Once the process has published its settings twice more (each publish reads every other's)."""
    for _ in range(2):
        published = await redis.zscore(keys.SETTINGS, process_id)
        async with asyncio.timeout(30):
            while await redis.zscore(keys.SETTINGS, process_id) == published:
                await asyncio.sleep(0.05)


async def test_an_earlier_version_that_comes_and_goes_again_is_not_looked_after_again_at_once(
    start_service, redis: Redis, earlier_version: asyncio.Task[None], monkeypatch: pytest.MonkeyPatch
):
    rounds, looks = 0, 0
    look_if_asked, know_queues = layout.Relook.look_if_asked, layout.know_queues

    async def counted_round(relook: layout.Relook) -> None:
        nonlocal rounds
        rounds += 1
        await look_if_asked(relook)

    async def counted_look(clients: list[Redis], *, again: bool = False) -> int:
        nonlocal looks
        looks += again
        return await know_queues(clients, again=again)

    monkeypatch.setattr(layout.Relook, "look_if_asked", counted_round)
    monkeypatch.setattr(layout, "know_queues", counted_look)
    await start_service()
    (mine,) = [member for member in await redis.zrange(keys.SETTINGS, 0, -1) if member != b"earlier-process"]
    earlier_version.cancel()  # it stops: the queues are looked for
    async with asyncio.timeout(30):
        while looks < 1:
            await asyncio.sleep(0.05)

    # It comes back (a restart in a loop) and goes again.
    again = asyncio.create_task(keep_publishing_as_an_earlier_version(redis, "earlier-process-again"))
    async with asyncio.timeout(30):
        while not await redis.exists(keys.settings("earlier-process-again")):
            await asyncio.sleep(0.05)
    await published_twice(redis, mine)
    again.cancel()
    async with asyncio.timeout(30):
        while await redis.exists(keys.settings("earlier-process-again")):
            await asyncio.sleep(0.05)
    await published_twice(redis, mine)
    seen = rounds
    async with asyncio.timeout(30):
        while rounds < seen + 2:
            await asyncio.sleep(0.05)

    assert looks == 1


async def test_an_earlier_version_gone_soon_after_a_starts_look_is_looked_after_at_once(
    start_service, redis: Redis, earlier_version: asyncio.Task[None], monkeypatch: pytest.MonkeyPatch
):
    await submit_on_old(start_service)  # the known queues are there, no process of this version alive
    looks = 0
    know_queues = layout.know_queues

    async def counted_look(clients: list[Redis], *, again: bool = False) -> int:
        nonlocal looks
        looks += again
        return await know_queues(clients, again=again)

    monkeypatch.setattr(layout, "know_queues", counted_look)
    node = await start_service()  # beside the earlier version's process: it looks after its start
    async with asyncio.timeout(30):
        while looks < 1:
            await asyncio.sleep(0.05)
    # The earlier version's process queued it after that look: it named no queue.
    await redis.srem(keys.queues(0), "old")

    earlier_version.cancel()

    await wait_until_waiting_on_old(node)


async def test_another_nodes_queue_that_no_worker_serves_is_told_by_every_nodes_health(start_service):
    admitting = await start_service(workers=False, **WITH_OLD)  # still up
    await admitting.submit("noop", {})
    other = await start_service()

    body = await wait_until_waiting_on_old(other)

    assert body["status"] == "healthy"  # its workers serve its own queues
    assert UNSERVED_OLD in (await get_body(other, "/api/v1/tasks/health"))["alerts"]


async def test_metrics_count_the_tasks_waiting_on_a_queue_no_config_names(start_service):
    await submit_on_old(start_service)
    node = await start_service()

    samples = parse((await scrape(node.base_url))[2])

    assert value(samples, "taskd_queue_waiting_tasks", queue="old") == 1
    assert value(samples, "taskd_queue_workers", queue="old") == 0


async def test_the_dashboard_lists_a_queue_no_config_names_while_tasks_wait_on_it(start_service):
    await submit_on_old(start_service)
    node = await start_service()

    overview = await get_body(node, "/api/v1/dashboard/overview")

    queues = {queue["name"]: queue for queue in overview["queues"]}
    assert (queues["old"]["waiting"], queues["old"]["workers"], queues["old"]["concurrency"]) == (1, 0, None)


async def test_queues_lists_a_queue_no_config_names_while_tasks_wait_on_it(start_service, valkey_url):
    await submit_on_old(start_service)
    await start_service()

    run = await operator_cli("queues", redis_url=valkey_url)

    assert run.code == 0, run.err
    rows = {line.split()[0]: line.split()[1:] for line in run.out.splitlines()[1:]}
    assert rows["old"][:3] == ["1", "0", "0"]
    assert "no live worker serves old: tasks waiting there do not start" in run.err


async def test_purge_cancels_the_tasks_of_a_queue_no_config_names(start_service, valkey_url):
    task_id = await submit_on_old(start_service)
    node = await start_service()

    run = await operator_cli("purge", "old", "--yes", redis_url=valkey_url)

    assert run.code == 0, run.err
    assert (await node.status(task_id))["status"] == "cancelled"


async def test_purge_cancels_the_scheduled_tasks_of_a_queue_no_config_names(start_service, valkey_url):
    task_id = await submit_on_old(start_service, delay_seconds=3600)
    node = await start_service()

    run = await operator_cli("purge", "old", "--yes", redis_url=valkey_url)

    assert run.code == 0, run.err
    assert (await node.status(task_id))["status"] == "cancelled"


async def test_the_first_start_reads_a_servers_keys_once_for_every_partition(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
):
    keys.configure_partitions(3)  # on one server, as without a cluster
    for partition, queue in enumerate(["old", "renamed", "gone"]):
        await redis.zadd(keys.waiting(queue, partition), {"t.1": 1})
    await redis.zadd(keys.running("busy", 2), {"t": 1})
    passes = 0
    scan = redis.scan

    async def counted(cursor: int = 0, **options: Any) -> Any:
        nonlocal passes
        passes += int(cursor) == 0
        return await scan(cursor, **options)

    monkeypatch.setattr(redis, "scan", counted)

    await layout.know_queues([redis] * 3)

    assert passes == 1
    assert [await redis.smembers(keys.queues(p)) for p in range(3)] == [
        {b"old"},
        {b"renamed"},
        {b"busy", b"gone"},
    ]


async def test_the_first_start_on_a_cluster_matches_each_partitions_own_hash_tag(
    valkey_url: str, monkeypatch: pytest.MonkeyPatch
):
    keys.configure_partitions(3)
    # A client per partition, as on a cluster (each pinned to its partition's primary).
    clients = [Redis.from_url(valkey_url) for _ in range(3)]
    await clients[1].zadd(keys.waiting("old", 1), {"t.1": 1})
    matched: list[str] = []
    for client in clients:
        scan = client.scan

        async def recorded(cursor: int = 0, *, match: str, scan: Any = scan, **options: Any) -> Any:
            matched.append(match)
            return await scan(cursor, match=match, **options)

        monkeypatch.setattr(client, "scan", recorded)

    try:
        await layout.know_queues(clients)
        # A pattern with its exact tag: a cluster node reads that slot's keys alone (a pattern of
        # every partition's made Valkey read all of the node's).
        assert sorted({pattern[: pattern.index("}") + 2] for pattern in matched}) == sorted(
            keys.partition_prefix(p) for p in range(3)
        )
        assert await clients[1].smembers(keys.queues(1)) == {b"old"}
    finally:
        for client in clients:
            await client.aclose()
