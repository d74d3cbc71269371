"""`render_animation`: character keyframes rendered into an animated clip."""

from __future__ import annotations

import attrs

from taskd.jobs.spec import TaskType
from taskd.validation import between, http_url, max_length, not_blank, resolution


@attrs.frozen
class Keyframe:
    image_url: str = attrs.field(validator=http_url("Keyframe image_url"))
    time: float | None = attrs.field(default=None, validator=between(0, 60, "Keyframe time must be 0..60 s"))


@attrs.frozen
class RenderAnimationInput:
    character_id: str = attrs.field(validator=not_blank("Character ID is required"))
    keyframes: list[Keyframe] = attrs.field(
        validator=attrs.validators.and_(
            max_length(120, "Keyframes", "items"),
            attrs.validators.min_len(1),
        )
    )
    animation_type: str | None = None
    duration: float = attrs.field(
        default=5, validator=between(1, 60, "Duration must be between 1 and 60 seconds")
    )
    fps: int = attrs.field(default=24, validator=between(1, 60, "FPS must be between 1 and 60"))
    resolution: str = attrs.field(default="1280x720", validator=resolution())


TASK = TaskType(
    name="render_animation",
    input=RenderAnimationInput,
    # The document's routing table does not name render_animation, so it goes to `default`.
    queue="default",
    expected_duration=240.0,
)
