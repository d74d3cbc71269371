"""Running the ffmpeg of `imageio-ffmpeg`: progress from `-progress pipe:1`, probing by `ffmpeg -i`.

Every ffmpeg (and any other tool, `collect`) is a member of the running task's process tree
(taskd/proctree.py): its own process group, the task's cancel grace, memory limit and rlimit.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import re
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import attrs

from taskd import proctree
from taskd.childenv import child_environment
from taskd.errors import TaskError, TransientError

log = logging.getLogger("taskd.media")

_STDERR_TAIL = 600
_LOG_END = 64 * 1024
_ADDRESS = re.compile(r" @ 0x[0-9a-f]+")
# What ffmpeg says when an input's frames change parameters and its filter graph may not be rebuilt.
_PARAMETERS_CHANGED = "Changing audio frame properties on the fly is not supported"
# ffmpeg exits with its error code's low byte: AVERROR(ENOSPC) = -28 is exit 228. A full disk (or
# quota) also leaves its log empty (the log is on the same disk), so the exit status is what tells.
_DISK_FULL_EXITS = {-errno.ENOSPC & 0xFF, -errno.EDQUOT & 0xFF}
# How ffmpeg ends when SIGTERM or SIGINT stops it: killed by the signal before it sets its handlers
# (asyncio's negative status), else exit 255 with "Exiting normally, received signal 15." as its last
# line at loglevel info, and no line at all at loglevel error. 255 is also AVERROR(EPERM)'s low byte,
# which a caller's file can cause (a decoder that refuses its parameters with -1: WMA at 96 kHz in a
# WAV), and then ffmpeg says why: so an exit 255 is a stop only with that line last, or with none.
_KILLED_BY = {-signal.SIGTERM, -signal.SIGINT}
_STOPPED_EXIT = 255
_STOPPED_LINE = re.compile(r"Exiting normally, received signal (?:2|15)\.")
ProgressFn = Callable[[float], Awaitable[None]]


# How ffmpeg reads each file type taskd's fetch sniffs (taskd/media/download.py names a file by it).
# A file of a caller's or a provider's is opened with its demuxer forced: left to guess, ffmpeg
# probes the content, and a file that passes the sniff may still probe as another format, e.g. a
# DASH manifest, whose demuxer opens every local path the file lists (a tenant read the host's files).
# A file behind an ID3v2 tag may be MP3, FLAC or ADTS AAC: ffmpeg picks among those three alone.
# A still image is read whole as one picture (`image2`, its name taken as it is, its decoder named):
# the `*_pipe` demuxers cut a file into every picture it holds, and ffmpeg decoded those after the
# first as well, pictures no header check or media.max_decoded_image_bytes had counted.
DEMUXERS = {
    "png": ["-f", "image2", "-pattern_type", "none", "-c:v", "png"],
    "jpg": ["-f", "image2", "-pattern_type", "none", "-c:v", "mjpeg"],
    "gif": ["-f", "gif"],
    "bmp": ["-f", "image2", "-pattern_type", "none", "-c:v", "bmp"],
    "webp": ["-f", "image2", "-pattern_type", "none", "-c:v", "webp"],
    "wav": ["-f", "wav"],
    "mp3": ["-f", "mp3"],
    "id3": ["-format_whitelist", "mp3,flac,aac"],
    "flac": ["-f", "flac"],
    "ogg": ["-f", "ogg"],
    "m4a": ["-f", "mov"],
    "mp4": ["-f", "mov"],
}


def demuxer(path: Path) -> list[str]:
    """The input options that choose the demuxer of a fetched file, from the type its name ends in;
    ValueError for any other."""
    chosen = DEMUXERS.get(path.suffix.removeprefix("."))
    if chosen is None:
        raise ValueError(f"{path.name}: not a file type taskd fetches")
    return list(chosen)


@functools.cache
def ffmpeg_exe() -> str:
    """The ffmpeg binary shipped by imageio-ffmpeg (or $IMAGEIO_FFMPEG_EXE)."""
    import imageio_ffmpeg

    exe: str = imageio_ffmpeg.get_ffmpeg_exe()
    return exe


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


def warm() -> None:
    """Locate ffmpeg and probe its encoders now: both block (file checks, a subprocess), so never on the loop."""
    ffmpeg_exe()
    encoders()


async def ready() -> None:
    """Make sure ffmpeg_exe() and encoders() are known, working them out in a thread the first time.

    The service warms them at start-up (taskd/service.py); this covers a task that runs before that is
    done, and a program that runs task types without a service.
    """
    if not (ffmpeg_exe.cache_info().currsize and encoders.cache_info().currsize):
        await asyncio.to_thread(warm)


async def warm_up() -> None:
    """ready() at start-up: a failure is only logged; the task that needs ffmpeg reports it as its error."""
    try:
        await ready()
    except Exception as exc:  # imageio-ffmpeg raises RuntimeError, a broken binary OSError
        log.warning("ffmpeg could not be located or probed at start-up: %s", exc)


# The H.264 encoder's threads. Left to itself x264 runs 1.5 per core, each frame thread holding
# frames of its own, so a render's memory grew with the host: a 4K animatic that took 1.4 GB on a
# small host passed the 2048 MB execution.memory_limit_mb on a 16-core one and was killed there.
ENCODER_THREADS = 8


def h264_encoder() -> list[str]:
    """Encoder arguments for H.264: libx264 when built in, else OpenH264 (on the loop: after `ready()`),
    on ENCODER_THREADS threads whatever the host has."""
    threads = ["-threads", str(ENCODER_THREADS)]
    if "libx264" in encoders():
        return ["-c:v", "libx264", "-preset", "veryfast", "-crf", "20", *threads]
    return ["-c:v", "libopenh264", "-b:v", "4M", *threads]


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
    await ready()
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
    with log_path.open("wb") as log_file:
        proc = await proctree.spawn(
            *cmd, *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log_file
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
            await proctree.stop_process(proc)
    if code in _DISK_FULL_EXITS:
        # Not the input's fault, and gone once space is freed: retried like a provider that is down.
        log.warning("ffmpeg ran out of disk space writing in %s (exit %d)", log_path.parent, code)
        raise TransientError(f"{what} failed: no space left on the disk it writes to (ffmpeg exit {code})")
    if code != 0:
        logged = await asyncio.to_thread(log_ends, log_path)
        if _stopped(code, logged[1]):
            # Not taskd's doing: a cancel, a limit or a stop of taskd cancels this coroutine as it
            # signals, so that exit is never looked at. A stop sent to every process of the service
            # at once (systemd's default KillMode=control-group, `tini -g`) or a kill by hand reached
            # ffmpeg itself: not the input's fault, so tried again, not failed as "ffmpeg exit 255".
            log.warning(
                "ffmpeg was stopped by a signal from outside taskd (exit %d) in %s", code, log_path.parent
            )
            raise TransientError(f"{what} was stopped by a signal from outside taskd; it is tried again")
        if _PARAMETERS_CHANGED in logged[1]:
            # Bounds.audio_input's -reinit_filter 0; at loglevel info the line is lost among others.
            raise TaskError(
                f"{what} failed: an audio input changes its sample rate, channels or sample format "
                "part-way, which taskd does not decode"
            )
        # A file in the scratch dir is named alone (where taskd keeps its data is not the caller's
        # business), and ffmpeg's `[png @ 0x55d6...]` prefixes lose their memory addresses.
        ends = [
            [
                line
                for line in _ADDRESS.sub("", end.replace(f"{log_path.parent}/", "")).splitlines()
                if line.strip()
            ]
            for end in logged
        ]
        # At loglevel error the first line says why, as a rule; the last ones are ffmpeg's own steps
        # of giving up (at info, the first line is the input's description). Each is cut on its own.
        last = ends[1][-5:]
        first = [line[:_STDERR_TAIL] for line in ends[0][:1] if loglevel == "error" and line not in last]
        said = " | ".join([*first, " | ".join(last)[-_STDERR_TAIL:]] if last else first)
        raise TaskError(f"{what} failed (ffmpeg exit {code}): {said or 'no message'}")


def _stopped(code: int, tail: str) -> bool:
    """Whether ffmpeg ended with `code`, its log ending in `tail`, as SIGTERM or SIGINT ends it."""
    if code in _KILLED_BY:
        return True
    lines = [line for line in tail.splitlines() if line.strip()]
    return code == _STOPPED_EXIT and (not lines or _STOPPED_LINE.fullmatch(lines[-1].strip()) is not None)


def log_ends(path: Path, size: int = _LOG_END) -> tuple[str, str]:
    """The first and the last `size` bytes of an ffmpeg log (as text; the whole log twice when it is
    shorter), however long it grew: a file that makes ffmpeg warn at every packet writes megabytes,
    which are never all read."""
    with path.open("rb") as log:
        head = log.read(size)
        log.seek(max(0, log.seek(0, 2) - size))
        tail = log.read(size)
    return head.decode("utf-8", "replace"), tail.decode("utf-8", "replace")


async def collect(cmd: Sequence[str], *, stdout: int, stderr: int) -> tuple[int | None, bytes]:
    """Run a short tool command (with the child environment); its exit code and what its piped stream held.

    One of `stdout`/`stderr` is `asyncio.subprocess.PIPE` (stderr may be STDOUT, into the same pipe);
    the process is stopped however the wait ends, a cancel included.
    """
    proc = await proctree.spawn(*cmd, stdin=asyncio.subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    try:
        out, err = await proc.communicate()
    finally:
        await proctree.stop_process(proc)
    return proc.returncode, out if stdout == asyncio.subprocess.PIPE else err


async def ffmpeg_output(args: Sequence[str]) -> str:
    """Run a short ffmpeg command and return its stderr (where `-i` and the analysis filters report)."""
    await ready()
    _, err = await collect(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", *args],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
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


# `ffmpeg -i` prints a file's tags too, as `    key             : value` lines, a value's newlines as
# `                    : more` lines. Only ffmpeg's own lines start with exactly two spaces and then
# `Duration:` or `Stream #N:N`, so a tag *value* cannot pass for one. A tag *key* or an Ogg/Matroska
# stream language is printed verbatim and can: so this is for files taskd wrote with no tags copied
# (Bounds.output_args); an input's length comes from input_duration, its picture size from its header.
_DURATION = re.compile(r"^  Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", re.M)
_STREAM = r"^  Stream #\d+:\d+(?:\[0x[0-9a-f]+\])?(?:\([^)\n]*\))?: "
_VIDEO = re.compile(_STREAM + r"Video: (\w+).*?, (\d{2,5})x(\d{2,5})", re.M)
_FPS = re.compile(_STREAM + r"Video: .*?([\d.]+) fps", re.M)
_AUDIO = re.compile(_STREAM + r"Audio: (\w+).*?, (\d+) Hz, ([^,\n]+)", re.M)
_CHANNELS = {"mono": 1, "stereo": 2, "2.1": 3, "quad": 4, "5.0": 5, "5.1": 6, "7.1": 8}


def parse_info(text: str) -> MediaInfo:
    """Read duration, video size/fps and audio rate/channels from ffmpeg's own lines of `ffmpeg -i` output."""
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
    """Measure a file taskd wrote with `ffmpeg -i` (imageio-ffmpeg ships no ffprobe); see _DURATION."""
    return parse_info(await ffmpeg_output(["-i", str(path)]))


@attrs.frozen
class AudioInput:
    """An audio input as ffmpeg reads it: seconds counted from its packets, the stream's parameters."""

    seconds: float
    sample_rate: int | None
    channels: int | None  # as layout_channels() counts them: None when ffmpeg named no layout


async def measure_audio(path: Path, limit: float, what: str) -> AudioInput:
    """An input's seconds of audio, counted by copying its packets to nowhere (nothing is decoded),
    at most `limit` + 1, and its first audio stream's sample rate and channel count; TaskError when
    ffmpeg cannot read an audio stream from it.

    The count is read from `-progress` on stdout, which holds ffmpeg's counters alone: the file's tags,
    its stream language and its header's claimed length go to stderr, which nobody reads. The
    parameters come from a `framecrc` of the stream's first packet, whose header lines ffmpeg
    writes from the stream's parameters alone (no tag is printed there).
    """
    await ready()
    stream = path.with_name(f"{path.name}.stream")
    try:
        code, out = await collect(
            [
                *(ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-y", "-loglevel", "quiet"),
                *("-t", f"{limit + 1:.3f}", *demuxer(path), "-i", str(path), "-map", "0:a:0", "-c", "copy"),
                *("-f", "null", "-progress", "pipe:1", "-"),
                *("-map", "0:a:0", "-c", "copy", "-frames:a", "1", "-f", "framecrc", str(stream)),
            ],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        header = await asyncio.to_thread(_read_header, stream)
    finally:
        await asyncio.to_thread(stream.unlink, missing_ok=True)
    counted = re.findall(rb"^out_time_us=(-?\d+)$", out, re.M)
    if code != 0 or not counted:
        raise TaskError(f"{what} is not a readable audio file")
    rate = re.search(r"^#sample_rate 0: (\d+)$", header, re.M)
    layout = re.search(r"^#channel_layout_name 0: (.+)$", header, re.M)
    return AudioInput(
        max(0, int(counted[-1])) / 1e6,
        int(rate.group(1)) if rate else None,
        layout_channels(layout.group(1)) if layout else None,
    )


def _read_header(stream: Path) -> str:
    # The header lines come first; the one packet's line after them is short.
    try:
        with stream.open("rb") as lines:
            return lines.read(4096).decode("ascii", "replace")
    except FileNotFoundError:
        return ""


# ffmpeg's named channel layouts that are not written as their channel groups (`5.1.4`).
_NAMED_LAYOUTS = {
    "mono": 1,
    "stereo": 2,
    "binaural": 2,
    "downmix": 2,
    "quad": 4,
    "hexagonal": 6,
    "octagonal": 8,
    "cube": 8,
    "hexadecagonal": 16,
}


def layout_channels(name: str) -> int | None:
    """Channels of a layout as ffmpeg describes it: `N channels (…)` (any layout without a name),
    `ambisonic N` ((N+1)^2, and those of a layout after a `+`), a standard name (`5.1(side)`: 6, `22.2`: 24, `octagonal`: 8),
    or channel names joined by `+` (a custom order); None for anything else."""
    if count := re.match(r"(\d+) channels", name):
        return int(count.group(1))
    if order := re.match(r"ambisonic (\d+)", name):
        # Channels past the ambisonic ones follow a `+` (Opus: `ambisonic 0+stereo`, 3 channels).
        extra = name[order.end() :].removeprefix("+")
        more = (layout_channels(extra) or len(extra.split("+"))) if extra else 0
        return (int(order.group(1)) + 1) ** 2 + more
    base = name.split("(")[0].strip()
    if re.fullmatch(r"\d+(?:\.\d+)+", base):
        return sum(int(group) for group in base.split("."))
    if base in _NAMED_LAYOUTS:
        return _NAMED_LAYOUTS[base]
    if "+" in name:
        return len(name.split("+"))
    return None


# ebur128 prints its summary when it closes, after everything a file can make ffmpeg print.
_SUMMARY = re.compile(
    r"^\[Parsed_ebur128_\d+ @ 0x[0-9a-f]+\] Summary:\n\s*\n  Integrated loudness:\n    I: +(-?\d+\.\d|-inf) LUFS$",
    re.M,
)


async def integrated_loudness(path: Path) -> float | None:
    """The file's integrated loudness (LUFS) by ffmpeg's EBU R128 `ebur128` filter; None for silence."""
    text = await ffmpeg_output(
        ["-nostats", "-i", str(path), "-filter_complex", "ebur128=framelog=quiet", "-f", "null", "-"]
    )
    found = _SUMMARY.findall(text)
    if not found or found[-1] == "-inf":
        return None
    return float(found[-1])
