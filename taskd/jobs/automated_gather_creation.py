"""`automated_gather_creation`: a project brief turned into gather items per department."""

from __future__ import annotations

import attrs

from taskd.jobs.spec import TaskType
from taskd.validation import between, max_length, not_blank


@attrs.frozen
class AutomatedGatherCreationInput:
    brief: str = attrs.field(
        validator=attrs.validators.and_(not_blank("Brief is required"), max_length(50_000, "Brief"))
    )
    departments: list[str] = attrs.field(factory=list, validator=max_length(12, "Departments", "items"))
    items_per_department: int = attrs.field(
        default=5, validator=between(1, 20, "Items per department must be between 1 and 20")
    )


TASK = TaskType(
    name="automated_gather_creation",
    input=AutomatedGatherCreationInput,
    queue="cpu_intensive",
    expected_duration=240.0,
    soft_time_limit=540.0,
    hard_time_limit=600.0,
)
