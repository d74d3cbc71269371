"""The periodic-job helper on its own: interval, error logging, stop event, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

import taskd.loops
from taskd.loops import every

LOGGER = logging.getLogger("taskd.tests.loops")
INTERVAL = 0.02
# asyncio may run a timer up to one clock tick early; nothing here depends on more precision.
TICK = 0.005


class Calls:
    """A job that records when it ran, and what it should do on each call."""

    def __init__(self, stop_after: int | None = None, failures: list[Exception] | None = None) -> None:
        self.times: list[float] = []
        self.stop = asyncio.Event()
        self.started = asyncio.Event()
        self._stop_after = stop_after
        self._failures = list(failures or [])

    async def __call__(self) -> None:
        self.times.append(asyncio.get_running_loop().time())
        self.started.set()
        if self._stop_after is not None and len(self.times) >= self._stop_after:
            self.stop.set()
        if self._failures:
            raise self._failures.pop(0)


def failure_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == LOGGER.name]


async def test_the_job_runs_again_one_interval_after_each_call():
    job = Calls(stop_after=3)

    await every(INTERVAL, job, name="ticker", stop=job.stop, logger=LOGGER)

    gaps = [later - earlier for earlier, later in zip(job.times, job.times[1:], strict=False)]
    assert len(job.times) == 3
    assert all(gap >= INTERVAL - TICK for gap in gaps)


async def test_a_failing_call_is_logged_with_the_loops_name_and_the_loop_goes_on(caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER.name)
    job = Calls(stop_after=3, failures=[RuntimeError("redis went away"), RuntimeError("redis went away")])

    await every(INTERVAL, job, name="heartbeat", stop=job.stop, logger=LOGGER)

    assert len(job.times) == 3
    assert [record.getMessage() for record in failure_records(caplog)] == [
        "heartbeat failed: redis went away",
        "heartbeat failed: redis went away",
    ]


async def test_a_repeated_failure_carries_its_traceback_only_the_first_time(caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER.name)
    job = Calls(stop_after=4, failures=[RuntimeError("down")] * 3)

    await every(INTERVAL, job, name="sweep", stop=job.stop, logger=LOGGER)

    assert [record.exc_info is not None for record in failure_records(caplog)] == [True, False, False]


async def test_a_new_kind_of_failure_carries_its_own_traceback(caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER.name)
    job = Calls(stop_after=4, failures=[RuntimeError("down"), RuntimeError("down"), KeyError("task_id")])

    await every(INTERVAL, job, name="sweep", stop=job.stop, logger=LOGGER)

    assert [record.exc_info is not None for record in failure_records(caplog)] == [True, False, True]


async def test_a_failure_repeating_with_other_numbers_in_its_message_carries_its_traceback_once(caplog):
    # As a heartbeat's while Redis refuses writes: redis-py's error quotes the beat, whose memory
    # reading and time change at every beat.
    caplog.set_level(logging.WARNING, logger=LOGGER.name)
    failures = [
        RuntimeError(
            f"Command # 1 (SET worker {{'rss_bytes': {rss}, 'at': 17964.{rss}}}) caused error: MISCONF"
        )
        for rss in (60051456, 60178432, 61000000)
    ]
    job = Calls(stop_after=4, failures=failures)

    await every(INTERVAL, job, name="heartbeat", stop=job.stop, logger=LOGGER)

    assert [record.exc_info is not None for record in failure_records(caplog)] == [True, False, False]


async def test_a_failure_that_keeps_repeating_shows_its_traceback_again_after_the_quiet_period(
    caplog, monkeypatch
):
    monkeypatch.setattr(taskd.loops, "TRACEBACK_EVERY_S", 0.0)
    caplog.set_level(logging.WARNING, logger=LOGGER.name)
    job = Calls(stop_after=3, failures=[RuntimeError("down")] * 2)

    await every(INTERVAL, job, name="sweep", stop=job.stop, logger=LOGGER)

    assert [record.exc_info is not None for record in failure_records(caplog)] == [True, True]


async def test_setting_the_stop_event_ends_a_wait_at_once():
    job = Calls()
    loop = asyncio.create_task(every(3600, job, name="hourly", stop=job.stop, logger=LOGGER))
    await job.started.wait()

    job.stop.set()
    ended = await loop

    assert ended is None
    assert len(job.times) == 1


async def test_cancelling_the_loop_ends_it_with_cancelled_error():
    job = Calls()
    loop = asyncio.create_task(every(3600, job, name="hourly", logger=LOGGER))
    await job.started.wait()

    loop.cancel()

    with pytest.raises(asyncio.CancelledError):
        await loop
    assert len(job.times) == 1


async def test_a_cancellation_swallowed_inside_the_job_still_ends_the_loop():
    inside = asyncio.Event()
    calls = 0

    async def swallows_the_first_cancellation() -> None:
        nonlocal calls
        calls += 1
        if calls > 1:
            return  # the loop went on after its cancellation: this test fails, and teardown can stop it
        inside.set()
        # What a library does when the cancellation lands at the wrong instant.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)

    loop = asyncio.create_task(
        every(INTERVAL, swallows_the_first_cancellation, name="listener", logger=LOGGER)
    )
    await inside.wait()

    loop.cancel()
    await asyncio.wait([loop], timeout=5)

    assert loop.cancelled()
    assert calls == 1


async def test_wait_first_waits_one_interval_before_the_first_call():
    job = Calls()
    loop = asyncio.create_task(
        every(3600, job, name="reclaim", stop=job.stop, wait_first=True, logger=LOGGER)
    )
    await asyncio.sleep(INTERVAL)

    job.stop.set()
    await loop

    assert job.times == []


async def test_jitter_lengthens_each_wait_by_up_to_its_seconds(monkeypatch):
    monkeypatch.setattr(taskd.loops.random, "uniform", lambda low, high: high)
    job = Calls(stop_after=2)

    await every(INTERVAL, job, name="ticker", jitter=2 * INTERVAL, stop=job.stop, logger=LOGGER)

    assert job.times[1] - job.times[0] >= 3 * INTERVAL - TICK


@pytest.mark.parametrize(("interval", "jitter"), [(0.0, 0.0), (-1.0, 0.0), (1.0, -0.5)])
async def test_a_loop_without_a_positive_interval_is_refused(interval, jitter):
    with pytest.raises(ValueError, match="interval must be > 0"):
        await every(interval, Calls(), name="busy", jitter=jitter, logger=LOGGER)
