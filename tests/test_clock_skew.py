"""taskd processes on hosts whose clocks disagree: every process follows Redis's clock (taskd.clock).

The API is a Service in the test's process (its clock is Redis's: same host); the worker is a
`taskd worker` child whose `time.time()` is shifted by a `sitecustomize` put first on its path,
as a host whose clock is minutes off would be.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import child_env

from taskd import clock, keys, model
from taskd.engine.scheduled import ScheduledRelease

SKEW_S = 600.0


def skewed_worker(spawn_taskd, tmp_path: Path, valkey_url: str, skew: float):
    """A `taskd worker` child on the test's Valkey whose wall clock is `skew` seconds off."""
    site = tmp_path / f"skew{skew:+.0f}"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        f"import time\n_wall = time.time\ntime.time = lambda: _wall() + {skew!r}\n"
    )
    env = child_env(tmp_path / f"worker{skew:+.0f}", TASKD_REDIS__URL=valkey_url, PYTHONPATH=str(site))
    return spawn_taskd("worker", env=env, wait_listening=False)


async def wait_for_a_worker(redis) -> None:
    """Until a worker's heartbeat key is in Redis."""
    async with asyncio.timeout(30):
        while not [key async for key in redis.scan_iter(match=keys.worker("") + "*")]:
            await asyncio.sleep(0.1)


async def test_a_worker_whose_clock_is_behind_starts_a_low_priority_task_at_once(
    start_service, spawn_taskd, tmp_path, valkey_url, redis
):
    api = await start_service(workers=False)
    skewed_worker(spawn_taskd, tmp_path, valkey_url, -SKEW_S)
    await wait_for_a_worker(redis)
    task = await api.submit("noop", {}, priority=model.PRIORITY_LOW)
    # Its job's score was the API's now; on its own clock the worker took it for 10 minutes ahead.
    assert (await api.wait_terminal(task["task_id"], timeout=15))["status"] == "completed"


async def test_a_worker_whose_clock_is_behind_is_counted_live(
    start_service, spawn_taskd, tmp_path, valkey_url, redis
):
    api = await start_service(workers=False)
    skewed_worker(spawn_taskd, tmp_path, valkey_url, -SKEW_S)
    await wait_for_a_worker(redis)
    async with api.client.get("/api/v1/health") as response:
        health = await response.json()
    assert (health["status"], health["worker_count"]) == ("healthy", 1)


async def test_a_worker_whose_clock_is_ahead_does_not_start_a_scheduled_task_early(
    start_service, spawn_taskd, tmp_path, valkey_url, redis, monkeypatch
):
    # Only the skewed worker releases due tasks: the API in this process looks for none.
    monkeypatch.setattr(ScheduledRelease, "run", lambda _: asyncio.sleep(0))
    api = await start_service(workers=False)
    task = await api.submit("noop", {}, delay_seconds=120)
    soon = await api.submit("noop", {}, delay_seconds=1)
    skewed_worker(spawn_taskd, tmp_path, valkey_url, SKEW_S)
    await wait_for_a_worker(redis)
    # The worker's looks for due tasks have run: one released the task due in a second.
    assert (await api.wait_terminal(soon["task_id"], timeout=30))["status"] == "completed"
    status = await api.status(task["task_id"])
    assert (status["status"], status["attempt"]) == ("queued", 0)
    assert status["scheduled_for"] is not None


async def test_a_host_clock_off_by_a_few_milliseconds_is_left_as_it_is(redis, monkeypatch):
    wall = clock.time.time
    monkeypatch.setattr(clock.time, "time", lambda: wall() - clock.AGREE_S / 2)
    monkeypatch.setattr(model, "_clock_offset", 0.0)
    await clock.RedisClock(redis).follow()
    assert model._clock_offset == 0.0


@pytest.mark.parametrize("skew", [-SKEW_S, SKEW_S])
async def test_now_follows_redis_clock_whatever_the_host_clock_says(redis, monkeypatch, skew):
    wall = clock.time.time
    monkeypatch.setattr(clock.time, "time", lambda: wall() + skew)
    monkeypatch.setattr(model, "_clock_offset", 0.0)
    await clock.RedisClock(redis).follow()
    seconds, micros = await redis.time()
    assert abs(model.now() - (seconds + micros / 1_000_000)) < 0.5


class SlowTime:
    """A Redis whose TIME answers `delay` seconds late, as a loaded server or network would."""

    def __init__(self, redis, delay: float) -> None:
        self.redis, self.delay = redis, delay

    async def time(self):
        answer = await self.redis.time()
        await asyncio.sleep(self.delay)
        return answer


class PromptTime:
    """A Redis whose TIME is this host's true wall clock, answered without a round trip: the
    measures' own wobble (a loaded machine's scheduling between the send and the answer, ms at a
    time) is left out of a test of what the clock does with a difference that moves."""

    def __init__(self, wall) -> None:
        self.wall = wall

    async def time(self):
        now = self.wall()
        return int(now), int(now % 1 * 1_000_000)


async def test_a_slow_first_measure_is_followed_rather_than_the_host_clock(redis, monkeypatch):
    wall = clock.time.time
    monkeypatch.setattr(clock.time, "time", lambda: wall() + SKEW_S)
    monkeypatch.setattr(model, "_clock_offset", 0.0)

    await clock.RedisClock(SlowTime(redis, clock.MAX_ROUND_TRIP_S * 2)).follow()

    seconds, micros = await redis.time()
    assert abs(model.now() - (seconds + micros / 1_000_000)) < clock.MAX_ROUND_TRIP_S * 2


async def test_a_slow_measure_after_the_first_keeps_the_difference_followed(redis, monkeypatch):
    wall = clock.time.time
    monkeypatch.setattr(clock.time, "time", lambda: wall() + SKEW_S)
    monkeypatch.setattr(model, "_clock_offset", 0.0)
    following = clock.RedisClock(redis)
    await following.follow()
    followed = model._clock_offset

    following.redis = SlowTime(redis, clock.MAX_ROUND_TRIP_S * 2)
    await following.follow()

    assert model._clock_offset == followed


async def test_a_difference_that_moves_within_the_measures_error_is_kept_as_it_is(monkeypatch):
    # Each measure wobbles by its round trip: followed each time, a task's end could precede its start.
    skew = [SKEW_S]
    wall = clock.time.time
    monkeypatch.setattr(clock.time, "time", lambda: wall() + skew[0])
    monkeypatch.setattr(model, "_clock_offset", 0.0)
    following = clock.RedisClock(PromptTime(wall))
    await following.follow()
    followed = model._clock_offset

    skew[0] += clock.AGREE_S / 2
    await following.follow()

    assert model._clock_offset == followed
