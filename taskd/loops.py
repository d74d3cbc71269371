"""The one helper for periodic background jobs: call, log a failure, wait, until cancelled or stopped.

A failed call is logged as one warning line with the loop's name and the error. Its traceback comes
with the first failure of a kind (exception type and message, its numbers aside) and again every
`TRACEBACK_EVERY_S` while the same failure repeats: a Redis outage yields one line per attempt, not
a traceback storm, and a new kind of failure always shows where it came from.

Unlike saq's upkeep `poll`, which catches CancelledError and loops on, this never catches a
cancellation, and it ends the loop even when a library inside `fn` swallowed one (see
taskd/stopping.py for why that happens).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("taskd.loops")

# A repeating failure shows its traceback again after this many seconds.
TRACEBACK_EVERY_S = 600.0
# Kinds of failure remembered per loop; past that the memory starts over (a traceback more, no growth).
_KINDS_KEPT = 32
# A message's numbers say nothing of its kind: a failed heartbeat's (redis-py names the pipeline's
# command with its arguments) holds the worker's memory and a timestamp, new at every beat.
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


async def every(
    interval: float,
    fn: Callable[[], Awaitable[object]],
    *,
    name: str,
    jitter: float = 0.0,
    stop: asyncio.Event | None = None,
    wait_first: bool = False,
    logger: logging.Logger = log,
) -> None:
    """Await `fn()` now (or after one wait) and then `interval` seconds after each call ends, until stopped.

    `jitter` adds up to that many seconds at random to each wait, so processes started together
    drift apart. The loop ends by returning once `stop` is set (a wait in progress ends at once),
    or by raising CancelledError when its task is cancelled; an exception from `fn` is logged
    under `name` on `logger` and the loop goes on.
    """
    if interval <= 0 or jitter < 0:
        raise ValueError(f"loop {name!r}: interval must be > 0 and jitter >= 0")
    failures = _FailureLog(name, logger)
    if wait_first and await _wait(interval, jitter, stop):
        return
    while stop is None or not stop.is_set():
        try:
            await fn()
        except Exception as exc:
            _raise_swallowed_cancellation()
            failures.note(exc)
        else:
            _raise_swallowed_cancellation()
        if await _wait(interval, jitter, stop):
            return


class _FailureLog:
    """Logs a loop's failures: one line each, the traceback once per kind per `TRACEBACK_EVERY_S`."""

    def __init__(self, name: str, logger: logging.Logger) -> None:
        self.name = name
        self.logger = logger
        self._traced: dict[tuple[type[BaseException], str], float] = {}

    def note(self, exc: BaseException) -> None:
        """Log `exc` as a failure of this loop."""
        kind = (type(exc), _NUMBER.sub("#", str(exc)))
        at = time.monotonic()
        last = self._traced.get(kind)
        with_traceback = last is None or at - last >= TRACEBACK_EVERY_S
        if with_traceback:
            if len(self._traced) >= _KINDS_KEPT:
                self._traced.clear()
            self._traced[kind] = at
        self.logger.warning(
            "%s failed: %s",
            self.name,
            str(exc) or type(exc).__name__,
            exc_info=exc if with_traceback else None,
        )


def _raise_swallowed_cancellation() -> None:
    # A cancel that a library inside `fn` swallowed is still counted on the task: honour it here
    # rather than loop on with a task its owner believes is ending.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _wait(interval: float, jitter: float, stop: asyncio.Event | None) -> bool:
    """Wait one interval (plus jitter); True when `stop` was set before or during the wait."""
    seconds = interval + (random.uniform(0.0, jitter) if jitter else 0.0)
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    # asyncio.timeout, unlike wait_for on 3.11, never swallows a cancellation.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return stop.is_set()
