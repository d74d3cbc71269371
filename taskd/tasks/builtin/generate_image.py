"""`generate_image`: character designs and concept art from an OpenAI-compatible Images API."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import attrs

from taskd.media import download
from taskd.media.bounds import Bounds
from taskd.media.publish import publish
from taskd.media.scratch import scratch_dir
from taskd.media.store import scratch_root
from taskd.providers.images import ImagesClient
from taskd.tasks.spec import TaskContext, TaskError, TaskType
from taskd.validation import MIN_SIDE, http_url, max_length, not_blank, one_of, resolution

QUALITIES = ("low", "medium", "high", "standard", "hd", "auto")
# The largest side of an image asked for (the `size` sent to the provider).
MAX_SIDE = 4096
# style_guide and reference_images are not fetched: they go into the prompt as text, so each is bounded
# as a callback_url is. Unbounded, 16 URLs of 64 KB took the prompt past its own 4000 characters up to
# the body limit, as character_id, pose and lighting did.
MAX_URL = 2048


@attrs.frozen
class GenerateImageInput:
    prompt: str = attrs.field(
        validator=attrs.validators.and_(not_blank("Prompt is required"), max_length(4000, "Prompt"))
    )
    style_guide: str | None = attrs.field(
        default=None, validator=[max_length(MAX_URL, "Style guide URL"), http_url("Style guide")]
    )
    reference_images: list[str] = attrs.field(
        factory=list,
        validator=attrs.validators.and_(
            max_length(16, "Reference images", "images"),
            attrs.validators.deep_iterable(
                attrs.validators.and_(
                    max_length(MAX_URL, "Each reference image URL"), http_url("Reference images")
                )
            ),
        ),
    )
    # Appended to the prompt the API is sent: unbounded, they carried a prompt past its own 4000 up to
    # the body limit (a MiB sent to the provider, again at each retry of a 5xx).
    character_id: str | None = attrs.field(default=None, validator=max_length(100, "Character ID"))
    pose: str | None = attrs.field(default=None, validator=max_length(500, "Pose"))
    lighting: str | None = attrs.field(default=None, validator=max_length(500, "Lighting"))
    resolution: str = attrs.field(
        default="1024x1024",
        validator=resolution(MAX_SIDE),
        # The sides' bounds, which the published pattern (10 to 99999 a side) cannot say.
        metadata={"description": f"WxH, each side {MIN_SIDE}..{MAX_SIDE}: else a 400 at submit"},
    )
    quality: str = attrs.field(default="high", validator=one_of(QUALITIES, "Quality"))


def compose_prompt(data: GenerateImageInput) -> str:
    """The prompt with character, pose and lighting, and the style guide and references as URLs."""
    lines = [data.prompt.strip()]
    for label, value in (("Character", data.character_id), ("Pose", data.pose), ("Lighting", data.lighting)):
        if value:
            lines.append(f"{label}: {value.replace('_', ' ')}.")
    if data.style_guide:
        lines.append(f"Follow the style guide: {data.style_guide}")
    if data.reference_images:
        lines.append("Reference images: " + " ".join(data.reference_images))
    return "\n".join(lines)


async def _image_file(ctx: TaskContext, image: Any, workdir: Path) -> Path:
    limits = download.Limits.from_config(ctx.config.media)
    if image.url is not None:
        # The provider's own host is trusted (the operator chose it); anywhere else is guarded.
        return await download.fetch(
            ctx.inputs,
            image.url,
            workdir / "image",
            kind="image",
            limits=limits,
            what="Generated image",
            trusted=[ctx.config.providers.image.base_url],
        )
    if len(image.data) > limits.max_bytes:
        raise TaskError(f"Generated image is larger than the {limits.max_bytes} byte limit")
    ext = download.sniff(image.data[:16], "image")
    if ext is None:
        raise TaskError("Image provider returned data that is not a PNG, JPEG, GIF, BMP or WebP image")
    path = workdir / f"image.{ext}"
    await asyncio.to_thread(path.write_bytes, image.data)
    return path


async def run(ctx: TaskContext, data: GenerateImageInput) -> dict[str, Any]:
    """Ask the Images API for one image and store it; metadata is measured from the stored file."""
    client = ImagesClient(ctx.config.providers.image, ctx.http, ctx.provider_gate("image"))
    await ctx.progress(0.1, "generating_image")
    image = await client.generate(
        compose_prompt(data),
        data.resolution,
        data.quality,
        max_image_bytes=ctx.config.media.max_download_bytes,
    )
    await ctx.progress(0.8, "storing_media")
    async with scratch_dir(scratch_root(ctx.config), ctx.task_id) as workdir:
        path = await _image_file(ctx, image, workdir)
        # Read from the header, not decoded: a provider's answer is bounded like a caller's file.
        bounds = Bounds.from_config(ctx.config.media)
        width, height = await asyncio.to_thread(bounds.check_image, path, "Generated image")
        ext = path.suffix.lstrip(".")
        metadata = {
            "resolution": f"{width}x{height}",
            "format": ext,
            "generation_model": client.model,
            "revised_prompt": image.revised_prompt,
        }
        result = await publish(
            ctx.config, ctx.project_id, path, f"image_{ctx.task_id}.{ext}", metadata, ctx.run_state
        )
    await ctx.progress(1.0, "done")
    return result


TASK = TaskType(
    name="generate_image",
    input=GenerateImageInput,
    queue="gpu_medium",
    expected_duration=45.0,
    handler=run,
    soft_time_limit=270.0,
    hard_time_limit=300.0,
    stores_media=True,
    gpu="none",
)
