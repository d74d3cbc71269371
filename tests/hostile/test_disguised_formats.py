"""A caller's file is read as the type its first bytes showed, never as a format ffmpeg guesses.

ffmpeg left to probe a file picks the demuxer whose guess scores highest; some demuxers (DASH, HLS,
concat) open the files or URLs their input lists. A file that passes taskd's sniff as one type may
probe as such a format and make ffmpeg read the host's files into the tenant's result.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from media_files import dash_manifest_as_m4a, m4a_tone

from taskd.config import MediaConfig, NetworkConfig
from taskd.media import download, ffmpeg
from taskd.media.bounds import Bounds


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


@pytest.mark.parametrize("kind", ["image", "audio", "video"])
def test_every_type_the_fetch_sniffs_has_a_demuxer_that_reads_it(kind):
    heads = {
        "image": [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"RIFF\0\0\0\0WEBP"],
        "audio": [b"RIFF\0\0\0\0WAVE", b"\0\0\0\x18ftyp", b"ID3", b"fLaC", b"OggS"],
        "video": [b"\0\0\0\x18ftyp"],
    }[kind]

    types = [download.sniff(head.ljust(16, b"\0"), kind) for head in heads]

    assert None not in types
    assert all(ffmpeg.demuxer(Path(f"input.{ext}"))[0] == "-f" for ext in types)


def test_every_input_of_a_callers_file_names_its_demuxer(tmp_path):
    bounds = Bounds(max_image_pixels=1_000_000, max_input_seconds=60, max_output_bytes=1 << 20)

    image = bounds.image_input(tmp_path / "image0.jpg")
    sound = bounds.audio_input(tmp_path / "track0.m4a", loop=True)

    assert image[image.index("-i") - 2 : image.index("-i")] == ["-f", "jpeg_pipe"]
    assert sound[sound.index("-i") - 2 : sound.index("-i")] == ["-f", "mov"]
