"""Resource bombs in task inputs (issue 13, finding 4, media side): bounded before they are decoded.

A small file that declares a huge picture, an hour-long input, a mix that would fill the disk: each
fails its task with an error naming the bound and the `media.*` key that sets it, and taskd's worker
keeps its memory.
"""

from __future__ import annotations

import io
import json
import re
import struct
import subprocess
from pathlib import Path

import psutil
import pytest
from fake_media_apis import FakeImagesAPI, FakeSpeechAPI, make_ctx, mono_wav
from media_files import (
    flac_of_changing_layouts,
    jpeg_of_empty_segments,
    jpeg_of_many_scans,
    long_silent_flac,
    m4a_stamped_zero,
    png_bomb,
    png_rgba64,
    silent_wav,
    square_wav,
    wav_claiming,
    wide_silent_flac,
)
from PIL import Image

from taskd.config import (
    Config,
    ExecutionConfig,
    ImageProvider,
    MediaConfig,
    NetworkConfig,
    ProvidersConfig,
    SpeechProvider,
)
from taskd.media import ffmpeg, image_header
from taskd.media.bounds import Bounds
from taskd.tasks.builtin import generate_character_voice, generate_image
from taskd.tasks.builtin.generate_character_voice import GenerateCharacterVoiceInput
from taskd.tasks.builtin.generate_image import GenerateImageInput
from taskd.tasks.spec import TaskError

MEGABYTE = 1024 * 1024


async def start(start_service, tmp_path: Path, **media: object):
    settings = {"base_url": "http://media.test", "scratch_dir": str(tmp_path / "scratch"), **media}
    # The attacker's files are served on loopback.
    return await start_service(media=MediaConfig(**settings), network=NetworkConfig(allow_private=True))


async def mixed(service, *urls: str, **options: object) -> dict:
    """The status of a `process_audio` of the tracks at `urls` (not normalized unless `options` say),
    once it ended."""
    task = await service.submit(
        "process_audio", {"tracks": [{"url": url} for url in urls], "normalize": False, **options}
    )
    return await service.wait_terminal(task["task_id"], timeout=60)


def assert_no_internals(body: dict, service) -> None:
    """The task's error names neither where taskd keeps its data nor a secret it holds."""
    text = json.dumps(body)
    assert str(service.service.config.data_path) not in text
    assert str(Path(service.service.config.media.scratch_dir)) not in text
    assert service.service.config.auth.api_keys[0] not in text


async def test_a_png_decompression_bomb_fails_before_it_is_decoded(start_service, tmp_path, files):
    service = await start(start_service, tmp_path)
    url = files.add("bomb.png", png_bomb(10_000, 10_000))  # ~100 KB, 100 megapixels
    worker = psutil.Process()
    rss_before = worker.memory_info().rss

    task = await service.submit("render_animation", {"character_id": "c", "keyframes": [{"image_url": url}]})
    body = await service.wait_terminal(task["task_id"], timeout=60)

    assert body["status"] == "failed", body
    assert body["error"] == (
        f"Image {url} is 10000x10000 pixels, over the limit of 40000000 pixels (media.max_image_pixels)"
    )
    assert worker.memory_info().rss - rss_before < 100 * MEGABYTE
    assert_no_internals(body, service)


async def test_a_jpeg_of_many_scans_fails_before_it_is_decoded(start_service, tmp_path, files):
    # Each scan is a pass over every block; 31 bytes each, 50 MiB of them decoded for hours.
    service = await start(start_service, tmp_path)
    bomb = jpeg_of_many_scans(300)
    url = files.add("scans.jpg", bomb)

    task = await service.submit("render_animation", {"character_id": "c", "keyframes": [{"image_url": url}]})
    body = await service.wait_terminal(task["task_id"], timeout=60)

    assert body["status"] == "failed", body
    assert body["error"] == f"Image {url} is a JPEG of more than 200 scans, the most an input may have"


async def test_images_each_under_the_pixel_limit_fail_on_what_they_take_decoded_together(
    start_service, tmp_path, files
):
    # ffmpeg decodes a render's inputs all at once: three 1000x1000 RGBA PNGs hold 12 MB together.
    service = await start(start_service, tmp_path, max_decoded_image_bytes=10_000_000)
    pngs = [encoded("PNG", (1000, 1000), mode="RGBA", colour=i) for i in range(3)]
    urls = [files.add(f"big{i}.png", png) for i, png in enumerate(pngs)]

    task = await service.submit(
        "render_animation",
        {"character_id": "c", "keyframes": [{"image_url": url, "time": i} for i, url in enumerate(urls)]},
    )
    body = await service.wait_terminal(task["task_id"], timeout=60)

    assert body["status"] == "failed", body
    # Each picture, and its file's bytes (the packet ffmpeg decodes it from).
    taken = 3 * 1000 * 1000 * 4 + sum(len(png) for png in pngs)
    assert body["error"] == (
        f"The images would take {taken} bytes decoded (ffmpeg holds them all at once), over the limit "
        "of 10000000 bytes (media.max_decoded_image_bytes)"
    )


async def test_the_bytes_of_an_image_file_count_with_its_picture(start_service, tmp_path, files):
    # ffmpeg reads each image file whole as one packet and holds it while decoding, every input at
    # once: 32 JPEGs counted at 1 GB decoded, each followed by 49 MB (a motion photo's video, or
    # padding), took a render to 2.7 GB, killed at execution.memory_limit_mb.
    service = await start(start_service, tmp_path, max_decoded_image_bytes=2 * MEGABYTE)
    padded = [encoded("JPEG", (16, 16), colour=i) + bytes(MEGABYTE) for i in range(3)]
    urls = [files.add(f"padded{i}.jpg", jpeg) for i, jpeg in enumerate(padded)]

    task = await service.submit(
        "render_animation",
        {"character_id": "c", "keyframes": [{"image_url": url, "time": i} for i, url in enumerate(urls)]},
    )
    body = await service.wait_terminal(task["task_id"], timeout=60)

    assert body["status"] == "failed", body
    taken = sum(16 * 16 * 1.5 + len(jpeg) for jpeg in padded[:2])  # over at the second
    assert body["error"] == (
        f"The images would take {taken:.0f} bytes decoded (ffmpeg holds them all at once), over the limit "
        f"of {2 * MEGABYTE} bytes (media.max_decoded_image_bytes)"
    )


async def test_a_renders_photos_are_held_decoded_not_also_as_full_size_rgba(start_service, tmp_path, files):
    # Four 36-megapixel 4:2:0 JPEGs: 54 MB each decoded, as max_decoded_image_bytes counts them. Turned
    # into RGBA before being scaled down, each was held a second time at 144 MB, and the render passed
    # 500 MB (32 twelve-megapixel phone photos passed the default 2048).
    service = await start_service(
        media=MediaConfig(base_url="http://media.test", scratch_dir=str(tmp_path / "scratch")),
        network=NetworkConfig(allow_private=True),
        execution=ExecutionConfig(memory_limit_mb=500),
    )
    urls = [files.add(f"photo{i}.jpg", encoded("JPEG", (6000, 6000), colour=i)) for i in range(4)]

    task = await service.submit(
        "render_animation",
        {
            "character_id": "c",
            "duration": 1,
            "resolution": "320x180",
            "keyframes": [{"image_url": url, "time": i / 4} for i, url in enumerate(urls)],
        },
    )
    body = await service.wait_terminal(task["task_id"], timeout=120)

    assert body["status"] == "completed", body


async def test_a_generated_image_over_the_pixel_limit_is_not_stored(tmp_path, http):
    async with FakeImagesAPI() as api:
        api.image = png_bomb(8_000, 6_000)
        provider = ImageProvider(base_url=api.base_url, api_key="sk-img")
        config = Config(
            data_dir=str(tmp_path / "data"),
            media=MediaConfig(base_url="http://media.test", scratch_dir=str(tmp_path / "scratch")),
            providers=ProvidersConfig(image=provider),
            network=NetworkConfig(allow_private=True),
        )
        ctx, _ = make_ctx(http, config)

        with pytest.raises(
            TaskError, match=r"^Generated image is 8000x6000 pixels, over the limit of 40000000"
        ):
            await generate_image.run(ctx, GenerateImageInput(prompt="a bomb"))

    assert not list((tmp_path / "data").rglob("*.png"))


async def test_a_ten_hour_track_fails_naming_the_duration_limit(start_service, tmp_path, files):
    service = await start(start_service, tmp_path)
    url = files.add("long.flac", long_silent_flac(tmp_path, hours=10))  # ~120 KB

    body = await mixed(service, url)

    assert body["status"] == "failed", body
    assert body["error"] == f"Track {url} is longer than the limit of 3600 s (media.max_input_seconds)"
    assert_no_internals(body, service)


async def test_a_track_of_more_channels_than_ffmpeg_can_mix_fails_naming_the_limit(
    start_service, tmp_path, files
):
    service = await start(start_service, tmp_path)
    url = files.add("wide.wav", silent_wav(0.1, 8000, channels=65))

    body = await mixed(service, url)

    assert body["status"] == "failed", body
    assert body["error"] == (
        f"Track {url} has 65 channels, over the limit of 64 (what ffmpeg's resampler can mix)"
    )


async def test_a_track_at_768_khz_fails_naming_the_sample_rate_limit(start_service, tmp_path, files):
    service = await start(start_service, tmp_path)
    url = files.add("fast.wav", silent_wav(0.01, 768_000, channels=1))

    body = await mixed(service, url)

    assert body["status"] == "failed", body
    assert body["error"] == f"Track {url} has a sample rate of 768000 Hz, over the limit of 384000 Hz"


async def test_the_duration_limit_is_a_setting(start_service, tmp_path, files):
    service = await start(start_service, tmp_path, max_input_seconds=1.5)
    url = files.add("two.wav", square_wav(2.0))

    body = await mixed(service, url)

    assert body["status"] == "failed", body
    assert body["error"] == f"Track {url} is longer than the limit of 1.5 s (media.max_input_seconds)"


async def test_a_track_of_many_channels_at_a_high_rate_fails_before_it_is_decoded(
    start_service, tmp_path, files
):
    # 2 s of 384 kHz 7.1 silence: 6 million samples to decode from a few KB.
    service = await start(start_service, tmp_path, max_audio_samples=5_000_000)
    url = files.add("wide.flac", wide_silent_flac(tmp_path, seconds=2))

    body = await mixed(service, url)

    assert body["status"] == "failed", body
    assert re.fullmatch(
        r"The tracks would decode 6\d{6} samples \(sample rate x channels x seconds\), over the limit "
        r"of 5000000 \(media.max_audio_samples\)",
        body["error"],
    ), body["error"]
    assert_no_internals(body, service)


async def test_tracks_each_under_the_sample_limit_fail_on_their_sum(start_service, tmp_path, files):
    # Two tracks of 16 000 samples (2 s at 8 kHz, mono) against a limit of 20 000.
    service = await start(start_service, tmp_path, max_audio_samples=20_000)
    first = files.add("one.wav", square_wav(2.0))
    second = files.add("two.wav", square_wav(2.0))

    body = await mixed(service, first, second)

    assert body["status"] == "failed", body
    assert body["error"] == (
        "The tracks would decode 32000 samples (sample rate x channels x seconds), over the limit "
        "of 20000 (media.max_audio_samples)"
    )


async def test_a_background_of_many_channels_at_a_high_rate_is_refused_before_it_is_decoded(
    tmp_path, http, files
):
    url = files.add("wide.flac", wide_silent_flac(tmp_path, seconds=2))
    async with FakeSpeechAPI() as api:
        config = Config(
            data_dir=str(tmp_path / "data"),
            media=MediaConfig(
                base_url="http://media.test",
                scratch_dir=str(tmp_path / "scratch"),
                max_audio_samples=1_000_000,
            ),
            providers=ProvidersConfig(speech=SpeechProvider(base_url=api.base_url)),
            network=NetworkConfig(allow_private=True),
        )
        ctx, _ = make_ctx(http, config)

        with pytest.raises(TaskError) as refused:
            await generate_character_voice.run(
                ctx, GenerateCharacterVoiceInput(text="Hi", background_noise=url)
            )

    assert re.fullmatch(
        rf"The synthesised speech and Background noise {re.escape(url)} would decode \d+ samples "
        r"\(sample rate x channels x seconds\), over the limit of 1000000 \(media.max_audio_samples\)",
        str(refused.value),
    ), str(refused.value)
    assert not list((tmp_path / "scratch").rglob("background_plain.wav"))


async def test_a_named_channel_layout_is_measured_by_its_channels(tmp_path):
    path = tmp_path / "wide.flac"
    path.write_bytes(wide_silent_flac(tmp_path, seconds=0.1, rate=48_000, layout="7.1"))

    assert (await ffmpeg.measure_audio(path, limit=3600, what="Track")).channels == 8


async def test_an_ambisonic_track_with_more_channels_is_measured_by_all_of_them(tmp_path):
    # Opus of first-order-0 ambisonics and a stereo pair (ffmpeg: "ambisonic 0+stereo"): 3 channels,
    # which were counted as the 1 of the ambisonic part.
    path = tmp_path / "track0.ogg"
    subprocess.run(
        [
            *(ffmpeg.ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi"),
            *("-i", "anullsrc=r=48000:cl=ambisonic 0+stereo", "-t", "0.1"),
            *("-c:a", "libopus", "-mapping_family", "2", str(path)),
        ],
        check=True,
    )

    assert (await ffmpeg.measure_audio(path, limit=3600, what="Track")).channels == 3


@pytest.mark.parametrize(
    ("layout", "channels"),
    [
        ("mono", 1),
        ("5.1(side)", 6),
        ("7.1(wide-side)", 8),
        ("5.1.4", 10),
        ("22.2", 24),
        ("octagonal", 8),
        ("hexadecagonal", 16),
        ("FL+FR+LFE", 3),
        ("65 channels", 65),
        ("ambisonic 3", 16),
        ("ambisonic 0+stereo", 3),
        ("ambisonic 1+FL+FR", 6),
    ],
)
def test_channel_layouts_are_counted(layout, channels):
    assert ffmpeg.layout_channels(layout) == channels


async def test_a_header_claiming_ten_hours_is_measured_by_what_the_file_holds(tmp_path):
    path = tmp_path / "liar.wav"
    path.write_bytes(wav_claiming(seconds=36_000, body_seconds=1.0))

    seconds = (await ffmpeg.measure_audio(path, limit=3600, what="Track")).seconds

    assert seconds == pytest.approx(1.0, abs=0.01)


async def test_a_background_of_one_sample_is_refused_instead_of_looped(tmp_path, http, files):
    # Looped as it was, each sample cost ffmpeg a pass of its loop: 48 000 passes per second of voice.
    url = files.add("click.wav", mono_wav(struct.pack("<h", 3000), 48_000))
    async with FakeSpeechAPI() as api:
        config = Config(
            data_dir=str(tmp_path / "data"),
            media=MediaConfig(base_url="http://media.test", scratch_dir=str(tmp_path / "scratch")),
            providers=ProvidersConfig(speech=SpeechProvider(base_url=api.base_url)),
            network=NetworkConfig(allow_private=True),
        )
        ctx, _ = make_ctx(http, config)

        with pytest.raises(TaskError) as refused:
            await generate_character_voice.run(
                ctx, GenerateCharacterVoiceInput(text="Hi", background_noise=url)
            )

    assert str(refused.value) == (
        f"Background noise {url} holds 0.000 s of audio; a background is looped under the voice "
        "and must hold at least 0.1 s"
    )


async def test_a_mix_over_the_output_limit_fails_instead_of_being_stored(start_service, tmp_path, files):
    service = await start(start_service, tmp_path, max_output_bytes=MEGABYTE)
    url = files.add("ten.wav", square_wav(10.0))  # 10 s as 48 kHz stereo WAV: 1.8 MB

    body = await mixed(service, url, output_format="wav", sample_rate=48000)

    assert body["status"] == "failed", body
    assert body["error"] == "The mix reached the limit of 1048576 bytes (media.max_output_bytes)"
    assert not list(Path(service.service.config.data_path, "media").rglob("*.wav"))


async def test_a_truncated_image_fails_in_ffmpeg_words_without_internal_details(
    start_service, tmp_path, files
):
    service = await start(start_service, tmp_path)
    url = files.add("cut.png", png_bomb(64, 48)[:33])  # the signature and IHDR, no picture

    task = await service.submit("render_animation", {"character_id": "c", "keyframes": [{"image_url": url}]})
    body = await service.wait_terminal(task["task_id"], timeout=60)

    assert body["status"] == "failed", body
    assert body["error"].startswith("Rendering failed (ffmpeg exit ")
    assert " @ 0x" not in body["error"]
    assert_no_internals(body, service)


async def test_ffmpeg_itself_refuses_to_decode_an_image_over_the_pixel_bound(tmp_path):
    # The second line, for a picture the header reader did not see (a later frame, a format it skips).
    path = tmp_path / "big.png"
    path.write_bytes(png_bomb(2_000, 1_000))
    bounds = Bounds(
        max_image_pixels=1_000_000,
        max_input_seconds=60,
        max_output_bytes=MEGABYTE,
        max_audio_samples=10**9,
        max_decoded_image_bytes=1 << 30,
    )
    log = tmp_path / "ffmpeg.log"

    with pytest.raises(TaskError, match=r"^Decoding failed \(ffmpeg exit"):
        await ffmpeg.run_ffmpeg([*bounds.image_input(path), "-f", "null", "-"], log_path=log, what="Decoding")

    assert "exceeds specified max pixel count 1000000" in log.read_text()


@pytest.mark.parametrize(("fmt", "ext"), [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("BMP", "bmp")])
async def test_ffmpeg_decodes_no_picture_of_an_image_file_after_its_first(tmp_path, fmt, ext):
    # A 16x16 picture, then a 2000x1500 one: the header (and max_decoded_image_bytes) counts the first;
    # read picture by picture, the second was decoded as well, whatever the render took.
    path, out = tmp_path / f"image0.{ext}", tmp_path / "frames.txt"
    path.write_bytes(encoded(fmt, (16, 16)) + encoded(fmt, (2000, 1500), colour=1))
    bounds = Bounds(
        max_image_pixels=40_000_000,
        max_input_seconds=60,
        max_output_bytes=MEGABYTE,
        max_audio_samples=10**9,
        max_decoded_image_bytes=1 << 30,
    )

    await ffmpeg.run_ffmpeg(
        [*bounds.image_input(path), "-f", "framecrc", str(out)], log_path=tmp_path / "ffmpeg.log"
    )

    frames = [line for line in out.read_text().splitlines() if not line.startswith("#")]
    assert len(frames) == 1, frames


async def test_ffmpeg_reads_no_more_of_an_audio_input_than_the_duration_bound(tmp_path):
    # The second line, for a file whose packets were counted short but decode long.
    path, out = tmp_path / "two.wav", tmp_path / "out.wav"
    path.write_bytes(square_wav(2.0))
    bounds = Bounds(
        max_image_pixels=1_000_000,
        max_input_seconds=0.5,
        max_output_bytes=MEGABYTE,
        max_audio_samples=10**9,
        max_decoded_image_bytes=1 << 30,
    )

    await ffmpeg.run_ffmpeg(
        [*bounds.audio_input(path), *bounds.output_args(), str(out)], log_path=tmp_path / "log"
    )

    assert (await ffmpeg.probe(out)).duration == pytest.approx(0.5, abs=0.01)


async def test_a_track_whose_timestamps_all_say_zero_is_mixed_no_longer_than_the_duration_bound(
    start_service, tmp_path, files
):
    # Its packets count as ~0 s and `-t` goes by timestamps: the samples decoded are what is bounded.
    service = await start(start_service, tmp_path, max_input_seconds=2)
    url = files.add("zero.m4a", m4a_stamped_zero(tmp_path, seconds=30))

    body = await mixed(service, url, output_format="wav", sample_rate=8000)

    assert body["status"] == "completed", body
    assert body["result"]["metadata"]["duration"] <= 2.1


async def test_a_track_whose_timestamps_say_less_than_it_holds_is_decoded_no_further_than_they_count(
    start_service, tmp_path, files
):
    # Its packets count ~0 s, so the sample limit counts ~0 s of it: decoding stops a second past that.
    service = await start(start_service, tmp_path)
    url = files.add("zero.m4a", m4a_stamped_zero(tmp_path, seconds=30))

    body = await mixed(service, url, output_format="wav", sample_rate=8000)

    assert body["status"] == "completed", body
    assert body["result"]["metadata"]["duration"] <= 1.1


async def test_a_track_whose_channels_change_past_what_its_packets_count_is_not_decoded_further(
    start_service, tmp_path, files
):
    # Its packets count 1 s (each stretch's frames start at 0 again), and each change of channels
    # rebuilt the filter graph, whose sample count started again: all 20 s were mixed.
    service = await start(start_service, tmp_path)
    url = files.add("changing.flac", flac_of_changing_layouts(tmp_path, segments=20))

    body = await mixed(service, url, normalize=True, output_format="wav")

    assert body["status"] == "failed", body
    assert body["error"] == (
        "Loudness analysis failed: an audio input changes its sample rate, channels or sample format "
        "part-way, which taskd does not decode"
    )


def encoded(fmt: str, size: tuple[int, int], mode: str = "RGB", colour: int = 0, **options: object) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (90, 40, 200 + colour, 255)[: len(mode)]).save(out, fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("PNG", {}),
        ("JPEG", {}),
        ("JPEG", {"progressive": True}),
        ("GIF", {}),
        ("BMP", {}),
        ("WEBP", {"lossless": False}),
        ("WEBP", {"lossless": True}),
    ],
)
def test_image_sizes_are_read_from_the_header(tmp_path, fmt, options):
    path = tmp_path / "image"
    path.write_bytes(encoded(fmt, (1234, 567), **options))

    assert image_header.dimensions(path) == (1234, 567)


def test_a_sixteen_bit_rgba_png_is_counted_at_eight_bytes_a_pixel(tmp_path):
    path = tmp_path / "deep.png"
    path.write_bytes(png_rgba64(tmp_path, 64, 48))

    assert image_header.bytes_per_pixel(path) == 8


@pytest.mark.parametrize(
    ("fmt", "mode", "options", "expected"),
    [
        ("PNG", "RGB", {}, 3),
        ("PNG", "L", {}, 1),
        # A tRNS chunk: ffmpeg decodes grey or RGB with an alpha channel (ya8, rgba).
        ("PNG", "L", {"transparency": 5}, 2),
        ("PNG", "RGB", {"transparency": (5, 5, 5)}, 4),
        ("JPEG", "RGB", {"subsampling": 2}, 1.5),  # 4:2:0
        ("JPEG", "RGB", {"subsampling": 0}, 3),  # 4:4:4
        # Progressive: the decoder also keeps every block's coefficients, 2 bytes a sample.
        ("JPEG", "RGB", {"subsampling": 2, "progressive": True}, 4.5),
        ("JPEG", "RGB", {"subsampling": 0, "progressive": True}, 9),
        ("JPEG", "L", {}, 1),
        ("GIF", "RGB", {}, 4),
        ("WEBP", "RGB", {}, 4),
    ],
)
def test_what_a_pixel_takes_decoded_is_read_from_the_header(tmp_path, fmt, mode, options, expected):
    path = tmp_path / "image"
    path.write_bytes(encoded(fmt, (64, 48), mode=mode, **options))

    assert image_header.bytes_per_pixel(path) == expected


def test_a_lossy_webp_with_alpha_is_counted_with_its_alpha_picture(tmp_path):
    # ffmpeg decodes the picture as yuva420p (2.5) and the alpha chunk on its own as an ARGB picture
    # (4): a 36-megapixel one took 223 MB, counted at 4 bytes a pixel as 144 MB.
    path = tmp_path / "image0.webp"
    Image.new("RGBA", (64, 48), (90, 40, 200, 128)).save(path, "WEBP", lossless=False)

    assert image_header.bytes_per_pixel(path) == 6.5


def test_an_animated_gif_is_counted_at_three_canvases_a_pixel(tmp_path):
    # ffmpeg's GIF decoder keeps its canvas, the one a "restore to previous" frame goes back to, and
    # the next frame it decodes while the render holds the first: four 6000x6000 GIFs of three frames
    # took 1.8 GB, counted at 4 bytes a pixel as 576 MB.
    path = tmp_path / "image0.gif"
    frames = [Image.new("RGB", (64, 48), (80 * n, 0, 0)) for n in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], disposal=3, duration=100)

    assert image_header.bytes_per_pixel(path) == 12


def test_a_gif_of_more_blocks_than_are_walked_is_counted_as_an_animation(tmp_path):
    # Whether a GIF is one image is found by walking its blocks one by one: a 50 MB file of 1-byte
    # sub-blocks kept the worker's thread walking for 6 s. One image, its data in 300,000 of them.
    screen = b"GIF89a" + struct.pack("<HHBBB", 16, 16, 0, 0, 0)
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 16, 16, 0) + b"\x02"
    path = tmp_path / "image0.gif"
    path.write_bytes(screen + image + b"\x01\x00" * 300_000 + b"\x00\x3b")

    assert image_header.bytes_per_pixel(path) == 12


def test_a_jpeg_picture_whose_second_frame_header_is_larger_is_counted_by_it(tmp_path):
    # A 16x16 picture without its end, then a 2000x1500 4:4:4 one: ffmpeg's decoder takes the second
    # frame header for the one picture's and decodes 2000x1500 (9 MB), where the first said 768 bytes.
    path = tmp_path / "image0.jpg"
    small = encoded("JPEG", (16, 16))
    path.write_bytes(small[:-2] + encoded("JPEG", (2000, 1500), subsampling=0))
    bounds = Bounds(
        max_image_pixels=40_000_000,
        max_input_seconds=60,
        max_output_bytes=MEGABYTE,
        max_audio_samples=10**9,
        max_decoded_image_bytes=1 << 30,
    )

    size = bounds.check_image(path, "Image")

    assert size == (16, 16)
    assert bounds.decoded_image_bytes(path, size) >= 2000 * 1500 * 3


def test_a_jpeg_of_more_frame_headers_than_are_summed_is_refused(tmp_path):
    # Each frame header in the picture is summed (each may restart it at its size): a 50 MB file of
    # 2.7 million 16x16 ones kept the worker's thread summing for 19 s, and passed.
    frame = b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", 16, 16) + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    path = tmp_path / "image0.jpg"
    path.write_bytes(b"\xff\xd8" + frame * 65 + encoded("JPEG", (16, 16))[2:])
    bounds = Bounds(
        max_image_pixels=40_000_000,
        max_input_seconds=60,
        max_output_bytes=MEGABYTE,
        max_audio_samples=10**9,
        max_decoded_image_bytes=1 << 30,
    )

    with pytest.raises(TaskError) as refused:
        bounds.check_image(path, "Image")

    assert str(refused.value) == "Image is a JPEG of more than 64 frame headers, the most an input may have"


def test_a_jpeg_frame_header_hidden_in_an_app_segment_is_not_read(tmp_path):
    jpeg = encoded("JPEG", (64, 48))
    fake_sof = b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", 60_000, 60_000) + b"\x03" + b"\x00" * 9
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + len(fake_sof)) + fake_sof
    path = tmp_path / "image.jpg"
    path.write_bytes(jpeg[:2] + app1 + jpeg[2:])

    assert image_header.dimensions(path) == (64, 48)


def test_a_jpeg_of_a_million_empty_segments_is_refused_without_walking_them(tmp_path):
    path = tmp_path / "image.jpg"
    path.write_bytes(jpeg_of_empty_segments(1_000_000))

    assert image_header.dimensions(path) is None


def test_the_bytes_after_a_jpegs_end_are_not_counted_as_scans(tmp_path):
    # A motion photo: the phone's video follows the picture's end of image, and random bytes hold
    # an 0xFF 0xDA every 64 KiB or so (here 300 of them).
    picture = jpeg_of_many_scans(0)
    path = tmp_path / "motion.jpg"
    path.write_bytes(picture + b"ftypmp42" + b"\xff\xda\x00\x01" * 300)

    # The encoder's own scans only (a clean file's bytes hold their markers and no others).
    assert image_header.jpeg_scans(path, 200) == picture.count(b"\xff\xda")


def test_the_scans_of_a_later_picture_are_counted(tmp_path):
    # ffmpeg decodes a few pictures past the one frame taken: one after some bytes (or after
    # another picture) with a frame header of its own is decoded, its scans and all.
    bomb = jpeg_of_many_scans(300)
    path = tmp_path / "two.jpg"
    path.write_bytes(jpeg_of_many_scans(0) + b"ftypmp42" * 100 + bomb)

    assert image_header.jpeg_scans(path, 200) == 201


@pytest.mark.parametrize(
    "segment",
    [b"\xff\xdb\x00\x43\x00" + b"\xff\xd9" + bytes(62), b"\xff\xfe\x00\x06" + b"\xff\xd9" + b"ok"],
    ids=["quantisation table", "comment"],
)
def test_an_end_of_image_inside_a_segment_does_not_end_the_count(tmp_path, segment):
    # The decoder skips a segment by its length: the 0xFF 0xD9 inside it ends nothing, and the
    # scans after it are decoded with the picture's frame header.
    bomb = jpeg_of_many_scans(300)
    first_scan = bomb.index(b"\xff\xda")
    path = tmp_path / "segment.jpg"
    path.write_bytes(bomb[:first_scan] + segment + bomb[first_scan:])

    assert image_header.jpeg_scans(path, 200) == 201


def test_scans_are_counted_up_to_one_past_the_most(tmp_path):
    path = tmp_path / "scans.jpg"
    bomb = jpeg_of_many_scans(300)
    path.write_bytes(bomb)

    assert image_header.jpeg_scans(path, 200) == 201
    assert image_header.jpeg_scans(path, 400) == bomb.count(b"\xff\xda")  # the 300 and the encoder's own


def test_a_jpeg_ls_frame_header_is_read_as_a_frame_header(tmp_path):
    sof55 = b"\xff\xf7\x00\x0b\x08" + struct.pack(">HH", 60_000, 60_000) + b"\x01\x01\x11\x00"
    path = tmp_path / "image.jpg"
    path.write_bytes(b"\xff\xd8" + sof55 + encoded("JPEG", (64, 48))[2:])

    assert image_header.dimensions(path) == (60_000, 60_000)


def test_a_webp_canvas_smaller_than_its_picture_is_measured_by_the_picture(tmp_path):
    webp = encoded("WEBP", (1234, 567), lossless=False)
    small_canvas = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4 + (15).to_bytes(3, "little") * 2
    path = tmp_path / "image.webp"
    path.write_bytes(webp[:12] + small_canvas + webp[12:])

    assert image_header.dimensions(path) == (1234, 567)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x89PNG\r\n\x1a\n",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00",  # cut inside IHDR: it failed the task
        b"GIF89a\x10\x00\x10",  # cut inside the screen size: "error: unpack requires a buffer of 4 bytes"
        b"\xff\xd8\xff\xe0\x00",
        b"RIFF\x00\x00\x00\x00WEBP",
    ],
)
def test_a_truncated_header_reads_as_no_size(tmp_path, data):
    path = tmp_path / "image"
    path.write_bytes(data)

    assert image_header.dimensions(path) is None
