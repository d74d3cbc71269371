"""Task types that only tests register (through `tasks.modules`)."""

from __future__ import annotations

import attrs

from taskd.jobs.spec import TaskType


@attrs.frozen
class AnythingInput:
    pass


TASKS = [TaskType("declared_only", AnythingInput, queue="default", expected_duration=1.0)]
