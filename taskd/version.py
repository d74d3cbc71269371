"""taskd's version, one answer for `taskd --version` and the `taskd_build_info` metric."""

from __future__ import annotations

import importlib.metadata


def version() -> str:
    """The installed distribution's version; `unknown` when the source tree runs uninstalled."""
    try:
        return importlib.metadata.version("taskd")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
