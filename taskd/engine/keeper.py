"""Keeping the records of live tasks: a task queued or processing keeps its record however long it
waits or runs.

A record is kept `storage.task_ttl` from its submit and renewed when its task ends. A task that
waited behind a backlog, or ran (a GPU job of hours), longer than that lost its record on the way:
its status said 404 while it ran, its end and webhook were dropped. Every process looks every
quarter of the TTL (at most every KEEP_EVERY_MAX_S) and renews, to the TTL from now, each live
record with less than half the TTL left (taskd/store/lua/live.lua): a live record never comes
within a quarter of its expiry while any taskd process is up.
"""

from __future__ import annotations

import logging

from taskd.loops import every
from taskd.model import now
from taskd.store import TaskStore

log = logging.getLogger("taskd.engine")

# The longest wait between two looks: with a day's TTL a look every hour reads each live record's
# TTL once an hour, and renews it once in half a day.
KEEP_EVERY_MAX_S = 3600.0


class LiveRecords:
    """Renews the records of the tasks waiting or running on `queues` before they expire."""

    def __init__(self, store: TaskStore, queues: list[str]) -> None:
        self.store = store
        self.queues = queues

    @property
    def interval(self) -> float:
        """Seconds between two looks."""
        return min(self.store.task_ttl / 4, KEEP_EVERY_MAX_S)

    async def once(self) -> int:
        """One look; returns how many records were renewed."""
        return await self.store.keep_live(self.queues, now(), self.store.task_ttl / 2)

    async def run(self) -> None:
        """Look every `interval` seconds until cancelled; a Redis outage only delays the next look."""
        await every(self.interval, self.once, name="keeping live tasks' records", logger=log)
