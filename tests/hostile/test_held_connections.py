"""Requests a key holds open (event streams, `Prefer: wait` submits): a key at its cap
(`limits.open_streams`) is refused with the documented 429, other keys are not, the
process can hold as many connections as its hard limit on open files allows, and a process out of
open files anyway fails no one's task for it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import psutil
import pytest
from conftest import API_KEY, RunningService, child_env
from sse import iter_events

from taskd import keys
from taskd.config import AuthConfig, ExecutionConfig, LimitsConfig
from taskd.heartbeat import Heartbeat, WorkerInfo

OTHER_KEY = "other-key-0123456789"
CAP = 3
CAPPED = {"auth": AuthConfig(api_keys=[API_KEY, OTHER_KEY]), "limits": LimitsConfig(open_streams=CAP)}


@contextlib.asynccontextmanager
async def held_streams(service: RunningService, paths: list[str], key: str = API_KEY) -> AsyncIterator[None]:
    """Open an event stream on each path (each answered 200) and hold them all for the block."""
    async with contextlib.AsyncExitStack() as stack:
        for path in paths:
            response = await stack.enter_async_context(service.client.get(path, headers={"X-API-Key": key}))
            assert response.status == 200, await response.text()
        yield


def project_streams(count: int) -> list[str]:
    return [f"/api/v1/projects/proj-{index}/events" for index in range(count)]


async def open_stream_status(service: RunningService, key: str = API_KEY) -> int:
    async with service.client.get("/api/v1/projects/proj-x/events", headers={"X-API-Key": key}) as response:
        return response.status


async def test_a_stream_past_the_keys_cap_is_refused_with_429_rate_limited(start_service):
    service = await start_service(workers=False, **CAPPED)

    async with (
        held_streams(service, project_streams(CAP)),
        service.client.get("/api/v1/projects/proj-x/events") as response,
    ):
        body = await response.json()
        assert response.status == 429
        assert response.headers["Retry-After"] == "10"

    assert body["error"] == "rate_limited"
    assert body["retry_after"] == 10
    assert f"at most {CAP} per API key" in body["message"]


async def test_a_key_at_its_cap_on_one_api_node_is_told_the_cap_is_per_node_and_opens_streams_on_another(
    start_service,
):
    # Two API nodes on one Redis, as behind a load balancer: the count is each process's own
    # (docs/api.md#rate-limits), and the refusal must not read as a cap on the key's streams overall.
    first = await start_service(workers=False, **CAPPED)
    second = await start_service(workers=False, **CAPPED)

    async with held_streams(first, project_streams(CAP)):
        async with first.client.get("/api/v1/projects/proj-x/events") as response:
            body = await response.json()
        on_the_other = await open_stream_status(second)

    assert body["message"].startswith(
        f"Too many open event streams: at most {CAP} per API key at once on each taskd process"
    )
    assert on_the_other == 200


async def test_another_key_opens_streams_while_one_key_is_at_its_cap(start_service):
    service = await start_service(workers=False, **CAPPED)

    async with held_streams(service, project_streams(CAP)):
        assert await open_stream_status(service, OTHER_KEY) == 200


async def test_task_streams_count_towards_the_cap(start_service):
    service = await start_service(workers=False, **CAPPED)
    task = await service.submit("sleep", {"seconds": 30})

    async with held_streams(service, [f"/api/v1/tasks/{task['task_id']}/events"] * CAP):
        assert await open_stream_status(service) == 429


async def test_an_unknown_tasks_stream_is_404_for_a_key_at_its_cap(start_service):
    service = await start_service(workers=False, **CAPPED)
    task = await service.submit("sleep", {"seconds": 30})

    async with held_streams(service, project_streams(CAP)):
        async with service.client.get("/api/v1/tasks/no-such-task/events") as unknown:
            assert unknown.status == 404
            assert (await unknown.json())["error"] == "task_not_found"
        async with service.client.get(f"/api/v1/tasks/{task['task_id']}/events") as known:
            assert known.status == 429


async def test_a_closed_stream_gives_its_place_back(start_service):
    service = await start_service(workers=False, **CAPPED)
    async with held_streams(service, project_streams(CAP)):
        pass

    # The server notices a client gone within a second (events.CHECK_SECONDS); count the refusals
    # meanwhile rather than time them: it must come back to 200.
    async with asyncio.timeout(10):
        while (status := await open_stream_status(service)) == 429:
            await asyncio.sleep(0.1)
    assert status == 200


async def test_no_cap_when_open_streams_is_0(start_service):
    service = await start_service(workers=False, limits=LimitsConfig(open_streams=0))

    async with held_streams(service, project_streams(CAP + 2)):
        assert await open_stream_status(service) == 200


async def test_a_wait_past_the_cap_is_ignored_and_the_submit_answered_at_once(start_service):
    service = await start_service(workers=False, **CAPPED)
    body = {"project_id": "proj-1", "task_type": "sleep", "task_data": {"seconds": 1}}

    async with (
        held_streams(service, project_streams(CAP)),
        service.client.post("/api/v1/tasks/submit", json=body, headers={"Prefer": "wait=5"}) as response,
    ):
        assert response.status == 200
        assert "Preference-Applied" not in response.headers
        answer = await response.json()

    assert answer["status"] == "queued"
    assert (await service.status(answer["task_id"]))["status"] == "queued"


async def test_a_held_wait_counts_towards_the_cap(start_service):
    service = await start_service(workers=False, **CAPPED)
    body = {"project_id": "proj-w", "task_type": "sleep", "task_data": {"seconds": 1}}

    async with held_streams(service, project_streams(CAP - 1)):
        # The other key follows the project, to know when the waiting submit has stored its task.
        async with service.client.get(
            "/api/v1/projects/proj-w/events", headers={"X-API-Key": OTHER_KEY}
        ) as events:
            waiting = asyncio.create_task(
                service.client.post("/api/v1/tasks/submit", json=body, headers={"Prefer": "wait=10"})
            )
            stored = await anext(iter_events(events))
            # One more round trip through the server: the submit has gone on to its wait by then.
            await service.status(stored.data["task_id"])
            assert await open_stream_status(service) == 429
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/<pid>/limits")
def test_taskd_serve_raises_its_open_files_soft_limit_to_the_hard_limit(spawn_taskd, tmp_path: Path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The child inherits a soft limit under the hard one, as systemd gives a service 1024 of 524288;
    # above what this process has open, so that starting the child does not run out.
    lowered = max(256, len(os.listdir("/proc/self/fd")) + 64)
    if hard == resource.RLIM_INFINITY or hard <= lowered:
        pytest.skip(f"needs a finite hard limit above {lowered}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        running = spawn_taskd("serve", env=child_env(tmp_path / "data"))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    limits = Path(f"/proc/{running.proc.pid}/limits").read_text().splitlines()
    open_files = next(line for line in limits if line.startswith("Max open files")).split()
    assert open_files[3:5] == [str(hard), str(hard)]


def out_of_open_files(*_: object, **__: object) -> None:
    """What psutil raises reading /proc in a process that has used up its open files."""
    raise OSError(errno.EMFILE, "Too many open files")


async def test_a_job_process_task_completes_while_its_worker_cannot_read_proc(start_service, monkeypatch):
    service = await start_service()
    monkeypatch.setattr(psutil.Process, "memory_info", out_of_open_files)

    task = await service.submit("allocate", {"megabytes": 1, "hold_seconds": 1})
    body = await service.wait_terminal(task["task_id"])

    assert body["status"] == "completed"
    assert body["attempt"] == 1
    assert body["last_error"] is None


async def test_a_job_process_task_that_starts_while_its_worker_cannot_read_proc_completes(
    start_service, monkeypatch
):
    service = await start_service()
    warm = await service.submit("allocate", {"megabytes": 1})
    assert (await service.wait_terminal(warm["task_id"]))["status"] == "completed"
    # The idle job process takes the next task; looking it up in /proc is what runs out now.
    monkeypatch.setattr(psutil.Process, "__init__", out_of_open_files)

    task = await service.submit("allocate", {"megabytes": 1, "hold_seconds": 1})
    body = await service.wait_terminal(task["task_id"])

    assert body["status"] == "completed"
    assert body["attempt"] == 1
    assert body["last_error"] is None


async def test_a_job_process_that_could_not_be_looked_up_at_its_start_is_held_to_the_memory_limit(
    start_service, monkeypatch
):
    service = await start_service(execution=ExecutionConfig(memory_limit_mb=120))
    warm = await service.submit("allocate", {"megabytes": 1})
    assert (await service.wait_terminal(warm["task_id"]))["status"] == "completed"
    looked_up = psutil.Process.__init__

    def once_out_of_open_files(self: psutil.Process, *args: object, **kwargs: object) -> None:
        # The shortage ends after the task's start: its later readings see the process.
        monkeypatch.setattr(psutil.Process, "__init__", looked_up)
        out_of_open_files()

    monkeypatch.setattr(psutil.Process, "__init__", once_out_of_open_files)

    task = await service.submit("allocate", {"megabytes": 400, "hold_seconds": 10})
    body = await service.wait_terminal(task["task_id"])

    assert body["status"] == "failed"
    assert body["error"].startswith("Job process exceeded the memory limit of 120 MB")


async def test_a_heartbeat_goes_out_with_the_last_reading_while_the_process_cannot_read_proc(
    redis, monkeypatch
):
    heartbeat = Heartbeat(redis, WorkerInfo("h:1:ab", "h", 1, [], 0.0), 1, 30, lambda: 0)
    await heartbeat.beat()
    monkeypatch.setattr(psutil.Process, "memory_info", out_of_open_files)
    first = orjson.loads(await redis.get(keys.worker("h:1:ab")))
    await redis.delete(keys.worker("h:1:ab"))

    await heartbeat.beat()

    beat = orjson.loads(await redis.get(keys.worker("h:1:ab")))
    assert beat["rss_bytes"] == first["rss_bytes"] > 0


async def test_a_request_that_runs_out_of_open_files_is_a_503_not_a_500(start_service, monkeypatch):
    service = await start_service(workers=False)
    # The health reads the memory per request (its CPU figure is sampled in the background).
    monkeypatch.setattr(psutil, "virtual_memory", out_of_open_files)

    async with service.client.get("/api/v1/health") as response:
        body = await response.json()
        assert response.status == 503
        assert response.headers["Retry-After"] == "5"

    assert body["error"] == "service_unavailable"


async def test_running_out_of_open_files_is_logged_once_and_its_end_once(redis, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="taskd.heartbeat")
    heartbeat = Heartbeat(redis, WorkerInfo("h:1:ab", "h", 1, [], 0.0), 1, 30, lambda: 0)
    with monkeypatch.context() as patched:
        patched.setattr(psutil.Process, "memory_info", out_of_open_files)
        for _ in range(3):
            await heartbeat.beat()
    await heartbeat.beat()
    await heartbeat.beat()

    said = [record.getMessage() for record in caplog.records if record.name == "taskd.heartbeat"]
    assert len(said) == 2
    assert said[0].startswith("out of open files")
    assert said[1] == "open files are available again"
