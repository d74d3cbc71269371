"""`generate_video`: a storyboard animatic that follows the request's camera, lighting and blocking."""

from __future__ import annotations

import math
from typing import Any

import attrs

from taskd.media import animatic_vocabulary as vocabulary
from taskd.media import blocking, video
from taskd.media.clip import GRADES, TRANSITIONS
from taskd.media.publish import publish
from taskd.media.scratch import scratch_dir
from taskd.media.store import scratch_root
from taskd.providers import video as video_provider
from taskd.tasks.spec import TaskContext, TaskType
from taskd.validation import (
    MAX_SIDE,
    MIN_SIDE,
    between,
    check,
    http_url,
    max_length,
    not_blank,
    one_of,
    resolution,
)

EVEN_RESOLUTION = check(
    lambda v: all(int(side) % 2 == 0 for side in v.split("x") if side.isdigit()),
    "Resolution must have an even width and height (H.264)",
)
# H.264's largest frame (levels 6 to 6.2): 139 264 macroblocks of 16x16 pixels. No level holds a
# larger one, and x264, asked for 7680x7680 all the same, ran out of its address space
# (execution.tool_address_space_mb) after the task had started rather than being refused here.
H264_MAX_MACROBLOCKS = 139_264


def _fits_h264(value: str) -> bool:
    sides = value.split("x")
    if len(sides) != 2 or not all(side.isdigit() for side in sides):
        return True  # not a WxH at all: resolution() says so
    width, height = (int(side) for side in sides)
    return math.ceil(width / 16) * math.ceil(height / 16) <= H264_MAX_MACROBLOCKS


H264_FRAME = check(
    _fits_h264,
    f"Resolution must fit an H.264 frame: at most {H264_MAX_MACROBLOCKS} macroblocks of 16x16 pixels "
    "(7680x4320 fits, 7680x7680 does not)",
)
# resolution()'s sides and the two checks above, published in the OpenAPI document (its pattern says
# only WxH, 10 to 99999 a side): no JSON Schema keyword reads numbers out of a string.
RESOLUTION_RULES = {
    "description": f"WxH, each side {MIN_SIDE}..{MAX_SIDE}, with an even width and height (H.264), at most "
    f"{H264_MAX_MACROBLOCKS} macroblocks of 16x16 pixels (7680x4320 fits, 7680x7680 does not): else a 400 "
    "at submit"
}


# The most characters of a free-text field a video provider's prompt is written from (camera_angle,
# lighting, a character's position and action), as generate_image's pose and lighting; and the most
# characters it names, as dialogue's lines (8 are drawn by the built-in renderer, every one goes into
# a provider's prompt).
FREE_TEXT = 500
MAX_CHARACTERS = 50


@attrs.frozen
class CharacterPosition:
    # Echoed in the result's `metadata.applied` (for each character drawn): unbounded, eight ids of
    # 130 000 characters passed every submit check, rendered, and then failed the task on a result
    # over execution.result_max_bytes. The marker shows its first 30; a dialogue line's takes 100.
    character_id: str = attrs.field(validator=max_length(100, "Character ID"))
    # Free text, read by the vocabulary, and written whole into a video provider's prompt: bounded as
    # generate_image's pose (see GenerateVideoInput's camera_angle).
    position: str | None = attrs.field(default=None, validator=max_length(FREE_TEXT, "Position"))
    action: str | None = attrs.field(default=None, validator=max_length(FREE_TEXT, "Action"))


@attrs.frozen
class DialogueLine:
    text: str = attrs.field(
        validator=[not_blank("Dialogue text is required"), max_length(500, "Dialogue text")]
    )
    character_id: str | None = attrs.field(default=None, validator=max_length(100, "Dialogue character_id"))
    # Seconds into the clip; give both or neither (then the lines share the clip in turn).
    start: float | None = attrs.field(
        default=None, validator=between(0, 30, "Dialogue start must be 0..30 s")
    )
    end: float | None = attrs.field(default=None, validator=between(0, 30, "Dialogue end must be 0..30 s"))


def _timed_lines(lines: list[DialogueLine]) -> bool:
    return all(
        (line.start is None and line.end is None)
        or (line.start is not None and line.end is not None and line.start < line.end)
        for line in lines
    )


def _urls(what: str) -> Any:
    return attrs.validators.and_(
        max_length(32, what, "images"), attrs.validators.deep_iterable(http_url(what))
    )


@attrs.frozen
class GenerateVideoInput:
    storyboard_images: list[str] = attrs.field(factory=list, validator=_urls("Storyboard images"))
    scene_description: str | None = attrs.field(default=None, validator=max_length(5000, "Scene description"))
    # Unbounded, these went whole into a video provider's prompt (up to the body limit, sent again at
    # each retry of a 5xx): the vocabulary reads any text, but no prompt needs a MiB of it.
    camera_angle: str | None = attrs.field(default=None, validator=max_length(FREE_TEXT, "Camera angle"))
    lighting: str | None = attrs.field(default=None, validator=max_length(FREE_TEXT, "Lighting"))
    character_positions: list[CharacterPosition] = attrs.field(
        factory=list, validator=max_length(MAX_CHARACTERS, "Character positions", "entries")
    )
    duration: float = attrs.field(
        default=7, validator=between(1, 30, "Duration must be between 1 and 30 seconds")
    )
    fps: int = attrs.field(default=24, validator=between(1, 60, "FPS must be between 1 and 60"))
    resolution: str = attrs.field(
        default="1920x1080", validator=[resolution(), EVEN_RESOLUTION, H264_FRAME], metadata=RESOLUTION_RULES
    )
    # Not in the API document: taskd's own, for the animatic (a video model may ignore them).
    transition: str = attrs.field(default="crossfade", validator=one_of(TRANSITIONS, "Transition"))
    dialogue: list[DialogueLine] = attrs.field(
        factory=list,
        validator=attrs.validators.and_(
            max_length(50, "Dialogue", "lines"),
            check(
                _timed_lines, "Give each dialogue line both a start and an end (start before end), or neither"
            ),
        ),
        # Published: no JSON Schema keyword compares two fields of an item.
        metadata={"description": "Each line has both a start and an end (start before end), or neither"},
    )


def subtitles(data: GenerateVideoInput) -> list[video.Subtitle]:
    """The dialogue as subtitles: timed lines where they say, the others each an equal turn in order;
    a speaker's name before their line. A line past the clip's end is left out."""
    turns = video.even_split(data.duration, len(data.dialogue)) if data.dialogue else []
    shown = []
    at = 0.0
    for line, turn in zip(data.dialogue, turns, strict=True):
        start, end = (
            (line.start, line.end) if line.start is not None and line.end is not None else (at, at + turn)
        )
        at += turn
        if start < data.duration:
            text = f"{line.character_id}: {line.text}" if line.character_id else line.text
            shown.append(video.Subtitle(text, start, min(end, data.duration)))
    return shown


def applied_camera(camera: str, characters: list[tuple[str, vocabulary.Blocking]], count: int) -> list[str]:
    """Each shot's motion for the camera the vocabulary read (a tracking shot pans the way the walker goes)."""
    if camera in (vocabulary.DEFAULT_CAMERA, vocabulary.UNRECOGNISED):
        return video.motions_for("ken_burns", count)
    if camera == "push_in":
        return ["zoom_in"] * count
    if camera == "tracking":
        movers = [b for _, b in characters if b.action in ("walk", "run", "enter", "exit")]
        return ["pan_left" if movers and movers[0].direction < 0 else "pan_right"] * count
    return [camera] * count


def clip_request(task_id: str, data: GenerateVideoInput, project_id: str | None = None) -> video.ClipRequest:
    """The animatic: each storyboard image an equal share of the duration, moved by the camera,
    the characters over it at their positions, the whole graded for the lighting.
    """
    width, height = (int(side) for side in data.resolution.split("x"))
    count = len(data.storyboard_images)
    holds = video.even_split(data.duration, count) if count else []
    camera = vocabulary.camera(data.camera_angle)
    grade = vocabulary.lighting(data.lighting)
    characters = [
        (p.character_id, vocabulary.blocking(p.position, p.action))
        for p in data.character_positions[: blocking.MAX_CHARACTERS]
    ]
    motions = applied_camera(camera, characters, max(1, count))
    clip = video.ClipRequest(
        task_id=task_id, shots=[], duration=data.duration, fps=data.fps, width=width, height=height
    )
    layers = blocking.layers(characters, clip.last_frame_time)
    applied: dict[str, Any] = {
        "camera": camera,
        "lighting": grade,
        "transition": data.transition if count > 1 else "none",
        "characters": [
            {"character_id": name, "position": b.position, "action": b.action} for name, b in characters
        ],
    }
    if not (count or layers):
        # A title card: nothing to move, place or grade.
        applied = {
            "camera": "static",
            "lighting": "none",
            "transition": "none",
            "characters": [],
            "title_card": True,
        }
    if len(data.character_positions) > len(layers):
        applied["characters_not_drawn"] = len(data.character_positions) - len(layers)
    lines = subtitles(data)
    if data.dialogue:
        # Burned in only with a font to draw them (animatic_graph.find_font).
        applied["subtitles"] = len(lines) if video.find_font() else 0
    return attrs.evolve(
        clip,
        shots=[
            video.Shot(url, hold, motion)
            for url, hold, motion in zip(data.storyboard_images, holds, motions, strict=False)
        ],
        title=data.scene_description,
        project_id=project_id,
        details={
            "scene_description": data.scene_description,
            "camera_angle": data.camera_angle,
            "lighting": data.lighting,
            "transition": data.transition,
            "character_positions": [attrs.asdict(p) for p in data.character_positions],
            "dialogue": [attrs.asdict(line) for line in data.dialogue],
        },
        layers=layers,
        subtitles=lines,
        grade=grade if grade in GRADES else "none",
        transition=data.transition,
        backdrop_motion=motions[0],
        applied=applied,
    )


async def render_and_publish(ctx: TaskContext, clip: video.ClipRequest, prefix: str) -> dict[str, Any]:
    """Render `clip` in a scratch dir (removed on any exit), store the MP4, and describe it as measured."""
    # A configured video-generation API (providers.video.protocol) first, else the plugin or ffmpeg.
    provider = video_provider.renderer(ctx.config, ctx.http, ctx.provider_gate("video"), ctx.run_state)
    renderer: video.ClipRenderer = provider or video.load_renderer(ctx.config, ctx.http)

    # A character's image is fetched too (render_animation); a marker is drawn.
    fetches = bool(clip.shots) or any(layer.image_url for layer in clip.layers)

    async def rendering(fraction: float) -> None:
        await ctx.progress(
            0.05 + 0.9 * fraction, "fetching_images" if fraction < 0.2 and fetches else "rendering_video"
        )

    async with scratch_dir(scratch_root(ctx.config), ctx.task_id) as workdir:
        await ctx.progress(0.05, "fetching_images" if fetches else "rendering_video")
        path, info = await video.render_clip(renderer, clip, workdir, rendering)
        await ctx.progress(0.96, "storing_media")
        metadata = {
            "duration": info.duration,
            "resolution": info.resolution,
            "fps": info.fps if info.fps is None or info.fps % 1 else int(info.fps),
            "format": "mp4",
            "codec": info.video_codec,
            "generation_model": getattr(renderer, "model", video.MODEL),
        }
        # What the request asked of the camera, lighting and characters is only followed by the built-in
        # renderer; a remote model gets the texts (`details`) and says nothing of what it made of them.
        if isinstance(renderer, video.FfmpegRenderer) and clip.applied:
            metadata["applied"] = clip.applied
        result = await publish(
            ctx.config, ctx.project_id, path, f"{prefix}_{ctx.task_id}.mp4", metadata, ctx.run_state
        )
    await ctx.progress(1.0, "done")
    return result


async def run(ctx: TaskContext, data: GenerateVideoInput) -> dict[str, Any]:
    """Render the storyboard (or a title card from scene_description) into an H.264 MP4."""
    return await render_and_publish(ctx, clip_request(ctx.task_id, data, ctx.project_id), "video")


TASK = TaskType(
    name="generate_video",
    input=GenerateVideoInput,
    queue="gpu_heavy",
    expected_duration=300.0,
    handler=run,
    soft_time_limit=540.0,
    hard_time_limit=600.0,
    stores_media=True,
    gpu="none",
)
