"""`taskd --version` and `taskd completion bash|zsh` (shtab, generated from the CLI's own parser)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from taskd.cli import main
from taskd.version import version


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's --version exits
        code = int(exc.code or 0)
    return code, capsys.readouterr().out


def test_version_prints_the_installed_version(capsys):
    code, out = run_main(["--version"], capsys)

    assert (code, out) == (0, f"taskd {version()}\n")
    assert out.split()[1][0].isdigit()


def completions(script: Path, *words: str) -> list[str]:
    """What bash offers after `words` with the script sourced, as a user's shell would."""
    line = " ".join(words)
    program = (
        f"source {shlex.quote(str(script))}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
        f'COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}; _shtab_taskd; printf "%s\\n" "${{COMPREPLY[@]}}"'
    )
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_offers_the_commands_and_their_options(capsys, tmp_path):
    code, script = run_main(["completion", "bash"], capsys)
    path = tmp_path / "taskd.bash"
    path.write_text(script)

    assert code == 0
    assert completions(path, "taskd", "se") == ["serve"]
    assert {"submit", "status", "worker", "completion"} <= set(completions(path, "taskd", ""))
    assert "--no-worker" in completions(path, "taskd", "serve", "--")


def test_zsh_completion_is_a_compdef_for_taskd(capsys):
    code, script = run_main(["completion", "zsh"], capsys)

    assert code == 0
    assert script.startswith("#compdef taskd")
    assert "serve" in script and "--no-worker" in script


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion_parses_in_zsh(capsys, tmp_path):
    _, script = run_main(["completion", "zsh"], capsys)
    path = tmp_path / "_taskd"
    path.write_text(script)

    result = subprocess.run(["zsh", "-n", str(path)], capture_output=True, text=True, timeout=30)

    assert result.returncode == 0, result.stderr


def test_an_unknown_shell_is_refused(capsys):
    with pytest.raises(SystemExit) as refused:
        main(["completion", "fish"])

    assert refused.value.code == 2
    assert "invalid choice: 'fish'" in capsys.readouterr().err
