"""Task events as Server-Sent Events: `GET /api/v1/tasks/{task_id}/events`, `GET /api/v1/projects/{project_id}/events`.

Every change of a task is appended to Redis streams by the store, atomically with the change
(`taskd.keys.task_events`, `taskd.keys.project_events`), so an event raised by any taskd process
reaches every client. The stream entry id is the SSE `id`; a client that reconnects with
`Last-Event-ID` is sent what it missed from the stream (`XRANGE`), then live events.

One `EventHub` per process reads every watched stream with a single blocking `XREAD` on one
dedicated Redis connection, however many clients listen. A stream a client starts watching joins
the read at once: the read also watches the hub's own wake stream, which `subscribe` appends to.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence

import attrs
import orjson
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from taskd import keys, shapes
from taskd.backoff import Backoff
from taskd.http.auth import KEY_ID, query_key_allowed
from taskd.http.context import API
from taskd.http.ratelimit import OPEN_STREAMS
from taskd.http.scope import Touches, touches
from taskd.model import TERMINAL, TaskNotFound, TaskRecord, TaskStatus, ValidationError, now
from taskd.stopping import cancel_and_wait
from taskd.store import TaskStore, decode

log = logging.getLogger("taskd.http.events")

KEEPALIVE_SECONDS = 15.0
RECONNECT_MS = 3000  # the `retry:` hint sent to EventSource
BLOCK_MS = 5000  # one XREAD waits at most this long before it is issued again
WAKE_TTL_MS = 60_000  # the hub's wake stream expires this long after its last wake
READ_COUNT = 500  # entries per stream per XREAD
MAX_PENDING = 5000  # events held for one slow client before it re-reads the stream itself
MAX_PENDING_BYTES = 4 * 2**20  # or their bytes: a project's events carry its tasks' results
# What one client's stream holds in memory, however far behind it is and however large the events:
# the stream's stored entries are read a page at a time (up to BACKLOG_PAGE entries, fewer where the
# last page's were large, so that a page is about PAGE_BYTES), each page once the last was taken,
# and written in chunks of about WRITE_CHUNK bytes, each once the client took the last.
BACKLOG_PAGE = 100
PAGE_BYTES = 256 * 1024
WRITE_CHUNK = 64 * 1024
CHECK_SECONDS = 1.0  # how often an idle stream (or a Prefer: wait) notices that its client went away
# How often a task's stream looks at its record itself, past the hub: a task whose record is gone
# (a Redis that lost its data, one that expired while no taskd process ran to renew it) has no event
# left to come.
RECHECK_SECONDS = 15.0
# ASCII digits only: `\d` would take other scripts' digits, which int() reads but Redis refuses.
# Published in the OpenAPI document (taskd.http.openapi_watch), where an empty one is as if not sent.
EVENT_ID_PATTERN = r"[0-9]{1,20}(-[0-9]{1,20})?"
_EVENT_ID = re.compile(EVENT_ID_PATTERN)
_TERMINAL_NAMES = frozenset(status.value for status in TERMINAL)
# The sequence of the id given to an end made up from the record (a task whose stream expired, or
# whose end no event brought). No entry has it (Redis numbers a millisecond's entries from 0), so
# the id is past every entry of its millisecond, and a reconnection with the id of the end that
# would be made up again is known to hold it, and is a 204 as one with the end's own entry id is. Sent without an id, the made-up end left EventSource with nothing to resume from: it
# reconnected every `retry:` for as long as the record was kept, and had the end each time.
MADE_UP_END_SEQ = 2**64 - 1


def id_key(event_id: str) -> tuple[int, int]:
    """A stream entry id (`1700000000000-3`, or `1700000000000`) as a tuple that sorts like Redis does."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


@attrs.frozen
class StreamEvent:
    """One entry of an event stream: its id (None for a gap) and the JSON."""

    id: str | None
    type: str
    status: str
    data: bytes

    @classmethod
    def from_entry(cls, entry_id: bytes, fields: dict[bytes, bytes]) -> StreamEvent:
        """Parse an XRANGE/XREAD entry."""
        data = fields[b"event"]
        event = orjson.loads(data)
        return cls(entry_id.decode(), str(event.get("type", "status")), str(event.get("status", "")), data)

    @classmethod
    def from_record(cls, record: TaskRecord, after: Iterable[str]) -> StreamEvent:
        """The status event of a record, for a finished task whose stream lacks its end; its id is the
        record's last change in ms, or the ms of the newest of the ids `after` (what the client was
        sent or is sent before it) if later, with MADE_UP_END_SEQ: past every one of them."""
        at = record.updated_at or record.created_at
        ms = max([int(at * 1000), *(id_key(event_id)[0] for event_id in after)])
        event = shapes.TaskEvent(
            type="status",
            task_id=record.task_id,
            project_id=record.project_id,
            task_type=record.task_type,
            status=record.status,
            progress=record.progress,
            current_step=record.current_step,
            error=record.error,
            attempt=record.attempt,
            at=at,
            result=record.result if record.status is TaskStatus.COMPLETED else shapes.ABSENT,
        )
        return cls(
            f"{ms}-{MADE_UP_END_SEQ}", "status", record.status.value, orjson.dumps(shapes.render(event))
        )

    @classmethod
    def gap(cls, after: str, kept_from: str) -> StreamEvent:
        """The event that tells a client the entries after `after` and before `kept_from` are gone."""
        data = orjson.dumps({"type": "gap", "after": after, "kept_from": kept_from})
        return cls(None, "gap", "", data)

    @property
    def terminal(self) -> bool:
        """True for the status event that ends a task."""
        return self.type == "status" and self.status in _TERMINAL_NAMES

    def frame(self) -> bytes:
        """The event in the SSE wire format."""
        lines = [b"id: " + self.id.encode()] if self.id else []
        lines.append(b"event: " + self.type.encode())
        lines.extend(b"data: " + line for line in self.data.split(b"\n"))
        return b"\n".join(lines) + b"\n\n"


class Subscription:
    """What the hub has read for one client and the client has not sent yet."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.pending: collections.deque[StreamEvent] = collections.deque()
        self.pending_bytes = 0
        self.overflowed = False  # events were dropped: the client must re-read the stream
        self.closed = False
        self.wakeup = asyncio.Event()

    def push(self, events: Iterable[StreamEvent]) -> None:
        """Hand new events to the client (or mark it overflowed when it is too far behind)."""
        for event in events:
            if self.pending and (
                len(self.pending) >= MAX_PENDING or self.pending_bytes + len(event.data) > MAX_PENDING_BYTES
            ):
                self.reread()
                break
            self.pending.append(event)
            self.pending_bytes += len(event.data)
        self.wakeup.set()

    def reread(self) -> None:
        """Drop what is pending: the client reads the stream itself after the last event it sent (and
        is told of a gap where the cap trimmed what it had not sent)."""
        self.pending.clear()
        self.pending_bytes = 0
        self.overflowed = True
        self.wakeup.set()

    def close(self) -> None:
        """End the client's stream (server shutdown)."""
        self.closed = True
        self.wakeup.set()

    def take(self) -> list[StreamEvent]:
        """Everything pending, oldest first."""
        events = list(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        self.wakeup.clear()
        return events


class EventHub:
    """Reads every stream some client watches with one blocking XREAD and fans the entries out.

    A stream watched for the first time must join the read now, not when the XREAD in flight
    times out. That XREAD also reads the hub's wake stream from the last wake entry it has seen,
    and `_wake` appends an entry to it: a read whose streams were chosen before the subscribe
    returns at once, whether the XADD reaches Redis before the XREAD or after it (a CLIENT UNBLOCK
    that arrives first does nothing, and the read would sit out BLOCK_MS).
    """

    def __init__(self, redis: Redis, partition: int = 0) -> None:
        # The streams of one partition (taskd.keys.partitions): one XREAD reads only one slot on a cluster.
        self._redis = redis
        self._subscribers: dict[str, set[Subscription]] = {}
        self._cursors: dict[str, str] = {}
        self._changed = asyncio.Event()  # a stream was added while the reader had none to read
        self._reader: asyncio.Task[None] | None = None
        self._wake_key = keys.events_wake(uuid.uuid4().hex, partition)
        self._wake_cursor = "0-0"  # the last wake entry a read has returned
        self._reading = False  # an XREAD's streams are chosen and its reply not handled yet
        self._woken = False  # a wake was sent for the XREAD in flight
        self._wakes: set[asyncio.Task[None]] = set()
        self._wake_written = False
        self._closed = False
        # A read failed (Redis away, or this process cut off from it): entries written meanwhile may
        # have been trimmed past a cursor before the next read.
        self._failed = False

    def subscribe(self, stream: str, after: str) -> Subscription:
        """Watch `stream`; entries newer than `after` (or than where the hub already reads) are pushed."""
        subscription = Subscription(stream)
        if self._closed:
            subscription.close()
            return subscription
        new = stream not in self._subscribers
        if new:
            self._subscribers[stream] = set()
            self._cursors[stream] = after
        self._subscribers[stream].add(subscription)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._run(), name="sse-event-hub")
        if new:
            self._wake()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop watching; the stream is dropped from the XREAD when nobody watches it."""
        watchers = self._subscribers.get(subscription.stream)
        if watchers is None:
            return
        watchers.discard(subscription)
        if not watchers:
            del self._subscribers[subscription.stream]
            del self._cursors[subscription.stream]

    async def close(self) -> None:
        """End every client's stream and stop reading."""
        self._closed = True
        for watchers in self._subscribers.values():
            for subscription in watchers:
                subscription.close()
        self._subscribers.clear()
        self._cursors.clear()
        await cancel_and_wait([task for task in (self._reader, *self._wakes) if task is not None])
        if self._wake_written:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await self._redis.delete(self._wake_key)

    def _wake(self) -> None:
        """Make the reader read the streams as they are now, whatever it is doing."""
        # Not reading: it chooses its streams after this, the new one among them.
        self._changed.set()
        # Reading: one wake entry makes the XREAD in flight return, however many streams were added.
        if self._reading and not self._woken:
            self._woken = True
            task = asyncio.create_task(self._send_wake(), name="sse-event-hub-wake")
            self._wakes.add(task)
            task.add_done_callback(self._wakes.discard)

    async def _send_wake(self) -> None:
        self._wake_written = True
        try:
            async with self._redis.pipeline(transaction=False) as pipe:  # one round trip
                pipe.xadd(self._wake_key, {"wake": "1"}, maxlen=1, approximate=False)
                pipe.pexpire(self._wake_key, WAKE_TTL_MS)
                await pipe.execute()
        except Exception as exc:  # Redis went away: the reader fails too, and reads everything once back
            log.debug("event stream wake-up not sent: %s", exc)

    async def _run(self) -> None:
        reconnects = Backoff.reconnect()
        while not self._closed:
            connection = Redis(connection_pool=self._redis.connection_pool, single_connection_client=True)
            try:
                await self._read_forever(connection, reconnects)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: keep the cursors, read again once it is back
                self._failed = True
                delay = reconnects.next_delay()
                log.warning("event stream reader failed, retrying in %.2f s: %s", delay, exc)
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(Exception):
                    await connection.aclose()

    async def _read_forever(self, connection: Redis, reconnects: Backoff) -> None:
        while True:
            while not self._cursors:
                # Cleared right before the wait: a wake-up left over from a stream that is gone
                # again must not start a read of nothing.
                self._changed.clear()
                await self._changed.wait()
            streams = {self._wake_key: self._wake_cursor, **self._cursors}
            self._reading, self._woken = True, False
            try:
                reply = await connection.xread(streams, count=READ_COUNT, block=BLOCK_MS)
            finally:
                self._reading = False
            reconnects.reset()
            if self._failed:
                # While this read was away, other processes went on writing (workers on other hosts
                # keep a project busy through a cut that is this process's alone), and a stream's cap
                # may have trimmed past its cursor: this read would bring what is left as if nothing
                # was missing. Each client reads on from its own last event instead, told of a gap.
                self._failed = False
                for stream_watchers in self._subscribers.values():
                    for subscription in stream_watchers:
                        subscription.reread()
            for raw_stream, entries in reply or []:
                stream = raw_stream.decode()
                if stream == self._wake_key:
                    if entries:
                        self._wake_cursor = entries[-1][0].decode()
                    continue
                watchers = self._subscribers.get(stream)
                if not watchers or not entries:
                    continue
                events = [StreamEvent.from_entry(entry_id, fields) for entry_id, fields in entries]
                self._cursors[stream] = events[-1].id or self._cursors[stream]
                for subscription in watchers:
                    subscription.push(events)


class EventHubs:
    """An EventHub per partition, each stream watched through the hub of its partition."""

    def __init__(self, partition_clients: Sequence[Redis]) -> None:
        self._hubs = [EventHub(client, partition) for partition, client in enumerate(partition_clients)]

    def subscribe(self, stream: str, after: str) -> Subscription:
        """Watch `stream` (EventHub.subscribe)."""
        return self._hubs[keys.partition_of_key(stream)].subscribe(stream, after)

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop watching (EventHub.unsubscribe)."""
        self._hubs[keys.partition_of_key(subscription.stream)].unsubscribe(subscription)

    async def close(self) -> None:
        """End every client's stream and stop reading."""
        for hub in self._hubs:
            await hub.close()


HUB = web.AppKey("event_hub", EventHubs)


def _last_event_id(request: web.Request) -> str | None:
    raw = request.headers.get("Last-Event-ID", "").strip()
    if not raw:
        return None
    # Past the largest id a stream can hold (each part under 2**64), or at it: no entry comes after
    # that one, so no stream sent it, and Redis refuses to read after it.
    if not _EVENT_ID.fullmatch(raw) or max(id_key(raw)) >= 2**64 or id_key(raw) == (2**64 - 1, 2**64 - 1):
        raise ValidationError(
            {"Last-Event-ID": "Last-Event-ID must be an event id sent by this stream, e.g. 1700000000000-0"},
            "Invalid Last-Event-ID",
        )
    return raw


async def _newest(redis: Redis, stream: str) -> str:
    """The id of the newest entry of `stream` ("0-0" when it has none)."""
    newest = await redis.xrevrange(stream, count=1)
    return newest[0][0].decode() if newest else "0-0"


def _resume_point(event_id: str | None, newest: str) -> str:
    """What a stream is read after: `event_id`, but never past the stream's `newest` entry, which None
    stands for.

    An id past the newest entry was sent by no stream. The hub reads a stream from the point its
    first watcher gave, for every client of that stream in the process: a client that came first
    with an id from the future held back the live events of all the others until it left.
    """
    return newest if event_id is None else min(event_id, newest, key=id_key)


async def _read_page(redis: Redis, stream: str, after: str, count: int) -> list[StreamEvent]:
    """The first `count` entries of `stream` newer than `after`."""
    entries = await redis.xrange(stream, min=f"({after}", max="+", count=count)
    return [StreamEvent.from_entry(entry_id, fields) for entry_id, fields in entries]


def _page_after(page: list[StreamEvent]) -> int:
    """How many entries to read next: about PAGE_BYTES of entries the size of `page`'s."""
    size = sum(len(event.data) for event in page) // max(len(page), 1)
    return max(1, min(BACKLOG_PAGE, PAGE_BYTES // max(size, 1)))


async def _gap(store: TaskStore, stream: str, after: str, start: str | None = None) -> list[StreamEvent]:
    """A `gap` event when entries of `stream` newer than `after` were trimmed off it, or lie up to
    `start` (where the read begins instead: `_life_ago`), else none.

    The streams are capped (~200 events a task, ~10 000 a project): a client that resumes after an
    id the trimming has passed, or falls that far behind, would otherwise be sent what is left as
    if nothing was missing, a project's client without the ends of the tasks it lost. Entries up to
    `start` are looked for with an XRANGE of one entry, only for a client resuming from further back
    than `start`.
    """
    kept_from = await store.kept_from(stream)
    start = start or after
    if id_key(after) < id_key(kept_from) or (
        id_key(after) < id_key(start)
        and await store.client(keys.partition_of_key(stream)).xrange(
            stream, min=f"({after}", max=start, count=1
        )
    ):
        return [StreamEvent.gap(after, max(kept_from, start, key=id_key))]
    return []


def _life_ago(store: TaskStore) -> str:
    """The id a project's stream is read from at the earliest: a stream's life (keys.events_ttl) ago.

    A task's end drops its project's events older than that (lib/emit.lua), but only then: between
    two ends, up to a stream's life apart, the stream still held them, a gone task's `completed`
    event and its result among them, and sent them, near twice that old, to a client of the project
    resuming from an early Last-Event-ID. Stream ids are Redis's milliseconds, as is model.now().
    """
    return f"{int((now() - keys.events_ttl(store.task_ttl)) * 1000)}-0"


async def _send_stored(writer: EventWriter, store: TaskStore, stream: str, count: int = 1) -> None:
    """Send the entries of `stream` past those sent, a page at a time: each page is taken by the client
    before the next is read, and is preceded by a `gap` when the cap trimmed entries not sent yet.

    Read whole, a project's stream (up to ~10 000 events, with the results of its tasks: as much as
    its stored_bytes_per_project) was held by the process, several times over, for each client that
    resumed it from far back or fell behind: twenty such clients of a stream of 40 MiB took the
    process from 60 MiB to 3 GiB. Read a page at a time, a busy project's cap can trim the entries
    past the page a slow client is being sent: each page's read is followed by the question, or
    those would be skipped as if none was missing.
    """
    redis = store.client(keys.partition_of_key(stream))
    while True:
        page = await _read_page(redis, stream, writer.position, count)
        # Asked after the read: a trim between the two makes the client told of a gap it may not
        # have, never the other way.
        await writer.send([*await _gap(store, stream, writer.position), *page])
        if len(page) < count:
            return
        count = _page_after(page)


class EventWriter:
    """Sends events to one SSE client in order, never twice, and says when a task's stream is over."""

    def __init__(self, request: web.Request, response: web.StreamResponse, after: str) -> None:
        self.request = request
        self.response = response
        self.last = id_key(after)
        self.sent_terminal = False
        self.last_write = time.monotonic()

    async def send(self, events: Iterable[StreamEvent]) -> None:
        """Write the events not sent yet, in writes of about WRITE_CHUNK bytes, each taken before the next."""
        frames: list[bytes] = []
        size = 0
        for event in events:
            if event.id is not None:
                key = id_key(event.id)
                if key <= self.last:
                    continue
                self.last = key
            frames.append(event.frame())
            size += len(frames[-1])
            self.sent_terminal = self.sent_terminal or event.terminal
            if size >= WRITE_CHUNK:
                await self.write(b"".join(frames))
                frames, size = [], 0
        if frames:
            await self.write(b"".join(frames))

    async def write(self, data: bytes) -> None:
        """Write raw bytes; raises ConnectionError once the client has gone."""
        await self.response.write(data)
        self.last_write = time.monotonic()

    def client_gone(self) -> bool:
        """True once the client closed the connection."""
        return client_gone(self.request)

    @property
    def position(self) -> str:
        """The id of the newest entry sent (or the point the stream was read after)."""
        return "{}-{}".format(*self.last)


def client_gone(request: web.Request) -> bool:
    """True once the client of `request` closed its connection."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _stream_response() -> web.StreamResponse:
    response = web.StreamResponse(
        # No Cache-Control here: every answer under /api/v1/ gets `no-store` (taskd.http.auth).
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "X-Accel-Buffering": "no",  # nginx: pass events through as they come
        }
    )
    response.enable_chunked_encoding()
    return response


async def _follow(
    writer: EventWriter,
    subscription: Subscription,
    store: TaskStore,
    *,
    until_terminal: bool,
    recheck: Callable[[str], Awaitable[list[StreamEvent] | None]] | None = None,
) -> None:
    """Send live events (and keep-alives) until the client leaves, the server stops, or the task ends.

    `recheck(after)`, every RECHECK_SECONDS: the events after `after` that the hub may not bring
    (the task's end when its record says it ended), or None when there will be none (no record).
    """
    checked = time.monotonic()
    while not (until_terminal and writer.sent_terminal):
        if subscription.closed or writer.client_gone():
            return
        if recheck is not None and time.monotonic() - checked >= RECHECK_SECONDS:
            checked = time.monotonic()
            try:
                missed = await recheck(writer.position)
            except RedisError as exc:
                # Redis is away for a moment: the stream rides it out, as the hub's read does.
                log.debug("event stream's look at its record failed: %s", exc)
                missed = []
            if missed is None:
                return
            await writer.send(missed)
            continue
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CHECK_SECONDS):
                await subscription.wakeup.wait()
        events = subscription.take()
        if subscription.overflowed:
            subscription.overflowed = False
            await _send_stored(writer, store, subscription.stream)
        else:
            await writer.send(events)
        if time.monotonic() - writer.last_write >= KEEPALIVE_SECONDS:
            await writer.write(b": keep-alive\n\n")


async def _serve(
    request: web.Request,
    response: web.StreamResponse,
    writer: EventWriter,
    subscription: Subscription,
    backlog: list[StreamEvent],
    *,
    until_terminal: bool,
    recheck: Callable[[str], Awaitable[list[StreamEvent] | None]] | None = None,
    more_stored: bool = False,
) -> web.StreamResponse:
    """Send `backlog`, then the stream's stored entries past it when `more_stored`, then live events."""
    api = request.app[API]
    if request.method == "HEAD":
        # The headers GET would send, and no body: events written here would reach the client as
        # the start of its next response on the same connection.
        await response.prepare(request)
        await response.write_eof()
        return response
    try:
        await response.prepare(request)
        await writer.write(f"retry: {RECONNECT_MS}\n\n".encode())
        await writer.send(backlog)
        if more_stored:
            await _send_stored(writer, api.store, subscription.stream, _page_after(backlog))
        await _follow(writer, subscription, api.store, until_terminal=until_terminal, recheck=recheck)
    except ConnectionError:
        # The client went away: a reset, or aiohttp's ConnectionError("Connection lost") for one that
        # left while a write waited for it to take what it was sent. (Redis's errors are not these.)
        pass
    except Exception as exc:  # headers are sent: the error can only end the stream
        log.warning("event stream for %s ended: %s", request.path, exc)
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


async def _record_and_events(
    redis: Redis, task_id: str, stream: str, after: str
) -> tuple[TaskRecord, list[StreamEvent], int]:
    """The record of `task_id`, the entries of its `stream` newer than `after` and the stream's length,
    read in one MULTI (one round trip); raises TaskNotFound.

    The store changes a record and appends its event in one script, so this read sees both or
    neither: a record not yet terminal here has no terminal entry yet, and a terminal one has it
    unless the stream expired (or the client has it). Before, the handler read the record, the
    stream, then the record again (three round trips) to rule out an end between its reads.
    """
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hgetall(keys.task(task_id))
        pipe.xrange(stream, min=f"({after}", max="+")
        pipe.xlen(stream)
        fields, entries, length = await pipe.execute()
    if not fields:
        raise TaskNotFound(task_id)
    return decode(fields), [StreamEvent.from_entry(entry_id, entry) for entry_id, entry in entries], length


@query_key_allowed
@touches(Touches.PATH_TASK)
async def task_events(request: web.Request) -> web.StreamResponse:
    """A task's events from its first (or from `Last-Event-ID`); the stream ends after the terminal event."""
    # A task that never ends holds its stream as long as a project's: both count towards the cap.
    streams = request.app[OPEN_STREAMS]
    with streams.holding(request[KEY_ID]) as held:
        if not held:
            # An unknown task is a 404 whatever the key holds. Only a stream refused at the cap pays
            # this read: one below it learns the same from the read that starts it.
            task_id = request.match_info["task_id"]
            if await request.app[API].store.statuses([task_id]) == [None]:
                raise TaskNotFound(task_id)
            raise streams.refusal()
        return await _task_events(request)


async def _task_events(request: web.Request) -> web.StreamResponse:
    api, hub = request.app[API], request.app[HUB]
    task_id = request.match_info["task_id"]
    last_event_id = _last_event_id(request)
    stream = keys.task_events(task_id)
    redis = api.store.client(keys.task_partition(task_id))
    after = "0-0" if last_event_id is None else _resume_point(last_event_id, await _newest(redis, stream))
    # Watched before the read: an event appended after it reaches the client through the hub.
    subscription = hub.subscribe(stream, after)
    try:
        # A 404 task_not_found comes from here, before any stream starts.
        record, backlog, length = await _record_and_events(redis, task_id, stream, after)
        if record.is_terminal and not any(event.terminal for event in backlog):
            end = StreamEvent.from_record(record, [after, *_ids(backlog)])
            # The end made up now is the one the client has when its id is that end's: any id with
            # MADE_UP_END_SEQ was taken for it, and one held from another task's stream (or an
            # earlier end of this task's, before events written since) was a 204 that sent none of
            # this task's events, nor its end.
            if last_event_id and (
                last_event_id == end.id or await _is_terminal_entry(redis, stream, last_event_id)
            ):
                return web.Response(status=204)  # EventSource stops reconnecting on 204
            backlog.append(end)
        if length >= keys.TASK_EVENTS_MAXLEN:
            # Trimmed at most down to its cap, so a shorter stream was never trimmed: no round trip
            # more for the streams of most tasks, to learn there was no gap.
            backlog[:0] = await _gap(api.store, stream, after)
        response = _stream_response()
        writer = EventWriter(request, response, after)

        async def recheck(sent: str) -> list[StreamEvent] | None:
            return await _missed_end(redis, task_id, stream, sent)

        return await _serve(
            request, response, writer, subscription, backlog, until_terminal=True, recheck=recheck
        )
    finally:
        hub.unsubscribe(subscription)


async def _missed_end(redis: Redis, task_id: str, stream: str, after: str) -> list[StreamEvent] | None:
    """The end of `task_id` if it ended (its stream's entries after `after`, with the end made from the
    record when the stream lacks it); None if its record is gone, [] while it runs or waits.

    A follower learns of a task through the hub, which only brings entries that are written: a task
    whose record expired while no taskd process ran to renew it (storage.task_ttl), or that a Redis
    restarted without its data lost, writes no end, and its followers were sent keep-alives for ever. Ended here, the
    stream's next connection is a 404 task_not_found, which every client stops at.
    """
    status = await redis.hget(keys.task(task_id), "status")
    if status is None:
        return None
    if status.decode() not in _TERMINAL_NAMES:
        return []
    try:
        record, events, _ = await _record_and_events(redis, task_id, stream, after)
    except TaskNotFound:
        return None
    if not any(event.terminal for event in events):
        events.append(StreamEvent.from_record(record, [after, *_ids(events)]))
    return events


def _ids(events: Iterable[StreamEvent]) -> list[str]:
    return [event.id for event in events if event.id is not None]


async def _is_terminal_entry(redis: Redis, stream: str, event_id: str) -> bool:
    entries = await redis.xrange(stream, min=event_id, max=event_id)
    return any(StreamEvent.from_entry(entry_id, fields).terminal for entry_id, fields in entries)


@query_key_allowed
@touches(Touches.PATH_PROJECT)
async def project_events(request: web.Request) -> web.StreamResponse:
    """Events of every task of a project from now (or from `Last-Event-ID`); the stream stays open."""
    with request.app[OPEN_STREAMS].stream(request[KEY_ID]):
        return await _project_events(request)


async def _project_events(request: web.Request) -> web.StreamResponse:
    api, hub = request.app[API], request.app[HUB]
    project_id = request.match_info["project_id"]
    stream = keys.project_events(project_id)
    redis = api.store.client(keys.project_partition(project_id))
    # From now on, or after the client's Last-Event-ID.
    last_event_id = _last_event_id(request)
    newest = await _newest(redis, stream)
    after = _resume_point(last_event_id, newest)
    # No event older than a stream's life is sent: the stream holds one that old only until its
    # project's next end (lib/emit.lua).
    start = after if last_event_id is None else max(after, _life_ago(api.store), key=id_key)
    # The hub reads on from the newest entry: those before it are the backlog's, read below a page at
    # a time. From `after`, one XREAD brought a client's whole backlog at once.
    subscription = hub.subscribe(stream, newest)
    try:
        # The first entry before the stream starts, so that a Redis that fails the read is a 503
        # answer; the rest, of a size not known yet, a page at a time once the stream has started.
        backlog = await _read_page(redis, stream, start, 1)
        gap = await _gap(api.store, stream, after, start) if last_event_id is not None else []
        response = _stream_response()
        writer = EventWriter(request, response, start)
        return await _serve(
            request,
            response,
            writer,
            subscription,
            [*gap, *backlog],
            until_terminal=False,
            more_stored=bool(backlog),
        )
    finally:
        hub.unsubscribe(subscription)


async def _close_hub(app: web.Application) -> None:
    await app[HUB].close()


def add_routes(app: web.Application) -> None:
    """Register the two event streams and the hub that feeds them; open streams end at shutdown."""
    app[HUB] = EventHubs(app[API].store.clients)
    app.on_shutdown.append(_close_hub)
    app.router.add_get("/api/v1/tasks/{task_id}/events", task_events)
    app.router.add_get("/api/v1/projects/{project_id}/events", project_events)
