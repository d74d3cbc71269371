"""Packaging: every import is a declared dependency, the client runs without the server's extra,
and what taskd reads from its own package at run time is in what an install builds.

The floors themselves (the lowest allowed versions) are checked by `make floors`, which needs the
network; these checks run offline, against the installed packages.
"""

from __future__ import annotations

import ast
import collections
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Imported only by a diagnostic task type, and only when it runs: PyTorch is installed by hand on a
# GPU host (scripts/gpu_check.py), never by taskd's packaging.
OPTIONAL_IMPORTS = {"torch"}

# Runs in a child: refuses every module of the `server` extra, then runs the code in argv[2].
_WITHOUT_SERVER = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None
sys.meta_path.insert(0, Refuse())
exec(sys.argv[2])
"""


def _distribution(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name is not None, requirement
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def _modules_by_distribution() -> dict[str, set[str]]:
    """The top-level modules each installed distribution provides; a distribution that ships a
    library and no module (cmeel-mimalloc) provides none."""
    modules: dict[str, set[str]] = collections.defaultdict(set)
    for module, distributions in importlib.metadata.packages_distributions().items():
        for distribution in distributions:
            modules[_distribution(distribution)].add(module)
    return modules


def _imported_packages() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "taskd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.partition(".")[0])
    return names - set(sys.stdlib_module_names) - {"taskd", "__future__"}


def _server_modules() -> str:
    modules = _modules_by_distribution()
    server = {_distribution(requirement) for requirement in PROJECT["optional-dependencies"]["server"]}
    return ",".join(sorted(set().union(*(modules[name] for name in server))))


def _run_without_server(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_SERVER, _server_modules(), code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_every_imported_package_is_a_declared_dependency():
    modules = _modules_by_distribution()
    extras = PROJECT["optional-dependencies"]
    declared = PROJECT["dependencies"] + extras["server"] + extras["s3"] + extras["otel"]
    provided = set().union(*(modules[_distribution(requirement)] for requirement in declared))

    undeclared = _imported_packages() - provided - OPTIONAL_IMPORTS

    assert undeclared == set()


def test_client_and_cli_import_without_the_server_packages():
    result = _run_without_server(
        "import taskd.client, taskd.sync_client, taskd.cli_client, taskd.cli\n"
        "from taskd.cli import main\n"
        "try:\n"
        "    main(['status', '--help'])\n"
        "except SystemExit as exc:\n"
        "    sys.exit(exc.code)\n"
    )

    assert (result.returncode, result.stderr) == (0, "")
    assert "usage: taskd status" in result.stdout


def test_serve_without_the_server_packages_names_the_extra():
    result = _run_without_server("from taskd.cli import main\nsys.exit(main(['serve']))\n")

    assert result.returncode == 2
    assert "pip install 'taskd[server]'" in result.stderr


def test_operator_commands_without_the_server_packages_name_the_extra():
    result = _run_without_server("from taskd.cli import main\nsys.exit(main(['queues']))\n")

    assert result.returncode == 2
    assert "pip install 'taskd[server]'" in result.stderr


# Read by name from taskd's package (scripts, the dashboard's and API docs' pages).
READ_AT_RUN_TIME = {".lua", ".html", ".css", ".js"}


def test_every_file_taskd_reads_at_run_time_is_named_by_its_packages_package_data():
    # `make test` runs taskd from the source tree, where every file is there; an installed wheel
    # has only what [tool.setuptools.package-data] names. A script in a new folder
    # (taskd/providers/lua/lib/) without its glob made every start of an installed taskd fail,
    # which only `make floors` (a wheel install) showed.
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    folders = {ROOT.joinpath(*name.split(".")): named for name, named in globs.items()}
    left_out = []
    for path in sorted((ROOT / "taskd").rglob("*")):
        if path.suffix not in READ_AT_RUN_TIME or "__pycache__" in path.parts:
            continue
        # Its package: the innermost package-data package holding it (some are namespace packages).
        package = max(
            (folder for folder in folders if path.is_relative_to(folder)), key=lambda f: len(f.parts)
        )
        inside = PurePosixPath(path.relative_to(package).as_posix())
        # A glob's "*" stays within one folder, as setuptools reads it.
        named = folders[package]
        if not any(
            len(inside.parts) == len(PurePosixPath(glob).parts) and inside.match(glob) for glob in named
        ):
            left_out.append(str(path.relative_to(ROOT)))

    assert left_out == []


def test_the_installed_metadata_names_the_license_as_an_spdx_expression():
    # `license = {text = "MIT"}`, a table, is deprecated: every install printed setuptools' notice
    # that it would be refused after 2027-02-18, which would fail `make install` from a fresh clone.
    # The string is read from setuptools 77 on, the build's floor.
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert "setuptools>=77" in build
    metadata = importlib.metadata.metadata("taskd")
    assert (metadata["License-Expression"], metadata["License"]) == ("MIT", None)
