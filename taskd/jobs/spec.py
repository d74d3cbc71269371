"""What a task type is, and what its handler gets: the interface between taskd and task code."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import attrs

from taskd.config import Config

ProgressSink = Callable[[float, str | None], Awaitable[None]]


class TaskError(Exception):
    """A failure the handler understands; its message becomes the task's `error` as written."""


@attrs.define
class TaskContext:
    """Handed to a handler: who it runs for, shared clients, and a way to report progress."""

    task_id: str
    project_id: str
    attempt: int
    config: Config
    http: aiohttp.ClientSession
    metadata: dict[str, Any]
    _sink: ProgressSink
    _progress: float = attrs.field(default=0.0, init=False)

    async def progress(self, fraction: float, step: str | None = None) -> None:
        """Report progress 0..1 and the current step; progress never moves backwards."""
        self._progress = max(self._progress, min(1.0, max(0.0, fraction)))
        await self._sink(self._progress, step)


Handler = Callable[[TaskContext, Any], Awaitable[dict[str, Any]]]


@attrs.frozen
class TaskType:
    """One kind of work: its input class, queue, limits and handler (None until one is installed)."""

    name: str
    input: type
    queue: str
    expected_duration: float
    handler: Handler | None = None
    soft_time_limit: float | None = None
    hard_time_limit: float | None = None
