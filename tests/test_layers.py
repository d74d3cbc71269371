"""Imports flow down the floors: the lower rooms of taskd import nothing from the rooms above them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TASKD = Path(__file__).parent.parent / "taskd"
# The floors of the house, lowest first (docs/development.md, "Layout"): a room imports only from
# its own floor or the floors below it.
FLOORS = [
    [
        "errors.py",
        "model.py",
        "config.py",
        "validation.py",
        "keys.py",
        "logs.py",
        "loops.py",
        "backoff.py",
        "shapes.py",
        "refs.py",
        "version.py",
        "printable.py",
        "wide_ints.py",
        "shown_paths.py",
        "files.py",
    ],
    [
        "stopping.py",
        "childenv.py",
        "proctree.py",
        "runtasks.py",
        "apikey.py",
        "redis_conn.py",
        "redis_memory.py",
        "redis_needs.py",
        "clock.py",
        "sdnotify.py",
        "tracing.py",
    ],
    [
        "heartbeat.py",
        "agreement.py",
        "alerts.py",
        "embedded.py",
        "client.py",
        "sync_client.py",
        "net",
        "store",
        "gpu",
    ],
    ["media"],
    ["providers"],
    ["tasks"],
    ["queue"],
    ["engine", "webhooks"],
    ["submit"],
    ["http"],
    ["service.py", "admin.py"],
    ["cli_client.py", "cli_admin.py", "cli.py"],
]
# Not rooms: the package marker, `python -m taskd`, the static files of the dashboard and of /docs,
# and the deprecated aliases of moved modules (taskd/jobs/, which import only the modules they stand for).
NOT_ROOMS = {"__init__.py", "__main__.py", "__pycache__", "py.typed", "dashboard", "apidocs", "jobs", "lua"}


def module_name(room: str) -> str:
    return "taskd." + room.removesuffix(".py")


ABOVE = {
    room: tuple(module_name(higher) for floor in FLOORS[level + 1 :] for higher in floor)
    for level, rooms in enumerate(FLOORS)
    for room in rooms
}


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, absolute names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("room", sorted(ABOVE))
def test_a_lower_room_imports_nothing_from_the_rooms_above_it(room):
    files = [TASKD / room] if room.endswith(".py") else sorted((TASKD / room).rglob("*.py"))

    upward = {
        f"{path.relative_to(TASKD)} -> {module}"
        for path in files
        for module in imported_modules(path)
        # Whole names: taskd.client is not below taskd.cli.
        if any(module == higher or module.startswith(higher + ".") for higher in ABOVE[room])
    }

    assert upward == set()


def test_every_room_is_on_a_floor():
    rooms = {path.name for path in TASKD.iterdir()} - NOT_ROOMS

    assert rooms == set(ABOVE)


def test_only_the_queue_room_knows_arq():
    knows_arq = {
        str(path.relative_to(TASKD))
        for path in TASKD.rglob("*.py")
        if any(module == "arq" or module.startswith("arq.") for module in imported_modules(path))
    }

    assert knows_arq == {"queue/workers.py"}
