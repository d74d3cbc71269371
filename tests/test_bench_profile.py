"""bench/profile.py: what the tables of a profile say, from py-spy's raw (collapsed) stacks, and the
load it profiles.

Running py-spy itself is left to the bench (it is not a dependency of taskd, and needs ptrace).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
PREFIXES = ["/repo/", "/venv/lib/python3.11/site-packages/", "/usr/lib/python3.11/"]
RAW = """\
<module> (/repo/taskd/cli.py:94);run (/usr/lib/python3.11/asyncio/runners.py:118) 50
<module> (/repo/taskd/cli.py:94);submit (/repo/taskd/http/tasks.py:40);submit (/repo/taskd/store/records.py:10);\
execute_command (/venv/lib/python3.11/site-packages/redis/asyncio/client.py:600) 30
<module> (/repo/taskd/cli.py:94);submit (/repo/taskd/http/tasks.py:41) 20
_bootstrap (/usr/lib/python3.11/threading.py:1002);_worker (/usr/lib/python3.11/concurrent/futures/thread.py:81) 40
"""


@pytest.fixture(scope="module")
def profile() -> ModuleType:
    # bench/ is scripts, not a package: load the module by its path. It imports its neighbours, so
    # bench/ is on the path while it loads, and only then (its profile.py would shadow the stdlib's).
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_profile", BENCH / "profile.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_self_shares_count_the_function_on_top_of_each_stack_without_machine_paths(profile: ModuleType):
    found = profile.shares(RAW, PREFIXES, top=5)

    assert found["samples"] == 100
    assert found["functions"] == [
        {"name": "run (asyncio/runners.py)", "share": 0.5},
        {"name": "execute_command (redis/asyncio/client.py)", "share": 0.3},
        {"name": "submit (taskd/http/tasks.py)", "share": 0.2},
    ]
    assert found["packages"] == [
        {"name": "asyncio", "share": 0.5},
        {"name": "redis", "share": 0.3},
        {"name": "taskd", "share": 0.2},
    ]


def test_taskd_total_shares_count_a_function_once_per_stack_below_the_entry_point(profile: ModuleType):
    found = profile.shares(RAW, PREFIXES, top=5)

    # taskd/cli.py is under every stack of the loop thread: it says nothing, and is left out.
    assert found["taskd_total"] == [
        {"name": "submit (taskd/http/tasks.py)", "share": 0.5},
        {"name": "submit (taskd/store/records.py)", "share": 0.3},
    ]


def test_a_pool_thread_parked_waiting_for_work_is_counted_apart_not_as_cpu(profile: ModuleType):
    found = profile.shares(RAW, PREFIXES, top=5)

    assert found["parked_pool_thread_samples"] == 40
    assert all("_worker" not in entry["name"] for entry in found["functions"])


async def test_the_profiled_load_lasts_its_seconds_however_fast_taskd_is_and_waits_for_every_webhook(
    profile: ModuleType, tmp_path: Path
):
    # A fixed number of tasks gave a faster taskd fewer samples: 2,000 tasks, once 15 s of load, took
    # 1.2 s (64 samples of the API) by the time the path had been sped up.
    receiver = profile.Receiver()
    await receiver.start()
    deployment = profile.Deployment(tmp_path, 1, 1)
    try:
        await deployment.start()
        elapsed, tasks = await profile.drive(deployment.apis[0][1], receiver, 1.0, 4, 30)
    finally:
        await deployment.stop()
        await receiver.stop()

    assert elapsed >= 1.0
    # At least one submit a client: on a loaded machine a cold server's first submits alone can
    # take the whole second (make test saw 4 of 4), so no more than that is asked.
    assert tasks >= 4
    assert len(receiver.received) == tasks
