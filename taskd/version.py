"""taskd's version, one answer for `taskd --version` and the `taskd_build_info` metric."""

from __future__ import annotations

import functools
import importlib.metadata


@functools.cache  # read once: every scrape asks, and the installed version does not change under a process
def version() -> str:
    """The installed distribution's version; `unknown` when the source tree runs uninstalled."""
    try:
        return importlib.metadata.version("taskd")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
