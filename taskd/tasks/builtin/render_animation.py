"""`render_animation`: a character image moved along its keyframes (place, scale, turn, opacity), eased."""

from __future__ import annotations

from typing import Any

import attrs

from taskd.media import video
from taskd.media.clip import EASINGS
from taskd.tasks.builtin.generate_video import (
    EVEN_RESOLUTION,
    H264_FRAME,
    RESOLUTION_RULES,
    render_and_publish,
)
from taskd.tasks.spec import TaskContext, TaskError, TaskType
from taskd.validation import between, check, http_url, max_length, not_blank, one_of, resolution

# At scale 1 the character's image fits a box this share of the frame's height tall (and twice as wide).
CHARACTER_HEIGHT = 0.5


@attrs.frozen
class Keyframe:
    image_url: str = attrs.field(validator=http_url("Keyframe image_url"))
    time: float | None = attrs.field(default=None, validator=between(0, 60, "Keyframe time must be 0..60 s"))
    # Where the character's centre is, as fractions of the frame (outside 0..1: partly or wholly off screen).
    x: float = attrs.field(
        default=0.5, validator=between(-1, 2, "Keyframe x must be -1..2 (0..1 is on screen)")
    )
    y: float = attrs.field(
        default=0.5, validator=between(-1, 2, "Keyframe y must be -1..2 (0..1 is on screen)")
    )
    scale: float = attrs.field(default=1.0, validator=between(0.05, 4, "Keyframe scale must be 0.05..4"))
    rotation: float = attrs.field(
        default=0.0, validator=between(-3600, 3600, "Keyframe rotation must be -3600..3600 degrees")
    )
    opacity: float = attrs.field(default=1.0, validator=between(0, 1, "Keyframe opacity must be 0..1"))
    easing: str = attrs.field(default="ease_in_out", validator=one_of(EASINGS, "Keyframe easing"))


# The most distinct images a render fetches, as generate_video's storyboard_images (and, at run time,
# media.max_inputs, whose default this is).
MAX_IMAGES = 32


def _few_enough_images(instance: Any, _: attrs.Attribute[Any], keyframes: list[Keyframe]) -> None:
    # 120 keyframes may name 120 images: over 32 the task was queued, waited its turn, and failed
    # "Too many images" as it started. The background is one more (None: the field checked alone;
    # a $ref, unknown until the run, is counted there).
    background = getattr(instance, "background_url", None)
    urls = {k.image_url for k in keyframes if k.image_url is not None}
    urls |= {background} if background else set()
    if len(urls) > MAX_IMAGES:
        raise ValueError(
            f"Keyframes must show at most {MAX_IMAGES} distinct images, background_url included "
            f"({len(urls)} given): each is a download"
        )


def _times_all_or_none(keyframes: list[Keyframe]) -> bool:
    timed = [k.time is not None for k in keyframes]
    return all(timed) or not any(timed)


def _times_inside_the_animation(instance: Any, _: attrs.Attribute[Any], keyframes: list[Keyframe]) -> None:
    # Checked at submit, as the other fields are (a 400 naming the field): a time at or past the
    # end, or two keyframes at one time, were taken and the run failed as it started (timed()).
    times = [k.time for k in keyframes if k.time is not None]
    if len(set(times)) != len(times):
        raise ValueError("Two keyframes have the same time")
    duration = getattr(instance, "duration", None)  # None: the field checked alone
    if duration is not None and times and max(times) >= duration:
        raise ValueError(
            f"Keyframe time {max(times):g} s is not before the end of the {duration:g} s animation"
        )


@attrs.frozen
class RenderAnimationInput:
    # The layer's label, and a line of a video provider's prompt: bounded as generate_video's ids are.
    character_id: str = attrs.field(
        validator=[not_blank("Character ID is required"), max_length(100, "Character ID")]
    )
    keyframes: list[Keyframe] = attrs.field(
        validator=attrs.validators.and_(
            max_length(120, "Keyframes", "items"),
            attrs.validators.min_len(1),
            check(_times_all_or_none, "Give a time for every keyframe or for none"),
            _times_inside_the_animation,
            _few_enough_images,
        ),
        # Published: no JSON Schema keyword counts distinct values across items and another field, or
        # says that a field is given in every item or in none.
        metadata={
            "description": f"At most {MAX_IMAGES} distinct image_url values, background_url included, and "
            "a time for every keyframe or for none, each before the duration and no two the same (else a "
            "400 at submit)"
        },
    )
    animation_type: str = attrs.field(default="ken_burns", validator=one_of(video.MOTIONS, "Animation type"))
    duration: float = attrs.field(
        default=5, validator=between(1, 60, "Duration must be between 1 and 60 seconds")
    )
    fps: int = attrs.field(default=24, validator=between(1, 60, "FPS must be between 1 and 60"))
    resolution: str = attrs.field(
        default="1280x720", validator=[resolution(), EVEN_RESOLUTION, H264_FRAME], metadata=RESOLUTION_RULES
    )
    background_url: str | None = attrs.field(default=None, validator=http_url("Background URL"))


def timed(data: RenderAnimationInput, last_frame: float) -> list[tuple[float, Keyframe]]:
    """The keyframes with their times, in time order; without times, spread from the first frame to the last."""
    frames = data.keyframes
    if frames[0].time is None:
        step = last_frame / (len(frames) - 1) if len(frames) > 1 else 0.0
        return [(i * step, k) for i, k in enumerate(frames)]
    ordered = sorted(frames, key=lambda k: k.time or 0.0)
    times = [k.time or 0.0 for k in ordered]
    if times[-1] >= data.duration:
        raise TaskError(
            f"Keyframe time {times[-1]:g} s is not before the end of the {data.duration:g} s animation"
        )
    if len(set(times)) != len(times):
        raise TaskError("Two keyframes have the same time")
    return list(zip(times, ordered, strict=True))


def layer(keyframes: list[tuple[float, Keyframe]], label: str) -> video.Layer:
    """The character: one layer along all the keyframes, whose image changes where a keyframe's differs
    from the one before.

    One layer, not one per change of image: a change is a change of drawing on the same path, and the
    work (ffmpeg inputs, box-sized buffers, turns and scales per frame) stays that of one character
    however many times the image changes.
    """
    first = keyframes[0][1]
    changes = [
        video.ImageChange(time, k.image_url)
        for (time, k), (_, before) in zip(keyframes[1:], keyframes, strict=False)
        if k.image_url != before.image_url
    ]
    return video.Layer(
        label,
        first.image_url,
        [video.Pose(time, k.x, k.y, k.scale, k.rotation, k.opacity, k.easing) for time, k in keyframes],
        height=CHARACTER_HEIGHT,
        image_changes=changes,
    )


async def run(ctx: TaskContext, data: RenderAnimationInput) -> dict[str, Any]:
    """Move the character's image along its keyframes, eased, over the background (or a plain set)."""
    width, height = (int(side) for side in data.resolution.split("x"))
    motion = video.motions_for(data.animation_type, 1)[0]
    clip = video.ClipRequest(
        task_id=ctx.task_id,
        shots=[video.Shot(data.background_url, data.duration, motion)] if data.background_url else [],
        duration=data.duration,
        fps=data.fps,
        width=width,
        height=height,
        details={"character_id": data.character_id, "animation_type": data.animation_type},
        project_id=ctx.project_id,
        backdrop_motion=motion,
    )
    keyframes = timed(data, clip.last_frame_time)
    clip = attrs.evolve(
        clip,
        layers=[layer(keyframes, data.character_id)],
        applied={
            "camera": motion,
            "background": "image" if data.background_url else "backdrop",
            "keyframes": len(keyframes),
        },
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
