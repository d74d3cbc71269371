"""`generate_video`: storyboard images into a clip of the asked duration, fps and resolution."""

from __future__ import annotations

from typing import Any

import attrs

from taskd.jobs.spec import TaskType
from taskd.validation import between, http_url, max_length, resolution


@attrs.frozen
class CharacterPosition:
    character_id: str
    position: str | None = None
    action: str | None = None


def _urls(what: str) -> Any:
    return attrs.validators.and_(
        max_length(32, what, "images"), attrs.validators.deep_iterable(http_url(what))
    )


@attrs.frozen
class GenerateVideoInput:
    storyboard_images: list[str] = attrs.field(factory=list, validator=_urls("Storyboard images"))
    scene_description: str | None = attrs.field(default=None, validator=max_length(5000, "Scene description"))
    camera_angle: str | None = None
    lighting: str | None = None
    character_positions: list[CharacterPosition] = attrs.Factory(list)
    duration: float = attrs.field(
        default=7, validator=between(1, 30, "Duration must be between 1 and 30 seconds")
    )
    fps: int = attrs.field(default=24, validator=between(1, 60, "FPS must be between 1 and 60"))
    resolution: str = attrs.field(default="1920x1080", validator=resolution())


TASK = TaskType(
    name="generate_video",
    input=GenerateVideoInput,
    queue="gpu_heavy",
    expected_duration=300.0,
    soft_time_limit=540.0,
    hard_time_limit=600.0,
)
