"""The one backoff helper, for task retries and webhooks alike, on top of the `backoff` library."""

from __future__ import annotations

from itertools import islice

import backoff


def exponential_delay(attempt: int, base: float, *, factor: float = 2.0, cap: float | None = None) -> float:
    """Seconds to wait after failed attempt `attempt` (1-based): base, base*factor, base*factor**2, ... up to `cap`."""
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    delays = backoff.expo(base=factor, factor=base, max_value=cap)
    next(delays)  # backoff's generators are primed with a None first
    return float(next(islice(delays, attempt - 1, None)))
