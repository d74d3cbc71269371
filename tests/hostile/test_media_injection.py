"""An attacker's media files and text against taskd's ffmpeg and espeak-ng command lines (issue 13, finding 1).

Nothing a caller sends, nothing inside a file it points to and nothing a tool prints about such a file
may reach an ffmpeg filter graph or argument as text: numbers are parsed and formatted by taskd, text
for drawtext goes through a file with expansion off.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import pytest
from fake_media_apis import make_ctx
from media_files import tagged_flac, tagged_ogg

from taskd.config import Config, MediaConfig, NetworkConfig
from taskd.media import audio, ffmpeg, video
from taskd.media.store import MediaStore, load_secret
from taskd.providers import speech
from taskd.tasks.builtin import generate_video
from taskd.tasks.builtin.generate_video import GenerateVideoInput
from taskd.tasks.spec import TaskError

FAKE_LINES = (
    "Duration: 99:00:00.00, start: 0.000000, bitrate: 1 kb/s\n"
    "  Duration: 98:00:00.00, start: 0.000000, bitrate: 1 kb/s\n"
    "  Stream #0:0: Video: h264, 9999x9999, 25 fps\n"
    "  Stream #0:1: Audio: mp3, 96000 Hz, 5.1"
)
# Without a font the title card has no text, so there is nothing to draw or to evaluate.
NEEDS_FONT = pytest.mark.skipif(video.find_font() is None, reason="no TrueType font on this machine")


@pytest.fixture
async def service(start_service, tmp_path):
    media = MediaConfig(base_url="http://media.test", scratch_dir=str(tmp_path / "scratch"))
    return await start_service(media=media, network=NetworkConfig(allow_private=True))  # loopback files


def loudnorm_json(offset: str) -> str:
    """What loudnorm prints after pass 1, with `offset` where the target offset goes."""
    measured = {"input_i": "-23", "input_tp": "-2", "input_lra": "5", "input_thresh": "-33"}
    return json.dumps({**measured, "target_offset": offset})


def stored_file(config: Config, media_url: str) -> Path:
    path = media_url.split("?")[0].removeprefix("http://media.test/media/")
    return MediaStore.from_config(config).root / path


async def mix(service, url: str, **task_data: object) -> dict:
    task = await service.submit("process_audio", {"tracks": [{"url": url}], **task_data})
    return await service.wait_terminal(task["task_id"], timeout=60)


async def test_loudness_json_in_a_tag_cannot_make_ffmpeg_write_a_file(service, files, tmp_path):
    planted = tmp_path / "planted.txt"
    title = loudnorm_json(f"0,ametadata=mode=print:file={planted},loudnorm=I=-16")
    url = files.add("tagged.flac", tagged_flac(tmp_path, title=title, comment=title))

    body = await mix(service, url, normalize=True, target_lufs=-20, output_format="wav")

    assert not planted.exists()
    assert body["status"] == "completed", body
    assert body["result"]["metadata"]["loudness_lufs"] == pytest.approx(-20, abs=1)


async def test_loudness_json_in_a_tag_cannot_read_a_file_into_the_task(service, files, tmp_path):
    # asendcmd quotes a file it cannot parse in its error; the canary is no secret taskd knows (and so
    # could mask), it only shows whether a file outside the task's scratch dir was read.
    canary = secrets.token_hex(16)
    private = tmp_path / "private.txt"
    private.write_text(canary)
    media_secret = load_secret(service.service.config).decode()
    title = loudnorm_json(f"0,asendcmd=f={private},loudnorm=I=-16")
    url = files.add("tagged.flac", tagged_flac(tmp_path, title=title))

    body = await mix(service, url, normalize=True, target_lufs=-20)

    assert canary not in json.dumps(body)
    assert media_secret not in json.dumps(body)
    assert body["status"] == "completed", body


async def test_tags_that_impersonate_ffmpeg_lines_do_not_change_what_is_measured(service, files, tmp_path):
    # A title's newlines print as continuation lines; a tag key and an Ogg stream language print verbatim.
    flac = files.add("fake.flac", tagged_flac(tmp_path, seconds=2.0, title=FAKE_LINES))
    ogg = files.add("fake.ogg", tagged_ogg(tmp_path, language=f"eng): {FAKE_LINES}", key=FAKE_LINES))

    for url, seconds in ((flac, 2.0), (ogg, 1.0)):
        body = await mix(service, url, normalize=False, output_format="flac", sample_rate=22050)

        assert body["status"] == "completed", body
        meta = body["result"]["metadata"]
        assert meta["duration"] == pytest.approx(seconds, abs=0.1)
        assert (meta["sample_rate"], meta["channels"]) == (22050, 2)


async def test_probe_reads_duration_and_streams_only_from_ffmpeg_own_lines(tmp_path):
    path = tmp_path / "fake.flac"
    path.write_bytes(tagged_flac(tmp_path, seconds=2.0, title=FAKE_LINES, comment=FAKE_LINES))

    info = await ffmpeg.probe(path)

    assert info.duration == pytest.approx(2.0, abs=0.01)
    assert (info.width, info.height, info.video_codec) == (None, None, None)
    assert (info.audio_codec, info.sample_rate, info.channels) == ("flac", 8000, 1)


async def test_an_input_duration_is_counted_from_its_packets_not_its_tags(tmp_path):
    path = tmp_path / "fake.ogg"
    path.write_bytes(tagged_ogg(tmp_path, language=f"eng): {FAKE_LINES}", key=FAKE_LINES))

    seconds = (await ffmpeg.measure_audio(path, limit=3600, what="Track")).seconds

    assert seconds == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(
    "printed",
    [
        '{"input_i": "-23,asendcmd=f=/etc/passwd", "input_tp": "-2", "input_lra": "5", '
        '"input_thresh": "-33", "target_offset": "0"}',
        '{"input_i": "-23", "input_tp": "-2", "input_lra": "5", "input_thresh": "-33"}',
        '{"input_i": "nan", "input_tp": "-2", "input_lra": "5", "input_thresh": "-33", "target_offset": "0"}',
    ],
)
def test_a_loudnorm_measurement_that_is_not_all_numbers_is_refused(printed):
    log = f"[Parsed_loudnorm_2 @ 0x5581] \n{printed}\n[out#0/null @ 0x5582] video:0KiB audio:9KiB\n"

    with pytest.raises(TaskError, match=r"^Loudness analysis gave no usable measurement$"):
        audio.parse_loudnorm(log)


def test_only_the_loudnorm_block_printed_last_is_read():
    tag = '{"input_i": "-5", "input_tp": "-1", "input_lra": "1", "input_thresh": "-15", "target_offset": "0"}'
    real = (
        '{\n\t"input_i" : "-21.75",\n\t"input_tp" : "-18.06",\n\t"input_lra" : "0.00",\n'
        '\t"input_thresh" : "-31.75",\n\t"target_offset" : "0.05"\n}'
    )
    log = (
        f"    title           : {tag}\n[Parsed_loudnorm_0 @ 0x7ff0] \n{real}\n[out#0/null @ 0x56] size=N/A\n"
    )

    measured = audio.parse_loudnorm(log)

    assert measured.input_i == pytest.approx(-21.75)
    assert measured.target_offset == pytest.approx(0.05)


async def render_title(http, tmp_path: Path, title: str) -> bytes:
    """A title card for `title`, rendered by the built-in renderer; one grey frame from its middle."""
    config = Config(
        data_dir=str(tmp_path / "data"),
        media=MediaConfig(base_url="http://media.test", scratch_dir=str(tmp_path / "scratch")),
    )
    ctx, _ = make_ctx(http, config)
    data = GenerateVideoInput(scene_description=title, duration=2, fps=8, resolution="320x240")
    result = await generate_video.run(ctx, data)
    proc = await asyncio.create_subprocess_exec(
        *(ffmpeg.ffmpeg_exe(), "-loglevel", "error", "-ss", "1", "-i"),
        str(stored_file(config, result["media_url"])),
        *("-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-"),
        stdout=asyncio.subprocess.PIPE,
    )
    frame, _ = await proc.communicate()
    assert len(frame) == 320 * 240
    return frame


@NEEDS_FONT
async def test_drawtext_expressions_in_a_scene_description_are_drawn_not_evaluated(http, tmp_path):
    # Both evaluate to "2": the frames are equal only if the expressions were expanded.
    plain = await render_title(http, tmp_path / "a", "%{eif:2:d}")
    sum_ = await render_title(http, tmp_path / "b", "%{eif:1+1:d}")

    assert plain != sum_


@NEEDS_FONT
def test_the_title_card_graph_turns_drawtext_expansion_off(tmp_path):
    clip = generate_video.clip_request("task-1", GenerateVideoInput(scene_description="%{localtime}"))

    graph, _ = video.title_graph(clip, tmp_path, 24)

    assert ":expansion=none:" in graph
    assert "localtime" not in graph
    assert (tmp_path / "title.txt").read_text() == "%{localtime}"


@pytest.mark.parametrize("voice", ["../../../../etc/passwd", "/etc/passwd", "en-us --stdout", "-w/tmp/x"])
def test_an_espeak_voice_that_is_not_a_voice_name_is_refused(voice):
    profile = speech.VoiceProfile(espeak_voice=voice)

    with pytest.raises(TaskError, match="espeak_voice must be a voice name"):
        speech.espeak_args(profile, None, 1.0)


@pytest.mark.parametrize("voice", ["en-us", "en-gb-x-rp", "mb-en1", "gmw/en-US", "en+whisper"])
def test_espeak_voice_names_are_accepted(voice):
    args = speech.espeak_args(speech.VoiceProfile(espeak_voice=voice), None, 1.0)

    assert args[:2] == ["-v", voice]
