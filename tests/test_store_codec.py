"""A task record's hash fields (taskd/store/codec.py): the flat form the scripts take is the hash's,
and a record comes back from its fields as it went in."""

from __future__ import annotations

import orjson
import pytest

from taskd.model import TaskRecord, TaskStatus
from taskd.store.codec import CorruptRecord, decode, encode, encode_flat


def full_record() -> TaskRecord:
    """A record with every field set, each of the kinds the codec knows (JSON, float, int, status, text)."""
    return TaskRecord(
        task_id="t-1",
        project_id="p",
        task_type="noop",
        queue="default",
        task_data={"prompt": "ünïcødé ✓", "n": [1, 2.5, None]},
        status=TaskStatus.PROCESSING,
        priority=1,
        callback_url="https://example.com/hook",
        metadata={"user_id": "u"},
        webhook_events=["completed"],
        progress=0.25,
        current_step="step",
        result={"ok": True},
        error="e",
        traceback="tb",
        attempt=2,
        deaths=1,
        enqueues=3,
        job_id="t-1.3",
        last_error="le",
        next_retry_at=1733200001.5,
        retry_of="t-0",
        depends_on=["t-0"],
        waiting_for=["t-0"],
        scheduled_for=1733200002.25,
        key_id="k",
        keep_for=3600,
        trace_context={"traceparent": "00-x"},
        previous_state="queued",
        worker_id="w",
        created_at=1733200000.123456,
        updated_at=1733200000.5,
        started_at=1733200000.75,
        completed_at=1733200003.0,
        cancelled_at=1733200004.0,
        processing_time=2.25,
    )


def hash_fields(record: TaskRecord) -> dict[bytes, bytes]:
    """The record's hash as Redis gives it back."""
    return {
        name.encode(): value if isinstance(value, bytes) else value.encode()
        for name, value in encode(record).items()
    }


def test_the_flat_fields_are_the_hash_fields_as_text():
    record = full_record()

    flat = encode_flat(record)

    as_text = {
        name: value.decode() if isinstance(value, bytes) else value for name, value in encode(record).items()
    }
    assert dict(zip(flat[::2], flat[1::2], strict=True)) == as_text
    assert len(flat) == 2 * len(as_text)
    orjson.dumps(flat)  # every value is text, as the scripts take them


def test_a_record_comes_back_from_its_fields():
    record = full_record()
    stored = hash_fields(record)

    assert decode(stored) == record


def test_a_field_taskd_does_not_know_is_ignored():
    stored = hash_fields(full_record())

    assert decode({**stored, b"from_a_later_version": b"x"}) == full_record()


@pytest.mark.parametrize(
    "field, raw",
    [
        (b"progress", b"half"),
        (b"attempt", b"1.5"),
        (b"status", b"lost"),
        (b"metadata", b"{"),
        (b"error", b"\xff"),
        (b"\xff", b"x"),
    ],
)
def test_a_field_that_cannot_be_read_makes_the_record_corrupt(field, raw):
    stored = hash_fields(full_record())

    with pytest.raises(CorruptRecord):
        decode({**stored, field: raw})
