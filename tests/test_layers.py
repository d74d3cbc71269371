"""Imports flow down the floors: the lower rooms of taskd import nothing from the rooms above them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TASKD = Path(__file__).parent.parent / "taskd"
# Room -> the rooms above it, which it must never import (DESIGN.md, "Layout").
ABOVE = {
    "errors.py": ("taskd.jobs", "taskd.http", "taskd.media", "taskd.service", "taskd.cli"),
    "model.py": ("taskd.jobs", "taskd.http", "taskd.media", "taskd.service", "taskd.cli"),
    "config.py": ("taskd.jobs", "taskd.http", "taskd.media", "taskd.service", "taskd.cli"),
    "media": ("taskd.jobs", "taskd.http", "taskd.service", "taskd.cli"),
    "net": ("taskd.jobs", "taskd.http", "taskd.media", "taskd.webhooks", "taskd.service", "taskd.cli"),
    "store": ("taskd.jobs", "taskd.http", "taskd.media", "taskd.service", "taskd.cli"),
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
        if module.startswith(ABOVE[room])
    }

    assert upward == set()
