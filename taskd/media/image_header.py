"""Image dimensions read from the file's own header, without decoding a pixel: PNG, JPEG, GIF, BMP, WebP.

A decompression bomb is a small file that declares a huge picture; its header is enough to refuse it
before ffmpeg allocates the frame. Only the first picture a file declares is read here: ffmpeg's
`-max_pixels` (taskd/media/bounds.py) bounds every frame it decodes as well.
"""

from __future__ import annotations

import mmap
import re
import struct
from pathlib import Path
from typing import BinaryIO

# JPEG start-of-frame markers: every SOFn except DHT (C4), JPG (C8) and DAC (CC), and JPEG-LS's SOF55 (F7),
# which ffmpeg's decoder reads too.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
# The progressive ones (DCT, Huffman or arithmetic, sequential or differential).
_JPEG_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
# JPEG markers that stand alone, with no length field after them.
_JPEG_BARE = frozenset({0x01, *range(0xD0, 0xD9)})
_WEBP_CHUNKS_READ = 4096  # an animation has a chunk per frame
# A PNG's chunks before its first IDAT: a header, a palette, a few of text, colour and size.
_PNG_CHUNKS_READ = 1024
# What a JPEG's walk reads before its frame header at most. Real files have a few dozen segments
# (EXIF, ICC, XMP, tables) and a handful of fill bytes there; a crafted file of millions of empty
# ones kept a thread of the API's process walking for seconds, and is refused instead.
_JPEG_SEGMENTS_READ = 1024
_JPEG_FILL_READ = 4096
# Markers the search for a picture's end visits at most; past them, a file's every scan marker counts.
_JPEG_END_SEARCH = 4096
# A marker with a length (every one from 0xC0 to 0xFE but the stand-alone restart markers, SOI and
# EOI), or an end of image (0xD9), as ffmpeg's decoder finds markers: 0xFF, then the code.
_JPEG_SEGMENT_OR_END = re.compile(rb"\xff[\xc0-\xcf\xd9-\xfe]")
# A frame header ffmpeg's decoder could accept (a SOFn; its length 8 + 3 per component, a precision
# of 1 to 16 bits, 1 to 4 components): without one, a picture's scans are not decoded. Random bytes
# hold one about once in 3 x 10^11, so what follows a picture (a motion photo's video) almost never does.
_JPEG_FRAME_HEADER = re.compile(
    rb"\xff[\xc0-\xc3\xc5-\xc7\xc9-\xcb\xcd-\xcf\xf7]"
    rb"(?:\x00\x0b[\x01-\x10].{4}\x01|\x00\x0e[\x01-\x10].{4}\x02"
    rb"|\x00\x11[\x01-\x10].{4}\x03|\x00\x14[\x01-\x10].{4}\x04)",
    re.DOTALL,
)
_JPEG_SOS = b"\xff\xda"


def dimensions(path: Path) -> tuple[int, int] | None:
    """(width, height) the image's header declares, or None when the file has no header taskd can read."""
    with path.open("rb") as stream:
        head = stream.read(32)
        # A header cut short is no header (unpacked, it failed the task with struct's own words).
        if _png_header(head):
            return _positive(*struct.unpack(">II", head[16:24]))
        if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 13:
            return _positive(*struct.unpack("<HH", head[6:10]))
        if head.startswith(b"BM") and len(head) >= 26:
            return _bmp(head)
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _webp(stream)
        if head.startswith(b"\xff\xd8"):
            return _jpeg(stream)
    return None


# Channels of a PNG by its colour type (IHDR): grey, RGB, palette (one index a pixel), grey+alpha, RGBA.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# What ffmpeg's GIF, BMP and WebP decoders give a pixel at most: 8-bit RGBA.
_RGBA_BYTES = 4
# What ffmpeg's GIF decoder holds for an animation: its canvas, the canvas a "restore to previous"
# frame goes back to, and the next frame, decoded while the render still holds the first (four
# 6000x6000 GIFs of three frames took 1.8 GB; counted at one canvas, 576 MB).
_GIF_ANIMATION_BYTES = 3 * _RGBA_BYTES
# Blocks and sub-blocks the GIF walk visits at most, one at a time in Python: a 50 MB file of 1-byte
# sub-blocks kept a thread of the worker's process walking for 6 s. An encoder writes sub-blocks of 255
# bytes, so this many cover 64 MiB; a file the walk does not finish counts as an animation.
_GIF_BLOCKS_READ = 256 * 1024
# What ffmpeg's WebP decoder holds for a lossy picture with an alpha chunk: the picture as yuva420p
# (2.5), and the alpha decoded as a lossless picture of its own, ARGB (4): a 36-megapixel one took
# 223 MB, counted at 4 bytes a pixel as 144 MB.
_WEBP_ALPHA_BYTES = 6.5
# The widest pixel ffmpeg decodes an image of these formats to: RGBA of 16 bits a channel.
_WIDEST_BYTES = 8


def bytes_per_pixel(path: Path) -> float:
    """What the decoded picture holds per pixel in ffmpeg (its planes together): a PNG by its colour
    type and bit depth, a JPEG by its components, their subsampling and precision (4:2:0 of 8 bits:
    1.5), a lossy WebP with alpha as its picture and its alpha's (6.5), other formats as 8-bit
    RGBA; a header it cannot read counts as the widest pixel."""
    with path.open("rb") as stream:
        head = stream.read(32)
        if _png_header(head):
            depth, colour = head[24], head[25]
            channels = _PNG_CHANNELS.get(colour, 4)
            if colour in (0, 2) and _png_transparent(stream):
                channels += 1  # ffmpeg decodes grey or RGB with a tRNS chunk as ya8/ya16, rgba/rgba64
            return channels * (2 if depth > 8 else 1)
        if head.startswith(b"\xff\xd8"):
            stream.seek(2)
            found = _jpeg_frame(stream)
            return _WIDEST_BYTES if found is None else _jpeg_pixel(*found)
        if head[:6] in (b"GIF87a", b"GIF89a"):
            with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _RGBA_BYTES if _gif_still(data) else _GIF_ANIMATION_BYTES
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and _webp_alpha(stream):
            return _WEBP_ALPHA_BYTES
    return _RGBA_BYTES


def _webp_alpha(stream: BinaryIO) -> bool:
    """Whether the WebP has an alpha chunk, walked by its chunks' lengths as `_webp` walks them."""
    stream.seek(12)
    for _ in range(_WEBP_CHUNKS_READ):
        header = stream.read(8)
        if len(header) < 8:
            return False
        if header[:4] == b"ALPH":
            return True
        size = struct.unpack("<I", header[4:])[0]
        stream.seek(size + (size & 1), 1)
    return False


def _png_transparent(stream: BinaryIO) -> bool:
    """Whether the PNG has a tRNS chunk before its first IDAT, walked by the chunks' lengths; a walk
    that does not reach IDAT says it has."""
    stream.seek(8)
    for _ in range(_PNG_CHUNKS_READ):
        chunk = stream.read(8)
        if len(chunk) < 8:
            return True
        kind = chunk[4:]
        if kind in (b"tRNS", b"IDAT"):
            return kind == b"tRNS"
        stream.seek(int.from_bytes(chunk[:4], "big") + 4, 1)  # its data and CRC
    return True


def _png_header(head: bytes) -> bool:
    """Whether `head` starts with a PNG's signature and IHDR, up to its colour type."""
    return head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 26


def _gif_still(data: mmap.mmap) -> bool:
    """Whether the GIF is one image and its end, walked by its blocks; anything else (a second image,
    a byte that starts no block, more than _GIF_BLOCKS_READ blocks) counts as an animation."""
    position = 13
    if data[10] & 0x80:  # the global colour table
        position += 3 * (2 << (data[10] & 0x07))
    images = 0
    steps = 0
    while position < len(data):
        steps += 1
        if steps > _GIF_BLOCKS_READ:
            return False
        kind = data[position]
        if kind == 0x3B:  # the trailer
            break
        if kind == 0x2C and images == 0 and position + 10 <= len(data):
            images += 1
            local = data[position + 9]
            position += 10 + (3 * (2 << (local & 0x07)) if local & 0x80 else 0) + 1  # + LZW code size
        elif kind == 0x21:  # an extension: its label, then its sub-blocks
            position += 2
        else:
            return False
        while position < len(data):  # sub-blocks, up to the empty one
            steps += 1
            if steps > _GIF_BLOCKS_READ:
                return False
            size = data[position]
            position += 1 + size
            if size == 0:
                break
    return images == 1


def decoded_bytes(path: Path, size: tuple[int, int], most_pixels: int) -> float:
    """What ffmpeg's decoder holds for the image whose header declares `size`: width x height x
    `bytes_per_pixel`; for a JPEG, at least what every frame header its decoder may reach before the
    picture's end declares, together.

    A frame header met inside the picture starts it again at the new size: a 16x16 picture without
    its end, then a 2000x1500 one, was decoded at 2000x1500. The count takes each frame header the
    decoder could accept (an EXIF thumbnail's, a few KB, too), up to `most_pixels` of it (over that,
    ffmpeg's `-max_pixels` refuses it and nothing is allocated); `jpeg_frames` says how many there
    are, to refuse a file of more than can be summed quickly (Bounds.check_image)."""
    width, height = size
    first = width * height * bytes_per_pixel(path)
    with path.open("rb") as stream:
        if stream.read(2) != b"\xff\xd8":
            return first
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
            end = _picture_end(data) or len(data)
            reached = 0.0
            for header in _JPEG_FRAME_HEADER.finditer(data, 0, end):
                # As _jpeg_frame reads it: after the marker and the length.
                frame = data[header.start() + 4 : header.start() + 4 + 6 + 3 * 4]
                height_at, width_at = struct.unpack(">HH", frame[1:5])
                if width_at * height_at <= most_pixels:
                    reached += width_at * height_at * _jpeg_pixel(data[header.start() + 1], frame)
    return max(first, reached)


def jpeg_frames(path: Path, most: int) -> int:
    """How many frame headers `decoded_bytes` would sum for a JPEG (0 for a file that is no JPEG), up
    to `most` + 1."""
    with path.open("rb") as stream:
        if stream.read(2) != b"\xff\xd8":
            return 0
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
            found = 0
            # A loop, not a generator kept in a name: the mmap cannot close while a search holds it.
            for _ in _JPEG_FRAME_HEADER.finditer(data, 0, _picture_end(data) or len(data)):
                found += 1
                if found > most:
                    break
    return found


def _jpeg_pixel(code: int, frame: bytes) -> float:
    # The frame header: precision, height, width, components, then (id, H<<4|V, table) for each.
    if len(frame) < 6:
        return _WIDEST_BYTES
    components = [frame[6 + 3 * i + 1] for i in range(min(frame[5], 4)) if 6 + 3 * i + 1 < len(frame)]
    factors = [(hv >> 4, hv & 0x0F) for hv in components if hv >> 4 and hv & 0x0F]
    if not factors or len(factors) != frame[5]:
        return _WIDEST_BYTES
    most = max(h for h, _ in factors) * max(v for _, v in factors)
    samples = sum(h * v for h, v in factors) / most
    # A progressive picture's decoder keeps every block's coefficients (16 bits a sample) besides the
    # picture: a 36-megapixel 4:4:4 one held 200 MB more than a baseline one.
    coefficients = 2 * samples if code in _JPEG_PROGRESSIVE else 0
    return samples * (2 if frame[0] > 8 else 1) + coefficients


def jpeg_scans(path: Path, most: int) -> int:
    """How many scans ffmpeg's decoder could run over for a JPEG (0 for a file that is no JPEG), up
    to `most` + 1.

    Every 0xFF 0xDA up to the first picture's end, and after it every one from the first frame
    header the decoder could accept: a later picture was decoded too while ffmpeg read a file picture
    by picture (`jpeg_pipe`; now it reads it whole, `ffmpeg.DEMUXERS`, and the count errs on the safe
    side), one without a frame header is not. Counting every 0xFF 0xDA in the file took
    the bytes after the picture for scans: random bytes hold one per 64 KiB, and a phone's motion
    photo (its video follows the picture) of 15 MB was refused as "a JPEG of 207 scans".
    """
    with path.open("rb") as stream:
        if stream.read(2) != b"\xff\xd8":
            return 0
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
            enough = most + 1
            end = _picture_end(data)
            if end is None:
                return _count(data, _JPEG_SOS, 0, len(data), enough)
            scans = _count(data, _JPEG_SOS, 0, end, enough)
            later = _JPEG_FRAME_HEADER.search(data, end) if scans < enough else None
            if later is not None:
                scans += _count(data, _JPEG_SOS, later.start(), len(data), enough - scans)
            return scans


def _picture_end(data: mmap.mmap) -> int | None:
    """Just past the first end of image that the decoder cannot have skipped, or None.

    The decoder skips a segment by its length; which markers it takes for segments depends on how it
    read those before (one it cannot parse, it searches from inside). So every 0xFF and code with a
    length is taken for a segment it may skip, wherever it stands, and the end is the first 0xFF
    0xD9 that none of those lengths reaches over: the decoder, however it read the bytes before,
    ends the picture there or earlier.
    """
    reach, position, size = 0, 2, len(data)
    for _ in range(_JPEG_END_SEARCH):
        found = _JPEG_SEGMENT_OR_END.search(data, position)
        if found is None:
            return None
        start, position = found.start(), found.end()
        if data[start + 1] == 0xD9:
            if start >= reach:
                return position
        elif start + 4 <= size:
            reach = max(reach, start + 2 + int.from_bytes(data[start + 2 : start + 4], "big"))
    return None


def _count(data: mmap.mmap, needle: bytes, start: int, end: int, enough: int) -> int:
    """How many times `needle` occurs in `data[start:end]`, up to `enough`."""
    count = 0
    while count < enough and (start := data.find(needle, start, end)) >= 0:
        count += 1
        start += len(needle)
    return count


def _positive(width: int, height: int) -> tuple[int, int] | None:
    return (width, height) if width > 0 and height > 0 else None


def _bmp(head: bytes) -> tuple[int, int] | None:
    (info_size,) = struct.unpack("<I", head[14:18])
    if info_size == 12:  # BITMAPCOREHEADER: 16-bit sides
        return _positive(*struct.unpack("<HH", head[18:22]))
    width, height = struct.unpack("<ii", head[18:26])
    return _positive(width, abs(height))  # a negative height means top-down rows


def _webp(stream: BinaryIO) -> tuple[int, int] | None:
    # The canvas (VP8X), a bitstream's own size (VP8, VP8L) and each animation frame (ANMF) may all
    # differ, and ffmpeg's decoder allocates whichever it is handed: the largest one counts.
    sizes = []
    stream.seek(12)
    for _ in range(_WEBP_CHUNKS_READ):
        header = stream.read(8)
        if len(header) < 8:
            break
        kind, size = header[:4], struct.unpack("<I", header[4:])[0]
        data = stream.read(min(size, 34))
        sizes += _webp_chunk_sizes(kind, data)
        stream.seek(size + (size & 1) - len(data), 1)  # chunks are padded to an even length
    return max((side for side in sizes if min(side) > 0), key=lambda side: side[0] * side[1], default=None)


def _webp_chunk_sizes(kind: bytes, data: bytes) -> list[tuple[int, int]]:
    if kind in (b"VP8X", b"ANMF") and len(data) >= 10:
        at = 4 if kind == b"VP8X" else 6  # ANMF starts with the frame's x and y offsets
        size = [
            (
                1 + int.from_bytes(data[at : at + 3], "little"),
                1 + int.from_bytes(data[at + 3 : at + 6], "little"),
            )
        ]
        # An animation frame holds its own bitstream chunk, after a 16-byte frame header.
        return size + (_webp_chunk_sizes(data[16:20], data[24:]) if kind == b"ANMF" else [])
    if kind == b"VP8 " and len(data) >= 10 and data[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[6:10])
        return [(width & 0x3FFF, height & 0x3FFF)]
    if kind == b"VP8L" and len(data) >= 5 and data[0] == 0x2F:
        bits = int.from_bytes(data[1:5], "little")
        return [(1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF))]
    return []


def _jpeg(stream: BinaryIO) -> tuple[int, int] | None:
    stream.seek(2)
    found = _jpeg_frame(stream)
    if found is None:
        return None
    _, frame = found
    height, width = struct.unpack(">HH", frame[1:5])
    return _positive(width, height)


def _jpeg_frame(stream: BinaryIO) -> tuple[int, bytes] | None:
    """The first frame header's marker code and its bytes after its length (precision, height, width,
    then the components' count and up to 4 components' factors when the file holds them), read from
    just after SOI; None without one."""
    # Walk the segments after SOI by their lengths (so an EXIF thumbnail's SOF is never read) up to the
    # first frame header; the entropy-coded data only starts after it.
    for _ in range(_JPEG_SEGMENTS_READ):
        if stream.read(1) != b"\xff":
            return None
        marker = stream.read(1)
        for _ in range(_JPEG_FILL_READ):
            if marker != b"\xff":
                break
            marker = stream.read(1)  # a fill byte
        if not marker or marker == b"\xff":
            return None
        code = marker[0]
        if code in _JPEG_BARE:
            continue
        if code in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        length_bytes = stream.read(2)
        if len(length_bytes) < 2:
            return None
        (length,) = struct.unpack(">H", length_bytes)
        if length < 2:
            return None
        if code in _JPEG_SOF:
            frame = stream.read(6 + 3 * 4)
            return (code, frame) if len(frame) >= 5 else None
        stream.seek(length - 2, 1)
    return None
