"""A Redis that cannot persist (its disk full or failing: MISCONF) refuses writes until it can.

The API answers 503 meanwhile, never a 500, and a task that ends meanwhile keeps its outcome and
writes it once Redis takes writes again. The refusal is made as a full disk makes it: a snapshot
that cannot be written, with `stop-writes-on-bgsave-error` on (as by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from faultkit import Api, ValkeyServer, serving

from taskd.config import RedisConfig, WebhooksConfig, WorkerConfig
from taskd.http import errors


async def _last_snapshot(server: ValkeyServer, status: str) -> None:
    async with server.client() as client, asyncio.timeout(10):
        while (await client.info("persistence"))["rdb_last_bgsave_status"] != status:
            await asyncio.sleep(0.05)


async def _snapshot_fails(server: ValkeyServer) -> None:
    # Renaming the snapshot onto a directory fails, as writing it to a full disk does.
    (server.folder / "blocker").mkdir()
    (server.folder / "blocker" / "in-the-way").write_text("x")
    async with server.client() as client:
        await client.config_set("dbfilename", "blocker")
        await client.bgsave()
    await _last_snapshot(server, "err")


async def _snapshot_works(server: ValkeyServer) -> None:
    async with server.client() as client:
        await client.config_set("dbfilename", "dump.rdb")
        await client.bgsave()
    await _last_snapshot(server, "ok")


@contextlib.asynccontextmanager
async def _snapshotting(
    tmp_path: Path, *, workers: bool = True, **sections: Any
) -> AsyncIterator[tuple[ValkeyServer, Api]]:
    """A taskd on its own Valkey that snapshots (so that a failing snapshot refuses writes);
    `sections` replace those of the test config."""
    server = await ValkeyServer(
        tmp_path / "valkey", None, "save 3600 1", "enable-protected-configs yes"
    ).start()
    redis = RedisConfig(url=server.url, socket_timeout=2)
    try:
        async with serving(tmp_path, redis, workers=workers, **sections) as (_, api):
            yield server, api
    finally:
        server.stop()


async def test_while_redis_cannot_persist_submits_get_503_and_a_task_ending_then_completes_after(tmp_path):
    async with _snapshotting(tmp_path) as (server, api):
        running = await api.submit("sleep", {"seconds": 1.5})
        await api.wait_all([running], lambda body: body["status"] == "processing", timeout=20)

        await _snapshot_fails(server)
        refused = await api.call(
            "POST", "/api/v1/tasks/submit", json={"project_id": "p", "task_type": "noop", "task_data": {}}
        )
        await asyncio.sleep(2.5)  # the task ends while no write is taken
        meanwhile = await api.status(running)
        await _snapshot_works(server)
        [ended] = await api.wait_all([running], timeout=30)

    assert refused == (
        503,
        {
            "error": "service_unavailable",
            "message": "Task storage cannot write to its disk now; please try again later",
            "retry_after": refused[1]["retry_after"],
        },
    )
    assert meanwhile["status"] == "processing"
    # At its first attempt, even where the worker's heartbeat (a write too) expired meanwhile.
    assert (ended["status"], ended["attempt"]) == ("completed", 1)


async def test_while_redis_cannot_persist_the_health_reads_and_metrics_still_answer(tmp_path):
    # They prune dead workers' heartbeats as they read them: a write, which Redis refuses.
    async with _snapshotting(tmp_path) as (server, api):
        await _snapshot_fails(server)
        answers = {
            path: await api.call("GET", path)
            for path in ("/api/v1/health", "/api/v1/tasks/health", "/api/v1/dashboard/overview")
        }
        async with api.session.get(f"{api.base_url}/metrics") as response:
            metrics = await response.text()
        await _snapshot_works(server)

    assert {path: status for path, (status, _) in answers.items()} == dict.fromkeys(answers, 200)
    assert answers["/api/v1/health"][1]["worker_count"] == 1  # the live worker is still seen
    assert "taskd_redis_up 1.0" in metrics.splitlines()  # not "Redis is down"


async def test_while_redis_cannot_persist_the_service_health_is_degraded_saying_why(tmp_path):
    async with _snapshotting(tmp_path) as (server, api):
        await _snapshot_fails(server)
        failing = await api.call("GET", "/api/v1/health")
        await _snapshot_works(server)
        _, after = await api.call("GET", "/api/v1/health")

    assert (failing[0], failing[1]["status"], failing[1]["redis_status"]) == (200, "degraded", "connected")
    assert failing[1]["redis_note"].startswith(
        "Redis refuses writes (Redis: it cannot write to its disk (MISCONF))"
    )
    assert "redis_note" not in after  # (its status waits for the workers' next beats, refused meanwhile)


async def test_while_redis_cannot_persist_the_log_says_so_once_not_once_per_request(
    tmp_path, caplog, monkeypatch
):
    monkeypatch.setattr(errors, "_REFUSALS", errors._Refusals())
    caplog.set_level(logging.WARNING, logger="taskd.http")
    async with _snapshotting(tmp_path, workers=False) as (server, api):
        await _snapshot_fails(server)
        submit = {"project_id": "p", "task_type": "noop", "task_data": {}}
        refused = [await api.call("POST", "/api/v1/tasks/submit", json=submit) for _ in range(5)]
        await _snapshot_works(server)

    assert [status for status, _ in refused] == [503] * 5
    lines = [record.getMessage() for record in caplog.records if record.name == "taskd.http"]
    assert len(lines) == 1
    assert lines[0].startswith("storage refuses writes for POST /api/v1/tasks/submit: MISCONF")


async def test_while_redis_cannot_persist_queue_health_is_critical_saying_so(tmp_path):
    async with _snapshotting(tmp_path, workers=False) as (server, api):
        await _snapshot_fails(server)
        _, failing = await api.call("GET", "/api/v1/tasks/health")
        await _snapshot_works(server)
        _, after = await api.call("GET", "/api/v1/tasks/health")

    assert failing["status"] == "critical"
    assert failing["alerts"] == [
        {
            "severity": "critical",
            "message": "Redis cannot write its last snapshot to its disk (full or failing): new tasks are "
            "refused and task outcomes wait until it can; see its log",
            "metric": "redis_persistence",
            "value": 1.0,
        }
    ]
    assert [alert["metric"] for alert in after["alerts"]] == []


async def _through_a_failed_snapshot(
    server: ValkeyServer, api: Api, task_data: dict[str, float], refused_for: float
) -> tuple[str, dict]:
    """A sleep task run while Redis refuses writes for `refused_for` s: its id and how it ended."""
    running = await api.submit("sleep", task_data)
    await api.wait_all([running], lambda body: body["status"] == "processing", timeout=20)
    await _snapshot_fails(server)
    await asyncio.sleep(refused_for)
    await _snapshot_works(server)
    [ended] = await api.wait_all([running], timeout=30)
    return running, ended


async def test_a_task_ending_while_redis_cannot_persist_logs_its_refused_write_once_and_when_it_went_in(
    tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="taskd.engine")
    async with _snapshotting(tmp_path) as (server, api):
        # The task ends, and its write is refused try after try.
        running, ended = await _through_a_failed_snapshot(server, api, {"seconds": 0.5}, refused_for=4)

    assert ended["status"] == "completed"
    lines = [
        message
        for record in caplog.records
        if (message := record.getMessage()).startswith(
            (f"recording task {running}", f"recorded task {running}")
        )
    ]
    assert len(lines) == 2
    assert lines[0].startswith(f"recording task {running} completed failed (MISCONF")
    assert lines[1].startswith(f"recorded task {running} completed after ")


async def test_progress_dropped_while_redis_cannot_persist_is_logged_once_per_task(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="taskd.engine")
    async with _snapshotting(tmp_path) as (server, api):
        # About 15 progress reports, each refused.
        running, ended = await _through_a_failed_snapshot(
            server, api, {"seconds": 4, "steps": 20}, refused_for=3
        )

    assert ended["status"] == "completed"
    dropped = [
        message
        for record in caplog.records
        if (message := record.getMessage()).startswith(f"progress of task {running} not recorded")
    ]
    assert len(dropped) == 1


async def test_while_redis_cannot_persist_metrics_say_so_and_stop_saying_it_after(tmp_path):
    async with _snapshotting(tmp_path, workers=False) as (server, api):
        await _snapshot_fails(server)
        async with api.session.get(f"{api.base_url}/metrics") as response:
            failing = (await response.text()).splitlines()
        await _snapshot_works(server)
        async with api.session.get(f"{api.base_url}/metrics") as response:
            after = (await response.text()).splitlines()

    assert "taskd_redis_persistence_ok 0.0" in failing
    assert "taskd_redis_persistence_ok 1.0" in after


async def test_a_task_running_through_a_refusal_longer_than_the_heartbeat_ttl_runs_once(tmp_path):
    # Every heartbeat is refused too, and expires: a worker alive all along. Once Redis takes writes
    # again, its next beat comes up to 2.5 s later, and the reclaimer looks every 0.5 s meanwhile.
    worker = WorkerConfig(heartbeat_interval=2.5, heartbeat_ttl=5, poll_delay=0.5)
    async with _snapshotting(tmp_path, worker=worker) as (server, api):
        _, ended = await _through_a_failed_snapshot(server, api, {"seconds": 9}, refused_for=6.5)

    assert ended["status"] == "completed"
    assert (ended["attempt"], ended["result"]["attempt"], ended["last_error"]) == (1, 1, None)


async def test_a_webhook_answered_while_redis_cannot_persist_is_logged_as_a_refusal_without_a_traceback(
    tmp_path, receiver, caplog
):
    caplog.set_level(logging.WARNING, logger="taskd.webhooks")
    receiver.hang(2)
    async with _snapshotting(tmp_path, webhooks=WebhooksConfig(allow_private=True)) as (server, api):
        await api.submit("noop", {}, callback_url=receiver.url())
        await receiver.wait_for(1)
        await _snapshot_fails(server)
        await asyncio.sleep(3)  # the receiver answers; the write of its answer is refused
        await _snapshot_works(server)

    broke_off = [record for record in caplog.records if "broke off" in record.getMessage()]
    assert [(record.levelno, record.exc_info) for record in broke_off] == [(logging.WARNING, None)]
    assert "Redis unavailable (ResponseError: MISCONF" in broke_off[0].getMessage()
