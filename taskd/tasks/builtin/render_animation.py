"""`render_animation`: character keyframes rendered into an animated clip."""

from __future__ import annotations

from typing import Any

import attrs

from taskd.media import video
from taskd.tasks.builtin.generate_video import EVEN_RESOLUTION, render_and_publish
from taskd.tasks.spec import TaskContext, TaskError, TaskType
from taskd.validation import between, check, http_url, max_length, not_blank, one_of, resolution


@attrs.frozen
class Keyframe:
    image_url: str = attrs.field(validator=http_url("Keyframe image_url"))
    time: float | None = attrs.field(default=None, validator=between(0, 60, "Keyframe time must be 0..60 s"))


def _times_all_or_none(keyframes: list[Keyframe]) -> bool:
    timed = [k.time is not None for k in keyframes]
    return all(timed) or not any(timed)


@attrs.frozen
class RenderAnimationInput:
    character_id: str = attrs.field(validator=not_blank("Character ID is required"))
    keyframes: list[Keyframe] = attrs.field(
        validator=attrs.validators.and_(
            max_length(120, "Keyframes", "items"),
            attrs.validators.min_len(1),
            check(_times_all_or_none, "Give a time for every keyframe or for none"),
        )
    )
    animation_type: str = attrs.field(default="ken_burns", validator=one_of(video.MOTIONS, "Animation type"))
    duration: float = attrs.field(
        default=5, validator=between(1, 60, "Duration must be between 1 and 60 seconds")
    )
    fps: int = attrs.field(default=24, validator=between(1, 60, "FPS must be between 1 and 60"))
    resolution: str = attrs.field(default="1280x720", validator=[resolution(), EVEN_RESOLUTION])


def holds(data: RenderAnimationInput) -> list[tuple[str, float]]:
    """(image_url, seconds on screen) in play order: from each keyframe's time to the next one's."""
    frames = data.keyframes
    if frames[0].time is None:
        return list(
            zip([k.image_url for k in frames], video.even_split(data.duration, len(frames)), strict=True)
        )
    ordered = sorted(frames, key=lambda k: k.time or 0.0)
    times = [k.time or 0.0 for k in ordered]
    if times[-1] >= data.duration:
        raise TaskError(
            f"Keyframe time {times[-1]:g} s is not before the end of the {data.duration:g} s animation"
        )
    if len(set(times)) != len(times):
        raise TaskError("Two keyframes have the same time")
    # The first keyframe is shown from 0 s even when its time is later.
    ends = [*times[1:], data.duration]
    starts = [0.0, *times[1:]]
    return [(k.image_url, end - start) for k, start, end in zip(ordered, starts, ends, strict=True)]


async def run(ctx: TaskContext, data: RenderAnimationInput) -> dict[str, Any]:
    """Hold each keyframe image until the next keyframe's time, with the chosen motion and cross-fades."""
    width, height = (int(side) for side in data.resolution.split("x"))
    shots = holds(data)
    motions = video.motions_for(data.animation_type, len(shots))
    clip = video.ClipRequest(
        task_id=ctx.task_id,
        shots=[video.Shot(url, hold, motion) for (url, hold), motion in zip(shots, motions, strict=True)],
        duration=data.duration,
        fps=data.fps,
        width=width,
        height=height,
        details={"character_id": data.character_id, "animation_type": data.animation_type},
        project_id=ctx.project_id,
    )
    return await render_and_publish(ctx, clip, "animation")


TASK = TaskType(
    name="render_animation",
    input=RenderAnimationInput,
    # The document's routing table does not name render_animation, so it goes to `default`.
    queue="default",
    expected_duration=240.0,
    handler=run,
    soft_time_limit=270.0,
    hard_time_limit=300.0,
    stores_media=True,
    gpu="none",
)
