"""`GET /metrics`: the exposition format, values that move with real tasks, and the alert rules."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
import yaml
from conftest import API_KEY
from examples import TASK_DATA
from prometheus_client.parser import text_string_to_metric_families

from taskd import keys
from taskd.config import MetricsConfig, RetryConfig
from taskd.gpu.devices import SimulatedBackend
from taskd.gpu.hosts import HostGpus, PublishedDevice
from taskd.http.prom import Snapshot, exposition
from taskd.version import version

ROOT = Path(__file__).resolve().parent.parent
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, metric: str, **labels: str) -> float:
    return samples[(metric, frozenset(labels.items()))]


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


async def scrape(base_url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url}/metrics", headers=headers) as response,
    ):
        return response.status, response.headers["Content-Type"], await response.text()


def snapshot(counters: dict[str, str], **fields) -> Snapshot:
    defaults = {"waiting": {}, "running": {}, "oldest_started": {}, "workers": [], "at": 1000.0}
    return Snapshot(counters=counters, **{**defaults, **fields})


async def test_metrics_need_no_api_key_and_use_the_exposition_format(start_service):
    taskd = await start_service(workers=False)

    status, content_type, text = await scrape(taskd.base_url)

    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    samples = parse(text)
    assert value(samples, "taskd_redis_up") == 1
    assert value(samples, "process_resident_memory_bytes") > 0


@pytest.mark.parametrize(
    ("accept", "answered"),
    [
        ("application/openmetrics-text; version=abc", "application/openmetrics-text; version=1.0.0"),
        ("text/plain; version=1.x", "text/plain; version=0.0.4"),
    ],
)
async def test_an_accept_header_whose_version_is_not_a_number_is_read_as_naming_no_version(
    start_service, accept, answered
):
    taskd = await start_service(workers=False)

    status, content_type, text = await scrape(taskd.base_url, {"Accept": accept})

    assert status == 200
    assert content_type.startswith(answered)
    assert "\ntaskd_redis_up 1" in text


async def test_metrics_can_require_the_api_key(start_service):
    taskd = await start_service(workers=False, metrics=MetricsConfig(require_key=True))

    without, _, body = await scrape(taskd.base_url)
    with_key, _, _ = await scrape(taskd.base_url, {"X-API-Key": API_KEY})

    assert without == 401 and '"authentication_failed"' in body
    assert with_key == 200


async def test_metrics_that_require_the_key_may_not_be_kept_by_a_cache(start_service):
    taskd = await start_service(workers=False, metrics=MetricsConfig(require_key=True))

    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{taskd.base_url}/metrics", headers={"X-API-Key": API_KEY}) as response,
    ):
        status, cache_control = response.status, response.headers.get("Cache-Control")

    assert (status, cache_control) == (200, "no-store")


async def test_task_counters_and_durations_move_with_real_tasks(taskd, fake_llm):
    before = parse((await scrape(taskd.base_url))[2])
    done = await taskd.submit("test_prompt", TASK_DATA["test_prompt"])
    await taskd.wait_terminal(done["task_id"])
    fake_llm.fail(401, "Incorrect API key provided")
    failed = await taskd.submit("test_prompt", TASK_DATA["test_prompt"])
    assert (await taskd.wait_terminal(failed["task_id"]))["status"] == "failed"
    fake_llm.hang(5)
    cancelled = await taskd.submit("test_prompt", TASK_DATA["test_prompt"])
    async with taskd.client.delete(f"/api/v1/tasks/{cancelled['task_id']}") as response:
        assert response.status == 200

    after = parse((await scrape(taskd.base_url))[2])

    def moved(name: str) -> float:
        return total(after, name) - total(before, name)

    assert moved("taskd_tasks_submitted_total") == 3
    assert moved("taskd_tasks_completed_total") == 1
    assert value(after, "taskd_tasks_completed_total", task_type="test_prompt") == 1
    assert moved("taskd_tasks_failed_total") == 1
    assert moved("taskd_tasks_cancelled_total") == 1
    assert value(after, "taskd_task_duration_seconds_count", task_type="test_prompt") == 1
    assert value(after, "taskd_task_duration_seconds_sum", task_type="test_prompt") > 0


async def test_queue_gauges_count_waiting_tasks_per_queue(start_service):
    taskd = await start_service(workers=False)
    for _ in range(2):
        await taskd.submit("generate_video", TASK_DATA["generate_video"])

    samples = parse((await scrape(taskd.base_url))[2])

    assert value(samples, "taskd_queue_waiting_tasks", queue="gpu_heavy") == 2
    assert value(samples, "taskd_queue_waiting_tasks", queue="default") == 0
    assert value(samples, "taskd_queue_running_tasks", queue="gpu_heavy") == 0
    assert value(samples, "taskd_workers_live") == 0


async def test_queue_workers_counts_the_live_workers_serving_each_queue(start_service):
    taskd = await start_service(serve_queues=["cpu_intensive", "default"])

    samples = parse((await scrape(taskd.base_url))[2])

    assert value(samples, "taskd_queue_workers", queue="default") == 1
    assert value(samples, "taskd_queue_workers", queue="gpu_heavy") == 0


async def test_a_running_task_shows_in_running_and_oldest_age(taskd, fake_llm):
    fake_llm.hang(10)
    task = await taskd.submit("test_prompt", TASK_DATA["test_prompt"])
    await taskd.wait_for(task["task_id"], lambda body: body["status"] == "processing")
    await asyncio.sleep(0.3)

    samples = parse((await scrape(taskd.base_url))[2])

    assert value(samples, "taskd_queue_running_tasks", queue="default") == 1
    assert value(samples, "taskd_queue_oldest_running_task_age_seconds", queue="default") > 0.2
    assert value(samples, "taskd_queue_oldest_running_task_age_seconds", queue="gpu_heavy") == 0


async def test_worker_gauges_come_from_heartbeats(taskd):
    samples = parse((await scrape(taskd.base_url))[2])

    worker_id = taskd.service.worker_id
    assert value(samples, "taskd_workers_live") >= 1
    rss = [v for (name, labels), v in samples.items() if name == "taskd_worker_resident_memory_bytes"]
    assert rss and all(v > 0 for v in rss)
    assert any(dict(labels).get("worker_id") == worker_id for (_, labels) in samples)


def test_per_type_counters_are_read_when_the_store_writes_them():
    counters = {"total_tasks": "5", "submitted:generate_video": "3", "submitted:test_prompt": "1"}

    samples = parse(exposition(snapshot(counters))[0].decode())

    assert value(samples, "taskd_tasks_submitted_total", task_type="generate_video") == 3
    assert value(samples, "taskd_tasks_submitted_total", task_type="test_prompt") == 1
    # Counted before per-type fields existed: kept, so sums stay equal to the totals.
    assert value(samples, "taskd_tasks_submitted_total", task_type="unknown") == 1


def test_duration_buckets_are_read_when_the_store_writes_them():
    counters = {
        "duration_count:generate_image": "4",
        "duration_sum:generate_image": "100.5",
        "duration_bucket:generate_image:30": "1",
        "duration_bucket:generate_image:60": "3",
    }

    samples = parse(exposition(snapshot(counters))[0].decode())

    bucket = "taskd_task_duration_seconds_bucket"
    assert value(samples, bucket, task_type="generate_image", le="30.0") == 1
    assert value(samples, bucket, task_type="generate_image", le="60.0") == 3
    assert value(samples, bucket, task_type="generate_image", le="+Inf") == 4
    assert value(samples, "taskd_task_duration_seconds_sum", task_type="generate_image") == 100.5


def test_duration_buckets_counted_once_per_task_are_added_up_into_cumulative_buckets():
    counters = {
        "duration_count:generate_image": "5",
        "duration_sum:generate_image": "200.5",
        "duration_in:generate_image:5": "1",
        "duration_in:generate_image:60": "2",
        "duration_in:generate_image:300": "1",
    }

    samples = parse(exposition(snapshot(counters))[0].decode())

    bucket = "taskd_task_duration_seconds_bucket"
    assert (
        "taskd_task_duration_seconds_bucket",
        frozenset({("task_type", "generate_image"), ("le", "1.0")}),
    ) not in samples
    assert value(samples, bucket, task_type="generate_image", le="5.0") == 1
    assert value(samples, bucket, task_type="generate_image", le="30.0") == 1
    assert value(samples, bucket, task_type="generate_image", le="60.0") == 3
    assert value(samples, bucket, task_type="generate_image", le="900.0") == 4
    assert value(samples, bucket, task_type="generate_image", le="+Inf") == 5


def test_duration_buckets_written_before_and_after_an_upgrade_add_up():
    counters = {
        "duration_count:generate_image": "4",
        "duration_sum:generate_image": "100.5",
        # Cumulative, from before: two tasks of 40 s; then one of 10 s and one of 100 s.
        **{f"duration_bucket:generate_image:{le}": "2" for le in (60, 120, 300, 600, 900)},
        "duration_in:generate_image:10": "1",
        "duration_in:generate_image:120": "1",
    }

    samples = parse(exposition(snapshot(counters))[0].decode())

    bucket = "taskd_task_duration_seconds_bucket"
    assert value(samples, bucket, task_type="generate_image", le="10.0") == 1
    assert value(samples, bucket, task_type="generate_image", le="60.0") == 3
    assert value(samples, bucket, task_type="generate_image", le="120.0") == 4


async def test_a_completed_task_counts_in_every_duration_bucket_from_its_own_up(taskd):
    done = await taskd.submit("noop", {})
    await taskd.wait_terminal(done["task_id"])

    samples = parse((await scrape(taskd.base_url))[2])

    bucket = "taskd_task_duration_seconds_bucket"
    for le in ("1.0", "5.0", "900.0", "+Inf"):
        assert value(samples, bucket, task_type="noop", le=le) == 1


def test_gpu_utilisation_memory_temperature_and_slots_are_exposed_per_host_and_device():
    device = PublishedDevice(0, "H200", 37.0, 2**30, 2**37, temperature=61.0, slots=4, slots_used=3)
    host = HostGpus("gpu-a", 1000.0, [device])

    samples = parse(exposition(snapshot({}, gpus=[host]))[0].decode())

    labels = {"host": "gpu-a", "gpu": "0", "name": "H200"}
    assert value(samples, "taskd_gpu_utilization_ratio", **labels) == 0.37
    assert value(samples, "taskd_gpu_memory_used_bytes", **labels) == 2**30
    assert value(samples, "taskd_gpu_memory_total_bytes", **labels) == 2**37
    assert value(samples, "taskd_gpu_temperature_celsius", **labels) == 61.0
    assert (
        value(samples, "taskd_gpu_slots", **labels),
        value(samples, "taskd_gpu_slots_used", **labels),
    ) == (4, 3)


def test_webhook_counters_come_from_the_shared_metrics():
    samples = parse(exposition(snapshot({"webhooks_delivered": "7", "webhooks_failed": "2"}))[0].decode())

    assert value(samples, "taskd_webhooks_delivered_total") == 7
    assert value(samples, "taskd_webhooks_failed_total") == 2


def test_a_scrape_without_redis_says_so_and_still_answers():
    samples = parse(exposition(None)[0].decode())

    assert value(samples, "taskd_redis_up") == 0
    assert value(samples, "process_resident_memory_bytes") > 0


def test_process_metrics_have_the_standard_names():
    families = {family.name for family in text_string_to_metric_families(exposition(None)[0].decode())}

    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds"} <= families
    assert not any(name.startswith("taskd_process_") for name in families)


def test_build_info_names_the_version_of_the_scraped_process():
    samples = parse(exposition(None)[0].decode())

    assert value(samples, "taskd_build_info", version=version()) == 1
    assert version() != "unknown"


async def test_each_start_counts_its_wait_per_queue_and_type(taskd):
    first = await taskd.submit("noop", {})
    second = await taskd.submit("noop", {})
    for task in (first, second):
        await taskd.wait_terminal(task["task_id"])

    samples = parse((await scrape(taskd.base_url))[2])

    series = {"queue": "default", "task_type": "noop"}
    assert value(samples, "taskd_task_wait_seconds_count", **series) == 2
    assert value(samples, "taskd_task_wait_seconds_bucket", **series, le="+Inf") == 2
    assert value(samples, "taskd_task_wait_seconds_bucket", **series, le="5.0") == 2
    assert 0 <= value(samples, "taskd_task_wait_seconds_sum", **series) < 10


async def test_a_scheduled_tasks_wait_counts_from_its_time_not_from_its_submit(taskd):
    later = await taskd.submit("noop", {}, delay_seconds=3)
    await taskd.wait_terminal(later["task_id"])

    samples = parse((await scrape(taskd.base_url))[2])

    series = {"queue": "default", "task_type": "noop"}
    assert value(samples, "taskd_task_wait_seconds_count", **series) == 1
    assert value(samples, "taskd_task_wait_seconds_sum", **series) < 2  # it was submitted 3 s before


async def test_a_retrys_wait_counts_from_its_next_retry_at_not_from_the_failure(
    start_service, redis, monkeypatch
):
    # The whole 3 s: a wait drawn at random below it (full jitter) was now and then too short for the
    # loop below to see the retry waiting, and the test timed out.
    monkeypatch.setattr("taskd.backoff.RETRY_JITTER", 0.0)
    service = await start_service(retry=RetryConfig(base_delay=3))
    task = await service.submit("fail", {"transient": True, "fail_times": 1})
    series = "default:fail"
    async with asyncio.timeout(20):
        while True:
            # One atomic read: the retry is waiting (start.lua drops next_retry_at), and the waits so far.
            async with redis.pipeline(transaction=True) as pipe:
                pipe.hget(keys.task(task["task_id"]), "next_retry_at")
                pipe.hmget(keys.METRICS, f"wait_count:{series}", f"wait_sum:{series}")
                retry_at, (count_before, sum_before) = await pipe.execute()
            if retry_at is not None:
                break
            await asyncio.sleep(0.01)
    done = await service.wait_terminal(task["task_id"])
    count_after, sum_after = await redis.hmget(keys.METRICS, f"wait_count:{series}", f"wait_sum:{series}")

    started = await redis.hget(keys.task(task["task_id"]), "started_at")
    assert done["status"] == "completed"
    assert int(count_after) - int(count_before) == 1
    waited = float(sum_after) - float(sum_before)
    assert waited == pytest.approx(float(started) - float(retry_at), abs=0.01)


def test_wait_buckets_counted_once_per_start_are_added_up_into_cumulative_buckets():
    counters = {
        "wait_count:gpu_heavy:generate_video": "3",
        "wait_sum:gpu_heavy:generate_video": "70.5",
        "wait_in:gpu_heavy:generate_video:0.5": "1",
        "wait_in:gpu_heavy:generate_video:60": "2",
    }

    samples = parse(exposition(snapshot(counters))[0].decode())

    series = {"queue": "gpu_heavy", "task_type": "generate_video"}
    bucket = "taskd_task_wait_seconds_bucket"
    assert value(samples, bucket, **series, le="0.1") == 0
    assert value(samples, bucket, **series, le="0.5") == 1
    assert value(samples, bucket, **series, le="15.0") == 1
    assert value(samples, bucket, **series, le="60.0") == 3
    assert value(samples, bucket, **series, le="+Inf") == 3
    assert value(samples, "taskd_task_wait_seconds_sum", **series) == 70.5


def test_the_webhook_backlog_is_the_outbox_size():
    samples = parse(exposition(snapshot({}, webhooks_due=4))[0].decode())

    assert value(samples, "taskd_webhooks_due") == 4


async def test_a_running_gpu_task_holds_slots_in_the_scrape(start_service):
    service = await start_service(gpu_backend=SimulatedBackend(1))
    task = await service.submit("gpu_hold", {"seconds": 10})
    await service.wait_for(task["task_id"], lambda body: body["status"] == "processing")

    host = service.service.worker_id.split(":")[0]
    # The slots come from the host's heartbeat, published every few seconds.
    async with asyncio.timeout(15):
        while True:
            samples = parse((await scrape(service.base_url))[2])
            held = [
                v
                for (name, labels), v in samples.items()
                if name == "taskd_gpu_slots_used" and {("host", host), ("gpu", "0")} <= labels
            ]
            if held and held[0] >= 1:
                break
            await asyncio.sleep(0.2)


def test_alert_rules_use_only_metrics_that_taskd_exposes():
    rules = yaml.safe_load((ROOT / "alerts.yaml").read_text())["groups"][0]["rules"]
    families = list(text_string_to_metric_families(exposition(snapshot({}))[0].decode()))
    exposed = {f.name for f in families} | {f"{f.name}_total" for f in families if f.type == "counter"}

    used = {name for rule in rules for name in re.findall(r"\btaskd_[a-z_]+", rule["expr"])}

    assert used and used <= exposed
    assert {rule["labels"]["severity"] for rule in rules} == {"warning", "critical"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus) is not installed")
def test_alert_rules_pass_promtool_and_fire_at_the_queue_health_thresholds():
    check = subprocess.run(
        ["promtool", "check", "rules", "alerts.yaml"], cwd=ROOT, capture_output=True, text=True
    )
    unit = subprocess.run(
        ["promtool", "test", "rules", "tests/alerts_test.yaml"], cwd=ROOT, capture_output=True, text=True
    )

    assert check.returncode == 0, check.stdout + check.stderr
    assert unit.returncode == 0, unit.stdout + unit.stderr
