"""Reading server-sent events in tests: a small parser of the wire format."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import orjson


@attrs.frozen
class Sse:
    """One event as it came over the wire."""

    id: str | None
    event: str
    data: dict[str, Any]


async def iter_events(response: aiohttp.ClientResponse) -> AsyncIterator[Sse]:
    """The events of a text/event-stream response until it ends (comments and `retry:` skipped)."""
    event_id, name, data = None, "message", []
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if data:
                yield Sse(event_id, name, orjson.loads("\n".join(data)))
            event_id, name, data = None, "message", []
        elif not line.startswith(":"):
            field, _, value = line.partition(": ")
            if field == "id":
                event_id = value
            elif field == "event":
                name = value
            elif field == "data":
                data.append(value)


async def read_events(response: aiohttp.ClientResponse, count: int | None = None) -> list[Sse]:
    """All events until the stream ends, or the first `count`."""
    seen = []
    async for event in iter_events(response):
        seen.append(event)
        if count is not None and len(seen) == count:
            break
    return seen
