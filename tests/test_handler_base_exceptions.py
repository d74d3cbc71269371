"""A handler that raises a BaseException that is not an Exception (SystemExit, KeyboardInterrupt,
GeneratorExit, BaseException, taskd's Cancelled) fails its task like any other error, and its worker
goes on taking work."""

from __future__ import annotations

import io

import pytest
import support_tasks
from conftest import make_config

from taskd.engine.jobproc import child
from taskd.tasks.registry import Registry

BASE_EXCEPTIONS = ["SystemExit", "KeyboardInterrupt", "GeneratorExit", "BaseException", "Cancelled"]


@pytest.mark.parametrize("exception", BASE_EXCEPTIONS)
async def test_a_coroutine_handler_raising_a_base_exception_fails_its_task_and_the_queue_runs_on(
    start_service, exception
):
    service = await start_service()
    task = await service.submit("raise_base_exception", {"exception": exception})

    body = await service.wait_terminal(task["task_id"])
    after = await service.wait_terminal((await service.submit("noop", {}))["task_id"])

    assert (body["status"], body["attempt"]) == ("failed", 1), body
    assert body["error"].startswith(f"Task execution failed: {exception}"), body["error"]
    assert after["status"] == "completed", after


@pytest.mark.parametrize("exception", BASE_EXCEPTIONS)
async def test_a_job_process_handler_raising_a_base_exception_fails_its_task_naming_it(
    start_service, exception
):
    service = await start_service()
    task = await service.submit("raise_base_exception_in_process", {"exception": exception})

    body = await service.wait_terminal(task["task_id"])

    assert (body["status"], body["attempt"]) == ("failed", 1), body
    assert body["error"].startswith(exception), body["error"]


def test_a_job_process_that_swallowed_an_earlier_cancel_still_fails_a_handler_raising_cancelled(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    # A cancel's SIGTERM a handler caught and returned from leaves the job process in service.
    monkeypatch.setattr(child._State, "cancelled", True)
    request = {
        "task_type": "raise_base_exception_in_process",
        "task_data": {"exception": "Cancelled"},
        "task_id": "t1",
        "project_id": "p",
        "attempt": 1,
        "max_attempts": 4,
        "metadata": {},
    }

    answer = child._run_one(
        request, make_config(tmp_path, "redis://unused"), Registry(support_tasks.TASKS), io.BytesIO()
    )

    assert (answer["op"], answer["kind"]) == ("error", "exception")
    assert "Cancelled raised by the handler" in answer["error"]
