"""A handler that raises a BaseException that is not an Exception (SystemExit, KeyboardInterrupt,
GeneratorExit, BaseException, taskd's Cancelled) fails its task like any other error, and its worker
goes on taking work."""

from __future__ import annotations

import asyncio
import gc
import io
import sys

import pytest
import support_tasks
from conftest import make_config
from support_tasks import AnythingInput

from taskd.engine.executor import Executor, _Running
from taskd.engine.jobproc import child
from taskd.model import TaskRecord, TaskStatus
from taskd.tasks.registry import Registry
from taskd.tasks.spec import TaskContext, TaskType

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


async def test_a_coroutine_handler_raising_cancelled_error_itself_fails_its_task(start_service):
    # Nobody cancelled it: a CancelledError of the handler's own (a timeout it mishandled, a
    # library's) is its failure, not a cancel that the record would have said.
    service = await start_service()
    task = await service.submit("raise_base_exception", {"exception": "CancelledError"})

    body = await service.wait_terminal(task["task_id"], timeout=15)

    assert (body["status"], body["attempt"]) == ("failed", 1), body
    assert body["error"].startswith("Task execution failed: CancelledError"), body["error"]


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


def test_a_coroutine_run_whose_task_is_destroyed_pending_closes_quietly_after_its_handlers_cleanup(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    # Its loop closed under it, a pending task is destroyed, and its coroutine closed: GeneratorExit
    # at the handler's await, which must end the run, not fail it (the GeneratorExit a handler raises
    # itself, above, fails its task).
    cleaned: list[str] = []
    waiting = asyncio.Event()

    async def handler(_: TaskContext, __: AnythingInput) -> None:
        try:
            waiting.set()
            await asyncio.sleep(3600)
        finally:
            cleaned.append("cleaned")

    unraisable: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda report: unraisable.append(report.exc_value))
    task_type = TaskType("wait", AnythingInput, queue="default", expected_duration=1.0, handler=handler)
    config = make_config(tmp_path, "redis://unused")
    # A run in the loop touches none of the store, the queue, the HTTP session or the job processes.
    executor = Executor(None, None, Registry([task_type]), config, None, "worker-1", None)
    record = TaskRecord("t1", "p", "wait", "default", {}, status=TaskStatus.PROCESSING)
    loop = asyncio.new_event_loop()
    run = loop.create_task(executor._in_loop(record, task_type, AnythingInput(), _Running(), None))
    loop.run_until_complete(waiting.wait())
    loop.close()
    del run
    gc.collect()

    assert cleaned == ["cleaned"]
    assert unraisable == []


@pytest.mark.parametrize("task_type", ["raise_unprintable", "raise_unprintable_in_process"])
async def test_a_handler_exception_whose_str_raises_fails_its_task_at_once_naming_its_type(
    start_service, task_type
):
    # Its __str__ raised inside taskd's handling: in the loop the run failed on taskd's side and
    # was retried as taskd's failure, in a job process the process died ("exit status 1").
    service = await start_service()
    task = await service.submit(task_type, {})

    body = await service.wait_terminal(task["task_id"])

    assert (body["status"], body["attempt"]) == ("failed", 1), body
    assert "Unprintable: <str() of the exception failed: ValueError>" in body["error"], body["error"]


async def test_a_job_process_handler_exception_longer_than_a_frame_fails_its_task_with_its_message_cut(
    start_service,
):
    # 40 MiB of message and as much of traceback: over the 64 MiB a frame carries, the worker's
    # reader refused the frame, and the run failed on taskd's side, 4 times, a traceback logged each.
    service = await start_service()
    task = await service.submit("raise_unprintable_in_process", {"megabytes": 40})

    body = await service.wait_terminal(task["task_id"], timeout=60)

    assert (body["status"], body["attempt"]) == ("failed", 1), body
    assert body["error"].startswith("RuntimeError: mmmm"), body["error"][:200]
    assert "characters cut" in body["error"]
