"""Length-prefixed orjson frames: the protocol between a worker and its job processes."""

from __future__ import annotations

import asyncio
import struct
from typing import Any, BinaryIO

import orjson

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size
MAX_FRAME = 64 * 1024 * 1024


def encode(message: dict[str, Any]) -> bytes:
    """One frame: a 4-byte big-endian length, then the JSON body."""
    body = orjson.dumps(message)
    return _HEADER.pack(len(body)) + body


def write(stream: BinaryIO, message: dict[str, Any]) -> None:
    """Write one frame to a blocking stream and flush it."""
    stream.write(encode(message))
    stream.flush()


def read(stream: BinaryIO) -> dict[str, Any] | None:
    """Read one frame from a blocking stream; None at end of stream."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (length,) = _HEADER.unpack(header)
    body = stream.read(length)
    if len(body) < length:
        return None
    frame: dict[str, Any] = orjson.loads(body)
    return frame


async def read_async(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """Read one frame from an asyncio stream; None at end of stream."""
    try:
        header = await reader.readexactly(_HEADER.size)
        (length,) = _HEADER.unpack(header)
        if length > MAX_FRAME:
            raise ValueError(f"frame of {length} bytes is over the limit")
        frame: dict[str, Any] = orjson.loads(await reader.readexactly(length))
        return frame
    except asyncio.IncompleteReadError:
        return None
