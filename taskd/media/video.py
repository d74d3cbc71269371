"""Clips from still images: the ClipRenderer interface and the built-in ffmpeg renderer (pan/zoom + cross-fades)."""

from __future__ import annotations

import asyncio
import glob
import importlib
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import attrs

from taskd.config import Config
from taskd.errors import TaskError
from taskd.media import download, ffmpeg
from taskd.media.bounds import Bounds
from taskd.media.own import OwnMedia
from taskd.media.store import MediaStore
from taskd.net.guarded import GuardedClient

ProgressFn = Callable[[float], Awaitable[None]]
MODEL = "taskd-ffmpeg"
MOTIONS = ("ken_burns", "zoom_in", "zoom_out", "pan_left", "pan_right", "static")
FADE_SECONDS = 0.5
_ZOOM = 0.12
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
)


@attrs.frozen
class Shot:
    """One still image of the clip, on screen for `hold` seconds."""

    url: str
    hold: float
    motion: str = "zoom_in"


@attrs.frozen
class ClipRequest:
    """What to render: the shots (holds add up to `duration`), or a title card when there are none."""

    task_id: str
    shots: list[Shot]
    duration: float
    fps: int
    width: int
    height: int
    title: str | None = None
    details: dict[str, Any] = attrs.Factory(dict)  # the task's descriptive fields, for remote providers
    # The task's project: the built-in renderer reads that project's own media links from the store.
    project_id: str | None = None


class ClipRenderer(Protocol):
    """Renders a ClipRequest into an MP4 file inside `workdir` and returns its path."""

    model: str

    async def render(self, clip: ClipRequest, workdir: Path, progress: ProgressFn) -> Path:
        """Render the clip; `progress` takes 0..1; raise TaskError for failures the caller should read."""
        ...


def load_renderer(config: Config, http: aiohttp.ClientSession) -> ClipRenderer:
    """The built-in renderer, or the one `providers.video.plugin` ("module:factory") makes."""
    plugin = config.providers.video.plugin.strip()
    if not plugin:
        return FfmpegRenderer(
            GuardedClient.from_config(config, http),
            download.Limits.from_config(config.media),
            Bounds.from_config(config.media),
            MediaStore.from_config(config),
        )
    module_name, _, attr = plugin.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr or "renderer")
    except (ImportError, AttributeError) as exc:
        raise TaskError(f"providers.video.plugin {plugin!r} cannot be loaded: {exc}") from None
    renderer: ClipRenderer = factory(config, http)
    return renderer


def even_split(total: float, count: int) -> list[float]:
    """`count` equal holds adding up to `total`."""
    return [total / count] * count


def motions_for(name: str, count: int) -> list[str]:
    """One motion per shot: `ken_burns` cycles zoom in, pan right, zoom out, pan left; others repeat."""
    if name == "ken_burns":
        cycle = ("zoom_in", "pan_right", "zoom_out", "pan_left")
        return [cycle[i % len(cycle)] for i in range(count)]
    return [name] * count


async def render_clip(
    renderer: ClipRenderer, clip: ClipRequest, workdir: Path, progress: ProgressFn
) -> tuple[Path, ffmpeg.MediaInfo]:
    """Render with `renderer` and measure the file it made."""
    path = await renderer.render(clip, workdir, progress)
    if not path.is_file() or path.stat().st_size == 0:
        raise TaskError("Rendering produced no output file")
    return path, await ffmpeg.probe(path)


def _frames(holds: list[float], total: int) -> list[int]:
    # Whole frames per shot by largest remainder, so they add up to exactly `total`.
    exact = [h / sum(holds) * total for h in holds]
    frames = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - frames[i], reverse=True)
    for i in by_remainder[: total - sum(frames)]:
        frames[i] += 1
    return [max(1, f) for f in frames]


def _motion(name: str, frames: int) -> str:
    t = f"on/{max(1, frames - 1)}"
    centre = "x='iw/2-(iw/zoom/2)':y='ih/2-(ih/zoom/2)'"
    return {
        "zoom_in": f"z='1+{_ZOOM}*{t}':{centre}",
        "zoom_out": f"z='{1 + _ZOOM}-{_ZOOM}*{t}':{centre}",
        "pan_right": f"z='{1 + _ZOOM}':x='(iw-iw/zoom)*{t}':y='ih/2-(ih/zoom/2)'",
        "pan_left": f"z='{1 + _ZOOM}':x='(iw-iw/zoom)*(1-{t})':y='ih/2-(ih/zoom/2)'",
        "static": "z='1':x='0':y='0'",
    }[name]


def slideshow_graph(motions: list[str], holds: list[int], fade: int, clip: ClipRequest) -> tuple[str, str]:
    """The filter graph for images 0..n-1 (`holds` in frames), and its output label."""
    size = f"{clip.width}x{clip.height}"
    parts = []
    for i, (motion, hold) in enumerate(zip(motions, holds, strict=True)):
        frames = hold + (fade if i < len(holds) - 1 else 0)
        parts.append(
            # One frame of each image (an animated GIF, APNG or WebP has more), held for `frames`.
            f"[{i}:v]trim=end_frame=1,scale={clip.width}:{clip.height}:force_original_aspect_ratio=increase,"
            f"crop={clip.width}:{clip.height},setsar=1,"
            f"zoompan={_motion(motion, frames)}:d={frames}:s={size}:fps={clip.fps},"
            f"format=yuv420p,trim=end_frame={frames}[s{i}]"
        )
    if len(holds) == 1:
        return ";".join(parts), "s0"
    if fade == 0:
        inputs = "".join(f"[s{i}]" for i in range(len(holds)))
        parts.append(f"{inputs}concat=n={len(holds)}:v=1:a=0[out]")
        return ";".join(parts), "out"
    last, elapsed = "s0", 0
    for i in range(1, len(holds)):
        elapsed += holds[i - 1]
        label = f"x{i}"
        parts.append(
            f"[{last}][s{i}]xfade=transition=fade:duration={fade / clip.fps:.6f}:"
            f"offset={elapsed / clip.fps:.6f}[{label}]"
        )
        last = label
    return ";".join(parts), last


def find_font() -> str | None:
    """A TrueType font for the title card, or None (then the card is a plain colour)."""
    for path in FONT_CANDIDATES:
        if Path(path).is_file():
            return path
    found = sorted(glob.glob("/usr/share/fonts/**/*.ttf", recursive=True))
    return found[0] if found else None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("'", "\\'")


class FfmpegRenderer:
    """The built-in renderer: downloads the images and renders them with the bundled ffmpeg."""

    model = MODEL

    def __init__(
        self, inputs: GuardedClient, limits: download.Limits, bounds: Bounds, store: MediaStore | None = None
    ) -> None:
        self.inputs = inputs
        self.limits = limits
        self.bounds = bounds
        self.store = store

    async def render(self, clip: ClipRequest, workdir: Path, progress: ProgressFn) -> Path:
        """Download, then render; progress is 0..0.2 for downloads and 0.2..1 for ffmpeg."""
        output = workdir / "clip.mp4"
        total = max(1, round(clip.duration * clip.fps))
        if clip.shots:
            download.check_count([s.url for s in clip.shots], self.limits, "images")
            own = None
            if self.store is not None and clip.project_id is not None:
                own = OwnMedia(self.store, clip.project_id)
            images = []
            for i, shot in enumerate(clip.shots):
                images.append(
                    await download.fetch(
                        self.inputs,
                        shot.url,
                        workdir / f"image{i}",
                        kind="image",
                        limits=self.limits,
                        what="Image",
                        own=own,
                    )
                )
                # The header is read from disk: in a thread.
                await asyncio.to_thread(self.bounds.check_image, images[-1], f"Image {shot.url}")
                await progress(0.2 * (i + 1) / len(clip.shots))
            holds = _frames([s.hold for s in clip.shots], total)
            fade = min(round(FADE_SECONDS * clip.fps), min(holds) // 2) if len(holds) > 1 else 0
            graph, label = slideshow_graph([s.motion for s in clip.shots], holds, fade, clip)
            inputs = [arg for path in images for arg in self.bounds.image_input(path)]
        else:
            # Looking for a font may walk /usr/share/fonts, and the title is written to a file: in a thread.
            graph, label = await asyncio.to_thread(title_graph, clip, workdir, total)
            inputs = ["-f", "lavfi", "-i", f"color=c=0x15151c:s={clip.width}x{clip.height}:r={clip.fps}"]

        async def encoding(fraction: float) -> None:
            await progress(0.2 + 0.8 * fraction)

        await ffmpeg.ready()  # h264_encoder() asks which encoders ffmpeg has
        args = [
            *inputs,
            "-filter_complex",
            graph,
            "-map",
            f"[{label}]",
            "-frames:v",
            str(total),
            "-r",
            str(clip.fps),
            *ffmpeg.h264_encoder(),
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
            "-an",
            *self.bounds.output_args(),
            str(output),
        ]
        await ffmpeg.run_ffmpeg(
            args, log_path=workdir / "ffmpeg.log", duration=clip.duration, progress=encoding, what="Rendering"
        )
        self.bounds.check_output(output, "The rendered clip")
        return output


def title_graph(clip: ClipRequest, workdir: Path, total: int) -> tuple[str, str]:
    """The filter graph of a title card over input 0 (a colour source): the title, fading in and out.

    The caller's text reaches ffmpeg only as a file, drawn as it is: `expansion=none`, so `%{...}`
    sequences (expressions, metadata, time) in it are letters, not instructions.
    """
    fade = min(1.0, clip.duration / 4)
    steps = [f"[0:v]trim=end_frame={total},setsar=1,format=yuv420p"]
    font = find_font()
    if font and clip.title:
        text_file = workdir / "title.txt"
        text_file.write_text("\n".join(textwrap.wrap(clip.title, 40)[:8]), "utf-8")
        steps.append(
            f"drawtext=fontfile='{_escape(font)}':textfile='{_escape(str(text_file))}':expansion=none:"
            f"fontcolor=white:fontsize={max(12, clip.height // 18)}:line_spacing={max(4, clip.height // 60)}:"
            "x=(w-text_w)/2:y=(h-text_h)/2"
        )
    steps.append(f"fade=t=in:d={fade:.3f},fade=t=out:st={clip.duration - fade:.3f}:d={fade:.3f}")
    return ",".join(steps) + "[out]", "out"
