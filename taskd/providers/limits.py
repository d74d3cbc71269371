"""Limits on the outside providers, shared by every worker on every host: at most
`providers.<name>.max_concurrency` requests in flight to a provider at once, and at most
`providers.<name>.per_minute` sent in any 60 s (0 = unlimited; both 0 = nothing is asked of Redis).

Redis is the judge (taskd/providers/lua/): a request holds a slot in a sorted set of holders with a
lease, renewed while the request runs, so a worker that dies while holding one gives it back after
one lease. A request that must wait waits in its task, which stays `processing` and shows
`current_step` "waiting_for_provider:<name>" until it has its slot; waiting never fails a task
(its hard time limit still applies). While requests wait, projects take turns (acquire.lua): the
free slots go to as many waiters, each to the waiting project holding the fewest (those just given
counted), first come first served within a project.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

from redis.asyncio import Redis

from taskd import keys, runtasks
from taskd.store import scripts

log = logging.getLogger("taskd.providers")

PACKAGE = "taskd.providers"
# A slot is renewed every third of its lease while its request runs: two renewals may be lost
# (a slow Redis, a busy loop) before another request can take it. A dead worker's slot comes back
# within one lease.
LEASE = 30.0
# While waiting for a slot another request may release at any moment: ask again at least this
# often, at a random point so waiting workers do not ask in step.
POLL = (0.05, 0.25)
# A waiter that has not asked again this long after it said it would (its worker died, or its task
# was cancelled while Redis was out of reach) loses its place in line: four of the longest pauses,
# so a slow event loop rarely costs a live one its place, and a gone one holds up the others' turn
# at most this long.
GRACE = 4 * POLL[1]
# The waiters whose turn comes next ask this often, so that a slot freed for them is taken at once
# (the others' polls do not take it any more).
SOON = 0.02
# A waiter about this many slot releases from its turn or fewer (its place in the order the waiters
# get slots, less the slots held or free, which may all come free at once) is told to ask a `SOON`
# for each: those further away would be told no sooner than their own polls.
TOLD = math.ceil(POLL[1] / SOON)

# Told "waiting_for_provider:<name>" when a request starts waiting, None once it has its slot.
Waiting = Callable[[str | None], Awaitable[None]]


def waiting_step(name: str) -> str:
    """The `current_step` of a task waiting for a slot of provider `name`."""
    return f"waiting_for_provider:{name}"


class ProviderLimits:
    """The provider limits' Redis scripts, for the requests of one worker process."""

    def __init__(self, redis: Redis, owner: str, *, lease: float = LEASE) -> None:
        self._acquire = scripts.load(redis, "acquire", PACKAGE)
        self._renew = scripts.load(redis, "renew", PACKAGE)
        self._release = scripts.load(redis, "release", PACKAGE)
        # Names this process's holders, so a look at the set tells whose requests are in flight.
        self.owner = owner
        self.lease = lease

    def gate(
        self,
        name: str,
        max_concurrency: int,
        per_minute: int,
        *,
        project: str,
        waiting: Waiting | None = None,
    ) -> Gate | None:
        """The gate of provider `name` under these limits for the requests of project `project`
        (whose turns they wait for); None when both limits are 0 (unlimited)."""
        if not max_concurrency and not per_minute:
            return None
        return Gate(self, name, max_concurrency, per_minute, project, waiting)

    async def acquire(
        self, name: str, max_concurrency: int, per_minute: int, holder: str
    ) -> tuple[int, float]:
        """One try: (1, 0) with the slot taken, (0, s) when all are held or it is another project's
        turn, (-1, s) when the minute is spent, where s is the seconds until that would change;
        `holder` ends in `|<project id>` (Gate names them). Refused, it waits in line until it asks
        again or `release`s (or a GRACE after it should have asked again)."""
        outcome, wait_ms = await self._acquire(
            {
                "slots": keys.provider_slots(name),
                "minute": keys.provider_minute(name),
                "waiters": keys.provider_waiters(name),
                "turns": keys.provider_turns(name),
            },
            {
                "limit": max_concurrency,
                "per_minute": per_minute,
                "lease": self._lease_ms,
                "holder": holder,
                "grace": round(GRACE * 1000),
                "line_prefix": keys.provider_lines(name),
                "soon": round(SOON * 1000),
                "told": TOLD,
            },
        )
        return int(outcome), int(wait_ms) / 1000

    async def renew(self, name: str, holder: str) -> bool:
        """Extend `holder`'s lease by a full one; False when it no longer holds a slot."""
        held = await self._renew(
            {"slots": keys.provider_slots(name)}, {"lease": self._lease_ms, "holder": holder}
        )
        return bool(held)

    async def release(self, name: str, holder: str) -> None:
        """Give `holder`'s slot back, or its place in line (nothing when it has neither)."""
        await self._release(
            {
                "slots": keys.provider_slots(name),
                "waiters": keys.provider_waiters(name),
                "turns": keys.provider_turns(name),
            },
            {"holder": holder, "line_prefix": keys.provider_lines(name)},
        )

    @property
    def _lease_ms(self) -> int:
        return round(self.lease * 1000)


class Gate:
    """Lets a request through to one provider when its limits allow it, and tells the task it waits."""

    def __init__(
        self,
        limits: ProviderLimits,
        name: str,
        max_concurrency: int,
        per_minute: int,
        project: str,
        waiting: Waiting | None = None,
    ) -> None:
        self._limits = limits
        self.name = name
        self.max_concurrency = max_concurrency
        self.per_minute = per_minute
        self.project = project
        self._waiting = waiting

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for a slot (and the minute's quota), hold it while the body runs, then give it back."""
        # The project last: the scripts read it after the last `|`, which a project id never has.
        holder = f"{self._limits.owner}:{secrets.token_hex(6)}|{self.project}"
        try:
            await self._wait_for(holder)
        except BaseException:
            # Cancelled (or Redis failed) while the script may have run: a slot taken then would
            # stay held until its lease ends, a place in line would hold up other requests' turns
            # until its grace ends (with either limit).
            await asyncio.shield(runtasks.detached(self._give_back(holder)))
            raise
        renewer = asyncio.create_task(self._keep(holder)) if self.max_concurrency else None
        try:
            yield
        finally:
            # Only a slot is given back: a place in the minute's log stays for its minute.
            if renewer is not None:
                renewer.cancel()
                await asyncio.gather(renewer, return_exceptions=True)
                # Not the run's (runtasks.detached): cancelled here, the handler ends at once, and
                # the end of its run cancelled the give-back; the slot stayed taken for its lease.
                await asyncio.shield(runtasks.detached(self._give_back(holder)))

    async def _wait_for(self, holder: str) -> None:
        told = False
        while True:
            outcome, wait = await self._limits.acquire(
                self.name, self.max_concurrency, self.per_minute, holder
            )
            if outcome == 1:
                break
            if not told and self._waiting is not None:
                await self._waiting(waiting_step(self.name))
                told = True
            # The minute's quota comes back only with time; a slot whenever its holder is done.
            await asyncio.sleep(
                wait + random.uniform(0, POLL[0]) if outcome == -1 else min(wait, random.uniform(*POLL))
            )
        if told and self._waiting is not None:
            await self._waiting(None)

    async def _keep(self, holder: str) -> None:
        # A request may run longer than a lease (a provider's timeout is minutes).
        while True:
            await asyncio.sleep(self._limits.lease / 3)
            try:
                held = await self._limits.renew(self.name, holder)
            except Exception as exc:  # redis-py's errors do not share one base with OSError
                log.warning("could not renew a %s provider slot: %s", self.name, exc)
                continue
            if not held:
                # Its lease ended (Redis unreachable for a lease): another request may now be in
                # flight beside this one; say so rather than abandon a request already paid for.
                log.warning("a %s provider slot's lease ended while its request ran", self.name)
                return

    async def _give_back(self, holder: str) -> None:
        try:
            await self._limits.release(self.name, holder)
        except Exception as exc:  # its lease frees it; the request's own outcome matters more
            log.warning("could not release a %s provider slot (its lease frees it): %s", self.name, exc)
