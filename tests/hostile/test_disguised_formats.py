"""A caller's file is read as the type its first bytes showed, never as a format ffmpeg guesses.

ffmpeg left to probe a file picks the demuxer whose guess scores highest; some demuxers (DASH, HLS,
concat) open the files or URLs their input lists. A file that passes taskd's sniff as one type may
probe as such a format and make ffmpeg read the host's files into the tenant's result.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
from media_files import dash_manifest_as_m4a, m4a_tone
from PIL import Image

from taskd.config import MediaConfig, NetworkConfig
from taskd.media import download, ffmpeg
from taskd.media.bounds import Bounds
from taskd.tasks.spec import TaskError


async def test_an_m4a_that_is_a_dash_manifest_of_a_host_file_fails_and_reads_nothing(
    start_service, tmp_path, files
):
    secret = m4a_tone(tmp_path / "secret_audio.m4a")
    service = await start_service(
        media=MediaConfig(base_url="http://media.test", scratch_dir=str(tmp_path / "scratch")),
        network=NetworkConfig(allow_private=True),
    )
    url = files.add("track.m4a", dash_manifest_as_m4a(reads=secret))

    task = await service.submit(
        "process_audio", {"tracks": [{"url": url}], "normalize": False, "output_format": "wav"}
    )
    body = await service.wait_terminal(task["task_id"], timeout=60)

    assert body["status"] == "failed", body
    assert body["error"] == f"Track {url} is not a readable audio file"


async def test_a_dash_manifest_behind_an_id3_tag_is_not_read_as_one(tmp_path):
    secret = m4a_tone(tmp_path / "secret_audio.m4a")
    path = tmp_path / "track0.id3"
    path.write_bytes(ID3_TAG + dash_manifest_as_m4a(reads=secret))

    with pytest.raises(TaskError, match="is not a readable audio file"):
        await ffmpeg.measure_audio(path, 60, "Track")


def _audio(tmp_path: Path, name: str, *args: str) -> bytes:
    target = tmp_path / name
    subprocess.run(
        [ffmpeg.ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i", "sine=d=1", *args, str(target)],
        check=True,
    )
    return target.read_bytes()


def _image(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 40, 90)).save(out, fmt)
    return out.getvalue()


def _samples(tmp_path: Path) -> list[tuple[str, bytes]]:
    flac = _audio(tmp_path, "a.flac")
    mp3 = _audio(tmp_path, "a.mp3", "-id3v2_version", "0", "-write_xing", "0")
    return [
        ("audio", _audio(tmp_path, "a.wav")),
        ("audio", mp3),
        ("audio", _audio(tmp_path, "tagged.mp3")),  # ID3v2 first
        ("audio", _audio(tmp_path, "low.mp3", "-ar", "8000", "-id3v2_version", "0")),  # MPEG-2.5
        ("audio", ID3_TAG + flac),
        ("audio", flac),
        ("audio", _audio(tmp_path, "a.ogg", "-c:a", "libvorbis")),
        ("audio", _audio(tmp_path, "a.m4a")),
        *(("image", _image(fmt)) for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP")),
    ]


# An empty ID3v2.4 tag (ten bytes: "ID3", version, flags, a size of 0).
ID3_TAG = b"ID3\x04\x00\x00\x00\x00\x00\x00"


def test_every_type_the_fetch_sniffs_is_read_by_the_demuxer_taskd_names_for_it(tmp_path):
    decoded = {}
    for i, (kind, sample) in enumerate(_samples(tmp_path)):
        ext = download.sniff(sample[:16], kind)
        path = tmp_path / f"input{i}.{ext}"
        path.write_bytes(sample)
        run = subprocess.run(
            [
                ffmpeg.ffmpeg_exe(),
                "-loglevel",
                "error",
                *ffmpeg.demuxer(path),
                "-i",
                str(path),
                "-f",
                "null",
                "-",
            ],
            capture_output=True,
            text=True,
        )
        decoded[f"{kind} {i} as {ext}"] = (run.returncode, run.stderr)

    assert {what: code for what, (code, _) in decoded.items()} == dict.fromkeys(decoded, 0), decoded


def test_every_input_of_a_callers_file_names_its_demuxer(tmp_path):
    bounds = Bounds(
        max_image_pixels=1_000_000,
        max_input_seconds=60,
        max_output_bytes=1 << 20,
        max_audio_samples=10**9,
        max_decoded_image_bytes=1 << 30,
    )

    image = bounds.image_input(tmp_path / "image0.jpg")
    sound = bounds.audio_input(tmp_path / "track0.m4a", loop=True)

    assert image[image.index("-i") - 6 : image.index("-i")] == [
        *("-f", "image2", "-pattern_type", "none", "-c:v", "mjpeg")
    ]
    assert sound[sound.index("-i") - 2 : sound.index("-i")] == ["-f", "mov"]
