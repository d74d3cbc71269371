"""Says, while it happens, that the event loop is blocked, and by which task.

A coroutine handler that blocks (time.sleep, a CPU-bound loop, a blocking client) stops every
other coroutine of its process: the API, the other tasks, their cancels and limits, and the
heartbeat, whose lapse (worker.heartbeat_ttl) makes the other processes take the worker for dead
and run its tasks again elsewhere. Nothing said so: the process only went silent. A thread of its
own sees the loop's last turn; past `BLOCKED_AFTER` seconds it logs a warning naming the task that
holds the loop (and its task id, when a run's handler made it) with the line it is on, and once the
loop turns again, for how long it was held.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

from taskd.loops import every

log = logging.getLogger("taskd.engine")

# A loop that has not turned for this long is reported (well under worker.heartbeat_ttl).
BLOCKED_AFTER = 5.0
# How often the loop notes a turn, and the thread looks.
TURN_EVERY = 0.5
# The innermost frames of the blocked stack that the warning shows.
STACK_FRAMES = 4


class LoopWatch:
    """Watches this process's event loop from a thread; `whose` names a task's run, if any."""

    def __init__(self, whose: Callable[[asyncio.Task[object]], str | None]) -> None:
        self._whose = whose
        self._turned = time.monotonic()
        self._stop = threading.Event()

    async def run(self) -> None:
        """Note the loop's turns, with the watching thread running, until cancelled."""
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()
        watcher = threading.Thread(
            target=self._watch, args=(loop, loop_thread), name="taskd-loop-watch", daemon=True
        )
        watcher.start()
        try:
            await every(TURN_EVERY, self._turn, name="loop watch")
        finally:
            self._stop.set()

    async def _turn(self) -> None:
        self._turned = time.monotonic()

    def _watch(self, loop: asyncio.AbstractEventLoop, loop_thread: int) -> None:
        reported_at: float | None = None
        while not self._stop.wait(TURN_EVERY):
            turned = self._turned
            held = time.monotonic() - turned
            if held < BLOCKED_AFTER:
                if reported_at is not None:
                    log.warning("event loop turns again; it was held %.1f s", time.monotonic() - reported_at)
                    reported_at = None
                continue
            if reported_at is None:
                reported_at = turned
                self._report(loop, loop_thread, held)

    def _report(self, loop: asyncio.AbstractEventLoop, loop_thread: int, held: float) -> None:
        task = asyncio.current_task(loop)
        named = None if task is None else self._whose(task)
        frame = sys._current_frames().get(loop_thread)
        where = "" if frame is None else "".join(traceback.format_stack(frame)[-STACK_FRAMES:])
        log.warning(
            "event loop blocked for %.1f s by %s: every task, the API and the heartbeat of this "
            "process wait (a coroutine handler must not block: run such work in a thread or a job "
            "process); it is at:\n%s",
            held,
            named or (task.get_name() if task is not None else "a callback"),
            where.rstrip(),
        )
