"""A started taskd process tunes Python's garbage collector for serving (taskd.service.tune_gc)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from taskd.service import GC_YOUNG_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_young_collections_wait_for_more_objects_than_requests_in_flight_hold(restored_gc):
    older = gc.get_threshold()[1:]

    tune_gc()

    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *older)


def test_what_start_up_made_is_frozen_out_of_full_collections(restored_gc):
    tune_gc()

    assert gc.get_freeze_count() > 0  # the objects alive now (modules, classes, the app) are frozen
