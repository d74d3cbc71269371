"""Redis Sentinel: a failover while tasks flow loses no acknowledged submit, and taskd goes on on the new primary."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest
from conftest import make_config
from faultkit import Api, ValkeyServer, reads_across_a_stop
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from taskd import keys
from taskd.config import LimitsConfig, RedisConfig
from taskd.redis_conn import connect, parse_sentinel_url
from taskd.service import Service

CONCURRENT = 10


def test_sentinel_url_names_every_sentinel_the_service_and_the_db():
    parsed = parse_sentinel_url("redis+sentinel://:s3cret@10.0.0.5:26379,10.0.0.6,[::1]:26380/mymaster/2")

    assert parsed.hosts == [("10.0.0.5", 26379), ("10.0.0.6", 26379), ("::1", 26380)]
    assert (parsed.service, parsed.db, parsed.password) == ("mymaster", 2, "s3cret")


@pytest.fixture
async def sentinel_cluster(tmp_path):
    primary = await ValkeyServer(tmp_path / "primary").start()
    replica = await ValkeyServer(tmp_path / "replica", None, f"replicaof 127.0.0.1 {primary.port}").start()
    sentinels = [
        await ValkeyServer(
            tmp_path / f"sentinel{i}",
            None,
            f"sentinel monitor mymaster 127.0.0.1 {primary.port} 2",
            "sentinel down-after-milliseconds mymaster 1000",
            "sentinel failover-timeout mymaster 5000",
            sentinel=True,
        ).start()
        for i in range(3)
    ]
    async with primary.client() as client, asyncio.timeout(20):
        while (await client.info("replication"))["connected_slaves"] < 1:
            await asyncio.sleep(0.1)
    async with sentinels[0].client() as client, asyncio.timeout(20):
        while not await client.execute_command("SENTINEL", "REPLICAS", "mymaster"):
            await asyncio.sleep(0.1)
    yield primary, replica, sentinels
    for server in [*sentinels, replica, primary]:
        server.stop()


async def test_failover_while_tasks_flow_loses_no_acknowledged_task(sentinel_cluster, tmp_path):
    _, replica, sentinels = sentinel_cluster
    url = "redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in sentinels) + "/mymaster/0"
    config = make_config(
        tmp_path,
        url,
        redis=RedisConfig(url=url, socket_timeout=2, wait_replicas=1, wait_timeout=1),
        limits=LimitsConfig(submit_per_minute=0, status_per_minute=0, concurrent_per_project=0),
    )
    service = Service(config, http=True, workers=True)
    await service.start()
    acknowledged: list[str] = []
    refused: set[int] = set()
    try:
        host, port = service.addresses[0]
        async with aiohttp.ClientSession() as session, asyncio.timeout(60):
            api = Api(session, f"http://{host}:{port}")
            flowing = asyncio.create_task(_submit_for_ever(api, acknowledged, refused))
            await asyncio.sleep(1)
            async with sentinels[0].client() as sentinel:
                await sentinel.execute_command("SENTINEL", "FAILOVER", "mymaster")
            async with replica.client() as client:
                while not await _is_primary(client):
                    await asyncio.sleep(0.1)
            count_at_switch = len(acknowledged)
            while len(acknowledged) < count_at_switch + 20:
                await asyncio.sleep(0.1)
            flowing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flowing
            bodies = await api.wait_all(acknowledged, timeout=30)
        async with replica.client() as new_primary:
            stored = sum([await new_primary.exists(keys.task(task_id)) for task_id in acknowledged])
    finally:
        await service.stop(grace=1)

    assert refused <= {503}
    assert stored == len(acknowledged)
    assert [body["status"] for body in bodies] == ["completed"] * len(acknowledged)


async def test_connect_follows_the_primary_the_sentinels_name(sentinel_cluster):
    primary, _, sentinels = sentinel_cluster
    client = connect(f"redis+sentinel://127.0.0.1:{sentinels[1].port}/mymaster/0", socket_timeout=2)
    try:
        await client.set("written-through-sentinel", "1")
        async with primary.client() as direct:
            assert await direct.get("written-through-sentinel") == b"1"
    finally:
        await client.aclose()


async def test_requests_on_a_hung_sentinel_each_open_their_connection_to_it_at_once(sentinel_cluster):
    # Each new connection to the primary asks a sentinel where it is, through a client of that
    # sentinel: with that client's pool connecting under its lock, the requests that needed a new
    # connection while the first sentinel hung queued behind one another, the n-th answering after
    # n socket timeouts, as for a hung primary (test_redis_outage.py).
    _, _, sentinels = sentinel_cluster
    hung = sentinels[0]
    url = "redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in sentinels) + "/mymaster/0"
    client = connect(url, socket_timeout=60)
    try:
        assert hung.proc is not None
        answers = await reads_across_a_stop(client, hung.proc, hung.port, CONCURRENT)
    finally:
        await client.aclose()

    assert answers == [None] * CONCURRENT


async def _is_primary(client: Redis) -> bool:
    """Whether the server is a primary yet. Sentinel drops the clients of the replica it promotes
    (CLIENT KILL), so a connection reset while asking means "not yet": ask again."""
    try:
        return (await client.info("replication"))["role"] == "master"
    except RedisConnectionError:
        return False


async def _submit_for_ever(api: Api, acknowledged: list[str], refused: set[int]) -> None:
    while True:
        status, body = await api.call(
            "POST", "/api/v1/tasks/submit", json={"project_id": "p", "task_type": "noop", "task_data": {}}
        )
        if status == 200:
            acknowledged.append(body["task_id"])
        else:
            refused.add(status)
            await asyncio.sleep(0.05)
