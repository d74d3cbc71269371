"""A tenant cannot fill taskd's disks or its Redis: media expires and is swept, media tasks are refused
while the media disk is nearly full, and Redis is bounded (maxmemory, noeviction) with an alert first."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import time
import tracemalloc
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from conftest import make_config
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from taskd import keys
from taskd.alerts import redis_memory_alerts
from taskd.config import ConfigError, MediaConfig, load_config
from taskd.embedded import EmbeddedValkey
from taskd.media import capacity
from taskd.media.publish import publish
from taskd.media.retention import MediaSweeper
from taskd.media.store import MediaStore, media_dir, scratch_root
from taskd.tasks.spec import TransientError

DAY = 24 * 3600
NEARLY_FULL = MediaConfig(min_free_bytes=2**62)  # more than any disk has free


def aged(path: Path, seconds: float) -> Path:
    """Set the entry's own mtime (a link's, not its target's) `seconds` into the past."""
    past = time.time() - seconds
    os.utime(path, (past, past), follow_symlinks=False)
    return path


def stored(root: Path, project: str, name: str, age: float = 0.0) -> Path:
    path = root / project / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"media")
    return aged(path, age)


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path, "redis://unused", media=MediaConfig(retention=DAY))


def test_media_older_than_the_retention_is_deleted_and_newer_media_kept(config):
    root = media_dir(config)
    old = stored(root, "proj-a", "video_old.mp4", age=DAY + 60)
    new = stored(root, "proj-a", "video_new.mp4", age=DAY - 60)

    MediaSweeper.from_config(config).sweep()

    assert not old.exists()
    assert new.exists()


def test_the_sweeper_reads_a_project_dir_of_many_files_one_entry_at_a_time(config):
    # Every process (the API and each worker) sweeps the same dir: a project of a million files
    # held whole in each was hundreds of MB apiece, every sweep.
    folder = media_dir(config) / "proj-a"
    folder.mkdir(parents=True)
    for n in range(20_000):
        (folder / f"audio_{n:040d}.wav").touch()
    sweeper = MediaSweeper.from_config(config)

    tracemalloc.start()
    try:
        report = sweeper.sweep(at=time.time() + DAY + 60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert report.media_files == 20_000
    assert peak < 1_000_000  # the 20,000 entries held at once take about 5 MB


def test_an_old_symlink_in_the_media_dir_is_removed_as_a_link_and_its_target_survives(config, tmp_path):
    target = tmp_path / "outside" / "precious.txt"
    target.parent.mkdir()
    target.write_text("not taskd's")
    aged(target, 30 * DAY)
    link = media_dir(config) / "proj-a" / "link.mp4"
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    aged(link, DAY + 60)

    MediaSweeper.from_config(config).sweep()

    assert not os.path.lexists(link)
    assert target.read_text() == "not taskd's"


def test_a_symlinked_project_dir_is_never_followed(config, tmp_path):
    outside = tmp_path / "elsewhere"
    victim = stored(outside, "proj-x", "old.mp4", age=30 * DAY)
    root = media_dir(config)
    root.mkdir(parents=True)
    (root / "proj-x").symlink_to(outside / "proj-x", target_is_directory=True)

    MediaSweeper.from_config(config).sweep()

    assert victim.exists()


def test_an_emptied_project_dir_is_removed_once_it_has_been_empty_a_while(config):
    root = media_dir(config)
    stored(root, "proj-gone", "old.mp4", age=DAY + 60).unlink()
    aged(root / "proj-gone", 3600)

    MediaSweeper.from_config(config).sweep()

    assert not (root / "proj-gone").exists()
    assert root.exists()


def test_a_scratch_dir_older_than_any_task_can_run_is_removed_and_a_recent_one_kept(config):
    scratch = scratch_root(config)
    abandoned = scratch / "0b5c1d4e-2f3a-4b5c-8d9e-0f1a2b3c4d5e-k2j4h5g6"
    recent = scratch / "1b5c1d4e-2f3a-4b5c-8d9e-0f1a2b3c4d5e-a1b2c3d4"
    for path in (abandoned, recent):
        (path / "frames").mkdir(parents=True)
        (path / "frames" / "0001.png").write_bytes(b"png")
    max_age = MediaSweeper.from_config(config).scratch_age
    aged(abandoned, max_age + 60)
    aged(recent, max_age - 60)

    MediaSweeper.from_config(config).sweep()

    assert not abandoned.exists()
    assert recent.exists()


def test_a_partial_copy_a_killed_worker_left_in_the_store_is_removed_once_older_than_any_task_can_run(config):
    root = media_dir(config)
    max_age = MediaSweeper.from_config(config).scratch_age
    abandoned = stored(root, "proj-a", ".video_a.mp4.partial", age=max_age + 60)
    copying = stored(root, "proj-a", ".video_b.mp4.partial", age=max_age - 60)

    MediaSweeper.from_config(config).sweep()

    assert (abandoned.exists(), copying.exists()) == (False, True)


def test_the_sweeper_refuses_a_media_dir_that_holds_the_data_dir(tmp_path):
    config = make_config(tmp_path, "redis://unused", media=MediaConfig(dir=str(tmp_path), retention=DAY))
    password = stored(config.data_path, "valkey", "password", age=30 * DAY)

    report = MediaSweeper.from_config(config).sweep()

    assert password.exists()
    assert report.removed == 0


async def test_the_url_of_swept_media_answers_404_in_the_documented_shape(start_service):
    running = await start_service(workers=False, media=MediaConfig(retention=60, sweep_interval=0.1))
    config = running.service.config
    source = media_dir(config).parent / "render.mp4"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(b"\x00" * 64)
    media = MediaStore.from_config(config).put("proj-1", "video_1.mp4", source)
    aged(media.path, 3600)

    async with asyncio.timeout(20):
        while media.path.exists():
            await asyncio.sleep(0.05)
    parts = urlsplit(media.url)
    async with (
        aiohttp.ClientSession(base_url=running.base_url) as anonymous,
        anonymous.get(f"{parts.path}?{parts.query}") as response,
    ):
        status, body = response.status, await response.json()

    assert status == 404
    assert body == {"error": "not_found", "message": "Media 'proj-1/video_1.mp4' not found"}


async def test_a_media_task_is_refused_with_503_while_the_media_disk_is_nearly_full(start_service, redis):
    running = await start_service(workers=False, media=NEARLY_FULL)
    body = {"project_id": "proj-1", "task_type": "generate_image", "task_data": {"prompt": "a cat"}}

    async with running.client.post("/api/v1/tasks/submit", json=body) as response:
        status, retry_after, answer = (
            response.status,
            response.headers.get("Retry-After"),
            await response.json(),
        )

    assert status == 503
    assert answer["error"] == "service_unavailable"
    assert "Media storage is nearly full" in answer["message"]
    assert retry_after is not None and int(retry_after) > 0
    assert await redis.keys(keys.task("*")) == []
    assert await redis.keys(keys.waiting("*")) == []


async def test_a_media_task_is_refused_with_503_while_a_separate_scratch_disk_is_nearly_full(
    start_service, redis, tmp_path, monkeypatch
):
    # A test cannot mount a small filesystem: the readings of free space are made up, the media
    # folder's with plenty, the scratch folder's on another device with 10 MiB of 100 GiB.
    scratch = tmp_path / "scratch-disk"
    readings = {
        "media": capacity.Usage(total=100 * 2**30, free=50 * 2**30, device=1),
        "scratch": capacity.Usage(total=100 * 2**30, free=10 * 2**20, device=2),
    }
    monkeypatch.setattr(
        capacity, "disk_usage", lambda path: readings["scratch" if path.is_relative_to(scratch) else "media"]
    )
    running = await start_service(workers=False, media=MediaConfig(scratch_dir=str(scratch)))
    body = {"project_id": "proj-1", "task_type": "generate_image", "task_data": {"prompt": "a cat"}}

    async with running.client.post("/api/v1/tasks/submit", json=body) as response:
        status, answer = response.status, await response.json()

    assert status == 503
    assert answer["error"] == "service_unavailable"
    assert answer["message"] == capacity.SCRATCH_REFUSED
    assert await redis.keys(keys.task("*")) == []


async def test_a_task_without_media_is_accepted_while_the_media_disk_is_nearly_full(start_service):
    running = await start_service(workers=False, media=NEARLY_FULL)

    accepted = await running.submit("noop", {})

    assert accepted["status"] == "queued"


async def test_a_worker_does_not_store_a_result_on_a_nearly_full_media_disk(tmp_path):
    config = make_config(tmp_path, "redis://unused", media=NEARLY_FULL)
    source = tmp_path / "image.png"
    source.write_bytes(b"\x89PNG" + b"\x00" * 64)

    with pytest.raises(TransientError, match="Media storage is nearly full"):
        await publish(config, "proj-1", source, "image_1.png", {})

    assert not (media_dir(config) / "proj-1" / "image_1.png").exists()


def test_a_copy_into_the_store_that_fails_midway_leaves_no_partial_file(tmp_path):
    # A file size limit makes the copy fail with EFBIG after its first MiB, as a full disk would
    # with ENOSPC: the half-written copy must not stay in the project's folder (only the sweeper,
    # after media.retention, would remove it, and it holds the space the disk was short of).
    store = MediaStore(tmp_path / "media", "http://media.test", b"k" * 64, 3600)
    source = tmp_path / "video.mp4"
    source.write_bytes(b"\0" * (3 << 20))
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    previous_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, previous_limit[1]))
    try:
        with pytest.raises(OSError):
            store.put("proj-1", "video_1.mp4", source)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous_limit)
        signal.signal(signal.SIGXFSZ, previous_handler)

    assert list((tmp_path / "media" / "proj-1").iterdir()) == []


async def test_the_embedded_valkey_is_bounded_and_never_evicts(tmp_path):
    async with EmbeddedValkey(tmp_path / "data", maxmemory="64mb") as server:
        client = Redis.from_url(server.url)
        try:
            memory = await client.info("memory")
        finally:
            await client.aclose()

    assert memory["maxmemory"] == 64 * 1024**2
    assert memory["maxmemory_policy"] == "noeviction"


def test_the_embedded_valkey_is_bounded_by_default(tmp_path):
    config = load_config(environ={"TASKD_DATA_DIR": str(tmp_path)})

    assert config.redis.embedded_maxmemory == "1gb"


@pytest.mark.parametrize("value", ["lots", "\u0661gb"])
def test_a_malformed_embedded_maxmemory_stops_start_up_with_one_line(tmp_path, value):
    with pytest.raises(ConfigError, match="embedded_maxmemory") as caught:
        load_config(environ={"TASKD_DATA_DIR": str(tmp_path), "TASKD_REDIS__EMBEDDED_MAXMEMORY": value})

    assert "\n" not in str(caught.value)


async def fill_up(redis: Redis) -> None:
    """Redis over its maxmemory (its policy `noeviction`, as taskd's embedded one's): every write
    that may take memory is refused.

    Not filled to a maxmemory just above what it used: what it uses moves by tens of KiB on its own
    (a refused write's buffer freed, idle clients' buffers shrunk), room for a whole submit.
    """
    used = (await redis.info("memory"))["used_memory"]
    await redis.config_set("maxmemory", used // 2)
    with pytest.raises(OutOfMemoryError):
        await redis.set("ballast", b"x")


async def test_a_submit_to_a_full_redis_answers_503_in_the_documented_shape(start_service, redis):
    running = await start_service(workers=False)
    await fill_up(redis)
    try:
        async with running.client.post(
            "/api/v1/tasks/submit", json={"project_id": "proj-1", "task_type": "noop", "task_data": {}}
        ) as response:
            status, retry_after, body = (
                response.status,
                response.headers.get("Retry-After"),
                await response.json(),
            )
    finally:
        await redis.config_set("maxmemory", 0)

    assert status == 503
    assert body["error"] == "service_unavailable"
    assert body["message"].startswith("Task storage is full")
    assert retry_after is not None


async def test_a_full_redis_makes_the_service_health_degraded_saying_why(start_service, redis):
    # Redis answers reads and PING while full: the health said "healthy" while every submit was a 503.
    running = await start_service()
    await fill_up(redis)
    try:
        async with running.client.get("/api/v1/health") as response:
            status, full = response.status, await response.json()
    finally:
        await redis.config_set("maxmemory", 0)
    async with running.client.get("/api/v1/health") as response:
        after = await response.json()

    assert (status, full["status"], full["redis_status"]) == (200, "degraded", "connected")
    assert full["redis_note"] == (
        "Redis refuses writes (Redis: it is full (maxmemory reached, policy noeviction)): submits answer "
        "503 and task outcomes wait until it takes them again; see /api/v1/tasks/health"
    )
    assert "redis_note" not in after  # (its status waits for the workers' next beats, refused meanwhile)


@pytest.mark.parametrize(
    ("used", "expected"),
    [(0, None), (799, None), (800, "warning"), (949, "warning"), (950, "critical"), (1200, "critical")],
)
def test_redis_memory_alert_thresholds(used, expected):
    alerts = redis_memory_alerts(used, 1000)

    assert [alert.severity for alert in alerts] == ([expected] if expected else [])


def test_no_redis_memory_alert_without_a_maxmemory():
    assert redis_memory_alerts(10 * 1024**3, 0) == []


async def test_queue_health_warns_before_redis_is_full(start_service, redis):
    running = await start_service(workers=False)
    # Ballast, so that what the request itself allocates moves the share by well under a percent.
    for i in range(320):
        await redis.set(f"ballast:{i}", b"x" * 65536)
    used = (await redis.info("memory"))["used_memory"]
    await redis.config_set("maxmemory", int(used / 0.87))
    try:
        async with running.client.get("/api/v1/tasks/health") as response:
            body = await response.json()
    finally:
        await redis.config_set("maxmemory", 0)

    alerts = [alert for alert in body["alerts"] if alert["metric"] == "redis_memory"]
    assert body["status"] == "warning"
    assert len(alerts) == 1
    assert alerts[0]["severity"] == "warning"
    assert 80 <= alerts[0]["value"] < 95
    assert "Redis memory at" in alerts[0]["message"]


async def test_metrics_expose_redis_memory_and_its_limit(start_service, redis):
    running = await start_service(workers=False)
    await redis.config_set("maxmemory", 512 * 1024**2)
    try:
        async with aiohttp.ClientSession() as client, client.get(f"{running.base_url}/metrics") as response:
            text = await response.text()
    finally:
        await redis.config_set("maxmemory", 0)

    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("taskd_redis_memory"))
    assert float(lines["taskd_redis_memory_max_bytes"]) == 512 * 1024**2
    assert float(lines["taskd_redis_memory_used_bytes"]) > 0


async def test_queue_health_warns_of_a_redis_that_evicts_keys_when_full(start_service, redis):
    running = await start_service(workers=False)
    await redis.config_set("maxmemory-policy", "allkeys-lru")
    try:
        async with running.client.get("/api/v1/tasks/health") as response:
            body = await response.json()
    finally:
        await redis.config_set("maxmemory-policy", "noeviction")

    alerts = [alert for alert in body["alerts"] if alert["metric"] == "redis_eviction"]
    assert body["status"] == "warning"
    assert [alert["severity"] for alert in alerts] == ["warning"]
    assert alerts[0]["message"].startswith(
        "Redis maxmemory-policy is allkeys-lru: once at its maxmemory it drops keys"
    )


async def test_a_start_on_a_redis_that_evicts_keys_when_full_warns_of_it(start_service, redis, caplog):
    await redis.config_set("maxmemory-policy", "volatile-lru")
    try:
        with caplog.at_level(logging.WARNING, logger="taskd"):
            await start_service(workers=False)
    finally:
        await redis.config_set("maxmemory-policy", "noeviction")

    warned = [record.getMessage() for record in caplog.records if "maxmemory-policy" in record.getMessage()]
    assert len(warned) == 1
    assert warned[0].startswith("Redis maxmemory-policy is volatile-lru: once at its maxmemory it drops keys")
