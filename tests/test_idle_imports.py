"""Modules an idle `taskd serve` does not load because only some paths need them (idle memory,
docs/performance.md): each one imported at start-up is memory the service holds for ever."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _modules_after(code: str) -> set[str]:
    """The names in sys.modules of a fresh interpreter once `code` has run."""
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    return set(result.stdout.split())


def _nvidia_library_loads() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def test_serve_start_up_does_not_import_the_client_library():
    # What `taskd serve` runs before its loop: the whole command line (client commands included)
    # parsed, then the service.
    modules = _modules_after(
        "from taskd.cli import _parser\n_parser().parse_args(['serve'])\nimport taskd.service"
    )

    assert "taskd.service" in modules
    assert "taskd.client" not in modules


@pytest.mark.skipif(_nvidia_library_loads(), reason="this host has the NVIDIA driver's NVML library")
def test_reading_devices_without_the_nvidia_library_does_not_import_pynvml():
    modules = _modules_after(
        "from taskd.gpu.nvml import read_devices\nassert read_devices() == [], 'devices without NVML'"
    )

    assert "taskd.gpu.nvml" in modules
    assert "pynvml" not in modules
