"""Deprecated alias of `taskd.tasks.diagnostics`, kept for one release so a `[tasks] modules`
entry of "taskd.jobs.diagnostics" keeps working."""

from __future__ import annotations

from taskd.jobs import warn_moved
from taskd.tasks.diagnostics import TASKS as TASKS

warn_moved(__name__, "taskd.tasks.diagnostics")
