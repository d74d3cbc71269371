"""The one backoff helper, for task retries, webhooks and reconnects alike, on top of the `backoff` library."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from itertools import islice

import attrs
import backoff

# Reconnecting to Redis (pub/sub listeners, the event stream reader, the worker and webhook loops):
# a blip is bridged in a quarter second, a long outage is tried about once a second, and the
# jitter spreads out the processes that all lost the same Redis at the same moment.
RECONNECT_FIRST = 0.25
RECONNECT_CAP = 1.0
RECONNECT_JITTER = 0.5

# Automatic task retries: the configured schedule (retry.base_delay, 2x, 4x: 60/120/240 s by
# default, doubling no further than retry.max_delay) gives upper bounds, and each wait is drawn uniformly below its bound ("full jitter"),
# so the tasks that one provider outage failed together come back spread over the whole window
# instead of all in the same second.
RETRY_JITTER = 1.0

# The most seconds a Retry-After reads as (about 31 billion years): a longer number is no other wait.
LONGEST_RETRY_AFTER = 10**18


def exponential_delay(
    attempt: int, base: float, *, factor: float = 2.0, cap: float | None = None, jitter: float = 0.0
) -> float:
    """Seconds to wait after failed attempt `attempt` (1-based): base, base*factor, ... up to `cap`, less up to `jitter` of it at random."""
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError("jitter is a fraction of the delay, from 0 to 1")
    delays = backoff.expo(base=factor, factor=base, max_value=cap)
    next(delays)  # backoff's generators are primed with a None first
    delay = float(next(islice(delays, attempt - 1, None)))
    # Jitter only ever shortens a delay, so `cap` stays the longest wait there is.
    return delay * (1.0 - jitter * random.random()) if jitter else delay


def retry_delay(attempt: int, base: float, cap: float) -> float:
    """Seconds before the automatic retry after failed attempt `attempt`: at random in
    (0, min(base * 2**(attempt-1), cap)]."""
    return exponential_delay(attempt, base, cap=cap, jitter=RETRY_JITTER)


@attrs.define
class Backoff:
    """The delays of one retrying loop: `first`, growing by `factor` up to `cap`; `reset()` once a try worked."""

    first: float
    cap: float
    factor: float = 2.0
    jitter: float = 0.0
    failures: int = attrs.field(default=0, init=False)

    @classmethod
    def reconnect(cls) -> Backoff:
        """The delays between attempts to reach a Redis that went away."""
        return cls(RECONNECT_FIRST, RECONNECT_CAP, jitter=RECONNECT_JITTER)

    def next_delay(self) -> float:
        """Count one more failure; the seconds to wait before the next try."""
        self.failures += 1
        return exponential_delay(
            self.failures, self.first, factor=self.factor, cap=self.cap, jitter=self.jitter
        )

    def reset(self) -> None:
        """Start again from `first`: the last try worked."""
        self.failures = 0


def retry_after_seconds(header: str | None, at: datetime | None = None) -> int | None:
    """A Retry-After header's seconds (RFC 9110: a number of seconds or an HTTP date, a date past
    giving 0); None if unreadable (a negative or fractional number, NaN). The one reading of it, for
    taskd's client and the video provider; each caller bounds what it waits."""
    if header is None:
        return None
    header = header.strip()
    if header.isascii() and header.isdigit():  # int() would refuse other digits ("²")
        # int() refuses a string of more than 4,300 digits (Python's bound on the conversion): a
        # ValueError out of reading an answer. Any number that long is a wait longer than any.
        digits = header.lstrip("0") or "0"
        return int(digits) if len(digits) < len(str(LONGEST_RETRY_AFTER)) else LONGEST_RETRY_AFTER
    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT; parsedate gives "-0000" as naive
        when = when.replace(tzinfo=UTC)
    return max(0, math.ceil((when - (at or datetime.now(UTC))).total_seconds()))
