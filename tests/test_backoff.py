"""The one backoff helper: growth, cap, jitter, and the state of one retrying loop."""

from __future__ import annotations

import pytest

from taskd.backoff import RECONNECT_CAP, Backoff, exponential_delay


def test_a_loops_delays_double_from_the_first_up_to_the_cap():
    delays = Backoff(0.25, 5.0)

    assert [delays.next_delay() for _ in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_after_a_reset_the_delays_start_again_from_the_first():
    delays = Backoff(0.25, 5.0)
    for _ in range(4):
        delays.next_delay()

    delays.reset()

    assert delays.next_delay() == 0.25


def test_jitter_only_shortens_a_delay_and_by_at_most_its_fraction():
    drawn = [exponential_delay(3, 1.0, cap=3.0, jitter=0.5) for _ in range(200)]

    assert all(1.5 <= delay <= 3.0 for delay in drawn)
    assert len(set(drawn)) > 1


@pytest.mark.parametrize("jitter", [-0.1, 1.5])
def test_a_jitter_outside_0_to_1_is_refused(jitter):
    with pytest.raises(ValueError, match="jitter"):
        exponential_delay(1, 1.0, jitter=jitter)


def test_reconnecting_never_waits_longer_than_the_cap():
    delays = Backoff.reconnect()

    assert all(0 < delays.next_delay() <= RECONNECT_CAP for _ in range(50))
