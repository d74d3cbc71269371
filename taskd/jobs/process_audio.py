"""`process_audio`: mixing, loudness normalisation and format conversion of audio tracks."""

from __future__ import annotations

import attrs

from taskd.jobs.spec import TaskType
from taskd.validation import between, http_url, max_length, one_of


@attrs.frozen
class AudioTrack:
    url: str = attrs.field(validator=http_url("Track url"))
    gain_db: float = attrs.field(
        default=0.0, validator=between(-60, 24, "Gain must be between -60 and 24 dB")
    )
    start: float | None = attrs.field(default=None, validator=between(0, 3600, "Start must be 0..3600 s"))
    end: float | None = attrs.field(default=None, validator=between(0, 3600, "End must be 0..3600 s"))


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
        default=44100, validator=between(8000, 96000, "Sample rate must be 8000..96000")
    )


TASK = TaskType(
    name="process_audio",
    input=ProcessAudioInput,
    queue="cpu_intensive",
    expected_duration=22.0,
)
