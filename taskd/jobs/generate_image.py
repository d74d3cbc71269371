"""`generate_image`: character designs and concept art from an OpenAI-compatible Images API."""

from __future__ import annotations

import attrs

from taskd.jobs.spec import TaskType
from taskd.validation import http_url, max_length, not_blank, one_of, resolution

QUALITIES = ("low", "medium", "high", "standard", "hd", "auto")


@attrs.frozen
class GenerateImageInput:
    prompt: str = attrs.field(
        validator=attrs.validators.and_(not_blank("Prompt is required"), max_length(4000, "Prompt"))
    )
    style_guide: str | None = attrs.field(default=None, validator=http_url("Style guide"))
    reference_images: list[str] = attrs.field(
        factory=list,
        validator=attrs.validators.and_(
            max_length(16, "Reference images", "images"),
            attrs.validators.deep_iterable(http_url("Reference images")),
        ),
    )
    character_id: str | None = None
    pose: str | None = None
    lighting: str | None = None
    resolution: str = attrs.field(default="1024x1024", validator=resolution(4096))
    quality: str = attrs.field(default="high", validator=one_of(QUALITIES, "Quality"))


TASK = TaskType(
    name="generate_image",
    input=GenerateImageInput,
    queue="gpu_medium",
    expected_duration=45.0,
    soft_time_limit=270.0,
    hard_time_limit=300.0,
)
