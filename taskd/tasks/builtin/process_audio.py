"""`process_audio`: mixing, loudness normalisation and format conversion of audio tracks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from taskd.media import audio, download, ffmpeg
from taskd.media.bounds import Bounds
from taskd.media.own import OwnMedia
from taskd.media.publish import publish
from taskd.media.scratch import scratch_dir
from taskd.media.store import scratch_root
from taskd.tasks.spec import TaskContext, TaskError, TaskType
from taskd.validation import between, http_url, max_length, one_of

MODEL = "taskd-ffmpeg"


def _end_after_start(track: AudioTrack | None, _: attrs.Attribute[Any], end: float | None) -> None:
    # A cut that keeps nothing, checked at submit (a 400 naming the field) as every other field is:
    # before, it was taken and its run failed at its start.
    if track is not None and end is not None and track.start is not None and end <= track.start:
        raise ValueError(f"End ({end:g} s) must be after start ({track.start:g} s)")


def _mp3_rate(data: ProcessAudioInput | None, _: attrs.Attribute[Any], rate: int) -> None:
    # 8000..96000 is any format's range; MP3 has nine rates of its own. Checked at submit, as the
    # end after the start is: an MP3 at 96000 Hz was taken and its run failed at its start.
    if data is not None and data.output_format == "mp3" and rate not in audio.MP3_RATES:
        raise ValueError(f"MP3 cannot have a sample rate of {rate} Hz; use one of {audio.MP3_RATES}")


@attrs.frozen
class AudioTrack:
    url: str = attrs.field(validator=http_url("Track url"))
    gain_db: float = attrs.field(
        default=0.0, validator=between(-60, 24, "Gain must be between -60 and 24 dB")
    )
    start: float | None = attrs.field(default=None, validator=between(0, 3600, "Start must be 0..3600 s"))
    end: float | None = attrs.field(
        default=None,
        validator=[between(0, 3600, "End must be 0..3600 s"), _end_after_start],
        metadata={
            "description": "After start, when both are given"
        },  # no JSON Schema keyword compares two fields
    )
    offset: float = attrs.field(default=0.0, validator=between(0, 3600, "Offset must be 0..3600 s"))


@attrs.frozen
class ProcessAudioInput:
    tracks: list[AudioTrack] = attrs.field(
        validator=attrs.validators.and_(attrs.validators.min_len(1), max_length(16, "Tracks", "tracks"))
    )
    normalize: bool = True
    target_lufs: float = attrs.field(
        default=-16.0, validator=between(-40, -5, "Target loudness must be -40..-5 LUFS")
    )
    output_format: str = attrs.field(
        default="mp3", validator=one_of(("mp3", "wav", "flac", "ogg"), "Output format")
    )
    sample_rate: int = attrs.field(
        default=44100,
        validator=[between(8000, 96000, "Sample rate must be 8000..96000"), _mp3_rate],
        metadata={"description": f"With output_format mp3, one of {', '.join(map(str, audio.MP3_RATES))}"},
    )


def mix_graph(tracks: list[AudioTrack], sample_rate: int, samples: list[str]) -> tuple[str, str]:
    """Bound (`samples`, each track's Bounds.audio_samples), trim, gain, resample to stereo and delay
    each input, then sum them (no level change by amix)."""
    parts = []
    for i, (track, bound) in enumerate(zip(tracks, samples, strict=True)):
        trim = [f"start={track.start:g}"] if track.start is not None else []
        trim += [f"end={track.end:g}"] if track.end is not None else []
        steps = [bound]
        steps += [f"atrim={':'.join(trim)}"] if trim else []
        steps += [
            "asetpts=PTS-STARTPTS",
            f"volume={track.gain_db:g}dB",
            f"aresample={sample_rate}",
            "aformat=sample_fmts=fltp:channel_layouts=stereo",
        ]
        if track.offset:
            steps.append(f"adelay={round(track.offset * 1000)}:all=1")
        parts.append(f"[{i}:a]{','.join(steps)}[a{i}]")
    if len(tracks) == 1:
        return ";".join(parts), "a0"
    inputs = "".join(f"[a{i}]" for i in range(len(tracks)))
    parts.append(f"{inputs}amix=inputs={len(tracks)}:duration=longest:normalize=0[mix]")
    return ";".join(parts), "mix"


def mix_length(tracks: list[AudioTrack], lengths: list[float | None]) -> float | None:
    """The mix's expected length from the inputs' lengths (for progress); None if unknown."""
    ends = []
    for track, length in zip(tracks, lengths, strict=True):
        if length is None:
            return None
        end = min(length, track.end) if track.end is not None else length
        ends.append(track.offset + max(0.0, end - (track.start or 0.0)))
    return max(ends)


async def process(ctx: TaskContext, data: ProcessAudioInput, workdir: Path) -> dict[str, Any]:
    """Download, (measure,) mix and encode in `workdir`; store the result."""
    limits = download.Limits.from_config(ctx.config.media)
    download.check_count([t.url for t in data.tracks], limits, "tracks")
    own = OwnMedia.for_task(ctx.config, ctx.project_id)  # an earlier step's media_url is read from the store
    files = []
    for i, track in enumerate(data.tracks):
        files.append(
            await download.fetch(
                ctx.inputs,
                track.url,
                workdir / f"track{i}",
                kind="audio",
                limits=limits,
                what="Track",
                own=own,
            )
        )
        await ctx.progress(0.05 + 0.15 * (i + 1) / len(data.tracks), "fetching_tracks")
    bounds = Bounds.from_config(ctx.config.media)
    streams = [
        await bounds.check_audio(path, f"Track {track.url}")
        for path, track in zip(files, data.tracks, strict=True)
    ]
    # Every track is decoded whole, up to its end, whatever its trim keeps.
    bounds.check_samples(sum(bounds.samples(stream, stream.seconds) for stream in streams), "The tracks")
    lengths: list[float | None] = [stream.seconds for stream in streams]
    expected = mix_length(data.tracks, lengths)
    if expected is not None and expected <= 0:
        raise TaskError("Nothing is left to mix after trimming")
    inputs = [arg for path in files for arg in bounds.audio_input(path)]
    graph, label = mix_graph(
        data.tracks, data.sample_rate, [bounds.audio_samples(stream) for stream in streams]
    )

    async def analysing(fraction: float) -> None:
        await ctx.progress(0.2 + 0.35 * fraction, "measuring_loudness")

    async def mixing(fraction: float) -> None:
        await ctx.progress(
            (0.55 if data.normalize else 0.2) + (0.4 if data.normalize else 0.75) * fraction, "mixing"
        )

    if data.normalize:
        second = await audio.loudnorm_second_pass(
            inputs, graph, label, data.target_lufs, workdir, expected, analysing
        )
        graph, label = f"{graph};[{label}]{second},aresample={data.sample_rate}[out]", "out"
    output = workdir / f"mix.{data.output_format}"
    args = [*inputs, "-filter_complex", graph, "-map", f"[{label}]"]
    args += [*audio.encode_args(data.output_format, data.sample_rate), *bounds.output_args(), str(output)]
    await ffmpeg.run_ffmpeg(
        args, log_path=workdir / "ffmpeg.log", duration=expected, progress=mixing, what="Mixing"
    )
    bounds.check_output(output, "The mix")
    await ctx.progress(0.96, "storing_media")
    metadata = await audio.describe(output, data.output_format, MODEL)
    metadata["tracks"] = len(data.tracks)
    return await publish(
        ctx.config,
        ctx.project_id,
        output,
        f"audio_{ctx.task_id}.{data.output_format}",
        metadata,
        ctx.run_state,
    )


async def run(ctx: TaskContext, data: ProcessAudioInput) -> dict[str, Any]:
    """Mix the tracks with their gains and trims, normalise to target_lufs, encode at sample_rate."""
    async with scratch_dir(scratch_root(ctx.config), ctx.task_id) as workdir:
        result = await process(ctx, data, workdir)
    await ctx.progress(1.0, "done")
    return result


TASK = TaskType(
    name="process_audio",
    input=ProcessAudioInput,
    queue="cpu_intensive",
    expected_duration=22.0,
    handler=run,
    stores_media=True,
    gpu="none",
)
