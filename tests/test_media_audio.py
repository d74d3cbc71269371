"""process_audio: real ffmpeg mixing, trimming and EBU R128 normalisation of generated sine WAVs."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import psutil
import pytest
from fake_media_apis import make_ctx, png, sine_wav

from taskd.config import Config, MediaConfig, NetworkConfig
from taskd.media import ffmpeg
from taskd.media.store import MediaStore
from taskd.tasks.builtin import process_audio
from taskd.tasks.builtin.process_audio import AudioTrack, ProcessAudioInput
from taskd.tasks.spec import TaskError, TransientError


def media_config(tmp_path: Path) -> Config:
    media = MediaConfig(base_url="http://media.test", scratch_dir=str(tmp_path / "scratch"))
    # The fake file server is on loopback.
    return Config(data_dir=str(tmp_path / "data"), media=media, network=NetworkConfig(allow_private=True))


def stored_file(config: Config, media_url: str) -> Path:
    return MediaStore.from_config(config).root / media_url.split("?")[0].removeprefix(
        "http://media.test/media/"
    )


async def test_tracks_are_mixed_and_normalised_to_the_target(tmp_path, files, http):
    voice = files.add("voice.wav", sine_wav(4.0, 440, 0.05))
    rain = files.add("rain.wav", sine_wav(4.0, 220, 0.3, rate=22050))
    config = media_config(tmp_path)
    ctx, sink = make_ctx(http, config)
    data = ProcessAudioInput(
        tracks=[AudioTrack(voice), AudioTrack(rain, gain_db=-12)],
        target_lufs=-18,
        output_format="wav",
        sample_rate=48000,
    )

    result = await process_audio.run(ctx, data)

    path = stored_file(config, result["media_url"])
    loudness = await ffmpeg.integrated_loudness(path)
    assert loudness == pytest.approx(-18, abs=1.0)
    meta = result["metadata"]
    assert meta["loudness_lufs"] == pytest.approx(loudness, abs=0.05)
    assert (meta["sample_rate"], meta["channels"], meta["format"]) == (48000, 2, "wav")
    assert meta["duration"] == pytest.approx(4.0, abs=0.1)
    assert meta["file_size"] == path.stat().st_size
    steps = [step for _, step in sink.calls]
    assert steps.index("measuring_loudness") < steps.index("mixing") < steps.index("done")
    assert not list((tmp_path / "scratch").iterdir())


async def test_a_flac_of_large_blocks_resampled_up_is_written_as_flac(tmp_path, files, http):
    # 32768-sample blocks at 8 kHz are 196608 at 48 kHz, past what a FLAC block may hold.
    source = tmp_path / "big-blocks.flac"
    await ffmpeg.run_ffmpeg(
        ["-f", "lavfi", "-i", "sine=f=440:d=3:r=8000", "-c:a", "flac", "-frame_size", "32768", str(source)],
        log_path=tmp_path / "make.log",
    )
    url = files.add("big-blocks.flac", source.read_bytes())
    ctx, _ = make_ctx(http, media_config(tmp_path))
    data = ProcessAudioInput(
        tracks=[AudioTrack(url)], normalize=False, output_format="flac", sample_rate=48000
    )

    result = await process_audio.run(ctx, data)

    assert (result["metadata"]["format"], result["metadata"]["sample_rate"]) == ("flac", 48000)
    assert result["metadata"]["duration"] == pytest.approx(3.0, abs=0.1)


async def test_a_failed_ffmpeg_says_its_first_line_why(tmp_path):
    with pytest.raises(TaskError) as failed:
        await ffmpeg.run_ffmpeg(
            # A block FLAC cannot hold: the cause, then eight lines of ffmpeg giving up.
            [
                "-f",
                "lavfi",
                "-i",
                "sine=d=1",
                "-af",
                "asetnsamples=n=70000",
                "-c:a",
                "flac",
                "-f",
                "flac",
                "-",
            ],
            log_path=tmp_path / "ffmpeg.log",
            what="Encoding",
        )

    assert re.match(
        r"Encoding failed \(ffmpeg exit \d+\): \[flac\] invalid block size: 70000 \| ", str(failed.value)
    )


def test_only_the_ends_of_a_long_ffmpeg_log_are_read(tmp_path):
    log = tmp_path / "ffmpeg.log"
    log.write_text("why it failed\n" + "a warning about a packet\n" * 400_000 + "the last line\n")

    head, tail = ffmpeg.log_ends(log)

    assert head.startswith("why it failed") and tail.endswith("the last line\n")
    assert len(head) + len(tail) <= 2 * 64 * 1024


async def test_trim_and_offset_set_the_mix_length_and_mp3_rate(tmp_path, files, http):
    tone = files.add("tone.wav", sine_wav(3.0))
    config = media_config(tmp_path)
    ctx, _ = make_ctx(http, config)
    tracks = [AudioTrack(tone, start=0.5, end=2.0), AudioTrack(tone, start=2.0, offset=1.0)]
    data = ProcessAudioInput(tracks=tracks, normalize=False, output_format="mp3", sample_rate=22050)

    result = await process_audio.run(ctx, data)

    meta = result["metadata"]
    assert meta["duration"] == pytest.approx(2.0, abs=0.1)  # second track: 1 s offset + 1 s left
    assert (meta["sample_rate"], meta["format"]) == (22050, "mp3")
    assert result["media_url"].startswith("http://media.test/media/proj-1/audio_task-1.mp3?")


async def test_an_image_given_as_a_track_is_refused(tmp_path, files, http):
    ctx, _ = make_ctx(http, media_config(tmp_path))
    data = ProcessAudioInput(tracks=[AudioTrack(files.add("p.png", png(), "image/png"))])

    with pytest.raises(TaskError, match=r"is not a supported audio file$"):
        await process_audio.run(ctx, data)
    assert not list((tmp_path / "scratch").iterdir())


def wma_in_wav(rate: int) -> bytes:
    """A WAV whose format tag names WMA v2 at `rate` Hz: its packets copy (the length is measured), but
    ffmpeg's WMA decoder refuses a rate over 50 kHz with -1, AVERROR(EPERM): ffmpeg exits 255."""
    fmt = struct.pack("<HHIIHHH", 0x0161, 1, rate, 16000, 2048, 16, 10) + bytes(10)
    data = bytes(8192)
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


async def test_a_track_ffmpeg_cannot_decode_fails_with_its_reason_though_ffmpeg_exits_as_when_stopped(
    tmp_path, files, http
):
    ctx, _ = make_ctx(http, media_config(tmp_path))
    data = ProcessAudioInput(tracks=[AudioTrack(files.add("wma.wav", wma_in_wav(96000)))], normalize=False)

    with pytest.raises(TaskError) as failed:
        await process_audio.run(ctx, data)

    assert not isinstance(failed.value, TransientError)
    assert re.search(r"\(ffmpeg exit 255\): .*Error while opening decoder", str(failed.value))


async def test_a_mix_ffmpeg_cannot_decode_fails_with_its_reason_though_its_log_is_at_info(
    tmp_path, files, http
):
    # The loudness pass logs at info: ffmpeg's last line is its reason, not the one a signal leaves.
    ctx, _ = make_ctx(http, media_config(tmp_path))
    data = ProcessAudioInput(tracks=[AudioTrack(files.add("wma.wav", wma_in_wav(96000)))])

    with pytest.raises(TaskError) as failed:
        await process_audio.run(ctx, data)

    assert not isinstance(failed.value, TransientError)
    assert re.search(r"\(ffmpeg exit 255\): .*Operation not permitted", str(failed.value))


async def test_an_ffmpeg_logging_at_info_that_sigterm_stopped_is_tried_again(tmp_path):
    stopped: list[int] = []

    async def stop_it(_: float) -> None:
        # Past its start (where it sets its handlers) once it reports progress.
        if not stopped:
            renderer = next(p for p in psutil.Process().children() if "ffmpeg" in p.name())
            stopped.append(renderer.pid)
            renderer.terminate()

    with pytest.raises(TransientError, match="stopped by a signal from outside taskd"):
        await ffmpeg.run_ffmpeg(
            ["-re", "-f", "lavfi", "-i", "sine", "-f", "null", "-"],
            log_path=tmp_path / "ffmpeg.log",
            duration=3600,
            progress=stop_it,
            loglevel="info",
        )
    assert stopped
