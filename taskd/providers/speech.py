"""Speech engines: an OpenAI-compatible speech API (`POST {base_url}/audio/speech`), or espeak-ng on the machine."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import attrs
import orjson

from taskd.config import SpeechProvider
from taskd.errors import TaskError
from taskd.media import download
from taskd.media.ffmpeg import collect
from taskd.net.guarded import GuardedClient
from taskd.providers.http import ProviderClient, post_json

NO_ENGINE = (
    "No speech engine available: set providers.speech.base_url (TASKD_PROVIDERS__SPEECH__BASE_URL) "
    "or install espeak-ng (apt-get install espeak-ng)"
)
ESPEAK_BASE_RATE = 175  # words per minute at pace 1.0
# An espeak-ng voice name (`en-us`, `gmw/en-US`, `en+whisper`): never a path or an option.
ESPEAK_VOICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(?:/[A-Za-z0-9][A-Za-z0-9_-]*)?(?:\+[A-Za-z0-9_-]+)?")
PACES = {"very_slow": 0.7, "slow": 0.85, "normal": 1.0, "medium": 1.0, "fast": 1.2, "very_fast": 1.4}


@attrs.frozen
class Tone:
    """How an emotion changes espeak-ng's voice: rate factor, pitch 0..99, amplitude 0..200, variant."""

    rate: float = 1.0
    pitch: int = 50
    amplitude: int = 100
    variant: str = ""


EMOTIONS = {
    "neutral": Tone(),
    "happy": Tone(1.1, 65),
    "excited": Tone(1.2, 72, 120),
    "sad": Tone(0.85, 35, 80),
    "angry": Tone(1.1, 40, 150),
    "fearful": Tone(1.15, 68),
    "calm": Tone(0.9, 45, 90),
    "mysterious": Tone(0.88, 32, 90),
    "whisper": Tone(0.9, 50, 100, "whisper"),
}


def pace_factor(pace: str | None) -> float:
    """A speed factor from a pace word (`slow`, `fast`, ...) or a number 0.25..4.0."""
    if pace is None:
        return 1.0
    if pace in PACES:
        return PACES[pace]
    return float(pace)


def valid_pace(pace: str | None) -> bool:
    """True for a known pace word or a number 0.25..4.0."""
    if pace is None or pace in PACES:
        return True
    try:
        return 0.25 <= float(pace) <= 4.0
    except ValueError:
        return False


@attrs.frozen
class VoiceProfile:
    """A character's voice: `voice` for the speech API, `espeak_voice`, and optional pitch/rate for espeak-ng."""

    voice: str | None = None
    espeak_voice: str | None = None
    pitch: int | None = None
    rate: int | None = None


async def load_profile(
    profile: str | None, inputs: GuardedClient, limits: download.Limits, workdir: Path
) -> VoiceProfile:
    """A URL is fetched as a JSON voice profile; any other string is the speech API's voice name."""
    if not profile:
        return VoiceProfile()
    if not profile.lower().startswith(("http://", "https://")):
        return VoiceProfile(voice=profile)
    small = attrs.evolve(limits, max_bytes=min(limits.max_bytes, 64 * 1024))
    path = await download.fetch(
        inputs, profile, workdir / "profile", kind="json", limits=small, what="Voice profile"
    )
    try:
        data = orjson.loads(await asyncio.to_thread(path.read_bytes))
    except orjson.JSONDecodeError:
        raise TaskError(f"Voice profile {profile} is not valid JSON") from None
    if not isinstance(data, dict):
        raise TaskError(f"Voice profile {profile} is not a JSON object")

    def pick(key: str, kind: type) -> object:
        value = data.get(key)
        return value if isinstance(value, kind) and not isinstance(value, bool) else None

    return VoiceProfile(pick("voice", str), pick("espeak_voice", str), pick("pitch", int), pick("rate", int))  # type: ignore[arg-type]


class SpeechClient(ProviderClient[SpeechProvider]):
    """Calls the speech API of `[providers.speech]`; asks for WAV so nothing is encoded lossily twice."""

    async def speak(
        self, text: str, voice: str | None, speed: float, emotion: str | None, out: Path, *, max_bytes: int
    ) -> Path:
        """Synthesise `text` into `out` (+ sniffed extension); an answer over `max_bytes` fails."""
        base_url = self._provider.base_url.strip().rstrip("/")
        body: dict[str, object] = {
            "model": self._provider.model,
            "voice": voice or self._provider.voice,
            "input": text,
            "response_format": "wav",
            "speed": speed,
        }
        if emotion and not self._provider.model.startswith("tts-1"):
            body["instructions"] = f"Speak in a {emotion.replace('_', ' ')} tone."
        raw = await post_json(
            self._session,
            f"{base_url}/audio/speech",
            body,
            api_key=self._provider.api_key,
            timeout=self._provider.timeout,
            gate=self._gate,
            name="Speech provider",
            max_bytes=max_bytes,
        )
        ext = download.sniff(raw[:16], "audio")
        if ext is None:
            raise TaskError("Speech provider returned data that is not audio")
        path = out.with_suffix(f".{ext}")
        await asyncio.to_thread(path.write_bytes, raw)  # an answer can be megabytes
        return path


def espeak_binary() -> str | None:
    """espeak-ng (or espeak) on PATH, or None."""
    return shutil.which("espeak-ng") or shutil.which("espeak")


def espeak_args(profile: VoiceProfile, emotion: str | None, pace: float) -> list[str]:
    """Voice, rate, pitch and amplitude arguments for the emotion and pace."""
    tone = EMOTIONS.get((emotion or "neutral").lower(), Tone())
    voice = profile.espeak_voice or "en-us"
    if not ESPEAK_VOICE.fullmatch(voice):
        raise TaskError(
            "Voice profile espeak_voice must be a voice name such as en-us or gmw/en-US "
            "(letters, digits, - and _, an optional +variant)"
        )
    if tone.variant and "+" not in voice:
        voice = f"{voice}+{tone.variant}"
    rate = round((profile.rate or ESPEAK_BASE_RATE) * tone.rate * pace)
    pitch = profile.pitch if profile.pitch is not None else tone.pitch
    return [
        "-v",
        voice,
        "-s",
        str(min(450, max(80, rate))),
        "-p",
        str(min(99, max(0, pitch))),
        "-a",
        str(tone.amplitude),
    ]


async def espeak(binary: str, text: str, args: list[str], workdir: Path) -> Path:
    """Run espeak-ng into a WAV in `workdir`; killed if the task is cancelled."""
    text_file, out = workdir / "text.txt", workdir / "speech.wav"
    await asyncio.to_thread(text_file.write_text, text, "utf-8")
    code, err = await collect(
        [binary, *args, "-w", str(out), "-f", str(text_file)],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    message = re.sub(r"\s+", " ", err.decode("utf-8", "replace")).strip()
    if code != 0 or not out.is_file() or out.stat().st_size <= 44:
        raise TaskError(f"espeak-ng failed (exit {code}): {message or 'no output'}")
    return out
