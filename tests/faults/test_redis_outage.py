"""Redis stopped for 5 s and started again: 503 while it is down, no restart of taskd, nothing lost."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import time
import types
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from conftest import API_KEY, TERMINAL
from faultkit import Api, ValkeyServer, child_env, reads_across_a_stop, runs, serving
from redis.exceptions import ConnectionError as RedisConnectionError
from redis_probes import idle_worker
from sse import read_events

from taskd import keys
from taskd.client import TaskClient
from taskd.config import (
    Config,
    ExecutionConfig,
    GpuConfig,
    QueueConfig,
    RedisConfig,
    RetryConfig,
    WorkerConfig,
)
from taskd.engine.executor import Executor
from taskd.gpu.scheduler import GpuScheduler, Lease
from taskd.http import events as events_module
from taskd.model import TaskStatus
from taskd.redis_conn import connect
from taskd.store import Start

OUTAGE = 5.0
CONCURRENT = 10


@pytest.fixture
async def outage_service(tmp_path):
    server = await ValkeyServer(tmp_path / "valkey").start()
    try:
        async with serving(tmp_path, RedisConfig(url=server.url, socket_timeout=2)) as (service, api):
            yield server, api, service.config
    finally:
        server.stop()


async def test_api_answers_503_while_redis_is_down_and_recovers_without_a_restart(outage_service):
    server, api, _ = outage_service
    before = await api.submit("noop", {})
    server.stop()
    answers = []
    down_since = time.monotonic()
    async with asyncio.timeout(30):
        while time.monotonic() - down_since < OUTAGE:
            started = time.monotonic()
            status, body = await api.call("GET", f"/api/v1/tasks/{before}/status")
            answers.append((status, body, time.monotonic() - started))
            status, body = await api.call(
                "POST", "/api/v1/tasks/submit", json={"project_id": "p", "task_type": "noop", "task_data": {}}
            )
            answers.append((status, body, time.monotonic() - started))
            await asyncio.sleep(0.2)
        await server.start()
        after = await _submit_when_back(api)
        bodies = await api.wait_all([before, after], timeout=20)

    assert {status for status, _, _ in answers} == {503}
    assert all(body["error"] == "service_unavailable" and body["retry_after"] > 0 for _, body, _ in answers)
    assert max(elapsed for _, _, elapsed in answers) < 3  # bounded by redis.socket_timeout, never hung
    assert [body["status"] for body in bodies] == ["completed", "completed"]


async def test_readyz_is_503_while_redis_is_down_and_ready_again_after_it(outage_service):
    server, api, _ = outage_service
    server.stop()

    down = await api.call("GET", "/readyz")
    alive = await api.call("GET", "/livez")
    await server.start()
    async with asyncio.timeout(20):
        while (back := await api.call("GET", "/readyz"))[0] != 200:
            await asyncio.sleep(0.1)

    assert down == (
        503,
        {"error": "service_unavailable", "message": "Not ready: Redis does not answer", "retry_after": 5},
    )
    assert alive == (200, {"status": "alive"})
    assert back == (200, {"status": "ready"})


@pytest.mark.parametrize("path", ["/api/v1/tasks/health", "/api/v1/tasks/metrics"])
async def test_queue_health_and_metrics_answer_503_while_redis_hangs(tmp_path, path):
    # A hung Redis (stopped: it takes connections and never answers) with no socket timeout, which
    # held these for ever (for redis.socket_timeout per read with one): a monitor needs an answer.
    server = await ValkeyServer(tmp_path / "valkey").start()
    try:
        async with serving(tmp_path, RedisConfig(url=server.url, socket_timeout=0), workers=False) as (
            _,
            api,
        ):
            server.proc.send_signal(signal.SIGSTOP)
            async with asyncio.timeout(60):
                answer = await api.call("GET", path)
            server.proc.send_signal(signal.SIGCONT)
    finally:
        if server.proc is not None:
            server.proc.send_signal(signal.SIGCONT)
        server.stop()

    assert answer == (
        503,
        {
            "error": "service_unavailable",
            "message": "Task storage is unavailable, please try again later",
            "retry_after": 5,
        },
    )


async def test_a_stop_while_redis_hangs_logs_no_error_for_the_job_it_could_not_drop(tmp_path, spawn_taskd):
    server = await ValkeyServer(tmp_path / "valkey").start()
    log = tmp_path / "taskd.log"
    node = spawn_taskd(
        "serve",
        env=child_env(
            tmp_path / "data",
            TASKD_REDIS__URL=server.url,
            TASKD_REDIS__SOCKET_TIMEOUT="2",
            TASKD_EXECUTION__SHUTDOWN_GRACE="0.5",
        ),
        stderr=log,
    )
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, str(node.base_url))
            task_id = await api.submit("sleep", {"seconds": 3600, "steps": 1000})
            await api.wait_all([task_id], lambda body: body["status"] == "processing")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)

        status = await asyncio.to_thread(node.stop, signal.SIGTERM, 180)
    finally:
        if server.proc is not None:
            server.proc.send_signal(signal.SIGCONT)
        server.stop()

    # Before, the run's job, whose drop the stop cut short, was logged as asyncio's ERROR "Task
    # exception was never retrieved" with a traceback; now a warning names it.
    assert status == 0
    lines = log.read_text().splitlines()
    assert [line for line in lines if '"level":"ERROR"' in line] == []
    assert any("at the stop failed" in line for line in lines)


async def test_a_task_a_submit_started_for_the_idle_worker_after_the_stop_handed_back_its_jobs_is_handed_back(
    tmp_path,
):
    # The submit holds a slot of the idle worker and its script waits on a Redis that holds writes
    # back past the pool's wait for held slots (5 s); the stop meanwhile handed back the running jobs
    # (none). Writes let through, the script starts the task for the worker, which had stopped
    # counting its jobs: the run went on past the stop, and the task stayed `processing`.
    server = await ValkeyServer(tmp_path / "valkey").start()
    probe = server.client()
    execution = ExecutionConfig(cancel_grace=2, reclaim_interval=0.5, shutdown_grace=60)
    submit: asyncio.Task[tuple[int, Any]] | None = None
    try:
        async with serving(
            tmp_path,
            RedisConfig(url=server.url, socket_timeout=60),
            execution=execution,
            # No poll of its own while the slot is held, and a heartbeat that outlasts the writes held back.
            worker=WorkerConfig(heartbeat_interval=0.5, heartbeat_ttl=30, poll_delay=60),
        ) as (service, api):
            assert service._pool is not None
            pool, worker = service._pool, service._pool.workers["default"]
            # The submit script loaded (a first EVALSHA is refused, and sent again after the pause).
            await api.wait_all([await api.submit("noop", {})])
            await idle_worker(probe, types.SimpleNamespace(service=service))
            # Scripts are held back with the other writes, and run in the order they came.
            await probe.client_pause(120_000, all=False)
            body = {"project_id": "p", "task_type": "sleep", "task_data": {"seconds": 3600, "steps": 1000}}
            submit = asyncio.create_task(api.call("POST", "/api/v1/tasks/submit", json=body))
            async with asyncio.timeout(30):
                while worker.settled.is_set():  # the submit holds the slot; its script is sent
                    await asyncio.sleep(0.02)

            stop = asyncio.create_task(service.stop())
            async with asyncio.timeout(60):
                while pool._supervisors or not worker.stopping:  # past its hand-back of late jobs
                    await asyncio.sleep(0.05)
            await probe.client_unpause()
            async with asyncio.timeout(60):
                await stop
                status, reply = await submit
            assert status == 200, reply
            record = await probe.hgetall(keys.task(reply["task_id"]))
    finally:
        with contextlib.suppress(Exception):
            await probe.client_unpause()
        if submit is not None:
            submit.cancel()
        await probe.aclose()
        server.stop()

    assert (record[b"status"], record[b"attempt"]) == (b"queued", b"1")


async def test_requests_on_a_hung_redis_each_open_their_connection_at_once(tmp_path):
    # A connection's handshake (CLIENT SETINFO) waits for a hung Redis: made under the pool's lock,
    # each request that needed a new connection waited for the one before it, and the n-th answered
    # after n socket timeouts. Each connection open at once means each waits its own timeout only.
    server = await ValkeyServer(tmp_path / "valkey").start()
    client = connect(server.url, socket_timeout=60)
    try:
        assert server.proc is not None
        answers = await reads_across_a_stop(client, server.proc, server.port, CONCURRENT)
    finally:
        await client.aclose()
        server.stop()

    assert answers == [None] * CONCURRENT


async def test_tasks_submitted_before_a_redis_outage_all_complete_after_it(outage_service, tmp_path):
    server, api, config = outage_service
    task_ids = [await api.submit("record_run", {"seconds": 0.5 if i % 3 else 0}) for i in range(30)]

    server.stop()
    await asyncio.sleep(OUTAGE)
    await server.start()
    bodies = await api.wait_all(task_ids, timeout=40)

    ends = collections.Counter(task_id for event, task_id, _, _ in runs(config.data_path) if event == "end")
    assert [body["status"] for body in bodies] == ["completed"] * len(task_ids)
    assert set(ends) == set(task_ids)


async def test_job_process_tasks_reporting_progress_through_an_outage_complete_and_the_next_runs_its_own(
    outage_service,
):
    # Their progress writes fail while Redis is down: dropped, the runs go on. Such a failure once
    # left the task `processing` for ever, and its job process, still running it, answered the next
    # task with this one's result.
    server, api, _ = outage_service
    during = [await api.submit("cpu", {"seconds": 3}) for _ in range(2)]
    during.append(await api.submit("sleep", {"seconds": 3, "steps": 30}))  # in the loop: its progress too
    await api.wait_all(during, lambda body: body["status"] == "processing", timeout=20)

    # Down for well under the workers' heartbeat TTL (3 s here, faultkit): an outage past it makes
    # their tasks those of dead workers, run again (attempt 2), as documented. Down for 2 s, the
    # stop, the start and a loaded machine's turns once took it past.
    server.stop()
    await asyncio.sleep(1)
    await server.start()
    ended = await api.wait_all(during, timeout=40)
    after = await api.submit("cpu", {"seconds": 2})
    [later] = await api.wait_all([after], timeout=40)

    assert [(body["status"], body["attempt"]) for body in ended] == [("completed", 1)] * 3
    assert later["status"] == "completed"
    assert _seconds(later["completed_at"]) - _seconds(later["started_at"]) >= 2 - 1  # times to the second


async def test_a_worker_whose_poll_met_the_outage_runs_no_more_jobs_than_its_concurrency_after_it(tmp_path):
    # A host with GPUs claims one job at a time, so its workers' polls meet an outage and end (their
    # supervisor starts them again). The started one was a new worker that counted none of the jobs
    # still running: concurrency 2, one job running, and after the outage three ran at once.
    server = await ValkeyServer(tmp_path / "valkey").start()
    two_slots = {**Config().queues, "default": QueueConfig(concurrency=2, timeout=60)}
    try:
        async with serving(
            tmp_path,
            RedisConfig(url=server.url, socket_timeout=2),
            queues=two_slots,
            gpu=GpuConfig(simulate=1),
        ) as (_, api):
            first = await api.submit("sleep", {"seconds": 6, "steps": 1}, project_id="first")
            await api.wait_all([first], lambda body: body["status"] == "processing", timeout=20)
            server.stop()
            await asyncio.sleep(
                1
            )  # under the heartbeat TTL: the running job is not taken for a dead worker's
            await server.start()
            later = [
                await api.submit("sleep", {"seconds": 1, "steps": 1}, project_id=f"p{i}") for i in range(3)
            ]
            most = 0
            async with server.client() as redis, asyncio.timeout(60):
                while {(await api.status(task_id))["status"] for task_id in [first, *later]} - TERMINAL:
                    most = max(most, await redis.zcard(keys.running("default")))
                    await asyncio.sleep(0.05)
            bodies = await api.wait_all([first, *later])
    finally:
        server.stop()

    assert most == 2
    assert [(body["status"], body["attempt"]) for body in bodies] == [("completed", 1)] * 4


async def test_a_claim_that_met_the_outage_gives_its_worker_slot_back(tmp_path, monkeypatch):
    # A host with GPUs claims each job on its own, and the reads before the start (the task's type,
    # its GPU slots) are not retried: the first claim here meets a Redis error. Its worker, kept
    # through the error with the jobs it runs, must not keep the slot that claim took: with one
    # slot, no job would ever start again.
    failed = []
    claim = Executor.claim

    async def failing_once(self: Executor, queue: str, job_id: str, lock_ms: int) -> Start:
        if not failed:
            failed.append(job_id)
            raise RedisConnectionError("Redis went away during the claim")
        return await claim(self, queue, job_id, lock_ms)

    monkeypatch.setattr(Executor, "claim", failing_once)
    one_slot = {**Config().queues, "default": QueueConfig(concurrency=1, timeout=60)}
    async with serving(tmp_path, RedisConfig(), queues=one_slot, gpu=GpuConfig(simulate=1)) as (_, api):
        task_ids = [await api.submit("noop", {}) for _ in range(2)]
        bodies = await api.wait_all(task_ids, timeout=30)

    assert failed
    assert [body["status"] for body in bodies] == ["completed", "completed"]


async def test_gpu_slots_whose_release_met_a_redis_error_are_given_back(tmp_path, monkeypatch):
    # A holder of a device's slots is dropped only with its worker's heartbeat: a release Redis did
    # not take (its connection lost as the run ended) held the slots for as long as the worker
    # lived, and a task that needs the whole device waited for it for ever.
    failed = []
    release = GpuScheduler.release

    async def failing_once(self: GpuScheduler, lease: Lease) -> None:
        if not failed:
            failed.append(lease.task_id)
            raise RedisConnectionError("Redis went away during the release")
        await release(self, lease)

    monkeypatch.setattr(GpuScheduler, "release", failing_once)
    async with serving(tmp_path, RedisConfig(), gpu=GpuConfig(simulate=1, slots=2)) as (_, api):
        first = await api.submit("gpu_hold", {"seconds": 0})
        await api.wait_all([first], timeout=30)
        whole = await api.submit("gpu_hold_whole", {"seconds": 0})
        [body] = await api.wait_all([whole], timeout=30)

    assert failed == [first]
    assert body["status"] == "completed"


async def test_a_wait_following_a_tasks_stream_through_a_redis_outage_gets_its_end(outage_service):
    # The process's one reader of the streams loses Redis with it, and reads on from where it was.
    server, api, _ = outage_service
    task_id = await api.submit("sleep", {"seconds": 3, "steps": 30})
    seen: list[str] = []
    async with TaskClient(api.base_url, API_KEY) as client:
        follow = asyncio.create_task(
            client.wait(task_id, timeout=60, on_event=lambda e: seen.append(e.status))
        )
        await api.wait_all([task_id], lambda body: body["progress"] > 0, timeout=20)
        server.stop()
        await asyncio.sleep(1)  # under the workers' heartbeat TTL, as above
        await server.start()
        task = await follow

    assert task.status is TaskStatus.COMPLETED
    assert seen[-1] == "completed"


async def test_a_task_stream_open_through_a_redis_outage_stays_open_and_sends_the_end(
    outage_service, monkeypatch
):
    # The stream's looks at the record (every RECHECK_SECONDS) fail while Redis is down: each is
    # skipped, not the end of the stream.
    monkeypatch.setattr(events_module, "RECHECK_SECONDS", 0.1)
    monkeypatch.setattr(events_module, "CHECK_SECONDS", 0.1)
    server, api, _ = outage_service
    task_id = await api.submit("sleep", {"seconds": 3, "steps": 30})
    path = f"{api.base_url}/api/v1/tasks/{task_id}/events"

    async with asyncio.timeout(60), api.session.get(path, headers={"X-API-Key": API_KEY}) as response:
        await api.wait_all([task_id], lambda body: body["progress"] > 0, timeout=20)
        server.stop()
        await asyncio.sleep(1)  # under the workers' heartbeat TTL, as above
        await server.start()
        seen = await read_events(response)

    assert seen[-1].data["status"] == "completed"


async def test_a_gpu_release_sent_again_leaves_the_slot_of_the_tasks_next_run(tmp_path, monkeypatch):
    # A release is retried until Redis answers. The task's first attempt ended in a retry, queued
    # again at once; its release met a Redis error, and meanwhile the same worker claimed the next
    # attempt, taking the slot under the same holder. The release sent again dropped that slot
    # while the next run held the GPU: another task could be given it.
    releases: list[str] = []
    release = GpuScheduler.release

    async def failing_first(self: GpuScheduler, lease: Lease) -> None:
        releases.append(lease.task_id)
        if len(releases) == 1:
            # Room for the next attempt to be claimed, where nothing holds it back.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    task = keys.task(lease.task_id)
                    while await self.redis.hmget(task, "status", "attempt") != [b"processing", b"2"]:
                        await asyncio.sleep(0.05)
            raise RedisConnectionError("Redis went away during the release")
        await release(self, lease)

    monkeypatch.setattr(GpuScheduler, "release", failing_first)
    async with serving(
        tmp_path, RedisConfig(), gpu=GpuConfig(simulate=1, slots=2), retry=RetryConfig(base_delay=0)
    ) as (_, api):
        task_id = await api.submit("retry_then_hold_gpu", {"seconds": 60})
        await api.wait_all([task_id], lambda body: (body["status"], body["attempt"]) == ("processing", 2))
        async with asyncio.timeout(30):
            while len(releases) < 2:
                await asyncio.sleep(0.05)
        _, health = await api.call("GET", "/api/v1/health")
        body = await api.status(task_id)

    assert body["status"] == "processing"
    assert health["gpus"][0]["running"] == {task_id: 1}


def _seconds(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


async def test_a_killed_embedded_valkey_is_started_again_and_the_api_carries_on(tmp_path):
    async with serving(tmp_path, RedisConfig()) as (service, api):
        before = await api.submit("noop", {})
        await api.wait_all([before], timeout=20)
        os.kill(service._embedded.pid, signal.SIGKILL)

        async with asyncio.timeout(30):
            after = await _submit_when_back(api)
            bodies = await api.wait_all([before, after], timeout=20)

    assert [body["status"] for body in bodies] == ["completed", "completed"]


async def test_a_client_submit_answered_503_after_it_was_stored_is_resent_without_a_second_task(tmp_path):
    # A submit that no replica acknowledged in time is a 503 (redis.wait_replicas), and the task is
    # stored all the same, as one whose reply Redis sent too late would be. The client's resend
    # carries the key its first send had, and is answered with that task.
    server = await ValkeyServer(tmp_path / "valkey").start()
    unreplicated = RedisConfig(url=server.url, wait_replicas=1, wait_timeout=0.1)
    try:
        async with (
            serving(tmp_path, unreplicated, workers=False) as (_, api),
            TaskClient(api.base_url, API_KEY, retries=2, max_retry_wait=60) as client,
        ):
            submitted = await client.submit("unreplicated", "noop", {})
            page = await client.list_tasks("unreplicated")
    finally:
        server.stop()

    assert [task.task_id for task in page.tasks] == [submitted.task_id]


async def _submit_when_back(api: Api) -> str:
    while True:
        status, body = await api.call(
            "POST", "/api/v1/tasks/submit", json={"project_id": "p", "task_type": "noop", "task_data": {}}
        )
        if status == 200:
            return body["task_id"]
        await asyncio.sleep(0.1)


async def test_a_redis_that_became_a_replica_answers_503_to_writes_and_takes_them_again_as_primary(tmp_path):
    primary = await ValkeyServer(tmp_path / "primary").start()
    other = await ValkeyServer(tmp_path / "other").start()
    try:
        async with serving(tmp_path, RedisConfig(url=primary.url), workers=False) as (_, api):
            body = {"project_id": "p", "task_type": "noop", "task_data": {}}
            async with primary.client() as admin:
                # A demoted primary (a failover behind a plain redis:// address): READONLY to writes.
                await admin.execute_command("REPLICAOF", "127.0.0.1", str(other.port))
                status, refused = await api.call("POST", "/api/v1/tasks/submit", json=body)
                await admin.execute_command("REPLICAOF", "NO", "ONE")
            again, _ = await api.call("POST", "/api/v1/tasks/submit", json=body)
    finally:
        primary.stop()
        other.stop()

    assert status == 503
    assert refused["error"] == "service_unavailable" and refused["retry_after"] > 0
    assert again == 200


async def test_a_redis_that_became_a_replica_makes_the_service_health_say_so(tmp_path):
    primary = await ValkeyServer(tmp_path / "primary").start()
    other = await ValkeyServer(tmp_path / "other").start()
    try:
        async with (
            serving(tmp_path, RedisConfig(url=primary.url), workers=False) as (_, api),
            primary.client() as admin,
        ):
            await admin.execute_command("REPLICAOF", "127.0.0.1", str(other.port))
            status, health = await api.call("GET", "/api/v1/health")
            await admin.execute_command("REPLICAOF", "NO", "ONE")
    finally:
        primary.stop()
        other.stop()

    assert (status, health["status"], health["redis_status"]) == (200, "degraded", "connected")
    assert health["redis_note"].startswith("Redis refuses writes (Redis: it is a read-only replica)")


async def _synced(replica: ValkeyServer) -> None:
    async with replica.client() as client, asyncio.timeout(20):
        while (await client.info("replication")).get("master_link_status") != "up":
            await asyncio.sleep(0.05)


async def test_a_task_ending_while_its_redis_is_a_replica_completes_at_its_first_attempt_after(tmp_path):
    primary = await ValkeyServer(tmp_path / "primary").start()
    other = await ValkeyServer(tmp_path / "other").start()
    try:
        async with other.client() as admin:
            await admin.execute_command("REPLICAOF", "127.0.0.1", str(primary.port))
        await _synced(other)
        async with serving(tmp_path, RedisConfig(url=primary.url)) as (_, api):
            running = await api.submit("sleep", {"seconds": 1.5})
            await api.wait_all([running], lambda body: body["status"] == "processing", timeout=20)
            # A failover behind a plain redis:// address, and back: the task ends meanwhile, its end
            # refused (READONLY) by a server that holds every write made before.
            async with other.client() as admin:
                await admin.execute_command("REPLICAOF", "NO", "ONE")
            async with primary.client() as admin:
                await admin.execute_command("REPLICAOF", "127.0.0.1", str(other.port))
            await _synced(primary)
            await asyncio.sleep(2.5)
            async with primary.client() as admin:
                await admin.execute_command("REPLICAOF", "NO", "ONE")
            [ended] = await api.wait_all([running], timeout=40)
    finally:
        primary.stop()
        other.stop()

    assert (ended["status"], ended["attempt"], ended["last_error"]) == ("completed", 1, None)
