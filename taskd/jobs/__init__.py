"""Deprecated: the old home of task code, kept for one release so plugins keep importing.

`taskd.jobs.spec` is now `taskd.tasks.spec` and `taskd.jobs.diagnostics` is
`taskd.tasks.diagnostics` (docs/task-types.md, "Moved modules"). Importing either old name works
and warns with a DeprecationWarning.
"""

from __future__ import annotations

import warnings


def warn_moved(old: str, new: str) -> None:
    """Tell the importer of `old` where the module lives now."""
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; import {new} instead",
        DeprecationWarning,
        stacklevel=3,
    )
