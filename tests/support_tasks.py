"""Task types that only tests register (through `tasks.modules`)."""

from __future__ import annotations

import os
from typing import Any

import attrs
import cattrs

from taskd.tasks.spec import ProcessContext, TaskType


@attrs.frozen
class AnythingInput:
    pass


@attrs.frozen
class ShowWhatIGotInput:
    pass


def show_what_i_got(ctx: ProcessContext, _: ShowWhatIGotInput) -> dict[str, Any]:
    """In a job process: its environment and the config it was sent, for tests that look for secrets."""
    return {"environ": dict(os.environ), "config": cattrs.unstructure(ctx.config), "pid": os.getpid()}


TASKS = [
    TaskType("declared_only", AnythingInput, queue="default", expected_duration=1.0),
    TaskType(
        "show_what_i_got", ShowWhatIGotInput, queue="default", expected_duration=0.1, handler=show_what_i_got
    ),
]
