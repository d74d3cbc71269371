"""The one backoff helper: exponential delays with a cap and optional jitter, for retries and webhooks alike."""

from __future__ import annotations

import random
from collections.abc import Callable


def exponential_delay(
    attempt: int,
    base: float,
    *,
    factor: float = 2.0,
    cap: float | None = None,
    jitter: float = 0.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after failed attempt `attempt` (1-based): base, base*factor, base*factor**2, ...

    `cap` bounds the delay; `jitter` (0..1) takes up to that fraction off at random, so that many
    clients failing together do not retry together.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    delay = base * factor ** (attempt - 1)
    if cap is not None:
        delay = min(delay, cap)
    return delay * (1.0 - jitter * rand())
