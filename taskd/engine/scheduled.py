"""Queueing scheduled tasks (`run_at`, `delay_seconds`) when their time comes.

A scheduled task waits in Redis ({taskd}:scheduled), not in a timer of the process that took it, so
it survives restarts and any taskd process may queue it. Every process looks every
`LOOK_EVERY_S`, so a task is queued within about that much after its time, then started as any
queued task (at once, on an idle worker). The look is one Lua script (due.lua), so two processes
never queue one task twice, and it costs one round trip when nothing is due.
"""

from __future__ import annotations

import logging

from taskd.loops import every
from taskd.model import now
from taskd.store import TaskStore

log = logging.getLogger("taskd.engine")

LOOK_EVERY_S = 0.5
# Tasks queued per look: a burst due at once is queued over a few looks, not in one long script.
BATCH = 500


class ScheduledRelease:
    """Queues the scheduled tasks whose time has come."""

    def __init__(self, store: TaskStore) -> None:
        self.store = store

    async def once(self) -> int:
        """One look; returns how many tasks were queued (every task due, a batch at a time)."""
        return await self.store.queue_due(now(), BATCH)

    async def run(self) -> None:
        """Look every LOOK_EVERY_S seconds until cancelled; a Redis outage only delays the next look."""
        await every(LOOK_EVERY_S, self.once, name="queueing scheduled tasks", logger=log)
