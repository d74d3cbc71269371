"""Outcomes that tell the truth (issue 15, item 4): an evaluation nobody made fails, retries are
spread by full jitter, and a result over the size limit fails its task."""

from __future__ import annotations

import orjson
from examples import TASK_DATA

from taskd import keys
from taskd.backoff import retry_delay
from taskd.config import Config, ExecutionConfig, RetryConfig
from taskd.engine.jobproc.child import MAX_RESULT

MIB = 1024 * 1024
FILLER_OVERHEAD = len(orjson.dumps({"filler": ""}))  # what support_tasks' big results add to their filler
# The test config's fast shutdown and reclaim (conftest.make_config), with a 1000-byte result limit.
SMALL_RESULTS = ExecutionConfig(cancel_grace=2, reclaim_interval=0.5, shutdown_grace=2, result_max_bytes=1000)


# evaluate_department through the API: a failed task, never a completed made-up verdict


async def test_evaluation_refused_with_401_fails_at_once_without_a_result(start_service, fake_llm):
    service = await start_service(llm_url=fake_llm.base_url, retry=RetryConfig(base_delay=0.05))
    fake_llm.fail(401, "Incorrect API key provided")
    task = await service.submit("evaluate_department", TASK_DATA["evaluate_department"])

    body = await service.wait_terminal(task["task_id"])

    assert (body["status"], body["attempt"], body["result"]) == ("failed", 1, None)
    assert body["error"] == (
        "Evaluation could not be made: LLM provider returned HTTP 401: Incorrect API key provided"
    )
    assert len(fake_llm.requests) == 1


async def test_evaluation_answered_without_a_rating_fails_without_a_result(start_service, fake_llm):
    service = await start_service(llm_url=fake_llm.base_url, retry=RetryConfig(base_delay=0.05))
    fake_llm.reply('{"summary": "Looks good to me", "issues": []}')
    task = await service.submit("evaluate_department", TASK_DATA["evaluate_department"])

    body = await service.wait_terminal(task["task_id"])

    assert (body["status"], body["result"]) == ("failed", None)
    assert body["error"].startswith(
        "Evaluation could not be made: the LLM's answer has no rating from 0 to 100"
    )


# Retries: the documented waits are upper bounds of a random wait ("full jitter")


def test_retry_waits_are_drawn_below_the_documented_60_120_240_s():
    for attempt, bound in ((1, 60.0), (2, 120.0), (3, 240.0)):
        drawn = [retry_delay(attempt, 60.0, RetryConfig().max_delay) for _ in range(500)]

        assert all(0.0 < delay <= bound for delay in drawn)
        assert len(set(drawn)) > 1


def test_retry_waits_spread_over_the_whole_window_not_around_the_bound():
    # Full jitter, not ±20 %: waits come from the whole of (0, 60], short ones included.
    drawn = [retry_delay(1, 60.0, RetryConfig().max_delay) for _ in range(2000)]

    assert min(drawn) < 6.0
    assert max(drawn) > 54.0


async def test_tasks_failing_together_are_requeued_at_different_times_within_the_bound(start_service, redis):
    service = await start_service(retry=RetryConfig(base_delay=30))
    ids = [
        (await service.submit("fail", {"transient": True, "message": "provider down"}))["task_id"]
        for _ in range(4)
    ]
    delays = []
    for task_id in ids:
        await service.wait_for(task_id, lambda body: body.get("last_error") == "provider down")
        failed_at, retry_at, job_id = await redis.hmget(
            keys.task(task_id), "updated_at", "next_retry_at", "job_id"
        )
        # Its own score: all four are one project's, so only the first due is on arq's set (issue 16,
        # fair turns); each waits in the queue's line (taskd:waiting:{queue}) by its own score.
        score = await redis.zscore(keys.waiting("default"), job_id)

        # The queue score (ms) is when the worker may take the task again: within (failure, failure + 30 s].
        assert float(failed_at) * 1000 - 1 <= score <= (float(failed_at) + 30) * 1000
        assert float(retry_at) == score / 1000
        delays.append(score / 1000 - float(failed_at))

    assert len({round(delay, 3) for delay in delays}) > 1


# The result size limit (execution.result_max_bytes, default 1 MiB of JSON)


def test_the_default_result_limit_is_one_mebibyte_of_json():
    assert Config().execution.result_max_bytes == MIB


async def test_a_result_one_byte_over_the_default_limit_fails_naming_the_limit(start_service):
    service = await start_service()
    task = await service.submit("big_result", {"characters": MIB - FILLER_OVERHEAD + 1})

    body = await service.wait_terminal(task["task_id"])

    assert (body["status"], body["result"]) == ("failed", None)
    assert body["error"] == (
        f"Task returned a result of {MIB + 1} bytes of JSON, over the limit of {MIB} bytes "
        "(execution.result_max_bytes)"
    )


async def test_a_result_of_exactly_the_default_limit_completes(start_service):
    service = await start_service()
    task = await service.submit("big_result", {"characters": MIB - FILLER_OVERHEAD})

    body = await service.wait_terminal(task["task_id"])

    assert body["status"] == "completed"
    assert len(orjson.dumps(body["result"])) == MIB


async def test_a_job_process_result_over_a_configured_limit_fails_too(start_service):
    service = await start_service(execution=SMALL_RESULTS)
    task = await service.submit("big_result_in_process", {"characters": 2000})

    body = await service.wait_terminal(task["task_id"])

    assert body["status"] == "failed"
    assert body["error"] == (
        f"Task returned a result of {2000 + FILLER_OVERHEAD} bytes of JSON, over the limit of 1000 bytes "
        "(execution.result_max_bytes)"
    )


async def test_a_small_result_under_a_configured_limit_completes(start_service):
    service = await start_service(execution=SMALL_RESULTS)
    task = await service.submit("big_result_in_process", {"characters": 10})

    body = await service.wait_terminal(task["task_id"])

    assert (body["status"], body["result"]) == ("completed", {"filler": "x" * 10})


async def test_a_job_process_result_larger_than_a_frame_fails_at_once_naming_the_limit(start_service):
    service = await start_service()
    characters = 65 * MIB  # past the 64 MiB a frame from a job process may hold
    task = await service.submit("big_result_in_process", {"characters": characters})

    body = await service.wait_terminal(task["task_id"], timeout=60)

    assert (body["status"], body["attempt"]) == ("failed", 1)
    assert body["error"] == (
        f"Task returned a result of {characters + FILLER_OVERHEAD} bytes of JSON, over the limit of {MIB} bytes "
        "(execution.result_max_bytes)"
    )


async def test_a_job_process_result_that_is_not_json_fails_saying_so(start_service):
    service = await start_service()
    task = await service.submit("not_json_result_in_process", {})

    body = await service.wait_terminal(task["task_id"])

    assert (body["status"], body["attempt"]) == ("failed", 1)
    assert body["error"] == "Task returned a result that is not JSON: Type is not JSON serializable: object"


async def test_a_job_process_result_under_a_configured_limit_but_over_a_frame_fails_at_once(start_service):
    # A limit above the 64 MiB a frame from a job process may hold: such a result cannot come back
    # from the job process, whatever the limit; it fails its task once, saying why.
    limit = 100 * MIB
    service = await start_service(
        execution=ExecutionConfig(
            cancel_grace=2, reclaim_interval=0.5, shutdown_grace=2, result_max_bytes=limit
        )
    )
    task = await service.submit("big_result_in_process", {"characters": 65 * MIB})

    body = await service.wait_terminal(task["task_id"], timeout=60)

    assert (body["status"], body["attempt"]) == ("failed", 1), body
    assert body["error"] == (
        f"Task returned a result of {65 * MIB + FILLER_OVERHEAD} bytes of JSON, over the limit of "
        f"{MAX_RESULT} bytes (the most a job process can send)"
    )
