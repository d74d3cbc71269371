"""/api/v1/health, /api/v1/tasks/metrics and /api/v1/tasks/health."""

from __future__ import annotations

import asyncio
import itertools
import time

import orjson
import psutil
from examples import TASK_DATA
from redis.asyncio import Redis

from taskd import keys
from taskd.http import cpu_load


async def get(service, path):
    async with service.client.get(path) as response:
        return response.status, await response.json()


async def test_service_health_reports_redis_workers_queues_and_load(taskd):
    status, body = await get(taskd, "/api/v1/health")

    assert status == 200
    assert body["status"] == "healthy"
    assert body["redis_status"] == "connected"
    assert body["worker_count"] == 1
    assert set(body["queue_sizes"]) >= {"gpu_heavy", "gpu_medium", "cpu_intensive", "default"}
    assert set(body["system_load"]) == {"cpu_percent", "memory_percent", "gpu_utilization"}
    assert isinstance(body["system_load"]["gpu_utilization"], list)
    assert isinstance(body["uptime"], int)


async def test_a_heartbeat_of_another_version_is_read_and_a_damaged_one_passed_over(taskd, redis: Redis):
    now = time.time()
    newer = {"worker_id": "newer:1:ab", "host": "newer", "pid": 1, "queues": ["default"], "started_at": now}
    beats = {
        "newer:1:ab": orjson.dumps({**newer, "gpu_model": "a field of a later version"}),
        "damaged:2:cd": b"{",
    }
    for worker_id, value in beats.items():
        await redis.set(keys.worker(worker_id), value, px=60_000)
        await redis.zadd(keys.WORKERS, {worker_id: now * 1000})

    status, body = await get(taskd, "/api/v1/health")

    assert status == 200, body
    assert body["worker_count"] == 2  # this service's worker and the newer one


async def test_queue_sizes_count_waiting_tasks(start_service):
    api_only = await start_service(workers=False)
    await api_only.submit("generate_video", {"duration": 7})
    await api_only.submit("generate_image", TASK_DATA["generate_image"])

    _, body = await get(api_only, "/api/v1/health")

    assert body["queue_sizes"]["gpu_heavy"] == 1
    assert body["queue_sizes"]["gpu_medium"] == 1
    assert body["queue_sizes"]["default"] == 0


async def test_api_only_node_without_workers_is_degraded(start_service):
    api_only = await start_service(workers=False)

    _, body = await get(api_only, "/api/v1/health")

    assert body["worker_count"] == 0
    assert body["status"] == "degraded"


async def test_worker_count_counts_each_live_worker_process(start_service):
    api = await start_service()
    await start_service(http=False)

    _, body = await get(api, "/api/v1/health")

    assert body["worker_count"] == 2


async def test_stopped_worker_stops_counting(start_service):
    api = await start_service(workers=False)
    worker = await start_service(http=False)
    await worker.service.stop(grace=1)

    _, body = await get(api, "/api/v1/health")

    assert body["worker_count"] == 0


async def test_metrics_have_the_documented_fields(taskd):
    status, body = await get(taskd, "/api/v1/tasks/metrics")

    assert status == 200
    assert set(body["metrics"]) >= {
        "total_tasks",
        "completed_tasks",
        "failed_tasks",
        "retried_tasks",
        "cancelled_tasks",
        "success_rate",
        "failure_rate",
        "average_durations",
        "currently_running",
        "webhooks_delivered",
        "webhooks_failed",
    }
    assert body["timestamp"].endswith("Z")


async def test_metrics_move_with_real_tasks(taskd, fake_llm):
    _, before = await get(taskd, "/api/v1/tasks/metrics")
    done = await taskd.submit("test_prompt", TASK_DATA["test_prompt"])
    failed = await taskd.submit("fail", {})
    await taskd.wait_terminal(done["task_id"])
    await taskd.wait_terminal(failed["task_id"])

    _, after = await get(taskd, "/api/v1/tasks/metrics")

    delta = {
        k: after["metrics"][k] - before["metrics"][k]
        for k in ("total_tasks", "completed_tasks", "failed_tasks")
    }
    assert delta == {"total_tasks": 2, "completed_tasks": 1, "failed_tasks": 1}
    assert after["metrics"]["success_rate"] == 50.0
    assert after["metrics"]["failure_rate"] == 50.0
    assert set(after["metrics"]["average_durations"]) == {"test_prompt"}


async def test_currently_running_counts_processing_tasks(taskd, fake_llm):
    fake_llm.hang(30)
    task = await taskd.submit("test_prompt", TASK_DATA["test_prompt"])
    await taskd.wait_for(task["task_id"], lambda b: b["status"] == "processing")

    _, body = await get(taskd, "/api/v1/tasks/metrics")

    assert body["metrics"]["currently_running"] == 1


async def test_service_health_cpu_is_the_last_windows_however_often_it_is_asked(start_service, monkeypatch):
    # psutil's reading runs from its previous call, whoever made it: read per request, a caller
    # polling every few milliseconds left every other caller a window of milliseconds (0.0 or 100.0).
    readings = itertools.count(1.0)
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None: next(readings))
    monkeypatch.setattr(cpu_load, "SAMPLE_S", 3600.0)  # no window ends during the test
    service = await start_service(workers=False)

    answers = [await get(service, "/api/v1/health") for _ in range(3)]

    assert [body["system_load"]["cpu_percent"] for _, body in answers] == [0.0, 0.0, 0.0]


async def test_service_health_cpu_is_sampled_in_the_background(start_service, monkeypatch):
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None: 42.5)
    monkeypatch.setattr(cpu_load, "SAMPLE_S", 0.05)
    service = await start_service(workers=False)

    async with asyncio.timeout(30):
        while (await get(service, "/api/v1/health"))[1]["system_load"]["cpu_percent"] != 42.5:
            await asyncio.sleep(0.05)


async def run_batch(taskd, completed: int, failed: int) -> None:
    ids = [(await taskd.submit("test_prompt", TASK_DATA["test_prompt"]))["task_id"] for _ in range(completed)]
    ids += [(await taskd.submit("fail", {}))["task_id"] for _ in range(failed)]
    await asyncio.gather(*(taskd.wait_terminal(task_id) for task_id in ids))


async def test_queue_health_is_healthy_at_ten_percent_failures(taskd, fake_llm):
    await run_batch(taskd, completed=9, failed=1)

    _, body = await get(taskd, "/api/v1/tasks/health")

    assert body["status"] == "healthy"
    assert body["alerts"] == []


async def test_failure_rate_over_ten_percent_is_a_warning(taskd, fake_llm):
    await run_batch(taskd, completed=8, failed=2)

    _, body = await get(taskd, "/api/v1/tasks/health")

    assert body["status"] == "warning"
    assert body["alerts"] == [
        {
            "severity": "warning",
            "message": "Elevated failure rate: 20.00%",
            "metric": "failure_rate",
            "value": 20.0,
        }
    ]


async def test_failure_rate_over_twenty_percent_is_critical(taskd, fake_llm):
    await run_batch(taskd, completed=7, failed=3)

    _, body = await get(taskd, "/api/v1/tasks/health")

    assert body["status"] == "critical"
    assert body["alerts"][0]["severity"] == "critical"
    assert body["alerts"][0]["metric"] == "failure_rate"


async def test_long_running_task_raises_a_duration_alert(taskd, fake_llm, redis: Redis):
    fake_llm.hang(30)
    task = await taskd.submit("test_prompt", TASK_DATA["test_prompt"])
    await taskd.wait_for(task["task_id"], lambda b: b["status"] == "processing")
    # The task started 485 s ago as far as the running index knows.
    await redis.zadd(keys.running("default"), {task["task_id"]: int((time.time() - 485) * 1000)})

    _, body = await get(taskd, "/api/v1/tasks/health")

    assert body["status"] == "warning"
    assert body["alerts"] == [
        {
            "severity": "warning",
            "message": f"Task {task['task_id']} running for 485 seconds",
            "metric": "task_duration",
            "value": 485,
            "task_id": task["task_id"],
        }
    ]
