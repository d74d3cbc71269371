"""Audio with the bundled ffmpeg: encoders per format, two-pass EBU R128 loudness normalisation, measuring."""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path
from typing import Any

import attrs
import orjson

from taskd.errors import TaskError
from taskd.media import ffmpeg

TRUE_PEAK = -1.5
LRA = 11.0
_ENCODERS = {
    "mp3": ["-c:a", "libmp3lame", "-b:a", "192k"],
    "wav": ["-c:a", "pcm_s16le"],
    # Frames of at most 4096 samples: the encoder refuses a block over 65535, which a resampled
    # frame of a file with large blocks (32768 at 8 kHz, to 48 kHz) would be.
    "flac": ["-c:a", "flac", "-frame_size", "4096"],
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


@attrs.frozen
class Loudnorm:
    """What loudnorm's first pass measured, as numbers."""

    input_i: float
    input_tp: float
    input_lra: float
    input_thresh: float
    target_offset: float

    def second_pass(self, target: float) -> str:
        """The linear loudnorm filter that brings this measurement to `target` LUFS, formatted by taskd."""
        return (
            f"{_loudnorm(target)}:measured_I={self.input_i:.2f}:measured_TP={self.input_tp:.2f}:"
            f"measured_LRA={self.input_lra:.2f}:measured_thresh={self.input_thresh:.2f}:"
            f"offset={self.target_offset:.2f}:linear=true"
        )


# loudnorm prints its JSON when it closes, after the inputs' tags and everything else a file can
# make ffmpeg print: only the block after the last `[Parsed_loudnorm_N @ 0x...]` line is read.
_LOUDNORM_BLOCK = re.compile(r"^\[Parsed_loudnorm_\d+ @ 0x[0-9a-f]+\] *\n(\{[^{}]*\})", re.M)
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d+)?|inf)")
_UNUSABLE = "Loudness analysis gave no usable measurement"


def _number(printed: object) -> float:
    # loudnorm prints every value as a quoted decimal (or "-inf"); anything else is not its output.
    if not isinstance(printed, str) or not _NUMBER.fullmatch(printed):
        raise ValueError(printed)
    return float(printed)


def parse_loudnorm(log: str) -> Loudnorm:
    """The measurement in loudnorm's last JSON block; TaskError unless every value is a number."""
    blocks = _LOUDNORM_BLOCK.findall(log)
    if not blocks:
        raise TaskError(_UNUSABLE)
    try:
        printed = orjson.loads(blocks[-1])
        values = {field: _number(printed[field]) for field in attrs.fields_dict(Loudnorm)}
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise TaskError(_UNUSABLE) from None
    if values["input_i"] == -math.inf:
        raise TaskError("The mix is silent: there is no loudness to normalise")
    if not all(math.isfinite(value) for value in values.values()):
        raise TaskError(_UNUSABLE)
    return Loudnorm(**values)


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
    # loudnorm prints its measurement last, after whatever the inputs made ffmpeg say.
    _, end = await asyncio.to_thread(ffmpeg.log_ends, log)
    return parse_loudnorm(end).second_pass(target)


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
