"""Audio with the bundled ffmpeg: encoders per format, two-pass EBU R128 loudness normalisation, measuring."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

from taskd.jobs.spec import TaskError
from taskd.media import ffmpeg

TRUE_PEAK = -1.5
LRA = 11.0
_ENCODERS = {
    "mp3": ["-c:a", "libmp3lame", "-b:a", "192k"],
    "wav": ["-c:a", "pcm_s16le"],
    "flac": ["-c:a", "flac"],
    "ogg": ["-c:a", "libvorbis", "-q:a", "5"],
}
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def encode_args(output_format: str, sample_rate: int) -> list[str]:
    """Codec, sample rate and container arguments for `output_format`; TaskError for an impossible rate."""
    if output_format == "mp3" and sample_rate not in MP3_RATES:
        raise TaskError(f"MP3 cannot have a sample rate of {sample_rate} Hz; use one of {MP3_RATES}")
    return [*_ENCODERS[output_format], "-ar", str(sample_rate), "-f", output_format]


def _loudnorm(target: float) -> str:
    return f"loudnorm=I={target:g}:TP={TRUE_PEAK:g}:LRA={LRA:g}"


async def loudnorm_second_pass(
    inputs: list[str],
    graph: str,
    label: str,
    target: float,
    workdir: Path,
    duration: float | None,
    progress: Any,
) -> str:
    """Measure the mix (loudnorm pass 1) and return the pass-2 filter that brings it to `target` LUFS linearly."""
    log = workdir / "loudnorm.log"
    args = [*inputs, "-filter_complex", f"{graph};[{label}]{_loudnorm(target)}:print_format=json[norm]"]
    args += ["-map", "[norm]", "-f", "null", "-"]
    await ffmpeg.run_ffmpeg(
        args, log_path=log, duration=duration, progress=progress, what="Loudness analysis", loglevel="info"
    )
    text = log.read_text("utf-8", "replace")
    found = re.search(r"\{[^{}]*\"input_i\"[^{}]*\}", text)
    if not found:
        raise TaskError("Loudness analysis gave no measurement")
    measured = orjson.loads(found.group(0))
    if measured["input_i"] in ("-inf", "inf"):
        raise TaskError("The mix is silent: there is no loudness to normalise")
    return (
        f"{_loudnorm(target)}:measured_I={measured['input_i']}:measured_TP={measured['input_tp']}:"
        f"measured_LRA={measured['input_lra']}:measured_thresh={measured['input_thresh']}:"
        f"offset={measured['target_offset']}:linear=true"
    )


async def describe(path: Path, output_format: str, model: str) -> dict[str, Any]:
    """Metadata measured from the file: duration, sample rate, channels, integrated loudness."""
    info = await ffmpeg.probe(path)
    return {
        "duration": info.duration,
        "sample_rate": info.sample_rate,
        "channels": info.channels,
        "format": output_format,
        "loudness_lufs": await ffmpeg.integrated_loudness(path),
        "generation_model": model,
    }
