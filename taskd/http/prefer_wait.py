"""`Prefer: wait=<seconds>` on submit (RFC 7240): the answer waits until the task ends or the time is up.

The wait is the task's own event stream, read by the process's `EventHub` (the one blocking XREAD
every SSE client shares), not a polling loop: the handler sleeps until the hub hands it an event.
The task is stored and queued before the wait starts, so a client that goes away meanwhile changes
nothing but who reads the answer.

A preference the server does not honour may be ignored (RFC 7240 §2): a `wait` that is not a whole
number of seconds from 1 to 60 is ignored, and the submit answers at once as it always has (no
`Preference-Applied`), rather than refusing a request that is otherwise valid.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from taskd import keys
from taskd.http.events import CHECK_SECONDS, EventHubs
from taskd.model import TaskRecord
from taskd.store import TaskStore

MIN_WAIT = 1
MAX_WAIT = 60


def requested_wait(values: list[str]) -> int | None:
    """The seconds a request's `Prefer` headers ask to wait, or None when there is no usable `wait`."""
    for value in values:
        for preference in value.split(","):
            name, _, raw = preference.split(";")[0].partition("=")
            if name.strip().lower() != "wait":
                continue
            seconds = raw.strip().strip('"')
            # ASCII digits only: int() would also read other scripts' digits.
            if seconds.isascii() and seconds.isdigit() and MIN_WAIT <= int(seconds) <= MAX_WAIT:
                return int(seconds)
            return None
    return None


async def wait_for_end(
    hub: EventHubs, store: TaskStore, task_id: str, seconds: int, client_gone: Callable[[], bool]
) -> TaskRecord:
    """The task's record once it has ended, or as it is when `seconds` are up (or the server stops,
    or the client has gone)."""
    # Subscribed before the record is read: an end written after that read is an event this sees.
    subscription = hub.subscribe(keys.task_events(task_id), "0-0")
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                record = await store.get(task_id)
                # A client that went away ends the wait, as it ends an event stream: the wait holds
                # one of its key's `limits.open_streams` places, which the key's next stream needs.
                while not record.is_terminal and not subscription.closed and not client_gone():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(CHECK_SECONDS):
                            await subscription.wakeup.wait()
                    events = subscription.take()
                    if subscription.overflowed or any(event.terminal for event in events):
                        subscription.overflowed = False
                        record = await store.get(task_id)
    finally:
        hub.unsubscribe(subscription)
    return await store.get(task_id)
