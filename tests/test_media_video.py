"""generate_video and render_animation: real ffmpeg renders of small PNGs served on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import attrs
import psutil
import pytest
from fake_media_apis import make_ctx, png

from taskd.config import Config, MediaConfig, NetworkConfig
from taskd.media import ffmpeg
from taskd.media.store import MediaStore
from taskd.tasks.builtin import generate_video, render_animation
from taskd.tasks.builtin.generate_video import GenerateVideoInput
from taskd.tasks.builtin.render_animation import Keyframe, RenderAnimationInput
from taskd.tasks.spec import TaskError


def media_config(tmp_path: Path, **media: object) -> Config:
    settings = {"base_url": "http://media.test", "scratch_dir": str(tmp_path / "scratch"), **media}
    # The fake file server is on loopback.
    network = NetworkConfig(allow_private=True)
    return Config(data_dir=str(tmp_path / "data"), media=MediaConfig(**settings), network=network)


def stored_file(config: Config, media_url: str) -> Path:
    path = media_url.split("?")[0].removeprefix("http://media.test/media/")
    return MediaStore.from_config(config).root / path


async def test_storyboard_video_has_the_asked_duration_size_and_fps(tmp_path, files, http):
    urls = [files.add(f"s{i}.png", png(64, 48, (60 * i, 90, 30))) for i in range(3)]
    config = media_config(tmp_path)
    ctx, sink = make_ctx(http, config)
    data = GenerateVideoInput(storyboard_images=urls, duration=3, fps=12, resolution="320x240")

    result = await generate_video.run(ctx, data)

    meta = result["metadata"]
    assert meta["resolution"] == "320x240"
    assert meta["fps"] == 12
    assert meta["duration"] == pytest.approx(3.0, abs=0.1)
    assert meta["format"] == "mp4"
    assert meta["generation_model"] == "taskd-ffmpeg"
    assert result["payload_media_id"] is None
    path = stored_file(config, result["media_url"])
    assert path.stat().st_size == meta["file_size"]
    measured = await ffmpeg.probe(path)
    assert measured.video_codec == "h264"
    assert measured.duration == pytest.approx(3.0, abs=0.1)
    assert sink.calls[-1] == (1.0, "done")
    assert "rendering_video" in {step for _, step in sink.calls}
    assert not list((tmp_path / "scratch").iterdir())


async def test_video_without_images_is_a_title_card(tmp_path, http):
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    data = GenerateVideoInput(
        scene_description="Detective enters the alley", duration=2, fps=10, resolution="160x120"
    )

    result = await generate_video.run(ctx, data)

    assert result["metadata"]["duration"] == pytest.approx(2.0, abs=0.1)
    assert result["metadata"]["resolution"] == "160x120"


async def test_animation_reads_an_earlier_steps_image_link_from_the_store(tmp_path, http):
    config = attrs.evolve(media_config(tmp_path), network=NetworkConfig())  # the guard closed
    source = tmp_path / "still.png"
    source.write_bytes(png(40, 40, (0, 40, 200)))
    # A media_url at http://media.test, which resolves nowhere: only the store can answer it.
    url = MediaStore.from_config(config).put("proj-1", "image_earlier.png", source).url
    ctx, _ = make_ctx(http, config)
    data = RenderAnimationInput("detective", [Keyframe(url)], duration=1, fps=10, resolution="128x96")

    result = await render_animation.run(ctx, data)

    assert result["metadata"]["duration"] == pytest.approx(1.0, abs=0.1)


async def test_animation_holds_keyframes_at_their_times(tmp_path, files, http):
    urls = [files.add(f"k{i}.png", png(40, 40, (0, 40 * i, 200))) for i in range(3)]
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    frames = [Keyframe(urls[0], 0.0), Keyframe(urls[1], 1.0), Keyframe(urls[2], 1.5)]
    data = RenderAnimationInput(
        "detective", frames, animation_type="pan_left", duration=2, fps=10, resolution="128x96"
    )

    result = await render_animation.run(ctx, data)

    assert result["metadata"]["duration"] == pytest.approx(2.0, abs=0.1)
    assert result["metadata"]["resolution"] == "128x96"
    assert result["media_url"].startswith("http://media.test/media/proj-1/animation_task-1.mp4?expires=")


async def test_unreachable_image_fails_naming_the_url(tmp_path, http):
    ctx, _ = make_ctx(http, media_config(tmp_path))
    url = "http://127.0.0.1:9/nothing.png"

    with pytest.raises(TaskError, match=r"Image http://127.0.0.1:9/nothing.png is unreachable"):
        await generate_video.run(
            ctx, GenerateVideoInput(storyboard_images=[url], duration=1, resolution="64x64")
        )
    assert not list((tmp_path / "scratch").iterdir())


async def test_missing_image_fails_with_its_http_status(tmp_path, files, http):
    ctx, _ = make_ctx(http, media_config(tmp_path))

    with pytest.raises(TaskError, match="could not be fetched: HTTP 404"):
        await generate_video.run(
            ctx, GenerateVideoInput(storyboard_images=[f"{files.url}/gone.png"], duration=1)
        )


async def test_non_image_url_fails_saying_so(tmp_path, files, http):
    url = files.add("page.html", b"<html>hello</html>", "text/html")
    ctx, _ = make_ctx(http, media_config(tmp_path))

    with pytest.raises(TaskError, match=r"is not a supported image file$"):
        await generate_video.run(ctx, GenerateVideoInput(storyboard_images=[url], duration=1))


async def test_oversized_image_fails_at_the_limit(tmp_path, files, http):
    ctx, _ = make_ctx(http, media_config(tmp_path, max_download_bytes=100_000))

    with pytest.raises(TaskError, match="larger than the 100000 byte limit"):
        await generate_video.run(ctx, GenerateVideoInput(storyboard_images=[f"{files.url}/huge"], duration=1))
    assert not list((tmp_path / "scratch").iterdir())


async def test_too_many_images_fail_before_any_download(tmp_path, files, http):
    urls = [files.add(f"n{i}.png", png()) for i in range(3)]
    ctx, _ = make_ctx(http, media_config(tmp_path, max_inputs=2))

    with pytest.raises(TaskError, match="Too many images: 3 given, at most 2"):
        await generate_video.run(ctx, GenerateVideoInput(storyboard_images=urls, duration=1))


async def test_slow_image_times_out(tmp_path, files, http):
    files.add("late.png", png())
    ctx, _ = make_ctx(http, media_config(tmp_path, download_timeout=0.3))

    with pytest.raises(TaskError, match=r"did not download within 0\.3s"):
        await generate_video.run(
            ctx, GenerateVideoInput(storyboard_images=[f"{files.url}/slow/late.png"], duration=1)
        )


def _ffmpeg_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "ffmpeg" in p.name()]


async def test_cancel_mid_render_kills_ffmpeg_and_removes_scratch(tmp_path, files, http):
    url = files.add("big.png", png(320, 240))
    config = media_config(tmp_path)
    ctx, sink = make_ctx(http, config)
    data = GenerateVideoInput(storyboard_images=[url], duration=30, fps=30, resolution="1280x720")
    job = asyncio.create_task(generate_video.run(ctx, data))
    async with asyncio.timeout(15):
        while not (_ffmpeg_children() and any(step == "rendering_video" for _, step in sink.calls)):
            await asyncio.sleep(0.05)
    renderers = _ffmpeg_children()

    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job

    assert renderers
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in renderers)
    assert not list((tmp_path / "scratch").iterdir())
    assert not (MediaStore.from_config(config).root / "proj-1").exists()
