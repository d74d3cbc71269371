"""What a handler changes in its process (the current directory, the environment, signal handlers,
sys.stdout) does not change how later tasks run."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
from conftest import is_running

from taskd.engine import loopwatch
from taskd.tasks.diagnostics import marker_path


async def test_a_coroutine_handlers_chdir_does_not_move_the_data_dir_of_later_tasks(
    start_service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # The default data_dir is relative ("data"): read again at each use, it followed the worker's
    # current directory, and every later task stored its media, scratch and markers elsewhere.
    monkeypatch.chdir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    service = await start_service(data_dir="data")
    moved = await service.submit("chdir", {"path": str(elsewhere)})
    assert (await service.wait_terminal(moved["task_id"]))["status"] == "completed"

    task = await service.submit("sleep", {"seconds": 0})
    body = await service.wait_terminal(task["task_id"])

    assert body["status"] == "completed", body
    assert marker_path(tmp_path / "data", task["task_id"], "started").exists()


@pytest.mark.parametrize("what", ["environ", "cwd", "sigterm", "stdout"])
async def test_what_a_plain_handler_changes_in_its_job_process_is_undone_before_the_next_task(
    start_service, what
):
    # The next task of that job process, maybe another project's, inherited it: a key left in the
    # environment, another directory, SIGTERM ignored (its cancel then skipped its cleanup).
    service = await start_service()
    changed = await service.wait_terminal(
        (await service.submit("change_state_in_process", {"what": what}))["task_id"]
    )
    before = await service.wait_terminal((await service.submit("show_state_in_process", {}))["task_id"])
    assert before["status"] == "completed", before

    shown = before["result"]

    assert shown["pid"] == changed["result"]["pid"]  # the same job process ran both
    assert (shown["environ"], shown["cwd"], shown["sigterm"], shown["stdout"]) == (
        False,
        os.getcwd(),
        True,
        True,
    )


async def test_a_coroutine_handler_blocking_the_event_loop_is_named_in_a_warning_while_it_blocks(
    start_service, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    # Nothing said so: the API, the other tasks and the heartbeat stopped, and the process went silent.
    monkeypatch.setattr(loopwatch, "BLOCKED_AFTER", 0.5)
    caplog.set_level(logging.WARNING, logger="taskd.engine")
    service = await start_service()
    task = await service.submit("block_loop", {"seconds": 3})

    body = await service.wait_terminal(task["task_id"])

    assert body["status"] == "completed", body
    [blocked] = [r.getMessage() for r in caplog.records if "event loop blocked" in r.getMessage()]
    assert f"by the handler of task {task['task_id']}" in blocked
    assert "in block_loop" in blocked and "time.sleep" in blocked


async def test_a_job_process_whose_task_left_a_thread_running_is_replaced(start_service):
    # The thread went on beside the process's next tasks, under their limits, until its 10th.
    service = await start_service()
    left = await service.wait_terminal((await service.submit("leave_a_thread_in_process", {}))["task_id"])
    pid = left["result"]["pid"]

    after = await service.wait_terminal((await service.submit("show_state_in_process", {}))["task_id"])

    assert after["result"]["pid"] != pid
    async with asyncio.timeout(10):
        while is_running(pid):
            await asyncio.sleep(0.05)


async def test_a_daemon_thread_a_task_leaves_keeps_its_job_process(start_service):
    # A library's helper (tqdm's monitor) is a daemon started on first use: replacing the process
    # for it would reload the model a handler caches there on every task.
    service = await start_service()
    first = await service.wait_terminal(
        (await service.submit("keep_a_daemon_thread_in_process", {}))["task_id"]
    )

    second = await service.wait_terminal(
        (await service.submit("keep_a_daemon_thread_in_process", {}))["task_id"]
    )

    assert second["result"]["pid"] == first["result"]["pid"]
