"""What a task's inputs may make ffmpeg decode, and what a task may write: the `media.max_*` settings.

Each bound is checked before ffmpeg decodes anything (an image's header, an audio input's packets
counted without decoding; what a task's images, or its audio inputs, decode together), and enforced by ffmpeg itself as a second line (`-max_pixels`, `-t`, the
samples counted in the filter graph, `-fs`) so that a file which lies in its header or timestamps
still cannot make it decode or write more. Every input is read by the demuxer of the type its
first bytes showed (`ffmpeg.demuxer`), never one ffmpeg guesses.
"""

from __future__ import annotations

import math
from pathlib import Path

import attrs

from taskd.config import MediaConfig
from taskd.errors import TaskError
from taskd.media import ffmpeg, image_header

# An audio input's stream, read before it is decoded. ffmpeg's resampler mixes at most 64 channels
# (a file of 255 failed deep in the mix as "[SWR] Failed to set option"), and one of 2^31 Hz asked
# it for more memory than it had; 384 kHz is the highest rate recorded audio has (DXD).
MAX_AUDIO_CHANNELS = 64
MAX_SAMPLE_RATE = 384_000
# Scans of a JPEG: each is a pass of the decoder over every block of the picture, and a progressive
# scan that changes nothing takes 31 bytes, so 50 MiB of them kept a worker decoding one 40-megapixel
# image for hours (2000 made a 16-megapixel grey one take 2 s). Real files have a few dozen at most.
MAX_JPEG_SCANS = 200
# Frame headers a JPEG's picture may hold (its own, an EXIF thumbnail's, a maker note's previews):
# `image_header.decoded_bytes` sums each in Python, and 2.7 million of them (a 50 MB file of 19-byte
# headers) kept a thread of the worker's process counting for 19 s. Real files have a handful at most.
MAX_JPEG_FRAMES = 64
# An input's decoding stops this long past the length its packets counted: the count is where its
# last packet starts, and a file whose timestamps say less than it holds decodes no more than that.
AUDIO_SLACK_SECONDS = 1.0


@attrs.frozen
class Bounds:
    """The limits of the `[media]` section on decoded inputs and written outputs."""

    max_image_pixels: int
    max_input_seconds: float
    max_output_bytes: int
    max_audio_samples: int
    max_decoded_image_bytes: int

    @classmethod
    def from_config(cls, media: MediaConfig) -> Bounds:
        """The bounds of the `[media]` section."""
        return cls(
            media.max_image_pixels,
            media.max_input_seconds,
            media.max_output_bytes,
            media.max_audio_samples,
            media.max_decoded_image_bytes,
        )

    def check_image(self, path: Path, what: str) -> tuple[int, int]:
        """The image's (width, height) from its header; TaskError if it has none, is over max_image_pixels,
        or is a JPEG of more than MAX_JPEG_SCANS scans or MAX_JPEG_FRAMES frame headers."""
        size = image_header.dimensions(path)
        if size is None:
            raise TaskError(f"{what} is not a readable image (no PNG, JPEG, GIF, BMP or WebP header)")
        width, height = size
        if width * height > self.max_image_pixels:
            raise TaskError(
                f"{what} is {width}x{height} pixels, over the limit of {self.max_image_pixels} pixels "
                "(media.max_image_pixels)"
            )
        if image_header.jpeg_scans(path, MAX_JPEG_SCANS) > MAX_JPEG_SCANS:
            raise TaskError(
                f"{what} is a JPEG of more than {MAX_JPEG_SCANS} scans, the most an input may have"
            )
        if image_header.jpeg_frames(path, MAX_JPEG_FRAMES) > MAX_JPEG_FRAMES:
            raise TaskError(
                f"{what} is a JPEG of more than {MAX_JPEG_FRAMES} frame headers, the most an input may have"
            )
        return size

    async def check_audio(self, path: Path, what: str) -> ffmpeg.AudioInput:
        """The audio input's length (seconds, counted from its packets), rate and channels; TaskError
        over max_input_seconds, MAX_AUDIO_CHANNELS or MAX_SAMPLE_RATE."""
        stream = await ffmpeg.measure_audio(path, self.max_input_seconds, what)
        if stream.seconds > self.max_input_seconds:
            raise TaskError(
                f"{what} is longer than the limit of {self.max_input_seconds:g} s (media.max_input_seconds)"
            )
        if stream.channels is not None and stream.channels > MAX_AUDIO_CHANNELS:
            raise TaskError(
                f"{what} has {stream.channels} channels, over the limit of {MAX_AUDIO_CHANNELS} "
                "(what ffmpeg's resampler can mix)"
            )
        if stream.sample_rate is not None and stream.sample_rate > MAX_SAMPLE_RATE:
            raise TaskError(
                f"{what} has a sample rate of {stream.sample_rate} Hz, over the limit of {MAX_SAMPLE_RATE} Hz"
            )
        return stream

    def decoded_seconds(self, stream: ffmpeg.AudioInput) -> float:
        """How much of an input its filter chain lets ffmpeg decode (`audio_samples`): the length its
        packets counted and AUDIO_SLACK_SECONDS, at most max_input_seconds."""
        return min(self.max_input_seconds, stream.seconds + AUDIO_SLACK_SECONDS)

    @staticmethod
    def samples(stream: ffmpeg.AudioInput, seconds: float) -> int:
        """The samples `seconds` of the stream decode to (rate x channels x seconds); a parameter
        ffmpeg did not say counts at its bound."""
        rate = stream.sample_rate if stream.sample_rate is not None else MAX_SAMPLE_RATE
        channels = stream.channels if stream.channels is not None else MAX_AUDIO_CHANNELS
        return math.ceil(rate * channels * seconds)

    def check_samples(self, samples: int, what: str) -> None:
        """TaskError when a task's audio inputs would decode more than max_audio_samples, before any is."""
        if samples > self.max_audio_samples:
            raise TaskError(
                f"{what} would decode {samples} samples (sample rate x channels x seconds), over the "
                f"limit of {self.max_audio_samples} (media.max_audio_samples)"
            )

    def decoded_image_bytes(self, path: Path, size: tuple[int, int]) -> int:
        """What the image (of `size`, from check_image) takes in ffmpeg while it is decoded: the
        picture, from its header, and the file's own bytes, which ffmpeg reads whole as the one packet
        it decodes, every input at once (32 JPEGs whose pictures counted 1 GB, each followed by 49 MB,
        took a render to 2.7 GB)."""
        decoded = math.ceil(image_header.decoded_bytes(path, size, self.max_image_pixels))
        return decoded + path.stat().st_size

    def check_decoded_images(self, total: int, what: str) -> None:
        """TaskError when images that ffmpeg decodes together would take more than max_decoded_image_bytes."""
        if total > self.max_decoded_image_bytes:
            raise TaskError(
                f"{what} would take {total} bytes decoded (ffmpeg holds them all at once), over the limit "
                f"of {self.max_decoded_image_bytes} bytes (media.max_decoded_image_bytes)"
            )

    def image_input(self, path: Path) -> list[str]:
        """`-i` for a fetched image, read by its type's demuxer, with ffmpeg's decoder refusing any
        frame over max_image_pixels."""
        return ["-max_pixels", str(self.max_image_pixels), *ffmpeg.demuxer(path), "-i", str(path)]

    def audio_input(self, path: Path, *, loop: bool = False) -> list[str]:
        """`-i` for a fetched audio file, read by its type's demuxer, of which ffmpeg reads at most
        max_input_seconds as its timestamps count (looped or not); `audio_samples` bounds what is
        decoded whatever they say.

        A change of sample rate, channels or sample format part-way fails the run: left to itself,
        ffmpeg rebuilds the filter graph on one, and the rebuilt `audio_samples` counts from 0 again, so
        a FLAC whose every second restarted its frame numbers (1 s counted) and its channels was
        decoded whole."""
        looping = ["-stream_loop", "-1"] if loop else []
        bounded = ["-t", f"{self.max_input_seconds:.3f}", "-reinit_filter", "0"]
        return [*looping, *bounded, *ffmpeg.demuxer(path), "-i", str(path)]

    def audio_samples(self, stream: ffmpeg.AudioInput) -> str:
        """The filters an audio input's chain starts with: timestamps counted from its samples (a
        file's own may all say 0), and nothing past `decoded_seconds` of them, which is what
        max_input_seconds and max_audio_samples counted of the input."""
        return f"asetpts=N/SR/TB,atrim=end={self.decoded_seconds(stream):.3f}"

    def output_args(self) -> list[str]:
        """Output options: no tags or chapters copied from the inputs, and ffmpeg stops at max_output_bytes."""
        return ["-map_metadata", "-1", "-map_chapters", "-1", "-fs", str(self.max_output_bytes)]

    def check_output(self, path: Path, what: str) -> None:
        """TaskError when ffmpeg stopped writing `path` at max_output_bytes (`-fs` ends it without an error)."""
        if path.stat().st_size >= self.max_output_bytes:
            raise TaskError(
                f"{what} reached the limit of {self.max_output_bytes} bytes (media.max_output_bytes)"
            )
