"""Request bodies each API key is sending at once, in this process: past `limits.open_bodies`, a 429.

A body is read whole into memory before it is parsed (up to `limits.max_body_bytes`), and one that
arrives slowly is given `http.body_timeout` (60 s) to come. Nothing else bounded how many of them
one key sent at once: the per-minute limits spend a submit's unit once its body is parsed, after
it has all come. One key holding 300 connections, each with 1 MB of a 1 MiB body sent and a byte a
second after that, took the process from 61 to 400 MB, and that grows with the connections the
process can open (hundreds of thousands, with the open-files limit raised). Counted per key and
per process, as `limits.open_streams` is: what it protects is this process's memory.

Only bodies still arriving are counted: one that came whole with its headers, as a submit's
usually does, costs no place.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterator

from aiohttp import web

from taskd.model import TooManyBodies


class OpenBodies:
    """How many request bodies each key is sending at once in this process."""

    def __init__(self, limit: int, key_of: Callable[[web.Request], str | None]) -> None:
        self.limit = limit  # 0: unlimited
        # The request's valid key (the auth middleware's), given here so that this module needs
        # nothing of auth (which reads bodies through taskd.http.responses).
        self._key_of = key_of
        self._open: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def receiving(self, request: web.Request) -> Iterator[None]:
        """Count `request`'s body for the block; TooManyBodies, counting nothing, past the cap."""
        key = self._key_of(request)
        if key is None or not self.limit:
            yield
            return
        if (refused := self.refusal(key)) is not None:
            raise refused
        self._open[key] += 1
        try:
            yield
        finally:
            self._open[key] -= 1
            if not self._open[key]:
                del self._open[key]

    def refusal(self, key: str) -> TooManyBodies | None:
        """The 429 for one more body of `key` now, or None while it has room (taskd.http.expect asks
        before its `100 Continue`)."""
        if self.limit and self._open[key] >= self.limit:
            return TooManyBodies(self.limit)
        return None


OPEN_BODIES = web.AppKey("open_bodies", OpenBodies)
