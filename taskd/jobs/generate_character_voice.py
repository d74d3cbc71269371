"""`generate_character_voice`: character dialogue from a speech engine."""

from __future__ import annotations

import attrs

from taskd.jobs.spec import TaskType
from taskd.validation import check, max_length, not_blank, one_of

SAMPLE_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)


@attrs.frozen
class GenerateCharacterVoiceInput:
    text: str = attrs.field(
        validator=attrs.validators.and_(not_blank("Text is required"), max_length(5000, "Text"))
    )
    character_voice_profile: str | None = None
    emotion: str | None = None
    pace: str | None = None
    background_noise: str | None = None
    output_format: str = attrs.field(default="mp3", validator=one_of(("mp3", "wav"), "Output format"))
    sample_rate: int = attrs.field(
        default=44100,
        validator=check(lambda v: v in SAMPLE_RATES, f"Sample rate must be one of {SAMPLE_RATES}"),
    )


TASK = TaskType(
    name="generate_character_voice",
    input=GenerateCharacterVoiceInput,
    queue="default",
    expected_duration=20.0,
)
