"""`generate_character_voice`: character dialogue from a speech engine."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path
from typing import Any

import attrs

from taskd.media import audio, download, ffmpeg
from taskd.media.bounds import Bounds
from taskd.media.own import OwnMedia
from taskd.media.publish import publish
from taskd.media.scratch import scratch_dir
from taskd.media.store import scratch_root
from taskd.providers import speech
from taskd.tasks.spec import TaskContext, TaskError, TaskType
from taskd.validation import check, max_length, not_blank, one_of, unrequestable

SAMPLE_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)
NOISE_GAIN_DB = -20.0
# A fetched background is looped under the voice, and every pass of ffmpeg's loop costs a seek and a
# restart however little it holds: one sample at 768 kHz looped under a 2 s voice kept a worker busy
# for a minute. Shorter ones are refused; at this length a loop under the longest voice allowed
# (media.max_input_seconds) is at most 36 000 passes of a small WAV.
MIN_BACKGROUND_SECONDS = 0.1
# Built-in backgrounds, made by ffmpeg's noise source: name -> lavfi source.
NOISES = {
    "rain_ambience": "anoisesrc=color=pink:amplitude=0.5,highpass=f=400,lowpass=f=6000",
    "wind": "anoisesrc=color=brown:amplitude=0.8,lowpass=f=400,tremolo=f=0.3:d=0.6",
    "room_tone": "anoisesrc=color=brown:amplitude=0.2,lowpass=f=250",
    "white_noise": "anoisesrc=color=white:amplitude=0.3",
}


def _background_ok(value: str | None) -> bool:
    return value is None or value in NOISES or value.lower().startswith(("http://", "https://"))


def _requestable(what: str) -> Any:
    """An attrs validator: a value that is an http(s) URL must be one a download can request."""

    def validate(_: Any, __: attrs.Attribute[Any], value: str | None) -> None:
        if value is not None and value.lower().startswith(("http://", "https://")):
            problem = unrequestable(what, value)
            if problem is not None:
                raise ValueError(problem)

    return validate


@attrs.frozen
class GenerateCharacterVoiceInput:
    text: str = attrs.field(
        validator=attrs.validators.and_(not_blank("Text is required"), max_length(5000, "Text"))
    )
    character_voice_profile: str | None = attrs.field(
        default=None, validator=_requestable("Character voice profile")
    )
    # Sent to a speech API as `instructions` ("Speak in a … tone."): unbounded, it went whole to the
    # provider (up to the body limit, again at each retry of a 5xx), as generate_image's pose did.
    emotion: str | None = attrs.field(default=None, validator=max_length(500, "Emotion"))
    pace: str | None = attrs.field(
        default=None,
        validator=check(speech.valid_pace, f"Pace must be one of {tuple(speech.PACES)} or a number 0.25..4"),
        metadata={
            "description": f"One of {', '.join(speech.PACES)}, or a number 0.25..4 written as a string"
        },
    )
    background_noise: str | None = attrs.field(
        default=None,
        validator=[
            check(_background_ok, f"Background noise must be an http(s) URL or one of {tuple(NOISES)}"),
            _requestable("Background noise"),
        ],
        metadata={"description": f"An http(s) URL of an audio file, or one of {', '.join(NOISES)}"},
    )
    output_format: str = attrs.field(default="mp3", validator=one_of(("mp3", "wav"), "Output format"))
    # The rates as an enum in the OpenAPI document: without it, the schema took any integer.
    sample_rate: int = attrs.field(
        default=44100,
        validator=check(
            lambda v: v in SAMPLE_RATES,
            f"Sample rate must be one of {SAMPLE_RATES}",
            {"enum": list(SAMPLE_RATES)},
        ),
    )


async def synthesise(ctx: TaskContext, data: GenerateCharacterVoiceInput, workdir: Path) -> tuple[Path, str]:
    """Speech as an audio file in `workdir`, and the engine's name: the speech API if configured, else espeak-ng."""
    limits = download.Limits.from_config(ctx.config.media)
    profile = await speech.load_profile(data.character_voice_profile, ctx.inputs, limits, workdir)
    pace = speech.pace_factor(data.pace)
    if ctx.config.providers.speech.base_url.strip():
        client = speech.SpeechClient(ctx.config.providers.speech, ctx.http, ctx.provider_gate("speech"))
        path = await client.speak(
            data.text,
            profile.voice,
            pace,
            data.emotion,
            workdir / "speech",
            max_bytes=limits.max_bytes,
        )
        return path, client.model
    binary = await asyncio.to_thread(speech.espeak_binary)  # a walk of PATH
    if binary is None:
        raise TaskError(speech.NO_ENGINE)
    return await speech.espeak(
        binary, data.text, speech.espeak_args(profile, data.emotion, pace), workdir
    ), "espeak-ng"


async def _background(
    ctx: TaskContext, name: str, workdir: Path, bounds: Bounds, voice: ffmpeg.AudioInput, sample_rate: int
) -> list[str]:
    """The `-i` of the background: a built-in noise, or the fetched file decoded once into a plain WAV
    of at most the voice's length, which is what ffmpeg loops."""
    if name in NOISES:
        return ["-f", "lavfi", "-i", NOISES[name]]
    limits = download.Limits.from_config(ctx.config.media)
    what = f"Background noise {name}"
    path = await download.fetch(
        ctx.inputs,
        name,
        workdir / "background",
        kind="audio",
        limits=limits,
        what="Background noise",
        own=OwnMedia.for_task(ctx.config, ctx.project_id),  # e.g. an earlier process_audio's media_url
    )
    stream = await bounds.check_audio(path, what)
    # Looping the fetched file itself would read all of it again on every pass, however few samples
    # (or however short timestamps) each pass gives: decoded once, by its samples, it is looped as
    # a WAV whose timestamps are its samples and whose bytes are only those samples.
    plain = workdir / "background_plain.wav"
    # No more than the voice needs (and no less than the shortest background taken).
    needed = max(voice.seconds, MIN_BACKGROUND_SECONDS)
    decoded = min(needed, stream.seconds)
    bounds.check_samples(
        bounds.samples(voice, voice.seconds) + bounds.samples(stream, decoded),
        f"The synthesised speech and {what}",
    )
    chain = f"{bounds.audio_samples(stream)},atrim=end={needed:.3f},aresample={sample_rate}"
    await ffmpeg.run_ffmpeg(
        [
            *bounds.audio_input(path),
            *("-filter_complex", f"[0:a]{chain},aformat=sample_fmts=s16:channel_layouts=mono[bg]"),
            *("-map", "[bg]", "-c:a", "pcm_s16le", "-f", "wav", *bounds.output_args(), str(plain)),
        ],
        log_path=workdir / "background.log",
        what="Decoding the background noise",
    )
    held = await asyncio.to_thread(_wav_seconds, plain)
    if held < MIN_BACKGROUND_SECONDS:
        raise TaskError(
            f"{what} holds {held:.3f} s of audio; a background is looped under the voice and must "
            f"hold at least {MIN_BACKGROUND_SECONDS:g} s"
        )
    return bounds.audio_input(plain, loop=True)


def _wav_seconds(path: Path) -> float:
    """Seconds held by a plain PCM WAV that ffmpeg wrote, from its `fmt ` and `data` chunks."""
    with wave.open(str(path), "rb") as plain:
        return plain.getnframes() / plain.getframerate()


async def voice(ctx: TaskContext, data: GenerateCharacterVoiceInput, workdir: Path) -> dict[str, Any]:
    """Synthesise, mix the background under the voice, encode at sample_rate, store."""
    await ctx.progress(0.1, "synthesising_speech")
    speech_file, model = await synthesise(ctx, data, workdir)
    await ctx.progress(0.6, "mixing_audio")
    bounds = Bounds.from_config(ctx.config.media)
    # A speech provider's answer is bounded like a caller's file.
    speech = await bounds.check_audio(speech_file, "The synthesised speech")
    bounds.check_samples(bounds.samples(speech, speech.seconds), "The synthesised speech")
    length = speech.seconds
    voice_chain = f"aresample={data.sample_rate},aformat=sample_fmts=fltp:channel_layouts=mono"
    inputs = bounds.audio_input(speech_file)
    graph = f"[0:a]{bounds.audio_samples(speech)},{voice_chain}[out]"
    if data.background_noise:
        inputs += await _background(ctx, data.background_noise, workdir, bounds, speech, data.sample_rate)
        # Both kinds of background have honest timestamps: a generated noise (lavfi), a fetched
        # file decoded into a plain WAV.
        graph = (
            f"[0:a]{bounds.audio_samples(speech)},{voice_chain}[v];"
            f"[1:a]volume={NOISE_GAIN_DB:g}dB,{voice_chain}[n];"
            "[v][n]amix=inputs=2:duration=first:normalize=0[out]"
        )
    output = workdir / f"voice.{data.output_format}"
    args = [*inputs, "-filter_complex", graph, "-map", "[out]"]
    args += [*audio.encode_args(data.output_format, data.sample_rate), *bounds.output_args(), str(output)]

    async def mixing(fraction: float) -> None:
        await ctx.progress(0.6 + 0.3 * fraction, "mixing_audio")

    await ffmpeg.run_ffmpeg(
        args, log_path=workdir / "ffmpeg.log", duration=length, progress=mixing, what="Encoding"
    )
    bounds.check_output(output, "The voice file")
    await ctx.progress(0.95, "storing_media")
    metadata = await audio.describe(output, data.output_format, model)
    return await publish(
        ctx.config,
        ctx.project_id,
        output,
        f"voice_{ctx.task_id}.{data.output_format}",
        metadata,
        ctx.run_state,
    )


async def run(ctx: TaskContext, data: GenerateCharacterVoiceInput) -> dict[str, Any]:
    """Speak `text` in the character's voice with emotion and pace; optional background noise."""
    async with scratch_dir(scratch_root(ctx.config), ctx.task_id) as workdir:
        result = await voice(ctx, data, workdir)
    await ctx.progress(1.0, "done")
    return result


TASK = TaskType(
    name="generate_character_voice",
    input=GenerateCharacterVoiceInput,
    queue="default",
    expected_duration=20.0,
    handler=run,
    stores_media=True,
    gpu="none",
)
