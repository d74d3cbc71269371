"""Deprecated alias of `taskd.tasks.spec` (the task-type interface), kept for one release."""

from __future__ import annotations

from taskd.jobs import warn_moved
from taskd.tasks.spec import Cancelled as Cancelled
from taskd.tasks.spec import ProcessContext as ProcessContext
from taskd.tasks.spec import ProgressSink as ProgressSink
from taskd.tasks.spec import SoftTimeLimitExceeded as SoftTimeLimitExceeded
from taskd.tasks.spec import TaskContext as TaskContext
from taskd.tasks.spec import TaskError as TaskError
from taskd.tasks.spec import TaskType as TaskType
from taskd.tasks.spec import TransientError as TransientError
from taskd.tasks.spec import is_transient as is_transient

warn_moved(__name__, "taskd.tasks.spec")
