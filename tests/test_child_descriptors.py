"""No child of a running `taskd serve` holds an open file it was not given: not one taskd itself
inherited from whoever started it, and not a job-process template's channels to its worker."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import psutil
import pytest
from conftest import API_KEY, TEST_TASK_MODULES, child_env

from taskd.embedded import PIDFILE, SUBDIR
from taskd.sync_client import SyncTaskClient
from taskd.tasks.diagnostics import marker_path

START_TIMEOUT = 60.0


@attrs.frozen
class Children:
    pids: dict[str, int]  # the pid of each kind of child of the serve
    inherited: str  # the pipe the serve was started holding, as /proc/PID/fd names it


@pytest.fixture(scope="module")
def children(module_spawn_taskd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Children]:
    """A `taskd serve` started holding an inheritable pipe end, running a job process (`cpu`) and a
    tool child (`tool_child`)."""
    data_dir = tmp_path_factory.mktemp("data")
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    try:
        env = child_env(data_dir, TASKD_TASKS__MODULES=",".join(TEST_TASK_MODULES))
        serve = module_spawn_taskd("serve", env=env, pass_fds=(write_end,))
        assert serve.base_url is not None
        with SyncTaskClient(serve.base_url, API_KEY) as client:
            cpu = client.submit("p", "cpu", {"seconds": 300}).task_id
            tool = client.submit("p", "tool_child", {}).task_id
        job_process = int(_marker(data_dir, cpu, "started"))
        pids = {
            "valkey": int((data_dir / SUBDIR / PIDFILE).read_text()),
            "template": psutil.Process(job_process).ppid(),
            "job process": job_process,
            "tool child": int(_marker(data_dir, tool, "child_started")),
        }
        yield Children(pids, f"pipe:[{os.fstat(write_end).st_ino}]")
    finally:
        os.close(read_end)
        os.close(write_end)


def test_no_child_holds_a_descriptor_taskd_inherited_from_its_parent(children):
    holding = [
        kind for kind, pid in children.pids.items() if children.inherited in _descriptors(pid).values()
    ]

    assert holding == []


def test_a_job_process_holds_no_socket_of_its_templates_channels(children):
    held = _descriptors(children.pids["job process"]).values()

    assert [target for target in held if target.startswith("socket:")] == []


def test_a_tool_child_holds_only_its_stdin_stdout_and_stderr(children):
    assert sorted(_descriptors(children.pids["tool child"])) == [0, 1, 2]


def _marker(data_dir: Path, task_id: str, event: str) -> str:
    path = marker_path(data_dir, task_id, event)
    deadline = time.monotonic() + START_TIMEOUT
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"no {event} marker for {task_id}"
        time.sleep(0.05)
    return path.read_text()


def _descriptors(pid: int) -> dict[int, str]:
    """Each open descriptor of `pid` and what it points to (`pipe:[inode]`, `socket:[inode]`, a path)."""
    found = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            continue  # closed between the listing and the look
    return found
