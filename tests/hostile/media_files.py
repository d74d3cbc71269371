"""Hostile media files for the attacker suite, made with the bundled ffmpeg or written byte by byte."""

from __future__ import annotations

import io
import struct
import subprocess
import wave
import zlib
from pathlib import Path

import imageio_ffmpeg
from fake_media_apis import mono_wav
from PIL import Image


def _ffmpeg(*args: str) -> None:
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *args], check=True)


def square_wav(seconds: float = 2.0, rate: int = 8000) -> bytes:
    """Mono 16-bit WAV of a quiet square wave (loud enough to have a loudness)."""
    frames = b"".join(struct.pack("<h", 3000 if (n // 20) % 2 else -3000) for n in range(int(seconds * rate)))
    return mono_wav(frames, rate)


def silent_wav(seconds: float, rate: int, channels: int) -> bytes:
    """A 16-bit PCM WAV of silence with any sample rate and channel count its header can say."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(2 * channels * int(seconds * rate)))
    return out.getvalue()


def tagged_flac(workdir: Path, *, seconds: float = 2.0, **tags: str) -> bytes:
    """A FLAC of a square wave whose Vorbis comments hold `tags` (title, comment, ...)."""
    source, target = workdir / "tagged-source.wav", workdir / "tagged.flac"
    source.write_bytes(square_wav(seconds))
    metadata = [arg for key, value in tags.items() for arg in ("-metadata", f"{key}={value}")]
    _ffmpeg("-i", str(source), *metadata, str(target))
    return target.read_bytes()


def tagged_ogg(workdir: Path, *, language: str, key: str) -> bytes:
    """A one-second Ogg Vorbis whose stream language and one tag key hold `language` and `key` verbatim."""
    target = workdir / "tagged.ogg"
    _ffmpeg(
        *("-f", "lavfi", "-i", "sine=f=440:d=1", "-c:a", "libvorbis"),
        *("-metadata:s:a:0", f"language={language}", "-metadata", f"{key}=x", str(target)),
    )
    return target.read_bytes()


def long_silent_flac(workdir: Path, hours: float) -> bytes:
    """A FLAC of `hours` of 8 kHz silence: a few hundred KB, generated in a second or two."""
    target = workdir / "long.flac"
    _ffmpeg(
        *("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono:n=32768", "-t", str(int(hours * 3600))),
        *("-c:a", "flac", "-frame_size", "32768", "-compression_level", "0", str(target)),
    )
    return target.read_bytes()


def wide_silent_flac(workdir: Path, seconds: float, rate: int = 384_000, layout: str = "7.1") -> bytes:
    """A FLAC of `seconds` of silence at a high rate in many channels: a few KB a second that decode
    to millions of samples (an hour of 384 kHz 7.1 fits under 50 MB)."""
    target = workdir / "wide.flac"
    _ffmpeg(
        *("-f", "lavfi", "-i", f"anullsrc=r={rate}:cl={layout}", "-t", str(seconds)),
        *("-c:a", "flac", str(target)),
    )
    return target.read_bytes()


def png_rgba64(workdir: Path, width: int, height: int) -> bytes:
    """A PNG of 16-bit RGBA (what Pillow cannot write): 8 bytes a pixel once decoded."""
    target = workdir / "deep.png"
    _ffmpeg(
        *("-f", "lavfi", "-i", f"color=c=0x336699:s={width}x{height}", "-frames:v", "1"),
        *("-pix_fmt", "rgba64be", str(target)),
    )
    return target.read_bytes()


def wav_claiming(seconds: float, body_seconds: float = 1.0, rate: int = 8000) -> bytes:
    """A WAV whose header declares `seconds` of audio but whose body holds only `body_seconds`."""
    real = square_wav(body_seconds, rate)
    declared = int(seconds * rate * 2)
    return real[:4] + struct.pack("<I", declared + 36) + real[8:40] + struct.pack("<I", declared) + real[44:]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A grey PNG of about width x height / 1000 bytes that decodes to width x height pixels."""
    row = b"\x00" * (1 + width)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def m4a_tone(target: Path, seconds: float = 2.0) -> Path:
    """An AAC tone in an M4A: a file of the kind a DASH manifest may name."""
    _ffmpeg("-f", "lavfi", "-i", f"sine=f=1000:d={seconds}", "-c:a", "aac", str(target))
    return target


def dash_manifest_as_m4a(reads: Path) -> bytes:
    """An "M4A" (bytes 4..8 are `ftyp`) that is a DASH manifest naming the local file `reads`.

    The `jp2 ` brand in an XML comment lowers ffmpeg's MP4 guess below its DASH one, so an ffmpeg
    left to probe the format opens the manifest's BaseURL, a path on taskd's host.
    """
    manifest = (
        '<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011" '
        'type="static" mediaPresentationDuration="PT2S" minBufferTime="PT1S"><Period>'
        '<AdaptationSet mimeType="audio/mp4"><Representation id="a" bandwidth="1000">'
        f"<BaseURL>file://{reads}</BaseURL></Representation></AdaptationSet></Period></MPD>"
    )
    return b"<!--ftypjp2 -->\n" + manifest.encode()


def m4a_stamped_zero(workdir: Path, seconds: float, rate: int = 8000) -> bytes:
    """An M4A of `seconds` of silence whose every packet is stamped 0: its timestamps count ~0 s."""
    target = workdir / "stamped-zero.m4a"
    _ffmpeg(
        *("-f", "lavfi", "-i", f"anullsrc=r={rate}:cl=mono", "-t", str(seconds)),
        *("-c:a", "flac", "-bsf:a", "setts=ts=0", "-f", "mp4", str(target)),
    )
    return target.read_bytes()


def flac_of_changing_layouts(workdir: Path, segments: int, seconds: float = 1.0) -> bytes:
    """A FLAC of `segments` stretches of 8 kHz silence, mono and stereo in turn, each encoded on its
    own: every stretch's frames count from frame 0 again, so its packets count one stretch's length,
    and every change of channels makes ffmpeg rebuild a filter graph left to do so."""
    stretches = []
    for n, layout in enumerate(["mono", "stereo"]):
        target = workdir / f"stretch{n}.flac"
        _ffmpeg("-f", "lavfi", "-i", f"anullsrc=r=8000:cl={layout}", "-t", str(seconds), str(target))
        stretches.append(_flac_split(target.read_bytes()))
    frames = [frames for _, frames in stretches]
    return stretches[0][0] + b"".join(frames[n % 2] for n in range(segments))


def _flac_split(data: bytes) -> tuple[bytes, bytes]:
    # `fLaC`, then metadata blocks up to the one whose header has its top bit set, then the frames.
    end = 4
    while True:
        last = data[end] & 0x80
        end += 4 + int.from_bytes(data[end + 1 : end + 4], "big")
        if last:
            return data[:end], data[end:]


def jpeg_of_empty_segments(count: int) -> bytes:
    """SOI, `count` empty comment segments, then a 16x16 frame header: a walk of `count` segments."""
    return b"\xff\xd8" + b"\xff\xfe\x00\x02" * count + b"\xff\xc0\x00\x11\x08\x00\x10\x00\x10\x03"


def jpeg_of_many_scans(count: int) -> bytes:
    """A small progressive JPEG with `count` more copies of its last scan, each a pass over every block."""
    out = io.BytesIO()
    Image.new("L", (64, 64), 128).save(out, "JPEG", progressive=True)
    data = out.getvalue()
    end = data.rindex(b"\xff\xd9")
    last_scan = data[data.rindex(b"\xff\xda") : end]
    return data[:end] + last_scan * count + b"\xff\xd9"
