"""Clips from still images: the ClipRenderer interface and the built-in ffmpeg animatic renderer."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import aiohttp

from taskd.config import Config
from taskd.errors import TaskError
from taskd.media import download, ffmpeg
from taskd.media.animatic_graph import animatic, find_font, title_graph
from taskd.media.bounds import Bounds
from taskd.media.clip import MOTIONS, ClipRequest, ImageChange, Layer, Pose, Shot, Subtitle
from taskd.media.own import MediaLinks
from taskd.net.guarded import GuardedClient

# The request types live in taskd.media.clip; they are named here too, where renderers look for them.
__all__ = [
    "MODEL",
    "MOTIONS",
    "ClipRenderer",
    "ClipRequest",
    "FfmpegRenderer",
    "ImageChange",
    "Layer",
    "Pose",
    "Shot",
    "Subtitle",
    "even_split",
    "find_font",
    "load_renderer",
    "motions_for",
    "render_clip",
    "title_graph",
]

ProgressFn = Callable[[float], Awaitable[None]]
MODEL = "taskd-ffmpeg"


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
            MediaLinks.from_config(config),
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


class FfmpegRenderer:
    """The built-in animatic (previs) renderer: downloads the images and composes them with the bundled ffmpeg."""

    model = MODEL

    def __init__(
        self, inputs: GuardedClient, limits: download.Limits, bounds: Bounds, media: MediaLinks | None = None
    ) -> None:
        self.inputs = inputs
        self.limits = limits
        self.bounds = bounds
        self.media = media

    async def render(self, clip: ClipRequest, workdir: Path, progress: ProgressFn) -> Path:
        """Download, then render; progress is 0..0.2 for downloads and 0.2..1 for ffmpeg."""
        output = workdir / "clip.mp4"
        total = clip.frame_count
        if clip.shots or clip.layers:
            # Each distinct URL is fetched once; the layers' images count against media.max_inputs too.
            used = [s.url for s in clip.shots] + [url for layer in clip.layers for url in layer.image_urls]
            urls = list(dict.fromkeys(used))
            download.check_count(urls, self.limits, "images")
            own = None
            if self.media is not None and clip.project_id is not None:
                own = self.media.of(clip.project_id)
            files: dict[str, Path] = {}
            sizes: dict[str, tuple[int, int]] = {}
            decoded = 0
            for i, url in enumerate(urls):
                files[url] = await download.fetch(
                    self.inputs,
                    url,
                    workdir / f"image{i}",
                    kind="image",
                    limits=self.limits,
                    what="Image",
                    own=own,
                )
                # The header is read from disk: in a thread.
                sizes[url] = await asyncio.to_thread(self.bounds.check_image, files[url], f"Image {url}")
                # ffmpeg decodes every input at once: the sum is what the render holds, checked as
                # each arrives so that no more are fetched once it is over.
                decoded += await asyncio.to_thread(self.bounds.decoded_image_bytes, files[url], sizes[url])
                self.bounds.check_decoded_images(decoded, "The images")
                await progress(0.2 * (i + 1) / len(urls))
            # One ffmpeg input per distinct URL (the graph splits one used more than once): an image is
            # decoded once however often the clip shows it.
            inputs = [arg for url in urls for arg in self.bounds.image_input(files[url])]
            # Looking for a font may walk /usr/share/fonts, and labels are written to files: in a thread.
            graph, label = await asyncio.to_thread(animatic, clip, workdir, sizes)
        else:
            graph, label = await asyncio.to_thread(title_graph, clip, workdir, total)
            inputs = ["-f", "lavfi", "-i", f"color=c=0x15151c:s={clip.width}x{clip.height}:r={clip.fps}"]

        async def encoding(fraction: float) -> None:
            await progress(0.2 + 0.8 * fraction)

        await ffmpeg.ready()  # h264_encoder() asks which encoders ffmpeg has
        # The graph goes through a file (`-/filter_complex`: the option's value read from it): one
        # argument of a command may have at most 128 KiB (Linux's MAX_ARG_STRLEN), and a graph of many
        # layers, each with its keyframes' tracks, is longer; exec would refuse it (E2BIG).
        graph_file = workdir / "graph.txt"
        await asyncio.to_thread(graph_file.write_text, graph, "utf-8")
        args = [
            *inputs,
            "-/filter_complex",
            str(graph_file),
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
