"""generate_video and render_animation: real ffmpeg renders of small PNGs served on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import re
from pathlib import Path

import attrs
import psutil
import pytest
from fake_media_apis import make_ctx, png
from PIL import Image, ImageChops, ImageStat
from test_webhooks_connections import tls_receiver

from taskd.config import Config, MediaConfig, NetworkConfig
from taskd.media import animatic_graph, ffmpeg
from taskd.media.clip import ClipRequest, Layer, Pose
from taskd.media.store import MediaStore
from taskd.tasks.builtin import generate_video, render_animation
from taskd.tasks.builtin.generate_video import CharacterPosition, DialogueLine, GenerateVideoInput
from taskd.tasks.builtin.render_animation import Keyframe, RenderAnimationInput
from taskd.tasks.spec import TaskError, TransientError


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
    assert meta["codec"] == "h264"
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


async def test_a_storyboard_of_one_frame_shots_keeps_every_frame(tmp_path, files, http):
    # Eight images over eight frames: concat counted a shot of one frame as none, and the clip had 3.
    urls = [files.add(f"s{i}.png", png(64, 48, (30 * i, 90, 30))) for i in range(8)]
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    data = GenerateVideoInput(
        storyboard_images=urls, duration=2, fps=4, resolution="160x120", transition="cut"
    )

    result = await generate_video.run(ctx, data)

    assert result["metadata"]["duration"] == pytest.approx(2.0, abs=0.01)


async def test_video_without_images_is_a_title_card(tmp_path, http):
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    data = GenerateVideoInput(
        scene_description="Detective enters the alley", duration=2, fps=10, resolution="160x120"
    )

    result = await generate_video.run(ctx, data)

    assert result["metadata"]["duration"] == pytest.approx(2.0, abs=0.1)
    assert result["metadata"]["resolution"] == "160x120"


async def test_the_encoder_runs_as_many_threads_on_every_host(tmp_path, http):
    # x264 writes its settings into the stream; left to itself it ran 1.5 threads per core, and a
    # render's memory grew with them (a 4K animatic passed execution.memory_limit_mb on 16 cores).
    await ffmpeg.ready()
    if "libx264" not in ffmpeg.encoders():
        pytest.skip("this ffmpeg has no libx264")
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)

    result = await generate_video.run(ctx, GenerateVideoInput(duration=1, fps=4, resolution="160x120"))

    settings = re.search(rb" threads=(\d+) ", stored_file(config, result["media_url"]).read_bytes())
    assert settings is not None
    assert int(settings.group(1)) == ffmpeg.ENCODER_THREADS


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


async def test_an_image_host_whose_certificate_is_not_trusted_fails_the_task_at_once(tmp_path, http):
    # Signed by the test authority, which taskd does not trust: no retry makes it trusted.
    async with tls_receiver("localhost") as port:
        url = f"https://localhost:{port}/frame.png"
        ctx, _ = make_ctx(http, media_config(tmp_path))

        with pytest.raises(TaskError) as failure:
            await generate_video.run(
                ctx, GenerateVideoInput(storyboard_images=[url], duration=1, resolution="64x64")
            )

    assert not isinstance(failure.value, TransientError)
    assert str(failure.value).startswith(f"Image {url} was refused: its TLS certificate is not valid (")


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


async def test_an_image_whose_first_bytes_arrive_alone_is_still_recognised(tmp_path, files, http):
    files.add("frame.png", png())
    ctx, _ = make_ctx(http, media_config(tmp_path))

    result = await generate_video.run(
        ctx, GenerateVideoInput(storyboard_images=[f"{files.url}/split/frame.png"], duration=1)
    )

    assert result["media_url"]


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


def _renderers() -> list[psutil.Process]:
    # The render itself: not the one-off `ffmpeg -encoders` probe that may run just before it (and
    # may be a zombie by the time its command line is read).
    found = []
    for process in _ffmpeg_children():
        with contextlib.suppress(psutil.Error):
            if "-/filter_complex" in process.cmdline():  # the render reads its graph from a file
                found.append(process)
    return found


async def test_cancel_mid_render_kills_ffmpeg_and_removes_scratch(tmp_path, files, http):
    url = files.add("big.png", png(320, 240))
    config = media_config(tmp_path)
    ctx, sink = make_ctx(http, config)
    data = GenerateVideoInput(storyboard_images=[url], duration=30, fps=30, resolution="1280x720")
    job = asyncio.create_task(generate_video.run(ctx, data))
    async with asyncio.timeout(15):
        while not (_renderers() and any(step == "rendering_video" for _, step in sink.calls)):
            await asyncio.sleep(0.05)
    renderers = _renderers()

    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job

    assert renderers
    left = [p for p in renderers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left
    assert not list((tmp_path / "scratch").iterdir())
    assert not (MediaStore.from_config(config).root / "proj-1").exists()


# The animatic: what the request asks of camera, lighting and characters, measured in decoded frames.


def textured(width: int = 160, height: int = 90) -> bytes:
    """A PNG of random grey blocks: any shift of the picture shows, and only the right shift matches."""
    rng = random.Random(7)
    image = Image.new("L", (width // 4, height // 4))
    image.putdata([rng.randrange(256) for _ in range(image.width * image.height)])
    out = io.BytesIO()
    image.resize((width, height), Image.Resampling.NEAREST).convert("RGB").save(out, "PNG")
    return out.getvalue()


async def decoded(config: Config, result: dict) -> list[Image.Image]:
    """Every frame of the result's video, decoded by ffmpeg to RGB pixels."""
    width, height = (int(side) for side in result["metadata"]["resolution"].split("x"))
    proc = await asyncio.create_subprocess_exec(
        *(ffmpeg.ffmpeg_exe(), "-loglevel", "error", "-i", str(stored_file(config, result["media_url"]))),
        *("-f", "rawvideo", "-pix_fmt", "rgb24", "-"),
        stdout=asyncio.subprocess.PIPE,
    )
    raw, _ = await proc.communicate()
    size = width * height * 3
    assert raw and len(raw) % size == 0
    return [Image.frombytes("RGB", (width, height), raw[i : i + size]) for i in range(0, len(raw), size)]


def box_of(
    frame: Image.Image, wanted: tuple[int, int, int], tolerance: int = 60
) -> tuple[int, int, int, int] | None:
    """The bounding box of the pixels within `tolerance` of colour `wanted` (per channel)."""
    apart = ImageChops.difference(frame, Image.new("RGB", frame.size, wanted)).split()
    near = [channel.point(lambda v: 255 if v <= tolerance else 0) for channel in apart]
    return ImageChops.multiply(ImageChops.multiply(near[0], near[1]), near[2]).getbbox()


def centre_x(box: tuple[int, int, int, int] | None) -> float:
    assert box is not None, "the character is not in the frame"
    return (box[0] + box[2]) / 2


def horizontal_shift(a: Image.Image, b: Image.Image, reach: int = 30) -> tuple[int, float, float]:
    """The dx for which b's middle matches a's middle moved by dx: (dx, its mean difference, the difference at 0)."""
    grey_a, grey_b = a.convert("L"), b.convert("L")
    middle = (reach, 10, a.width - reach, a.height - 10)
    target = grey_b.crop(middle)

    def difference(dx: int) -> float:
        moved = grey_a.crop((middle[0] + dx, middle[1], middle[2] + dx, middle[3]))
        return ImageStat.Stat(ImageChops.difference(moved, target)).mean[0]

    best = min(range(-reach, reach + 1), key=difference)
    return best, difference(best), difference(0)


def greyness(frame: Image.Image) -> float:
    """The mean spread between a pixel's largest and smallest channel: 0 for pure greys."""
    r, g, b = frame.split()
    largest, smallest = (
        ImageChops.lighter(ImageChops.lighter(r, g), b),
        ImageChops.darker(ImageChops.darker(r, g), b),
    )
    return float(ImageStat.Stat(ImageChops.difference(largest, smallest)).mean[0])


MARKER_RED = (0xE0, 0x53, 0x3D)


async def test_animatic_frames_have_the_asked_size_and_count(tmp_path, files, http):
    url = files.add("t.png", textured())
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    data = GenerateVideoInput(
        storyboard_images=[url], camera_angle="wide_shot", duration=1.5, fps=8, resolution="96x54"
    )

    frames = await decoded(config, await generate_video.run(ctx, data))

    assert len(frames) == 12
    assert {f.size for f in frames} == {(96, 54)}


async def test_a_pan_shifts_the_picture_sideways(tmp_path, files, http):
    url = files.add("t.png", textured())
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    data = GenerateVideoInput(
        storyboard_images=[url], camera_angle="slow pan right", duration=2, fps=6, resolution="160x90"
    )

    result = await generate_video.run(ctx, data)
    frames = await decoded(config, result)

    dx, matched, unmoved = horizontal_shift(frames[0], frames[-1])
    # The camera moves right, so the picture moves left: the last frame is the first moved by dx > 0.
    assert 10 <= dx <= 25
    assert matched < unmoved / 3
    assert result["metadata"]["applied"]["camera"] == "pan_right"


def drawn(width: int, height: int, box: tuple[int, int, int, int]) -> bytes:
    """A black PNG with a white rectangle at `box`."""
    image = Image.new("RGB", (width, height))
    image.paste((255, 255, 255), box)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


async def test_a_wide_shot_zooms_out(tmp_path, files, http):
    url = files.add("sq.png", drawn(160, 90, (40, 5, 120, 85)))
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    data = GenerateVideoInput(
        storyboard_images=[url], camera_angle="wide_shot", duration=1, fps=4, resolution="160x90"
    )

    frames = await decoded(config, await generate_video.run(ctx, data))

    first, last = box_of(frames[0], (255, 255, 255)), box_of(frames[-1], (255, 255, 255))
    assert first is not None and last is not None
    # 12 % larger at the start (zoomed in), the image's own 80 px at the end.
    assert first[2] - first[0] == pytest.approx(90, abs=3)
    assert last[2] - last[0] == pytest.approx(80, abs=3)


async def test_a_dutch_angle_tilts_the_horizon(tmp_path, files, http):
    url = files.add("sky.png", drawn(160, 90, (0, 0, 160, 45)))
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    data = GenerateVideoInput(
        storyboard_images=[url], camera_angle="dutch angle", duration=1, fps=4, resolution="160x90"
    )

    frame = (await decoded(config, await generate_video.run(ctx, data)))[0].convert("L")

    def horizon(x: int) -> int:
        return next(y for y in range(frame.height) if frame.getpixel((x, y)) < 128)

    # Turned 8 degrees clockwise: the horizon falls to the right by about tan(8°) per pixel across.
    assert horizon(140) - horizon(20) == pytest.approx(120 * 0.1405, abs=4)


async def test_a_static_camera_keeps_the_picture_still(tmp_path, files, http):
    url = files.add("t.png", textured())
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    data = GenerateVideoInput(
        storyboard_images=[url], camera_angle="locked-off tripod", duration=1, fps=4, resolution="160x90"
    )

    frames = await decoded(config, await generate_video.run(ctx, data))

    assert ImageStat.Stat(ImageChops.difference(frames[0], frames[-1]).convert("L")).mean[0] < 2


@pytest.mark.parametrize(("transition", "blended"), [("crossfade", True), ("cut", False)])
async def test_shots_cross_fade_unless_a_cut_is_asked(tmp_path, files, http, transition, blended):
    red, blue = files.add("r.png", png(64, 48, (220, 0, 0))), files.add("b.png", png(64, 48, (0, 0, 220)))
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    data = GenerateVideoInput(
        storyboard_images=[red, blue],
        camera_angle="static",
        transition=transition,
        duration=2,
        fps=8,
        resolution="64x48",
    )

    result = await generate_video.run(ctx, data)
    frames = await decoded(config, result)

    # A blend of the two shots has both red and blue in the frame's corner.
    corners = [f.getpixel((2, 2)) for f in frames]
    assert any(r > 40 and b > 40 for r, _, b in corners) is blended
    assert result["metadata"]["applied"]["transition"] == transition


async def test_noir_lighting_grades_to_near_greyscale(tmp_path, files, http):
    url = files.add("c.png", png(160, 90, (220, 60, 30)))
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    data = GenerateVideoInput(
        storyboard_images=[url], lighting="dramatic_noir", duration=1, fps=4, resolution="160x90"
    )

    result = await generate_video.run(ctx, data)
    frames = await decoded(config, result)

    assert greyness(frames[2]) < 6
    assert result["metadata"]["applied"]["lighting"] == "noir"


async def test_golden_hour_lighting_warms_the_picture(tmp_path, files, http):
    url = files.add("g.png", png(160, 90, (128, 128, 128)))
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    data = GenerateVideoInput(
        storyboard_images=[url], lighting="golden hour", duration=1, fps=4, resolution="160x90"
    )

    frames = await decoded(config, await generate_video.run(ctx, data))

    red, _, blue = ImageStat.Stat(frames[2]).mean
    assert red - blue > 20


@pytest.mark.parametrize(
    ("position", "expected_x"), [("left_third", 160 / 3), ("center_frame", 80), ("right_third", 320 / 3)]
)
async def test_a_character_stands_at_its_named_position(tmp_path, files, http, position, expected_x):
    url = files.add("g.png", png(160, 90, (40, 160, 60)))
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    data = GenerateVideoInput(
        storyboard_images=[url],
        camera_angle="static",
        character_positions=[CharacterPosition("detective_jones", position, "standing")],
        duration=1,
        fps=4,
        resolution="160x90",
    )

    frames = await decoded(config, await generate_video.run(ctx, data))

    assert centre_x(box_of(frames[0], MARKER_RED)) == pytest.approx(expected_x, abs=3)
    assert centre_x(box_of(frames[-1], MARKER_RED)) == pytest.approx(expected_x, abs=3)


async def test_a_walking_character_drifts_across_the_frame(tmp_path, files, http):
    url = files.add("g.png", png(160, 90, (40, 160, 60)))
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    data = GenerateVideoInput(
        storyboard_images=[url],
        camera_angle="static",
        character_positions=[CharacterPosition("detective_jones", "left_third", "walking")],
        duration=2,
        fps=4,
        resolution="160x90",
    )

    frames = await decoded(config, await generate_video.run(ctx, data))

    start, end = centre_x(box_of(frames[0], MARKER_RED)), centre_x(box_of(frames[-1], MARKER_RED))
    assert start == pytest.approx(160 / 3, abs=3)
    assert end - start == pytest.approx(0.3 * 160, abs=4)


async def test_characters_without_storyboard_images_stand_on_a_set_not_a_title_card(tmp_path, http):
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    data = GenerateVideoInput(
        scene_description="Detective enters the alley",
        character_positions=[CharacterPosition("detective_jones", "center")],
        duration=1,
        fps=4,
        resolution="160x90",
    )

    result = await generate_video.run(ctx, data)
    frames = await decoded(config, result)

    assert centre_x(box_of(frames[0], MARKER_RED)) == pytest.approx(80, abs=3)
    assert "title_card" not in result["metadata"]["applied"]


def test_the_documented_example_maps_to_the_vocabulary():
    data = GenerateVideoInput(
        storyboard_images=["https://media.ft.tc/storyboard1.jpg"],
        camera_angle="wide_shot",
        lighting="dramatic_noir",
        character_positions=[CharacterPosition("detective_jones", "center_frame", "walking_slowly")],
    )

    clip = generate_video.clip_request("task-1", data)

    assert clip.applied == {
        "camera": "zoom_out",
        "lighting": "noir",
        "transition": "none",
        "characters": [{"character_id": "detective_jones", "position": "center", "action": "walk"}],
    }
    assert [s.motion for s in clip.shots] == ["zoom_out"]
    assert clip.grade == "noir"


async def test_words_outside_the_vocabulary_are_rendered_and_reported_unrecognised(tmp_path, files, http):
    url = files.add("g.png", png(64, 48))
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    data = GenerateVideoInput(
        storyboard_images=[url],
        camera_angle="vertigo effect",
        lighting="purple haze",
        character_positions=[CharacterPosition("jones", "upstage", "juggling")],
        duration=1,
        fps=4,
        resolution="64x48",
    )

    result = await generate_video.run(ctx, data)

    assert result["metadata"]["applied"] == {
        "camera": "unrecognised",
        "lighting": "unrecognised",
        "transition": "none",
        "characters": [{"character_id": "jones", "position": "unrecognised", "action": "unrecognised"}],
    }


def test_a_character_label_reaches_ffmpeg_only_through_a_file(tmp_path):
    layer = Layer(label="%{localtime}':x=0[out];", image_url=None, poses=[Pose(0.0)])
    clip = ClipRequest(task_id="t", shots=[], duration=1, fps=4, width=160, height=90, layers=[layer])

    graph, _ = animatic_graph.animatic(clip, tmp_path, [])

    assert "localtime" not in graph
    if animatic_graph.find_font():
        assert ":expansion=none:" in graph
        assert (tmp_path / "label0.txt").read_text().replace("\n", "") == "%{localtime}':x=0[out];"


async def test_a_keyframed_character_moves_from_its_first_keyframe_to_its_last(tmp_path, files, http):
    url = files.add("k.png", png(20, 30, (230, 30, 30)))
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    keyframes = [Keyframe(url, x=0.2, y=0.3), Keyframe(url, x=0.8, y=0.7)]
    data = RenderAnimationInput(
        "hero", keyframes, animation_type="static", duration=1, fps=4, resolution="160x90"
    )

    frames = await decoded(config, await render_animation.run(ctx, data))

    first, last = box_of(frames[0], (230, 30, 30)), box_of(frames[-1], (230, 30, 30))
    assert centre_x(first) == pytest.approx(0.2 * 160, abs=3)
    assert centre_x(last) == pytest.approx(0.8 * 160, abs=3)
    assert first is not None and last is not None
    assert (first[1] + first[3]) / 2 == pytest.approx(0.3 * 90, abs=3)
    assert (last[1] + last[3]) / 2 == pytest.approx(0.7 * 90, abs=3)


async def test_a_character_moves_along_the_most_keyframes_allowed(tmp_path, files, http):
    url = files.add("k.png", png(20, 30, (230, 30, 30)))
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    # 120 keyframes, each changing every value: x, scale, rotation and opacity go back and forth.
    keyframes = [
        Keyframe(
            url, x=(0.2, 0.8)[i % 2], scale=(0.5, 1.0)[i % 2], rotation=360 * (i % 2), opacity=(0.5, 1)[i % 2]
        )
        for i in range(120)
    ]
    data = RenderAnimationInput(
        "hero", keyframes, animation_type="static", duration=2, fps=4, resolution="160x90"
    )

    frames = await decoded(config, await render_animation.run(ctx, data))

    assert centre_x(box_of(frames[-1], (230, 30, 30))) == pytest.approx(0.8 * 160, abs=3)


async def test_keyframe_easing_shapes_the_motion_between_keyframes(tmp_path, files, http):
    url = files.add("k.png", png(20, 30, (230, 30, 30)))
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    keyframes = [Keyframe(url, 0.0, x=0.2, easing="ease_in"), Keyframe(url, 1.0, x=0.8)]
    data = RenderAnimationInput(
        "hero", keyframes, animation_type="static", duration=2, fps=4, resolution="160x90"
    )

    frames = await decoded(config, await render_animation.run(ctx, data))

    # Half-way (0.5 s, frame 2) an ease-in has covered a quarter of the way, not half.
    assert centre_x(box_of(frames[2], (230, 30, 30))) == pytest.approx((0.2 + 0.6 / 4) * 160, abs=3)


async def test_keyframes_scale_turn_and_fade_the_character(tmp_path, files, http):
    url = files.add("k.png", png(20, 40, (230, 30, 30)))
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    keyframes = [
        Keyframe(url, 0.0, scale=1.0),
        Keyframe(url, 1.0, scale=0.5, rotation=90, easing="linear"),
        Keyframe(url, 1.5, scale=0.5, rotation=90, opacity=0.0),
    ]
    data = RenderAnimationInput(
        "hero", keyframes, animation_type="static", duration=2, fps=4, resolution="160x90"
    )

    frames = await decoded(config, await render_animation.run(ctx, data))

    start, turned = box_of(frames[0], (230, 30, 30)), box_of(frames[4], (230, 30, 30))
    assert start is not None and turned is not None
    # 40 px tall at scale 1 (half the frame's 90 px, rounded up to even), then half that, lying on its side.
    assert start[3] - start[1] == pytest.approx(46, abs=3)
    assert turned[2] - turned[0] == pytest.approx(23, abs=3)
    assert turned[3] - turned[1] < 15
    assert box_of(frames[-1], (230, 30, 30)) is None


async def test_a_new_keyframe_image_replaces_the_drawing_at_its_time(tmp_path, files, http):
    red, blue = files.add("r.png", png(20, 30, (230, 30, 30))), files.add("b.png", png(20, 30, (30, 30, 230)))
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    keyframes = [Keyframe(red, 0.0), Keyframe(blue, 1.0)]
    data = RenderAnimationInput(
        "hero", keyframes, animation_type="static", duration=2, fps=4, resolution="160x90"
    )

    frames = await decoded(config, await render_animation.run(ctx, data))

    assert box_of(frames[3], (230, 30, 30)) and not box_of(frames[3], (30, 30, 230))
    assert box_of(frames[4], (30, 30, 230)) and not box_of(frames[4], (230, 30, 30))


async def test_an_image_that_changes_at_each_of_120_keyframes_is_rendered(tmp_path, files, http):
    red, blue = files.add("r.png", png(20, 30, (230, 30, 30))), files.add("b.png", png(20, 30, (30, 30, 230)))
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    # A layer per change of image, each along every keyframe: a filter graph of megabytes, far over
    # the 128 KiB one argument of a command may have.
    keyframes = [Keyframe((red, blue)[i % 2], x=(0.2, 0.8)[i % 2], rotation=i) for i in range(120)]
    data = RenderAnimationInput(
        "hero", keyframes, animation_type="static", duration=2, fps=4, resolution="160x90"
    )

    frames = await decoded(config, await render_animation.run(ctx, data))

    assert box_of(frames[-1], (30, 30, 230)) and not box_of(frames[-1], (230, 30, 30))
    # One drawing at a time, on every frame: never both, never none.
    assert all(bool(box_of(f, (230, 30, 30))) != bool(box_of(f, (30, 30, 230))) for f in frames)


async def test_a_character_whose_image_changes_at_each_keyframe_is_decoded_fitted_and_turned_once(
    tmp_path, files, http, monkeypatch
):
    red, blue = files.add("r.png", png(20, 30, (230, 30, 30))), files.add("b.png", png(20, 30, (30, 30, 230)))
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    renders, run_ffmpeg = [], ffmpeg.run_ffmpeg

    async def recorded(args, **kwargs):
        renders.append((list(args), Path(args[args.index("-/filter_complex") + 1]).read_text()))
        await run_ffmpeg(args, **kwargs)

    monkeypatch.setattr(ffmpeg, "run_ffmpeg", recorded)
    # 120 changes of image, every value moving: as a layer per change, 120 inputs and 120 chains of
    # box-sized buffers (13 GB at 1080p).
    keyframes = [
        Keyframe(
            (red, blue)[i % 2],
            x=(0.2, 0.8)[i % 2],
            scale=(0.5, 1)[i % 2],
            rotation=i,
            opacity=(0.5, 1)[i % 2],
        )
        for i in range(120)
    ]
    data = RenderAnimationInput("hero", keyframes, animation_type="static", duration=5, resolution="160x90")

    await render_animation.run(ctx, data)

    ((args, graph),) = renders
    assert args.count("-i") == 2
    assert len(re.findall(r"scale=w=\d+:h=\d+", graph)) == 2  # each image fitted into the box once
    assert graph.count("rotate=") == graph.count("colorchannelmixer@") == graph.count("overlay=") == 1


async def test_an_image_shown_only_between_two_frames_is_left_out(tmp_path, files, http):
    red, green, blue = (
        files.add("r.png", png(20, 30, (230, 30, 30))),
        files.add("g.png", png(20, 30, (30, 200, 30))),
        files.add("b.png", png(20, 30, (30, 30, 230))),
    )
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    # At 4 fps the frames are at 0, 0.25, 0.5 … s: green's 0.3..0.4 s has none.
    keyframes = [Keyframe(red, 0.0), Keyframe(green, 0.3), Keyframe(blue, 0.4)]
    data = RenderAnimationInput(
        "hero", keyframes, animation_type="static", duration=1, fps=4, resolution="160x90"
    )

    frames = await decoded(config, await render_animation.run(ctx, data))

    assert [bool(box_of(f, (230, 30, 30))) for f in frames] == [True, True, False, False]
    assert [bool(box_of(f, (30, 30, 230))) for f in frames] == [False, False, True, True]
    assert not any(box_of(f, (30, 200, 30)) for f in frames)


def exif_turned_jpeg(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    """A JPEG `width` x `height` in its header whose EXIF says to turn it a quarter (orientation 6):
    shown `height` x `width`, as a phone camera's photos are."""
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, "JPEG", exif=exif)
    return out.getvalue()


async def test_an_image_turned_by_its_exif_keeps_its_shape_when_the_character_changes_image(
    tmp_path, files, http
):
    # 60x20 in its header, shown 20x60 (ffmpeg turns it by its EXIF): fitted by the header's size it
    # was stretched to a wide drawing, though as the only image it is drawn tall.
    red = files.add("r.jpg", exif_turned_jpeg(60, 20, (230, 30, 30)))
    blue = files.add("b.png", png(20, 30, (30, 30, 230)))
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    keyframes = [Keyframe(red, 0.0), Keyframe(blue, 0.5)]
    data = RenderAnimationInput(
        "hero", keyframes, animation_type="static", duration=1, fps=4, resolution="160x90"
    )

    frames = await decoded(config, await render_animation.run(ctx, data))

    box = box_of(frames[0], (230, 30, 30))
    assert box is not None
    assert box[3] - box[1] > 2 * (box[2] - box[0]), box  # taller than wide, as shown


async def test_an_animation_is_drawn_over_its_background_image(tmp_path, files, http):
    sprite, background = (
        files.add("k.png", png(20, 30, (230, 30, 30))),
        files.add("bg.png", png(64, 36, (30, 160, 60))),
    )
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    data = RenderAnimationInput(
        "hero",
        [Keyframe(sprite, x=0.5)],
        animation_type="static",
        duration=1,
        fps=4,
        resolution="160x90",
        background_url=background,
    )

    result = await render_animation.run(ctx, data)
    frames = await decoded(config, result)

    assert frames[0].getpixel((5, 80)) == pytest.approx((30, 160, 60), abs=12)
    assert centre_x(box_of(frames[0], (230, 30, 30))) == pytest.approx(80, abs=3)
    assert result["metadata"]["applied"]["background"] == "image"


def foot_brightness(frame: Image.Image) -> int:
    """The brightest grey in the bottom quarter of a frame, where subtitles are drawn."""
    foot = frame.convert("L").crop((0, frame.height * 3 // 4, frame.width, frame.height))
    return int(foot.getextrema()[1])


needs_font = pytest.mark.skipif(
    animatic_graph.find_font() is None, reason="no TrueType font to draw subtitles with"
)


@needs_font
async def test_a_dialogue_line_is_burned_in_at_the_foot_only_during_its_time(tmp_path, http):
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    line = DialogueLine("We close at midnight.", character_id="jones", start=1.0, end=2.0)
    data = GenerateVideoInput(dialogue=[line], duration=2, fps=4, resolution="160x90")

    result = await generate_video.run(ctx, data)
    frames = await decoded(config, result)

    assert result["metadata"]["applied"]["subtitles"] == 1
    assert foot_brightness(frames[1]) < 80  # 0.25 s: before the line
    assert foot_brightness(frames[5]) > 180  # 1.25 s: white letters


@needs_font
async def test_dialogue_lines_without_times_take_turns_across_the_clip(tmp_path, files, http):
    url = files.add("d.png", png(64, 48, (20, 20, 30)))
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    lines = [DialogueLine("First line"), DialogueLine("A second, much longer line of dialogue")]
    data = GenerateVideoInput(
        storyboard_images=[url], camera_angle="static", dialogue=lines, duration=2, fps=4, resolution="160x90"
    )

    frames = await decoded(config, await generate_video.run(ctx, data))
    first, second = (frame.convert("L").crop((0, 60, 160, 90)) for frame in (frames[1], frames[5]))

    assert foot_brightness(frames[1]) > 180 and foot_brightness(frames[5]) > 180
    assert ImageStat.Stat(ImageChops.difference(first, second)).mean[0] > 5


def test_dialogue_text_reaches_ffmpeg_only_through_a_file(tmp_path):
    data = GenerateVideoInput(
        dialogue=[DialogueLine("%{localtime}':x=0[out];", character_id="x")], duration=2
    )
    clip = generate_video.clip_request("t", data)

    graph, _ = animatic_graph.title_graph(clip, tmp_path, clip.frame_count)

    assert "localtime" not in graph
    if animatic_graph.find_font():
        assert (tmp_path / "subtitle0.txt").read_text() == "x: %{localtime}':x=0[out];"


def test_a_dialogue_line_past_the_end_of_the_clip_is_left_out():
    lines = [DialogueLine("in time", start=0.5, end=9), DialogueLine("too late", start=5, end=6)]

    shown = generate_video.subtitles(GenerateVideoInput(dialogue=lines, duration=3))

    assert [(s.text, s.start, s.end) for s in shown] == [("in time", 0.5, 3)]


async def test_keyframes_closer_than_a_microsecond_make_the_character_jump_not_vanish(tmp_path, files, http):
    # Distinct times (0.1 + 0.2 and 0.3 pass the submit's check), but written to ffmpeg to the
    # microsecond their step was a division by 0.000000: NaN at the first one's frame, where the
    # character was drawn nowhere.
    url = files.add("k.png", png(20, 30, (230, 30, 30)))
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    keyframes = [
        Keyframe(url, time=0, x=0.2),
        Keyframe(url, time=0.5, x=0.2),
        Keyframe(url, time=0.5000000001, x=0.8),
    ]
    data = RenderAnimationInput(
        "hero", keyframes, animation_type="static", duration=1, fps=2, resolution="160x90"
    )

    frames = await decoded(config, await render_animation.run(ctx, data))

    assert [centre_x(box_of(frame, (230, 30, 30))) for frame in frames] == [
        pytest.approx(0.2 * 160, abs=3),
        pytest.approx(0.8 * 160, abs=3),
    ]
