"""Automatic retries with backoff for transient errors only; the attempt and last error are visible."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from examples import TASK_DATA

from taskd import backoff as backoff_module
from taskd import keys
from taskd.config import RetryConfig


async def metrics(service) -> dict:
    async with service.client.get("/api/v1/tasks/metrics") as response:
        return (await response.json())["metrics"]


async def test_transient_failures_are_retried_until_the_task_succeeds(start_service):
    service = await start_service(retry=RetryConfig(base_delay=0.1))
    task = await service.submit("fail", {"transient": True, "fail_times": 2})

    body = await service.wait_terminal(task["task_id"])

    assert body["status"] == "completed"
    assert body["attempt"] == 3
    assert body["result"] == {"succeeded_on_attempt": 3}
    assert (await metrics(service))["retried_tasks"] == 2


async def test_transient_failure_fails_for_good_after_three_retries(start_service):
    service = await start_service(retry=RetryConfig(base_delay=0.05))
    task = await service.submit("fail", {"transient": True, "message": "provider down"})

    body = await service.wait_terminal(task["task_id"])

    assert body["status"] == "failed"
    assert body["attempt"] == 4
    assert body["error"] == "provider down"
    assert (await metrics(service))["retried_tasks"] == 3
    assert (await metrics(service))["failed_tasks"] == 1


async def test_non_transient_error_fails_at_once(start_service):
    service = await start_service(retry=RetryConfig(base_delay=0.05))
    task = await service.submit("fail", {"message": "bad scene description"})

    body = await service.wait_terminal(task["task_id"])

    assert (body["status"], body["attempt"], body["error"]) == ("failed", 1, "bad scene description")
    assert (await metrics(service))["retried_tasks"] == 0


async def test_an_errors_text_is_kept_to_its_start_and_end_when_it_is_long(start_service):
    service = await start_service()
    task = await service.submit("fail", {"message": "first words " + "x" * 100_000 + " last words"})

    body = await service.wait_terminal(task["task_id"])

    assert body["error"].startswith("first words ") and body["error"].endswith(" last words")
    assert "(96023 characters cut)" in body["error"]
    assert len(body["error"]) < 4_100
    assert len(body["traceback"]) < 32_100


async def test_waiting_retry_shows_attempt_last_error_and_when(start_service):
    service = await start_service(retry=RetryConfig(base_delay=30))
    task = await service.submit("fail", {"transient": True, "message": "rate limited"})

    body = await service.wait_for(task["task_id"], lambda b: b.get("last_error") == "rate limited")

    assert body["status"] == "queued"
    assert body["attempt"] == 1
    assert body["next_retry_at"] is not None
    assert body["error"] is None


async def test_retry_waits_double_from_the_base_delay(start_service, redis, monkeypatch):
    # Full jitter draws each wait at random below its bound (tests/test_truthful_outcomes.py checks
    # the draws); here every draw is the longest, so the bounds themselves are what is scheduled and
    # no wait is too short for the poll below to see.
    monkeypatch.setattr(backoff_module, "random", SimpleNamespace(random=lambda: 0.0))
    service = await start_service(retry=RetryConfig(base_delay=0.4))
    task = await service.submit("fail", {"transient": True, "fail_times": 2})
    schedule = await _retry_schedule(redis, task["task_id"], 2)

    delays = [retry_at - failed_at for failed_at, retry_at in (schedule[1], schedule[2])]
    assert delays == [pytest.approx(0.4, abs=0.01), pytest.approx(0.8, abs=0.01)]


async def test_retry_waits_double_no_further_than_max_delay(start_service, redis, monkeypatch):
    # Every draw the longest, as above: the third wait's bound would be 1.6 s, the fourth's 3.2 s.
    monkeypatch.setattr(backoff_module, "random", SimpleNamespace(random=lambda: 0.0))
    service = await start_service(retry=RetryConfig(base_delay=0.4, max_delay=0.5, max_retries=4))
    task = await service.submit("fail", {"transient": True, "fail_times": 4})
    schedule = await _retry_schedule(redis, task["task_id"], 4)

    delays = [retry_at - failed_at for failed_at, retry_at in (schedule[n] for n in range(1, 5))]
    assert delays == [pytest.approx(bound, abs=0.01) for bound in (0.4, 0.5, 0.5, 0.5)]


async def test_provider_rate_limit_is_retried(start_service, fake_llm):
    service = await start_service(llm_url=fake_llm.base_url, retry=RetryConfig(base_delay=0.05))
    fake_llm.fail(429, "slow down")
    fake_llm.reply("second time lucky")
    task = await service.submit("test_prompt", TASK_DATA["test_prompt"])

    body = await service.wait_terminal(task["task_id"])

    assert body["status"] == "completed"
    assert body["attempt"] == 2
    assert body["result"]["response"] == "second time lucky"


async def test_provider_auth_failure_is_not_retried(start_service, fake_llm):
    service = await start_service(llm_url=fake_llm.base_url, retry=RetryConfig(base_delay=0.05))
    fake_llm.fail(401, "bad key")
    task = await service.submit("test_prompt", TASK_DATA["test_prompt"])

    body = await service.wait_terminal(task["task_id"])

    assert (body["status"], body["attempt"]) == ("failed", 1)
    assert len(fake_llm.requests) == 1


async def test_evaluation_fails_once_the_retries_of_a_failing_provider_run_out(start_service, fake_llm):
    # The issue 15 behaviour: no made-up "AI service failure" rating once the retries are used up.
    service = await start_service(
        llm_url=fake_llm.base_url, retry=RetryConfig(base_delay=0.05, max_retries=1)
    )
    fake_llm.fail(500, "upstream exploded")
    fake_llm.fail(500, "upstream exploded")
    task = await service.submit("evaluate_department", TASK_DATA["evaluate_department"])

    body = await service.wait_terminal(task["task_id"])

    assert (body["status"], body["attempt"], body["result"]) == ("failed", 2, None)
    assert body["error"] == "Evaluation could not be made: LLM provider returned HTTP 500: upstream exploded"
    assert len(fake_llm.requests) == 2


async def test_a_run_handed_back_at_a_stop_spends_none_of_the_tasks_automatic_retries(start_service):
    # Its first run is cut short by the worker's stop (handed back): not the task's failure. Its
    # later runs' transient errors still get retry.max_retries (3) retries, as any task's do.
    first = await start_service(retry=RetryConfig(base_delay=0.05))
    task_id = (await first.submit("long_first_run_then_transient", {}))["task_id"]
    await first.wait_for(task_id, lambda b: b["status"] == "processing")
    await first.service.stop(grace=0.2)
    second = await start_service(retry=RetryConfig(base_delay=0.05))

    body = await second.wait_terminal(task_id)

    assert (body["status"], body["attempt"]) == ("failed", 5)
    assert body["error"] == "provider down (attempt 5, final True)"
    assert (await metrics(second))["retried_tasks"] == 3


@pytest.mark.parametrize("runs_made", [1, 3])
async def test_a_record_stored_before_retries_were_counted_has_its_runs_taken_for_its_retries(
    start_service, redis, runs_made
):
    # A task queued by a version that bounded retries by `attempt` alone: runs made, no `retries`.
    # It fails at its 4th run, as it would have there, after the retries it had left.
    api_only = await start_service(workers=False)
    task_id = (await api_only.submit("fail", {"transient": True, "message": "provider down"}))["task_id"]
    await redis.hset(keys.task(task_id), "attempt", runs_made)
    await redis.hdel(keys.task(task_id), "retries")
    await start_service(http=False, retry=RetryConfig(base_delay=0.05))

    body = await api_only.wait_terminal(task_id)

    assert (body["status"], body["attempt"]) == ("failed", 4)
    assert (await metrics(api_only))["retried_tasks"] == 3 - runs_made


async def test_a_record_stored_before_retries_were_counted_spends_none_on_a_later_hand_back(
    start_service, redis
):
    # Queued by a version that did not count retries (no `retries`) and not run yet: its first run
    # here, handed back at a stop, spends none of its retries either; 3 are left for its errors.
    api_only = await start_service(workers=False)
    task_id = (await api_only.submit("long_first_run_then_transient", {}))["task_id"]
    await redis.hdel(keys.task(task_id), "retries")
    first = await start_service(http=False, retry=RetryConfig(base_delay=0.05))
    await api_only.wait_for(task_id, lambda b: b["status"] == "processing")
    await first.service.stop(grace=0.2)
    await start_service(http=False, retry=RetryConfig(base_delay=0.05))

    body = await api_only.wait_terminal(task_id)

    assert (body["status"], body["attempt"]) == ("failed", 5)
    assert (await metrics(api_only))["retried_tasks"] == 3


async def _retry_schedule(redis, task_id: str, retries: int) -> dict[int, tuple[float, float]]:
    """For each of the task's first `retries` failed attempts: when it failed and when its retry is
    due, read off the record as each retry is scheduled."""
    schedule: dict[int, tuple[float, float]] = {}
    async with asyncio.timeout(20):
        while len(schedule) < retries:
            attempt, failed_at, retry_at = await redis.hmget(
                keys.task(task_id), "attempt", "updated_at", "next_retry_at"
            )
            if retry_at is not None:
                schedule[int(attempt)] = (float(failed_at), float(retry_at))
            await asyncio.sleep(0.01)
    return schedule
