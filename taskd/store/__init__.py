"""Task records, the per-project index and the shared metrics, in Redis.

`TaskStore` (records.py) reads and writes them; state changes that must not race are Lua scripts
in `lua/`, loaded by name (scripts.py); codec.py turns a record into its hash fields and back.
"""

from taskd.store.codec import CorruptRecord, decode, encode
from taskd.store.records import (
    PROJECT_FULL_RETRY_AFTER,
    QUEUE_FULL_RETRY_AFTER,
    TAKE_SCAN,
    Admission,
    AlreadyRetried,
    CancelOutcome,
    Created,
    Finished,
    Idempotency,
    KeeperTurn,
    QueuedJob,
    Quota,
    Spent,
    Start,
    Taken,
    Taker,
    Takes,
    TaskStore,
    batch_fills_queue,
)

__all__ = [
    "PROJECT_FULL_RETRY_AFTER",
    "QUEUE_FULL_RETRY_AFTER",
    "TAKE_SCAN",
    "Admission",
    "AlreadyRetried",
    "CancelOutcome",
    "CorruptRecord",
    "Created",
    "Finished",
    "Idempotency",
    "KeeperTurn",
    "QueuedJob",
    "Quota",
    "Spent",
    "Start",
    "Taken",
    "Taker",
    "Takes",
    "TaskStore",
    "batch_fills_queue",
    "decode",
    "encode",
]
