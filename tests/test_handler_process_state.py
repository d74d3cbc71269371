"""What a handler changes in its process (the current directory, the environment, signal handlers,
sys.stdout) does not change how later tasks run."""

from __future__ import annotations

from pathlib import Path

import pytest

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
