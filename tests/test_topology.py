"""Many hosts, one service: two API nodes and two worker hosts on one Redis, media in one S3 bucket.

The topology of docs/production.md#many-hosts-one-service, on this machine: API node 1 is
`taskd serve --no-worker` with its embedded Valkey (the one Redis), API node 2 another
`taskd serve --no-worker` on that Redis, and two `taskd worker` hosts (`host-a` with two simulated
GPUs, `host-b` with none), each with its own data dir and host id. Nothing is shared but Redis, the
bucket (a real SeaweedFS) and the settings every node must agree on. Then the same on a 3-primary
Valkey Cluster with `redis.partitions = 3` (docs/cluster.md), where the projects of the tests are
in all three partitions. One topology per Redis (and xdist worker); each test uses its own project
ids and API key, so their limits do not meet.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from conftest import TERMINAL, TaskdProcess, child_env
from fake_media_apis import FileServer, sine_wav
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from seaweedfs import ACCESS_KEY, SECRET_KEY, SeaweedS3
from valkey_cluster import ValkeyCluster
from yarl import URL

from taskd import keys
from taskd.embedded import EmbeddedValkey
from taskd.tasks.diagnostics import marker_path

# One key per test: the submit rate limit is per key, and the rate-limit test spends all of its own.
KEYS = {name: f"topology-{name}-key-0123456789" for name in ("main", "cancel", "kill", "rate", "throttle")}
SUBMIT_PER_MINUTE = 12
WEBHOOK_SECRET = "whsec_dG9wb2xvZ3ktc2hhcmVkLXNlY3JldC0wMTIz"  # the same on every node (docs)
MEDIA_SECRET = "topology-media-secret-0123456789"


@attrs.define
class Topology:
    """The running processes and how to reach them."""

    spawn: Callable[..., TaskdProcess]
    root: Path
    shared: dict[str, str]
    redis_url: str
    bucket: str
    seaweed: SeaweedS3
    partitions: int = 1
    nodes: list[str] = attrs.Factory(list)
    hosts: dict[str, TaskdProcess] = attrs.Factory(dict)

    def env(self, name: str, **extra: str) -> dict[str, str]:
        """A process's environment: its own data dir, the shared settings."""
        return child_env(self.root / name, **self.shared, **extra)

    def start_host(self, host: str) -> TaskdProcess:
        """(Re)start worker host `host`: its own data dir and host id; host-a has two simulated GPUs."""
        gpus = {"TASKD_GPU__SIMULATE": "2"} if host == "host-a" else {"TASKD_GPU__SIMULATE": "0"}
        env = self.env(host, TASKD_REDIS__URL=self.redis_url, TASKD_WORKER__HOST_ID=host, **gpus)
        self.hosts[host] = self.spawn("worker", env=env, wait_listening=False)
        return self.hosts[host]


@pytest.fixture(scope="module", params=["valkey", "cluster"])
def topology(
    request: pytest.FixtureRequest, module_spawn_taskd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Topology]:
    root = tmp_path_factory.mktemp("topology")
    seaweed = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    seaweed.start()
    bucket = seaweed.make_bucket("taskd-topology")
    shared = {
        "TASKD_AUTH__API_KEYS": ",".join(KEYS.values()),
        "TASKD_TASKS__MODULES": "taskd.tasks.diagnostics",
        "TASKD_LIMITS__SUBMIT_PER_MINUTE": str(SUBMIT_PER_MINUTE),
        "TASKD_LIMITS__CONCURRENT_PER_PROJECT": "1",
        "TASKD_WEBHOOKS__SECRET": WEBHOOK_SECRET,
        "TASKD_NETWORK__ALLOW_PRIVATE": "true",
        "TASKD_MEDIA__SECRET": MEDIA_SECRET,
        "TASKD_MEDIA__BACKEND": "s3",
        "TASKD_MEDIA__S3__ENDPOINT": seaweed.endpoint,
        "TASKD_MEDIA__S3__BUCKET": bucket,
        "TASKD_MEDIA__S3__ACCESS_KEY_ID": ACCESS_KEY,
        "TASKD_MEDIA__S3__SECRET_ACCESS_KEY": SECRET_KEY,
        "TASKD_EXECUTION__CANCEL_GRACE": "2",
    }
    world = Topology(module_spawn_taskd, root, shared, "", bucket, seaweed)
    cluster = None
    if request.param == "cluster":
        cluster = ValkeyCluster(tmp_path_factory.mktemp("cluster")).start()
        world.redis_url = "redis+cluster://" + ",".join(
            f"127.0.0.1:{node.port}" for node in cluster.primaries
        )
        world.partitions = 3
        shared["TASKD_REDIS__PARTITIONS"] = "3"
        first = module_spawn_taskd(
            "serve", "--no-worker", env=world.env("node-1", TASKD_REDIS__URL=world.redis_url)
        )
    else:
        first = module_spawn_taskd("serve", "--no-worker", env=world.env("node-1"))
        redis_url = EmbeddedValkey.running_url(root / "node-1")
        assert redis_url is not None
        world.redis_url = redis_url
    second = module_spawn_taskd(
        "serve", "--no-worker", env=world.env("node-2", TASKD_REDIS__URL=world.redis_url)
    )
    world.nodes = [str(first.base_url), str(second.base_url)]
    for host in ("host-a", "host-b"):
        world.start_host(host)
    yield world
    seaweed.stop()
    if cluster is not None:
        cluster.stop()


@pytest.fixture
async def redis(topology: Topology) -> AsyncIterator[Redis | RedisCluster]:
    """A client of the topology's Redis: the test names keys as its taskd processes do."""
    keys.configure_partitions(topology.partitions)  # conftest sets it back after the test
    if topology.partitions == 1:
        client: Redis | RedisCluster = Redis.from_url(topology.redis_url)
    else:
        first = topology.redis_url.removeprefix("redis+cluster://").split(",")[0]
        client = RedisCluster.from_url(f"redis://{first}")
    yield client
    await client.aclose()


@attrs.define
class Node:
    """One API node, called with one key."""

    session: aiohttp.ClientSession
    base_url: str
    key: str

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        headers = {"X-API-Key": self.key}
        async with self.session.request(method, self.base_url + path, headers=headers, **kwargs) as response:
            return response.status, await response.json()

    async def submit(self, task_type: str, task_data: dict[str, Any], project: str) -> str:
        body = {"project_id": project, "task_type": task_type, "task_data": task_data}
        status, answer = await self.call("POST", "/api/v1/tasks/submit", json=body)
        assert status == 200, answer
        return str(answer["task_id"])

    async def status(self, task_id: str) -> dict[str, Any]:
        status, answer = await self.call("GET", f"/api/v1/tasks/{task_id}/status")
        assert status == 200, answer
        return answer

    async def wait(self, task_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60):
        async with asyncio.timeout(timeout):
            while not predicate(body := await self.status(task_id)):
                await asyncio.sleep(0.1)
        return body


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


async def both_hosts_live(node: Node) -> dict[str, Any]:
    """Health once both worker hosts beat (host-a's GPUs published)."""
    async with asyncio.timeout(60):
        while True:
            _, health = await node.call("GET", "/api/v1/health")
            if health["worker_count"] == 2 and {gpu["host"] for gpu in health.get("gpus", [])} == {"host-a"}:
                return health
            await asyncio.sleep(0.2)


def nodes(topology: Topology, session: aiohttp.ClientSession, key: str) -> tuple[Node, Node]:
    return Node(session, topology.nodes[0], KEYS[key]), Node(session, topology.nodes[1], KEYS[key])


async def host_running(redis: Redis | RedisCluster, task_id: str) -> str:
    """The worker host running the task: its worker id starts with the host id."""
    worker_id = (await redis.hget(keys.task(task_id), "worker_id")).decode()
    return worker_id.split(":")[0]


async def test_a_task_submitted_on_one_api_node_is_read_and_listed_on_the_other(topology, session):
    one, two = nodes(topology, session, "main")
    await both_hosts_live(one)

    task_id = await one.submit("sleep", {"seconds": 0.2, "steps": 2}, project="read-anywhere")
    body = await two.wait(task_id, lambda b: b["status"] in TERMINAL)
    _, listed = await two.call("GET", "/api/v1/projects/read-anywhere/tasks")

    assert body["status"] == "completed"
    assert [task["task_id"] for task in listed["tasks"]] == [task_id]


async def test_a_cancel_sent_to_the_other_api_node_stops_the_task_on_the_host_running_it(
    topology, session, redis
):
    one, two = nodes(topology, session, "cancel")
    await both_hosts_live(one)
    # On the cluster this project is in partition 2 (so are all of this module's but rate-limited, in 1).
    task_id = await one.submit("sleep", {"seconds": 60, "steps": 60}, project="cancel-elsewhere")
    await two.wait(task_id, lambda b: b["status"] == "processing")
    host = await host_running(redis, task_id)

    status, _ = await two.call("DELETE", f"/api/v1/tasks/{task_id}")
    body = await one.wait(task_id, lambda b: b["status"] in TERMINAL)
    cleanup = topology.root / host / "diagnostics" / f"{task_id}.cleanup"
    async with asyncio.timeout(10):
        while not cleanup.exists():  # the handler's `finally` ran on that host: it was stopped there
            await asyncio.sleep(0.1)

    assert status == 200
    assert body["status"] == "cancelled"


async def test_the_task_of_a_killed_worker_host_is_taken_back_and_finished_by_the_other(
    topology, session, redis
):
    one, two = nodes(topology, session, "kill")
    await both_hosts_live(one)
    task_id = await one.submit("sleep", {"seconds": 3, "steps": 6}, project="dying-host")
    await two.wait(task_id, lambda b: b["status"] == "processing")
    doomed = await host_running(redis, task_id)
    survivor = ({"host-a", "host-b"} - {doomed}).pop()

    topology.hosts[doomed].stop(signal.SIGKILL)
    body = await two.wait(task_id, lambda b: b["status"] in TERMINAL)
    finished_on = await host_running(redis, task_id)
    topology.start_host(doomed)  # the topology's other tests need both hosts again

    assert body["status"] == "completed"
    assert body["attempt"] == 2
    assert finished_on == survivor
    assert (topology.root / survivor / "diagnostics" / f"{task_id}.started").exists()


async def test_the_submit_rate_limit_of_a_key_holds_across_both_api_nodes(topology, session):
    one, two = nodes(topology, session, "rate")
    body = {"project_id": "rate-limited", "task_type": "noop", "task_data": {}}

    accepted = []
    for turn in range(SUBMIT_PER_MINUTE):
        status, _ = await (one, two)[turn % 2].call("POST", "/api/v1/tasks/submit", json=body)
        accepted.append(status)
    refused = [(await node.call("POST", "/api/v1/tasks/submit", json=body))[0] for node in (one, two)]

    assert accepted == [200] * SUBMIT_PER_MINUTE
    assert refused == [429, 429]


async def test_the_project_concurrency_throttle_holds_across_both_api_nodes_and_hosts(
    topology, session, redis
):
    one, two = nodes(topology, session, "throttle")
    await both_hosts_live(one)
    ids = [
        await (one, two)[turn % 2].submit("sleep", {"seconds": 0.5, "steps": 1}, project="throttled")
        for turn in range(4)
    ]

    for task_id in ids:
        assert (await one.wait(task_id, lambda b: b["status"] in TERMINAL))["status"] == "completed"
    # When each handler ran, from the markers it left on its host: a handler starts after the script
    # that started its task and ends before the one that finished it, so unlike the record's times
    # (taken by each process before its script ran) these cannot overlap by a process's delay.
    runs = []
    for task_id in ids:
        host = await host_running(redis, task_id)
        started, ended = (
            marker_path(topology.root / host, task_id, event) for event in ("started", "cleanup")
        )
        runs.append((started.stat().st_mtime, ended.stat().st_mtime))
    runs.sort()

    # concurrent_per_project = 1 on every node: one run at a time, whichever host ran it.
    assert all(ended <= next_start for (_, ended), (next_start, _) in itertools.pairwise(runs))


async def test_media_made_on_a_worker_host_is_served_by_either_api_node_from_the_bucket(topology, session):
    one, two = nodes(topology, session, "main")
    async with FileServer() as files:
        tone = files.add("tone.wav", sine_wav(0.5))
        body = {"tracks": [{"url": tone}], "output_format": "wav", "normalize": False}
        task_id = await one.submit("process_audio", body, project="shared-media")
        done = await two.wait(task_id, lambda b: b["status"] in TERMINAL)
    stored = (
        topology.seaweed.client()
        .get_object(Bucket=topology.bucket, Key=f"shared-media/audio_{task_id}.wav")["Body"]
        .read()
    )

    served = []
    for node in (one, two):
        headers = {"X-API-Key": node.key}
        path = f"/media/shared-media/audio_{task_id}.wav"
        async with session.get(node.base_url + path, headers=headers, allow_redirects=False) as response:
            location = response.headers["Location"]
        async with session.get(URL(location, encoded=True)) as response:
            served.append(await response.read())

    assert done["status"] == "completed", done
    assert served == [stored, stored]
