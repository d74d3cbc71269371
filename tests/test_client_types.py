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
