"""Running the ffmpeg of `imageio-ffmpeg`: progress from `-progress pipe:1`, kill on cancel, probing by `ffmpeg -i`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import attrs

from taskd.childenv import child_environment
from taskd.jobs.spec import TaskError

TERM_GRACE = 2.0
_STDERR_TAIL = 600
ProgressFn = Callable[[float], Awaitable[None]]


@functools.cache
def ffmpeg_exe() -> str:
    """The ffmpeg binary shipped by imageio-ffmpeg (or $IMAGEIO_FFMPEG_EXE)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.cache
def encoders() -> frozenset[str]:
    """Names of the encoders the bundled ffmpeg has (`ffmpeg -encoders`)."""
    import subprocess

    out = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-encoders"],
        capture_output=True,
        text=True,
        check=False,
        env=child_environment(),
    ).stdout
    return frozenset(m.group(1) for m in re.finditer(r"^\s*[VAS][A-Z.]{5}\s+(\S+)", out, re.M))


def h264_encoder() -> list[str]:
    """Encoder arguments for H.264: libx264 when built in, else OpenH264."""
    if "libx264" in encoders():
        return ["-c:v", "libx264", "-preset", "veryfast", "-crf", "20"]
    return ["-c:v", "libopenh264", "-b:v", "4M"]


async def stop_process(proc: asyncio.subprocess.Process, grace: float = TERM_GRACE) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; the process is reaped either way."""
    if proc.returncode is not None:
        return
    try:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    except BaseException:
        # Cancelled again while waiting: never leave the child running.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise


async def run_ffmpeg(
    args: Sequence[str],
    *,
    log_path: Path,
    duration: float | None = None,
    progress: ProgressFn | None = None,
    what: str = "ffmpeg",
    loglevel: str = "error",
) -> None:
    """Run ffmpeg with `args`; report out_time/duration to `progress`; TaskError with stderr's tail on failure.

    stderr goes to `log_path` (a file in the task's scratch dir), so a chatty ffmpeg never blocks on a pipe.
    """
    cmd = [
        ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-y",
        "-nostats",
        "-loglevel",
        loglevel,
        "-progress",
        "pipe:1",
    ]
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env=child_environment(),
        )
        try:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode("ascii", "replace").strip()
                if progress is not None and duration and line.startswith("out_time_us="):
                    value = line.partition("=")[2]
                    if value.isdigit():
                        await progress(min(1.0, int(value) / 1e6 / duration))
            code = await proc.wait()
        finally:
            await stop_process(proc)
    if code != 0:
        lines = log_path.read_text("utf-8", "replace").strip().splitlines()
        tail = " | ".join(line for line in lines[-6:] if line.strip())[-_STDERR_TAIL:]
        raise TaskError(f"{what} failed (ffmpeg exit {code}): {tail or 'no message'}")


async def ffmpeg_output(args: Sequence[str]) -> str:
    """Run a short ffmpeg command and return its stderr (where `-i` and the analysis filters report)."""
    proc = await asyncio.create_subprocess_exec(
        ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=child_environment(),
    )
    try:
        _, err = await proc.communicate()
    finally:
        await stop_process(proc)
    return err.decode("utf-8", "replace")


@attrs.frozen
class MediaInfo:
    """What `ffmpeg -i` says about a file."""

    duration: float | None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    video_codec: str | None = None
    audio_codec: str | None = None

    @property
    def resolution(self) -> str | None:
        """`WxH` of the first video stream."""
        return f"{self.width}x{self.height}" if self.width and self.height else None


_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_VIDEO = re.compile(r"Stream #\S+.*?: Video: (\w+).*?, (\d{2,5})x(\d{2,5})")
_FPS = re.compile(r"Stream #\S+.*?: Video: .*?([\d.]+) fps")
_AUDIO = re.compile(r"Stream #\S+.*?: Audio: (\w+).*?, (\d+) Hz, ([^,]+)")
_CHANNELS = {"mono": 1, "stereo": 2, "2.1": 3, "quad": 4, "5.0": 5, "5.1": 6, "7.1": 8}


def parse_info(text: str) -> MediaInfo:
    """Read duration, video size/fps and audio rate/channels from `ffmpeg -i` output."""
    duration = None
    if match := _DURATION.search(text):
        hours, minutes, seconds = match.groups()
        duration = round(int(hours) * 3600 + int(minutes) * 60 + float(seconds), 3)
    video = _VIDEO.search(text)
    fps = _FPS.search(text)
    audio = _AUDIO.search(text)
    channels = None
    if audio:
        layout = audio.group(3).strip()
        channels = _CHANNELS.get(layout.split("(")[0])
        if channels is None and (count := re.match(r"(\d+) channels", layout)):
            channels = int(count.group(1))
    return MediaInfo(
        duration=duration,
        width=int(video.group(2)) if video else None,
        height=int(video.group(3)) if video else None,
        fps=float(fps.group(1)) if fps else None,
        sample_rate=int(audio.group(2)) if audio else None,
        channels=channels,
        video_codec=video.group(1) if video else None,
        audio_codec=audio.group(1) if audio else None,
    )


async def probe(path: Path) -> MediaInfo:
    """Measure a file with `ffmpeg -i` (imageio-ffmpeg ships no ffprobe)."""
    return parse_info(await ffmpeg_output(["-i", str(path)]))


async def integrated_loudness(path: Path) -> float | None:
    """The file's integrated loudness (LUFS) by ffmpeg's EBU R128 `ebur128` filter."""
    text = await ffmpeg_output(
        ["-nostats", "-i", str(path), "-filter_complex", "ebur128=framelog=quiet", "-f", "null", "-"]
    )
    summary = text.rpartition("Summary:")[2]
    match = re.search(r"I:\s+(-?[\d.]+|-inf) LUFS", summary)
    if not match or match.group(1) == "-inf":
        return None
    return float(match.group(1))
