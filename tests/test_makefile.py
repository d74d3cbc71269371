"""The Makefile's targets from a checkout whose path a shell would take apart: spaces, quotes, `$`,
`&` and non-ASCII letters (README: `make run` from a fresh clone on a fresh machine).

The checkout is a copy of the Makefile and pyproject.toml beside a virtualenv of its own that sees
this one's packages (taskd among them) and holds the `taskd` script pip would write there, so
`make run` finds its install done and starts taskd as it would after `make install`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
from childproc import taskd_env, wait_listening
from pip._vendor.distlib.scripts import ScriptMaker

ROOT = Path(__file__).resolve().parent.parent
# Each a character a shell treats as its own where a path is not quoted, or quoted with "".
AWKWARD_NAME = "it's $HOME & ünï côde"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


def _checkout(parent: Path) -> Path:
    """A checkout under `parent`, as `make install` leaves it: a .venv with taskd's script in it."""
    checkout = parent / AWKWARD_NAME / "taskd"
    checkout.mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, checkout / name)
    venv = checkout / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site_packages = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    # addsitedir, not a bare path: the .pth files in this venv's site-packages (the editable
    # install of taskd among them) are read too.
    (site_packages / "under_test.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_path('purelib')!r})\n"
    )
    # The script as pip writes it on install (pip writes scripts with this distlib class).
    maker = ScriptMaker(None, str(venv / "bin"))
    maker.executable = str(venv / "bin" / "python")
    maker.make("taskd = taskd.cli:main")
    (venv / ".installed").touch()  # newer than pyproject.toml: make takes the install as done
    return checkout


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    checkout = _checkout(tmp_path)
    data_dir = tmp_path / "data"
    proc = subprocess.Popen(
        ["make", "run"],
        cwd=checkout,
        env=taskd_env(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # make's group: make forwards no signal to taskd, so the test stops the two together.
        start_new_session=True,
    )
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(60)
    assert proc.stdout is not None
    proc.stdout.close()


def test_make_run_starts_taskd_from_a_path_with_spaces_quotes_and_dollar_signs(
    make_run: subprocess.Popen[str],
) -> None:
    assert wait_listening(make_run, timeout=60).startswith("http://127.0.0.1:")
