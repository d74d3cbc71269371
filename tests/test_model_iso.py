"""Timestamps as the API document writes them (`2025-01-15T10:30:00Z`), from epoch seconds."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from taskd.model import iso


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (1736937000.0, "2025-01-15T10:30:00Z"),
        (1736937000.999, "2025-01-15T10:30:00Z"),  # the second it falls in, not the nearest
        (1736937059.5, "2025-01-15T10:30:59Z"),
        (0.0, "1970-01-01T00:00:00Z"),
        (-0.25, "1969-12-31T23:59:59Z"),
    ],
)
def test_a_timestamp_renders_as_the_utc_second_it_falls_in(ts: float, text: str):
    assert iso(ts) == text


def test_timestamps_of_many_seconds_render_each_its_own_second():
    # More seconds than the renderer keeps at once: none answers another second's text.
    start = 1_800_000_000
    for second in range(start, start + 500):
        ts = second + 0.5
        assert iso(ts) == datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert iso(start + 0.5) == "2027-01-15T08:00:00Z"


def test_no_timestamp_renders_as_none():
    assert iso(None) is None
