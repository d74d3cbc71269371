"""The virtualenvs of the systems taskd is compared with: one each, from bench/requirements/<name>.txt.

Each system's pinned requirements install into `.bench-venvs/<name>/` at the repository root, so
no system's dependencies constrain taskd's (its own `.venv`) or another's: Celery 5.7's kombu
wants redis-py >= 6.1 where taskd, through arq, wants it below 6. A virtualenv is reused while the
stamp in it holds the hash of its requirements file and the Python version it was made with, and
built again from nothing otherwise.
"""

from __future__ import annotations

import hashlib
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import ROOT

VENVS = ROOT / ".bench-venvs"
REQUIREMENTS = Path(__file__).resolve().parent / "requirements"
STAMP = "requirements.sha256"


def fingerprint(requirements: Path) -> str:
    """What a virtualenv built from `requirements` by this interpreter is stamped with."""
    digest = hashlib.sha256(requirements.read_bytes())
    digest.update(platform.python_version().encode())
    return digest.hexdigest()


def venv_python(name: str, log: Callable[[str], None]) -> Path:
    """The interpreter of `name`'s virtualenv, built first where it is missing or out of date."""
    requirements = REQUIREMENTS / f"{name}.txt"
    home = VENVS / name
    python = home / "bin" / "python"
    stamp = home / STAMP
    wanted = fingerprint(requirements)
    if python.exists() and stamp.is_file() and stamp.read_text().strip() == wanted:
        return python
    log(f"building {home.relative_to(ROOT)} from {requirements.relative_to(ROOT)}")
    shutil.rmtree(home, ignore_errors=True)
    # The venv module of taskd's own venv makes one on the same base interpreter, not inside it.
    _run([sys.executable, "-m", "venv", str(home)])
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--requirement",
            str(requirements),
        ]
    )
    # Written last: a build cut short leaves no stamp, so the next run starts it again.
    stamp.write_text(wanted + "\n")
    return python


def venv_pythons(names: Iterable[str], log: Callable[[str], None]) -> dict[str, Path]:
    """`venv_python` of each name, built side by side: on a fresh clone most of it is waiting on downloads."""
    names = list(names)
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        pythons = pool.map(lambda name: venv_python(name, log), names)
        return dict(zip(names, pythons, strict=True))


def _run(argv: list[str]) -> None:
    run = subprocess.run(argv, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({run.returncode}):\n{run.stdout[-2000:]}{run.stderr[-3000:]}"
        )
