"""docs/cluster.md's audit table names, for every Lua script, the keys it declares and the prefixes it
builds key names from inside the Lua: a script that changes either changes the table too."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from taskd.store import scripts

DOC = Path(__file__).parent.parent / "docs" / "cluster.md"
PACKAGES = ("taskd.store", "taskd.webhooks", "taskd.gpu", "taskd.providers")
ROW = re.compile(r"^\| `(\w+/\w+\.lua)` \| ([^|]*) \| ([^|]*) \|$")


def documented() -> dict[str, tuple[str, set[str]]]:
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if row := ROW.match(line):
            built = set(re.findall(r"`([^`]+)`", row[3]))
            rows[row[1]] = (row[2].strip(), built)
    return rows


def in_the_scripts() -> dict[str, tuple[str, set[str]]]:
    rows = {}
    for package in PACKAGES:
        for entry in (resources.files(package) / "lua").iterdir():
            if not entry.name.endswith(".lua"):
                continue
            header = scripts.parse_header(entry.name, scripts.read(entry.name, package))
            # The script as Redis runs it minus the constants: its own text and its libraries'.
            files: list[str] = []
            scripts._with_includes(entry.name, package, files)
            text = "\n".join(scripts.read(name, scripts.library_package(name, package)) for name in files)
            tokens = set(re.findall(r"@([A-Z_]+)@", text))
            built = {
                scripts.PARTITION_PREFIXES[token]
                for token in tokens
                if token in scripts.PARTITION_PREFIXES and token != "NO_KEY"
            }
            rows[f"{package.split('.')[1]}/{entry.name}"] = (", ".join(header.keys) or "none", built)
    return rows


def test_the_audit_table_lists_every_script_with_its_declared_and_built_keys():
    assert documented() == in_the_scripts()
