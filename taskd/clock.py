"""The clock taskd's processes share: Redis's.

Times are written by one process and compared by another, on other hosts: a job's score (when it
may start) by the submitting API node and the taking worker, a scheduled task's due time by the
submitting node and every process's look for due tasks, a heartbeat's time by the worker and the
readers of the live workers, a webhook's next attempt by one sender and every other. Each read its
own host's clock, so a worker whose clock was 5 minutes behind an API node's left a low-priority
task waiting 5 minutes, a process 5 minutes ahead queued scheduled tasks 5 minutes early, and a
worker more than `worker.heartbeat_ttl` behind was not counted live (health `degraded`). Now every
process follows Redis's clock: `taskd.model.now()` is this host's wall clock plus its difference to
Redis's `TIME`, measured at start and every FOLLOW_EVERY_S. (The rate limits, GPU slots and
provider limits read `TIME` in their scripts already.)

A difference within AGREE_S (hosts kept by NTP) or within the measure's round trip (its error is up
to half of it: Redis on the same host, a loaded machine) is taken as none, so that times are not
moved by the measure's own noise. A measure whose round trip took longer than MAX_ROUND_TRIP_S
(Redis slow) is not used once one has been: the first is, however slow, since its error (half its
round trip) is less than the whole difference this host's clock would otherwise stamp with until
a quicker one. A host clock stepped while taskd runs (NTP, by hand) is followed again at the next
measure, within FOLLOW_EVERY_S.
"""

from __future__ import annotations

import logging
import time

from redis.asyncio import Redis

from taskd import model
from taskd.loops import every

log = logging.getLogger("taskd.clock")

FOLLOW_EVERY_S = 2.0
AGREE_S = 0.005
MAX_ROUND_TRIP_S = 0.5
# A difference that changes by more than this is logged (once, not every measure).
NOTEWORTHY_S = 1.0


class RedisClock:
    """Measures Redis's clock against this host's and makes taskd.model.now() follow it."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._logged = 0.0
        self._followed = False
        self._offset = 0.0  # the difference followed now

    async def follow(self) -> None:
        """Measure once and follow the difference (unless the round trip was too slow to trust and
        an earlier measure was followed)."""
        # The round trip on the monotonic clock: a step of the wall clock meanwhile does not make it
        # look short (or negative).
        sent, started = time.time(), time.monotonic()
        seconds, micros = await self.redis.time()
        trip = time.monotonic() - started
        if trip > MAX_ROUND_TRIP_S and self._followed:
            return
        offset = seconds + micros / 1_000_000 - (sent + trip / 2)
        error = max(AGREE_S, trip)
        followed = 0.0 if abs(offset) < error else offset
        # Moved only by more than the measure's own error: an offset that took each new measure's
        # wobble (a millisecond or so) would make a task of a few milliseconds end before it started.
        if not self._followed or abs(followed - self._offset) >= error:
            model.set_clock_offset(followed)
            self._offset = followed
        self._followed = True
        if abs(offset - self._logged) > NOTEWORTHY_S:
            log.warning(
                "this host's clock is %.1f s %s Redis's: taskd's times follow Redis's clock",
                abs(offset),
                "behind" if offset > 0 else "ahead of",
            )
            self._logged = offset

    async def run(self) -> None:
        """Follow Redis's clock until cancelled; a Redis outage keeps the last difference."""
        await every(FOLLOW_EVERY_S, self.follow, name="following Redis's clock", logger=log, wait_first=True)
