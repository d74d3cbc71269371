"""The README's "What comes out": one documented request per media task type, run against a real taskd.

    .venv/bin/python scripts/media_gallery.py                      # make gallery: docs/images/gallery/
    .venv/bin/python scripts/media_gallery.py --quick --out /tmp/g  # smaller renders, same pictures' sizes

taskd runs in this process (an embedded Valkey, the HTTP API and every queue's worker, as `taskd serve`
runs them) and gets each request over HTTP with taskd's own client. The inputs (storyboard sketches, a
character cut-out, a voice profile, tones for a mix) are made here with Pillow and the standard library
and served on loopback, so `network.allow_private` is on; nothing is downloaded. For each type the script
saves `<task_type>.json`, the submit body it sent, and `<task_type>.png`, a picture of what came out:
four frames of a clip side by side, or an audio file's waveform. In the saved request the loopback
origin of the inputs is written as INPUTS_ORIGIN, so the file is the same on every run.

`generate_image` has no built-in path (it needs `[providers.image]`) and is not run: a picture from a
fake Images API would show nothing of taskd. `generate_character_voice` runs on espeak-ng when it is
installed; without it the script says so and leaves that picture as it was.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from aiohttp import web
from PIL import Image, ImageDraw

from taskd.client import TaskClient
from taskd.config import AuthConfig, Config, HttpConfig, NetworkConfig
from taskd.media import ffmpeg
from taskd.service import Service

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "images" / "gallery"
INPUTS_ORIGIN = "https://inputs.example"
PROJECT = "gallery"
# A clip's picture: FRAMES frames of TILE pixels in a row, PAD pixels apart and around.
FRAMES, TILE, PAD = 4, (240, 135), 4
SHEET_SIZE = (FRAMES * TILE[0] + (FRAMES + 1) * PAD, TILE[1] + 2 * PAD)
WAVEFORM_SIZE = (980, 160)
SKETCH = (640, 360)
RATE = 22050  # the sample rate of the tones made here


@attrs.frozen
class Mode:
    """How big the renders are: the full gallery, or a quick one for the test (same pictures' sizes)."""

    duration: int
    fps: int
    resolution: str


FULL = Mode(duration=4, fps=12, resolution="640x360")
QUICK = Mode(duration=2, fps=6, resolution="320x180")


# ---- inputs, drawn here ----


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def alley() -> bytes:
    """Storyboard 1: an alley in perspective, a lit doorway, a lamp, wet cobbles."""
    width, height = SKETCH
    image = Image.new("RGB", SKETCH, (70, 90, 120))
    draw = ImageDraw.Draw(image)
    vanish = (width * 0.55, height * 0.45)
    draw.polygon([(0, 0), vanish, (0, height)], fill=(120, 80, 60))
    draw.polygon([(width, 0), vanish, (width, height)], fill=(90, 100, 80))
    draw.polygon([(0, height), vanish, (width, height)], fill=(60, 60, 70))
    for row in range(8):
        draw.line([(0, height * row / 8), vanish], fill=(90, 55, 40), width=2)
    draw.polygon([(470, 140), (500, 150), (500, 230), (470, 250)], fill=(250, 200, 90))
    draw.line([(120, 60), (120, 330)], fill=(30, 30, 30), width=6)
    draw.ellipse([(100, 40), (140, 80)], fill=(255, 235, 160))
    for x in range(40, width, 60):
        draw.ellipse([(x, 310 + x % 30), (x + 40, 320 + x % 30)], fill=(150, 160, 190))
    return _png(image)


def doorway() -> bytes:
    """Storyboard 2: the lit doorway close up, a sign above it, rain streaks."""
    width, height = SKETCH
    image = Image.new("RGB", SKETCH, (50, 45, 55))
    draw = ImageDraw.Draw(image)
    draw.rectangle([(0, 0), (width, height)], fill=(95, 70, 55))
    draw.rectangle([(240, 70), (400, 360)], fill=(30, 25, 25))
    draw.rectangle([(255, 85), (385, 360)], fill=(250, 205, 100))
    draw.rectangle([(200, 20), (440, 55)], fill=(180, 30, 40))
    draw.rectangle([(365, 220), (375, 235)], fill=(120, 90, 20))
    for x in range(0, width, 23):
        draw.line([(x, (x * 7) % 90), (x - 12, (x * 7) % 90 + 60)], fill=(170, 180, 200), width=1)
    return _png(image)


def detective(coat: tuple[int, int, int]) -> bytes:
    """A character cut-out with transparency: hat, head, trench coat, legs."""
    image = Image.new("RGBA", (120, 240), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.polygon([(30, 30), (90, 30), (100, 40), (20, 40)], fill=(25, 25, 25, 255))
    draw.rectangle([(42, 8), (78, 32)], fill=(25, 25, 25, 255))
    draw.ellipse([(42, 36), (78, 76)], fill=(225, 190, 160, 255))
    draw.polygon([(30, 80), (90, 80), (100, 180), (20, 180)], fill=(*coat, 255))
    draw.line([(60, 80), (60, 180)], fill=(40, 30, 20, 255), width=3)
    draw.rectangle([(38, 180), (54, 236)], fill=(30, 30, 40, 255))
    draw.rectangle([(66, 180), (82, 236)], fill=(30, 30, 40, 255))
    return _png(image)


def wav(samples: list[float]) -> bytes:
    """Mono 16-bit WAV bytes of samples in -1..1."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(b"".join(struct.pack("<h", int(32767 * max(-1.0, min(1.0, s)))) for s in samples))
    return out.getvalue()


def dialogue(seconds: float) -> bytes:
    """A speech-like line: a 180 Hz tone in syllable bursts (4 a second) with pauses between words."""

    def level(t: float) -> float:
        word = int(t / 0.75) % 3 != 2  # two words, a pause
        return 0.5 * max(0.0, math.sin(math.pi * 4 * t)) if word else 0.0

    return wav([level(n / RATE) * math.sin(2 * math.pi * 180 * n / RATE) for n in range(int(seconds * RATE))])


def music_bed(seconds: float) -> bytes:
    """A low chord (110 + 165 Hz) that swells in and fades out."""

    def sample(n: int) -> float:
        t = n / RATE
        swell = min(1.0, t / 0.5, (seconds - t) / 1.0)
        return 0.25 * swell * (math.sin(2 * math.pi * 110 * t) + math.sin(2 * math.pi * 165 * t))

    return wav([sample(n) for n in range(int(seconds * RATE))])


def knocks() -> bytes:
    """Three knocks on a door: short decaying 90 Hz thumps."""
    seconds = 1.2

    def sample(n: int) -> float:
        t = n / RATE
        since = t % 0.3 if t < 0.9 else 1.0
        return 0.9 * math.exp(-since * 40) * math.sin(2 * math.pi * 90 * t)

    return wav([sample(n) for n in range(int(seconds * RATE))])


def inputs(mode: Mode) -> dict[str, tuple[bytes, str]]:
    """Every input file the requests name: path -> (body, content type)."""
    profile = {"voice": "onyx", "espeak_voice": "en-gb", "pitch": 35, "rate": 150}
    return {
        "/storyboard/alley.png": (alley(), "image/png"),
        "/storyboard/doorway.png": (doorway(), "image/png"),
        "/characters/detective-walk.png": (detective((150, 120, 80)), "image/png"),
        "/characters/detective-turn.png": (detective((110, 85, 60)), "image/png"),
        "/voices/detective_voice.json": (json.dumps(profile).encode(), "application/json"),
        "/audio/dialogue.wav": (dialogue(mode.duration * 0.75), "audio/wav"),
        "/audio/music_bed.wav": (music_bed(float(mode.duration)), "audio/wav"),
        "/audio/knocks.wav": (knocks(), "audio/wav"),
    }


# ---- the requests, one per media type ----


def requests(origin: str, mode: Mode) -> dict[str, dict[str, Any]]:
    """task type -> task_data: the API document's examples where it has one, filled in for each type."""
    size = {"duration": mode.duration, "fps": mode.fps, "resolution": mode.resolution}
    end = mode.duration
    return {
        "generate_video": {
            "storyboard_images": [f"{origin}/storyboard/alley.png", f"{origin}/storyboard/doorway.png"],
            "scene_description": "Detective walks through rain-soaked alley",
            "camera_angle": "wide_shot",
            "lighting": "dramatic_noir",
            "character_positions": [
                {"character_id": "detective_jones", "position": "center_frame", "action": "walking_slowly"}
            ],
            **size,
        },
        "render_animation": {
            "character_id": "detective_jones",
            "background_url": f"{origin}/storyboard/alley.png",
            "animation_type": "zoom_in",
            "keyframes": [
                {"image_url": f"{origin}/characters/detective-walk.png", "time": 0, "x": 0.12, "y": 0.62},
                {
                    "image_url": f"{origin}/characters/detective-walk.png",
                    "time": end * 0.5,
                    "x": 0.5,
                    "y": 0.6,
                    "rotation": -6,
                    "easing": "ease_out",
                },
                {
                    "image_url": f"{origin}/characters/detective-turn.png",
                    "time": end * 0.875,
                    "x": 0.78,
                    "y": 0.52,
                    "scale": 0.6,
                    "opacity": 0.7,
                },
            ],
            **size,
        },
        "generate_character_voice": {
            "text": "I've been expecting you, detective.",
            "character_voice_profile": f"{origin}/voices/detective_voice.json",
            "emotion": "mysterious",
            "pace": "slow",
            "background_noise": "rain_ambience",
            "output_format": "mp3",
            "sample_rate": 44100,
        },
        "process_audio": {
            "tracks": [
                {"url": f"{origin}/audio/dialogue.wav", "offset": 0.5},
                {"url": f"{origin}/audio/music_bed.wav", "gain_db": -12},
                {"url": f"{origin}/audio/knocks.wav", "offset": end * 0.6, "gain_db": -3},
            ],
            "normalize": True,
            "target_lufs": -16,
            "output_format": "wav",
        },
    }


# ---- pictures of what came out ----


def contact_sheet(clip: Path, frames: int, target: Path) -> None:
    """FRAMES frames of the clip, evenly spaced (at the middle of each quarter), side by side."""
    picks = "+".join(f"eq(n\\,{int((i + 0.5) * frames / FRAMES)})" for i in range(FRAMES))
    chain = f"select={picks},scale={TILE[0]}:{TILE[1]},tile={FRAMES}x1:padding={PAD}:margin={PAD}:color=white"
    _ffmpeg("-i", str(clip), "-vf", chain, "-frames:v", "1", str(target))


def waveform(sound: Path, target: Path) -> None:
    """The whole file's waveform (channels overlaid; a square-root scale, so quiet parts show) on white."""
    width, height = WAVEFORM_SIZE
    graph = (
        f"[0:a]showwavespic=s={width}x{height}:scale=sqrt:colors=0x1f4e8c[wave];"
        f"color=c=white:s={width}x{height}[ground];[ground][wave]overlay=format=auto,format=rgb24"
    )
    _ffmpeg("-i", str(sound), "-filter_complex", graph, "-frames:v", "1", str(target))


def _ffmpeg(*args: str) -> None:
    # -bitexact keeps the encoder's version out of the PNG, so a rerun changes no bytes it need not.
    subprocess.run(
        [ffmpeg.ffmpeg_exe(), "-loglevel", "error", "-y", *args[:-1], "-bitexact", args[-1]], check=True
    )


PICTURES: dict[str, Callable[[Path, Mode, Path], None]] = {
    "generate_video": lambda media, mode, target: contact_sheet(media, mode.duration * mode.fps, target),
    "render_animation": lambda media, mode, target: contact_sheet(media, mode.duration * mode.fps, target),
    "generate_character_voice": lambda media, _, target: waveform(media, target),
    "process_audio": lambda media, _, target: waveform(media, target),
}


# ---- running them ----


async def serve_inputs(files: dict[str, tuple[bytes, str]]) -> tuple[web.AppRunner, str]:
    """A loopback server of the input files; its runner and origin."""
    app = web.Application()
    for path, (body, kind) in files.items():

        async def handler(_: web.Request, body: bytes = body, kind: str = kind) -> web.Response:
            return web.Response(body=body, content_type=kind)

        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def free_port() -> int:
    """A port free now: media_url carries taskd's own address (media.base_url unset), so it must be known."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def runnable(task_type: str) -> bool:
    """Whether the type has an engine here without a provider: espeak-ng for the voice, ffmpeg for the rest."""
    return task_type != "generate_character_voice" or shutil.which("espeak-ng") is not None


async def run_one(
    client: TaskClient, task_type: str, task_data: dict[str, Any], workdir: Path
) -> tuple[Path, dict[str, Any]]:
    """Submit one request, wait for it, download its media at the signed media_url; the file and the result."""
    submitted = await client.submit(PROJECT, task_type, task_data)
    task = await client.wait(submitted.task_id, timeout=120)
    result: dict[str, Any] = task.result
    target = workdir / f"{task_type}{Path(result['media_url'].split('?')[0]).suffix}"
    async with client.session.get(result["media_url"]) as response:
        response.raise_for_status()
        target.write_bytes(await response.read())
    return target, result


async def make_gallery(out: Path, mode: Mode) -> list[str]:
    """Run every runnable request against a taskd started here; write requests and pictures to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    runner, origin = await serve_inputs(inputs(mode))
    try:
        with tempfile.TemporaryDirectory(prefix="taskd-gallery-") as scratch:
            wrote = await run_all(requests(origin, mode), origin, mode, Path(scratch), out)
    finally:
        await runner.cleanup()
    for task_type in [t for t in requests(origin, mode) if t not in wrote]:
        print(
            f"{task_type}: not run: no espeak-ng on PATH (apt-get install espeak-ng) and no [providers.speech]"
        )
    print("generate_image: not run: it needs a provider ([providers.image], docs/media.md)")
    return wrote


async def run_all(
    todo: dict[str, dict[str, Any]], origin: str, mode: Mode, scratch: Path, out: Path
) -> list[str]:
    """Start taskd in `scratch`, run the runnable requests at once, save each request and picture; the types done."""
    key = secrets.token_urlsafe(24)
    config = Config(
        data_dir=str(scratch / "data"),
        http=HttpConfig(port=free_port()),
        auth=AuthConfig(api_keys=[key]),
        network=NetworkConfig(allow_private=True),  # the inputs are on loopback
    )
    service = Service(config, http=True, workers=True)
    await service.start()
    try:
        host, port = service.addresses[0]
        async with TaskClient(f"http://{host}:{port}", key) as client:
            run = {t: d for t, d in todo.items() if runnable(t)}
            done = await asyncio.gather(*(run_one(client, t, d, scratch) for t, d in run.items()))
    finally:
        await service.stop(grace=1)
    for (task_type, task_data), (media, result) in zip(run.items(), done, strict=True):
        body = {"project_id": PROJECT, "task_type": task_type, "task_data": task_data}
        text = json.dumps(body, indent=2).replace(origin, INPUTS_ORIGIN)
        (out / f"{task_type}.json").write_text(text + "\n", "utf-8")
        PICTURES[task_type](media, mode, out / f"{task_type}.png")
        metadata = result["metadata"]
        print(f"{task_type}: {media.name}, {metadata.get('file_size')} bytes {metadata.get('applied') or ''}")
    return list(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="where to write (default docs/images/gallery)"
    )
    parser.add_argument("--quick", action="store_true", help="short, small renders (the test's mode)")
    args = parser.parse_args()
    asyncio.run(make_gallery(args.out, QUICK if args.quick else FULL))


if __name__ == "__main__":
    main()
