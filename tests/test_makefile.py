"""The Makefile's targets as a new user meets them (README: `make run` from a fresh clone on a fresh
machine): from a checkout whose path a shell would take apart (spaces, quotes, `$`, `&`, non-ASCII
letters), after a Ctrl-C during the install, with a python3 too old for taskd.

Each checkout is a copy of the Makefile and pyproject.toml with a .venv of its own. For `make run`
the .venv sees this one's packages (taskd among them) and holds the `taskd` script pip would write
there, so make finds its install done and starts taskd as it would after `make install`. The
install tests run pip with no index: what they check (which python the .venv has, that it has pip)
is settled before pip needs one, and the install of taskd's packages then fails offline.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from childproc import taskd_env, wait_listening
from pip._vendor.distlib.scripts import ScriptMaker

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Each a character a shell treats as its own where a path is not quoted, or quoted with "".
AWKWARD_NAME = "it's $HOME & ünï côde"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


def _bare_checkout(parent: Path, python: str = sys.executable) -> Path:
    """A checkout under `parent` with a .venv made by `python` and no pip in it: what a Ctrl-C while
    `python -m venv` ran leaves behind."""
    checkout = parent / AWKWARD_NAME / "taskd"
    checkout.mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, checkout / name)
    subprocess.run([python, "-m", "venv", "--without-pip", str(checkout / ".venv")], check=True)
    return checkout


def _checkout(parent: Path) -> Path:
    """A checkout under `parent`, as `make install` leaves it: a .venv with taskd's script in it."""
    checkout = _bare_checkout(parent)
    venv = checkout / ".venv"
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


# The interpreter behind this suite's, named as PYTHON: `python3` on PATH may be older than
# requires-python (Ubuntu 22.04's 3.10, RHEL 9's 3.9: the README's `make PYTHON=python3.12`), and
# make refuses it. Its real path: make splits PYTHON at spaces, and this checkout's own path (hence
# its .venv/bin/python) may hold some.
SUITE_PYTHON = os.path.realpath(sys.executable)


def _make_install_offline(checkout: Path, python: str = SUITE_PYTHON) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    env["PIP_NO_INDEX"] = "1"
    return subprocess.run(
        ["make", "install", f"PYTHON={python}"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _venv_python(checkout: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(checkout / ".venv" / "bin" / "python"), "-c", code], capture_output=True, text=True
    )


def _older_python() -> str | None:
    """A Python older than pyproject.toml's requires-python on this machine, if there is one."""
    minimum = PROJECT["requires-python"].removeprefix(">=")
    floor = tuple(int(part) for part in minimum.split("."))
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [shutil.which(f"python3.{minor}") for minor in range(floor[1] - 1, 7, -1)]
    candidates += [str(path) for path in sorted(pyenv.glob("versions/3.*/bin/python3"), reverse=True)]
    for candidate in filter(None, candidates):
        found = subprocess.run(
            [candidate, "-c", "import sys, venv; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
        )
        if found.returncode == 0 and tuple(map(int, found.stdout.split())) < floor:
            return candidate
    return None


def test_make_install_puts_pip_back_into_a_venv_a_ctrl_c_left_without_it(tmp_path: Path) -> None:
    checkout = _bare_checkout(tmp_path)
    _make_install_offline(checkout)
    assert _venv_python(checkout, "import pip").returncode == 0


def test_make_install_with_a_python_too_old_says_so_and_names_the_variable(tmp_path: Path) -> None:
    older = _older_python()
    if older is None:
        pytest.skip("no Python older than requires-python on this machine")
    checkout = tmp_path / "taskd"
    checkout.mkdir()
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, checkout / name)
    made = _make_install_offline(checkout, older)
    assert made.returncode != 0
    minimum = PROJECT["requires-python"].removeprefix(">=")
    assert f"taskd needs Python {minimum} or newer" in made.stderr
    assert "make PYTHON=" in made.stderr
    assert not (checkout / ".venv").exists()


def test_make_install_replaces_a_venv_an_older_python_made(tmp_path: Path) -> None:
    older = _older_python()
    if older is None:
        pytest.skip("no Python older than requires-python on this machine")
    checkout = _bare_checkout(tmp_path, older)
    _make_install_offline(checkout)
    made_by = _venv_python(checkout, "import sys; print(*sys.version_info[:2])").stdout.split()
    assert made_by == [str(part) for part in sys.version_info[:2]]


def test_make_install_leaves_a_linked_venv_it_cannot_use_as_it_is(tmp_path: Path) -> None:
    # A .venv linked to a venv elsewhere (~/.virtualenvs/taskd) that has no pip: `python -m venv
    # --clear` empties the venv the link names, then refuses the link, and every later make failed.
    checkout = _bare_checkout(tmp_path)
    elsewhere = tmp_path / "virtualenvs" / "taskd"
    elsewhere.parent.mkdir()
    (checkout / ".venv").rename(elsewhere)
    (checkout / ".venv").symlink_to(elsewhere)
    kept = elsewhere / "a developer's own file"
    kept.touch()

    made = _make_install_offline(checkout)

    assert (made.returncode, kept.exists()) == (2, True), made.stderr
    assert f"make: .venv links to {elsewhere}" in made.stderr
