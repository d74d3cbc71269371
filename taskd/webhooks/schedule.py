"""When a webhook's attempts happen: the document's 1, 2 and 4 s back-off, then any configured extra delays."""

from __future__ import annotations

import attrs

from taskd.backoff import exponential_delay

SUCCESS_CODES = frozenset({200, 201, 202, 204})
DOCUMENTED_RETRIES = 3
DOCUMENTED_BASE_DELAY = 1.0


@attrs.frozen
class DeliverySchedule:
    """Attempt n failed: wait `delay_after(n)` seconds, or give up when it is None."""

    extra_delays: tuple[float, ...] = ()
    retries: int = DOCUMENTED_RETRIES
    base_delay: float = DOCUMENTED_BASE_DELAY

    @property
    def max_attempts(self) -> int:
        """Every attempt there will be: the first, the documented retries, then one per extra delay."""
        return 1 + self.retries + len(self.extra_delays)

    def delay_after(self, attempt: int) -> float | None:
        """Seconds from the end of failed attempt `attempt` (1-based) to the next; None after the last."""
        if attempt <= self.retries:
            return exponential_delay(attempt, self.base_delay)
        extra = attempt - self.retries - 1
        return self.extra_delays[extra] if extra < len(self.extra_delays) else None
