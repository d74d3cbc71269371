"""The Python client's methods as a type checker reads them in a caller's code.

Apart from tests/test_client.py: mypy is a development tool, not a dependency of the client, and
`make floors` runs test_client.py with the runtime dependencies only (scripts/check_floors.sh)."""

from __future__ import annotations

from pathlib import Path

import mypy.api


def test_the_stream_methods_type_check_with_gaps_held_in_a_bool(tmp_path: Path):
    # A caller passing its own flag on (gaps=follow_gaps), not a literal True or False.
    caller = tmp_path / "caller.py"
    caller.write_text(
        "from taskd.client import StreamGap, TaskClient, TaskEvent\n"
        "from taskd.sync_client import SyncTaskClient\n"
        "async def follow(client: TaskClient, sync: SyncTaskClient, flag: bool) -> list[TaskEvent | StreamGap]:\n"
        "    seen: list[TaskEvent | StreamGap] = []\n"
        "    seen += [item async for item in client.events('t', gaps=flag)]\n"
        "    seen += [item async for item in client.project_events('p', gaps=flag)]\n"
        "    seen += list(sync.events('t', gaps=flag))\n"
        "    seen += list(sync.project_events('p', gaps=flag))\n"
        "    return seen\n"
    )

    report, errors, status = mypy.api.run(["--strict", "--cache-dir", str(tmp_path / "cache"), str(caller)])

    assert status == 0, report + errors


def test_submits_type_check_with_typed_dicts_mappings_and_tuples(tmp_path: Path):
    # What a caller's typed code passes: its task data as a TypedDict (or a read-only Mapping), its
    # dependencies and its batch as tuples.
    caller = tmp_path / "caller.py"
    caller.write_text(
        "from collections.abc import Mapping\n"
        "from typing import TypedDict\n"
        "from taskd.client import Submitted, TaskClient\n"
        "from taskd.sync_client import SyncTaskClient\n"
        "class Prompt(TypedDict):\n"
        "    prompt_template: str\n"
        "async def submit(client: TaskClient, sync: SyncTaskClient, prompt: Prompt,\n"
        "                 item: Mapping[str, object]) -> list[Submitted]:\n"
        "    first = await client.submit('p', 'test_prompt', prompt, depends_on=('t',), metadata=item)\n"
        "    second = sync.submit('p', 'test_prompt', prompt, depends_on=('t',), metadata=item)\n"
        "    return [first, second, *await client.submit_batch((item,)), *sync.submit_batch((item,))]\n"
    )

    report, errors, status = mypy.api.run(["--strict", "--cache-dir", str(tmp_path / "cache"), str(caller)])

    assert status == 0, report + errors


def test_task_status_imports_from_the_client_module_under_strict_checking(tmp_path: Path):
    caller = tmp_path / "caller.py"
    caller.write_text(
        "from taskd.client import Task, TaskStatus\n"
        "def done(task: Task) -> bool:\n"
        "    return task.status is TaskStatus.COMPLETED\n"
    )

    report, errors, status = mypy.api.run(["--strict", "--cache-dir", str(tmp_path / "cache"), str(caller)])

    assert status == 0, report + errors
