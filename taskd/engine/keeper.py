"""Keeping the records of live tasks: a task queued or processing keeps its record however long it
waits or runs.

A record is kept `storage.task_ttl` from its submit and renewed when its task ends. A task that
waited behind a backlog, or ran (a GPU job of hours), longer than that lost its record on the way:
its status said 404 while it ran, its end and webhook were dropped. A look renews, to the TTL from
now, each live record with less than half the TTL left (taskd/store/lua/live.lua), and begins at
most an `interval` (a quarter of the TTL, at most KEEP_EVERY_MAX_S) after the last one ended while
any taskd process is up: a live record never comes within a quarter of its expiry.

A look reads every live record (5 to 7 µs of Valkey each, bench/keeper_cost.py), so it is taken
in turns: once per interval across every process, per partition, not once per process. Every
process asks for the turn every sixteenth of the interval (one SET NX); the one that gets it looks
and keeps it 13/16 of the interval from the look's end, so the next look begins between 13/16 and
14/16 of the interval after. While it looks it holds the turn a sixteenth at a time, set again at
each script call (turn.lua: unless another process has taken it, when a look that stalled past its
hold stops, leaving the turn and its rest to the one whose look read the queues afresh): a holder
that dies mid-look leaves it to the next asker within two sixteenths,
and the look after still begins within the interval of the last whole look (and however long the
dead one ran). A process that starts while another's look
is recent does not look at once: its first look no longer competes with the backlog its worker
starts draining.

Only processes that keep records alike take turns together: a turn per `storage.task_ttl` and set
of queues looked at (`group`). Hosts whose settings differ (a deploy, a mistake: warned as
settings_mismatch) took the same turn: a process with a day's TTL rested ~49 minutes after its
look, and one with a minute's TTL, whose records had a minute, did not look meanwhile, so they
expired while their tasks waited; likewise the queues only one process's routes name. Each group
now looks on its own interval, at its own queues, as every process did before turns. Every look
also covers the known queues ({taskd}:queues) that its group's config does not name: a queue
removed, renamed or routed away since its tasks were admitted, whose records nobody else renews.
"""

from __future__ import annotations

import hashlib
import logging

import orjson

from taskd.loops import every
from taskd.model import now
from taskd.store import KeeperTurn, TaskStore

log = logging.getLogger("taskd.engine")

# The longest wait between two looks: with a day's TTL a look every hour reads each live record's
# TTL once an hour, and renews it once in half a day.
KEEP_EVERY_MAX_S = 3600.0
# Each process asks for the turn this many times per interval; the look after a holder died mid-look
# begins within the interval only if the rest between looks leaves room for three of these.
ASKS_PER_INTERVAL = 16


class LiveRecords:
    """Renews the records of the tasks waiting or running on `queues` before they expire, in turns
    with the other processes (`holder`: this process's id)."""

    def __init__(self, store: TaskStore, queues: list[str], holder: str = "") -> None:
        self.store = store
        self.queues = queues
        self.holder = holder
        kept_alike = orjson.dumps([store.task_ttl, sorted(queues)])
        self.group = hashlib.sha256(kept_alike).hexdigest()[:12]

    @property
    def interval(self) -> float:
        """Most seconds from the end of one look (by any process) to the start of the next."""
        return min(self.store.task_ttl / 4, KEEP_EVERY_MAX_S)

    @property
    def ask_every(self) -> float:
        """Seconds between two asks for the turn."""
        return self.interval / ASKS_PER_INTERVAL

    def turn_key(self, partition: int) -> str:
        """The turn this process takes at `partition`, with those that keep records alike."""
        return self._turn().key(partition)

    def _turn(self) -> KeeperTurn:
        ask_ms = max(1, round(self.ask_every * 1000))
        return KeeperTurn(
            self.holder, self.group, hold_ms=ask_ms, rest_ms=round(self.interval * 1000) - 3 * ask_ms
        )

    async def once(self) -> int:
        """One look at every partition, whoever's turn it is; returns how many records were renewed."""
        return sum(n or 0 for n in await self.store.keep_live(self.queues, now(), self.store.task_ttl / 2))

    async def turn(self) -> list[int | None]:
        """One look at each partition where the turn is free, taking it; per partition, how many
        records were renewed, None where another process has the turn."""
        return await self.store.keep_live(self.queues, now(), self.store.task_ttl / 2, self._turn())

    async def run(self) -> None:
        """Ask for the turn every `ask_every` seconds until cancelled; a Redis outage only delays
        the next look."""
        await every(self.ask_every, self.turn, name="keeping live tasks' records", logger=log)
