"""A task record as a Redis hash: the fields written for it and the record read back from them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import orjson

from taskd.model import TaskNotFound, TaskRecord, TaskStatus

# The store's logger name since before the store was a package; operators filter on it.
log = logging.getLogger("taskd.store")

_JSON_FIELDS = frozenset(
    {"task_data", "metadata", "result", "depends_on", "waiting_for", "webhook_events", "trace_context"}
)
_FLOAT_FIELDS = frozenset(
    {
        "progress",
        "created_at",
        "updated_at",
        "started_at",
        "completed_at",
        "cancelled_at",
        "processing_time",
        "next_retry_at",
        "scheduled_for",
    }
)
_INT_FIELDS = frozenset(
    {"priority", "attempt", "retries", "deaths", "enqueues", "hand_ons", "keep_for", "result_estimate"}
)
_FIELD_NAMES = tuple(field.name for field in attrs.fields(TaskRecord))


def encode_value(name: str, value: Any) -> bytes | str:
    """One field's stored form: JSON for the JSON fields, repr for floats, str for the rest."""
    if name in _JSON_FIELDS:
        return orjson.dumps(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def encode(record: TaskRecord) -> dict[str, bytes | str]:
    """The hash fields of a record; None values are left out."""
    return {
        name: encode_value(name, value)
        for name in _FIELD_NAMES
        if (value := getattr(record, name)) is not None
    }


def encode_flat(record: TaskRecord) -> list[str]:
    """`encode`'s fields as text, name, value, name, value, …: what the scripts take, in JSON.

    One pass, without a call per field: it was a tenth of the API's CPU per submit. The values are
    `encode_value`'s (JSON fields: orjson's UTF-8, decoded; floats: repr, which str() gives too).
    """
    flat: list[str] = []
    for name in _FIELD_NAMES:
        value = getattr(record, name)
        if value is None:
            continue
        flat.append(name)
        flat.append(orjson.dumps(value).decode() if name in _JSON_FIELDS else str(value))
    return flat


def _decoder(name: str) -> Callable[[bytes], Any]:
    # How one field's stored bytes are read back.
    if name in _JSON_FIELDS:
        return orjson.loads
    if name in _FLOAT_FIELDS:
        return lambda raw: float(raw.decode())
    if name in _INT_FIELDS:
        return lambda raw: int(raw.decode())
    if name == "status":
        return lambda raw: TaskStatus(raw.decode())
    return bytes.decode


# Each field's name as Redis returns it, with its name and its reader: one dict lookup per field,
# not a scan of the names and a chain of tests (decoding was a tenth of a status read's CPU).
_DECODERS: Final[dict[bytes, tuple[str, Callable[[bytes], Any]]]] = {
    name.encode(): (name, _decoder(name)) for name in _FIELD_NAMES
}


class CorruptRecord(TaskNotFound):
    """A record hash that cannot be read (missing fields, bad JSON, unknown status): treated as absent.

    The API answers 404 task_not_found for it, lists skip it, workers and the webhook sender drop
    it; each logs the cause, so one broken hash never becomes a 500 or a crash loop (issue 9).
    """

    def __init__(self, task_id: str, reason: str) -> None:
        super().__init__(task_id)
        self.reason = reason


def decode(fields: Mapping[bytes, bytes]) -> TaskRecord:
    """A record from its hash fields; fields taskd does not know are ignored. Raises CorruptRecord."""
    values = {}
    task_id = fields.get(b"task_id", b"?").decode(errors="replace")
    try:
        for raw_name, raw in fields.items():
            known = _DECODERS.get(raw_name)
            if known is None:
                raw_name.decode()  # ignored, but a name that is not UTF-8 makes the record corrupt
                continue
            name, read = known
            values[name] = read(raw)
        return TaskRecord(**values)
    except (ValueError, TypeError, UnicodeDecodeError, orjson.JSONDecodeError) as exc:
        log.error("task record %s is corrupt and is skipped: %s", task_id, exc)
        raise CorruptRecord(task_id, str(exc)) from None
