"""Every Redis key taskd uses, with how long each lives and why.

Every name starts with the hash tag of a partition, so that each partition hashes to one slot: a
Redis Cluster (docs/cluster.md) then runs every script, pipeline and transaction on one node, as a
standalone Redis does. With one partition (`redis.partitions`, the default) that tag is `{taskd}`
for every key. With N, a project's keys and its tasks' are under the tag of the project's
partition (`{taskd}` for partition 0, `{taskd:<n>}` for the others; `partition_prefix`), as are
each partition's copies of the queue lines, counters, outbox and schedule below (`metrics(p)`,
`running(queue, p)`…); what every task shares (workers, GPU hosts, rate limits, providers) stays
under `{taskd}`. The table names the keys as partition 0 has them.

arq's lock keys are under the tag too (arq's own `arq:in-progress:` prefix would put each job in
another slot): taskd's worker never lets arq read them (taskd.queue.workers). arq's job
definitions are not written at all: a task's record holds what its job needs (`job_id`,
`enqueued_ms`); those an earlier version wrote (`{taskd}:arq:job:{task id}.{n}`) expire a day past
their score. Keys written before the tag (`taskd:…`) are renamed once, at start
(taskd.store.layout).

| key | type | lives |
|---|---|---|
| `{taskd}:task:{id}` | hash: one task record | `storage.task_ttl` (24 h) from creation (a scheduled task's: from its time); while the task is queued or processing, renewed to that from now before half of it is left (taskd.engine.keeper, live.lua), so a live task never loses it however long it waits or runs; renewed when the task ends, so a finished task stays readable for a full day (or for its submission's `keep_for`), and past that until its webhook's next attempt is over while one is retried (webhooks/lua/record.lua) |
| `{taskd}:project:{project_id}` | sorted set: task id -> created ms | renewed with every submit, and when a task ends, to at least its record's life (`storage.task_ttl` or its `keep_for`); ids whose record expired are pruned when listed, and by a submit at most once a minute (`INDEX_PRUNE_BATCH` ids created more than `storage.task_ttl` ago, lib/admit.lua) |
| `{taskd}:metrics` | hash: cumulative counters | forever: the document says metrics survive restarts |
| `{taskd}:running:{queue}` | sorted set: task id -> started ms | members leave when their task ends |
| `{taskd}:workers` | sorted set: worker id -> last heartbeat ms | members older than the heartbeat TTL are dead and pruned |
| `{taskd}:worker:{id}` | string: the worker's JSON description | heartbeat TTL: disappears when the process stops beating |
| `{taskd}:queue:{queue}` | arq's queue sorted set: job id -> score; the projects' heads, and the running jobs of workers that claim one job at a time (a host with GPUs) | a head leaves when a worker takes it (take.lua) or its task is cancelled; a running job when its task ends |
| `{taskd}:idle:{queue}` | sorted set: worker id -> ms it went idle, of the workers of the queue that have free slots and found nothing to take; a new job wakes the one idle longest (lib/wake.lua) | a member leaves when it is woken, takes its fill, or stops; one whose heartbeat is gone is dropped when popped |
| `{taskd}:webhooks:due` | sorted set: task id (its end's webhook) or `{id}:started` / `{id}:progress` (`webhook_events`) -> ms when that webhook is next due (the durable outbox) | members leave when delivered or given up |
| `{taskd}:webhook:{id}` | hash: delivery state of a task's webhook (attempts, last status/error, delivered/failed/next times); `{taskd}:webhook:{id}:started` (with the run it reports: `run`, `run_started_at`) and `…:progress` for those events' webhooks | from every attempt (and a redelivery), `storage.task_ttl` or as long as the task's record if that is longer (its `keep_for`), so it lives as long as the task record |
| `{taskd}:webhooks:wake` | pub/sub channel: a webhook became due now; wakes every sender | no storage |
| `{taskd}:memory_events` | sorted set: JSON of job processes killed over the memory limit -> ms | trimmed to the last 10 minutes; feeds the memory alert |
| `{taskd}:events:task:{id}` | stream: the task's events (status changes, progress), ids usable as SSE `Last-Event-ID` | capped at ~200 entries; expires `storage.task_ttl` (at most a day) after the last event (`events_ttl`), an ended task's no later than its record's `keep_for`, kept on with a record kept longer for a dependent or a webhook's retries (lib/outlive.lua, webhooks/lua/record.lua) up to `events_ttl` after its end; while the task is queued or processing, renewed to that before half of it is left (live.lua) |
| `{taskd}:events:project:{project_id}` | stream: the same events for every task of a project | capped at ~10 000 entries; a task's end, and an event carrying a result or error over `STORED_FREE_BYTES`, drops those older than `events_ttl` (lib/emit.lua), so that it keeps no task's result, error or steps longer than that; expires `storage.task_ttl` (at most a day) after the last event |
| `{taskd}:events:wake:{hub id}` | stream: one entry, added when a client starts watching a stream while the process's event reader is blocked in `XREAD`; the read includes it, so it returns at once | one entry (MAXLEN 1); expires a minute after the last wake; deleted when the process stops |
| `{taskd}:gpu:{host}:{index}` | hash: task id -> "worker id|slots" holding slots of that device | entries leave on release, or when their worker's heartbeat is gone (dropped by the host's next acquire); the hash expires a heartbeat TTL after the host's last beat (taskd.gpu.hosts), or, made by an acquire before the next beat, with the taking worker's liveness key, so a host that never comes back leaves nothing |
| `{taskd}:gpu:{host}:reserved` | string: the device a whole-device task waiting on that host reserved ("task|device|until ms|score", gpu/lua/acquire.lua) | until its task gets a device, or `RESERVATION_MS` (5 s) after the task last asked |
| `{taskd}:gpu_hosts` | sorted set: worker host id -> ms of the last heartbeat that published its GPUs | members older than the heartbeat TTL are pruned when read |
| `{taskd}:gpu_host:{host}` | string: the host's JSON GPU report (devices, NVML readings, slots in use), written with every heartbeat of a worker process there | heartbeat TTL: a host that stops beating disappears from health, /metrics and the dashboard |
| `{taskd}:settings` | sorted set: process id -> ms it last published its settings' digests (taskd.agreement) | members older than the heartbeat TTL are pruned when read |
| `{taskd}:settings:{process id}` | string: JSON of one process's host, pid, roles and a digest of each setting every process must agree on (never a value), written every heartbeat interval | heartbeat TTL; deleted when the process stops |
| `{taskd}:keeper:{group}` | string: the id of the process whose turn it is to look at the partition's live tasks and renew their records (taskd.engine.keeper); one look per interval across every process that keeps them alike, not one per process (`group`: a digest of `storage.task_ttl` and the queues looked at, so that processes whose settings differ each keep their own pace and queues) | a sixteenth of the keeper's interval while its look runs, set again at each of the look's script calls, so that another process takes over within that of a holder that died; then 13/16 of the interval from the look's end |
| `{taskd}:writes_taken` | string: the id of the last process whose look for dead workers' tasks, or `GET /api/v1/health`, wrote it; a write that Redis refuses (full, its disk failing, a replica, busy) tells that process that the heartbeats were refused too (taskd.engine.reclaim; in partition 0's slot, with the heartbeats: another partition's refusals lapse none), and the health that Redis refuses writes (each partition's copy, `{taskd:<n>}:writes_taken`, written by the health only) | `WRITES_TAKEN_TTL_MS` (a minute) after the last look or health read |
| `{taskd}:start_check` | pub/sub channel: published to once by each start, from a script (taskd/lua/start_check.lua), to learn that Redis lets taskd's scripts publish (taskd.redis_needs); nobody listens | no storage |
| `{taskd}:cancel` | pub/sub channel: ids of running tasks to stop | no storage |
| `{taskd}:ratelimit:{policy}:{key hash}` | sorted set: the times (ms) of the requests of one API key (sha256, never the key) accepted under `submit`/`status` in the last minute | a minute after its last accepted request; older members are dropped on each request |
| `{taskd}:project_active:{project_id}` | set: the project's queued and processing task ids (its concurrency limit) | members leave when their task ends; pruned of expired records when the waiting cap is reached, at most once a minute |
| `{taskd}:provider:{name}:slots` | sorted set: holder (worker id and request, then `|` and the project id) -> ms its lease ends, of the requests in flight to provider `llm`/`image`/`speech` (`providers.<name>.max_concurrency`) | a lease after the last acquire or renewal; holders whose lease ended are dropped on each acquire |
| `{taskd}:provider:{name}:minute` | sorted set: the times (ms) of the requests sent to the provider in the last minute (`providers.<name>.per_minute`) | a minute after its last request; older members are dropped on each acquire |
| `{taskd}:provider:{name}:waiters` | sorted set: holder -> ms it is dropped from the lines unless it asks again (a grace after the time it said it would), of the requests waiting for a slot or a place of the provider | members leave when they get their slot, are cancelled, or stop asking; expires with the turns and lines, a minute and a grace after the last try of a waiter |
| `{taskd}:provider:{name}:turns` | sorted set: project id -> ms its turn began (it began waiting, or its last request was let through or ended), of the projects with a request waiting for the provider; the fewest slots held, then the earliest turn, goes next | a member leaves when its project's line empties |
| `{taskd}:provider:{name}:line:{project_id}` | sorted set: holder -> ms it first asked, of the project's requests waiting for the provider, first come first served | members leave with `waiters`' |
| `{taskd}:wake` | pub/sub channel: a queue name, published when a job is put on it and no worker of the queue was idle; the workers that claim one job at a time (hosts with GPUs) listen to it | no storage |
| `{taskd}:wake:{worker id}` | pub/sub channel of one worker process: a queue name, published when a job is put on it and that worker was the one idle longest; only it hears it | no storage |
| `{taskd}:waiting:{queue}` | sorted set: every waiting job of the queue (job id -> its own score); its size is the queue's length | members leave when their job starts or its task is cancelled |
| `{taskd}:project_waiting:{queue}:{project_id}` | sorted set: the project's waiting jobs on the queue, its head included (job id -> its own score) | members leave when their job starts or its task is cancelled |
| `{taskd}:heads:{queue}` | hash: project id -> the one job of the project on arq's queue set (its head), for fair turns | a field leaves when the project has nothing waiting on the queue |
| `{taskd}:idempotency:{key id}:{sha256 of the Idempotency-Key}` | hash: what the first submit or retry with that key by that API key made (its body's fingerprint, the task id, its creation time, queue position and the type's durations), for replays | `IDEMPOTENCY_TTL` (24 h) from that first request |
| `{taskd}:run:{id}` | hash: what a run of the task kept for the next run of the same task, should it be cut short (a video provider's job id, each department's LLM answer, the CMS document of its upload, the files its runs put into the media store: taskd.store.run_state); written only while the task is `processing` under the writing worker, at most `run_state.MAX_BYTES`; the record's `run_state` field says it has one | deleted when the task ends (lib/ended.lua); until then it expires with the task's record |
| `{taskd}:dependents:{id}` | set: the ids of the tasks waiting for task `{id}` to complete (`depends_on`); the script that ends the task releases or cancels them, and reads the set only when the task's record says `dependents` `1` (or has no such field, as a record of an earlier version) | deleted when the task ends; until then as long as the longest-kept dependent (a minute past the task's own record's expiry, at least) |
| `{taskd}:queues` | set: every queue name a task may wait on in the partition: each taskd process adds the queues its config names (`[queues]`, the types' routes) at start (a start with no other process of this version alive, and each one once the last live process of an earlier version is gone, add those tasks wait or run on: taskd.store.layout.know_queues), and lib/enqueue.lua the queue of each job it puts on a line (a scheduled task's at its time, a `depends_on` task's when released, a retry, a reclaimed run); read by the keeper, the look for dead workers' tasks, the health, `/metrics`, the dashboard and `taskd queues`, so that tasks on a queue no process's config names any more (renamed, removed, a type routed elsewhere) are still kept and shown (docs/guarantees.md) | forever: a handful of names an operator chose, never a tenant's |
| `{taskd}:scheduled` | sorted set: task id -> ms it is due, of the queued tasks submitted with `run_at`/`delay_seconds` that wait for their time (no job yet); due.lua queues them | members leave when their time comes (every process looks twice a second) or their task ends (cancel) |
| `{taskd}:partitions` | string: the number of partitions (`redis.partitions`) the tasks are spread over, kept by the first start (taskd.store.layout.check_partitions) | forever |
| `{taskd}:layout` | string: `tagged` once the keys of versions before the tag (`taskd:…`) were renamed (taskd.store.layout) | forever |
| `{taskd}:project_processing:{project_id}` | set: the project's processing task ids (its concurrency throttle) | members leave when their task ends or is requeued; pruned of ended records when the throttle is reached, at most once a minute |
| `{taskd}:stored:{project_id}` | hash: the bytes of the project's heavy records (large `task_data`/`metadata`/result/error or expected result, or kept longer than `storage.task_ttl`) -> the second by which they are gone, rounded up (lib/stored.lua); the project's sum is what `limits.stored_bytes_per_project` bounds | fields past their second are dropped when the hash is read; the hash expires with its latest field |
| `{taskd}:project_active_pruned:{project_id}`, `{taskd}:project_processing_pruned:{project_id}` | string: set when that set of the project was last pruned of gone records; while it lives the cap or the throttle counts the set as it is (lib/prune.lua) | `PRUNE_EVERY_MS` (a minute) |
| `{taskd}:project_pruned:{project_id}` | string: set when a submit last read the project's index for the ids of gone records (lib/admit.lua) | `PRUNE_EVERY_MS` (a minute) |
| `{taskd}:project_counts:{project_id}` | hash: how many of the project's tasks match each filter of a listing, and checkpoints into its index, as the last listing that read the whole index counted them, with the project's event stream's last id then (list_keep.lua); listings use them while that id is still the last and no counted record has expired (list_look.lua) | until the first counted record expires, at most `LIST_COUNTS_MAX_MS` (an hour) |
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Sequence
from typing import TypeVar

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

# The hash tag: everything taskd keeps is in the slot of "taskd" (with `redis.partitions` > 1, the
# state shared by every task, and partition 0's tasks).
PREFIX = "{taskd}:"
# The most partitions: partition 0 keeps "{taskd}" (slot 332), which must lie in the first of the
# equal slot ranges the partitions are spread over (16384 / 32 = 512 slots each).
MAX_PARTITIONS = 32
METRICS = f"{PREFIX}metrics"
WORKERS = f"{PREFIX}workers"
SETTINGS = f"{PREFIX}settings"
GPU_HOSTS = f"{PREFIX}gpu_hosts"
CANCEL_CHANNEL = f"{PREFIX}cancel"
START_CHECK_CHANNEL = f"{PREFIX}start_check"
WAKE_CHANNEL = f"{PREFIX}wake"
MEMORY_EVENTS = f"{PREFIX}memory_events"
LAYOUT = f"{PREFIX}layout"
PARTITIONS = f"{PREFIX}partitions"
MEMORY_EVENT_TTL = 600
# What the reclaimer writes before a look, where the heartbeats are: nothing reads it, it only has
# to go in.
WRITES_TAKEN = f"{PREFIX}writes_taken"
WRITES_TAKEN_TTL_MS = 60_000
# Upper bounds (seconds) of the per-type duration histogram kept in the metrics hash as
# `duration_in:<type>:<le>`, each task counted once, in the first bucket it fits (the scrape adds
# them up); `duration_bucket:<type>:<le>`, cumulative, is what versions before wrote, still read.
DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 900)
# Upper bounds (seconds) of the wait-time histogram (from when a task could start to when it did), kept
# in the metrics hash per queue and type as `wait_in:<queue>:<type>:<le>`, counted once like durations.
WAIT_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600)
# The longest a task's or a project's event stream lives after its last event: a day, or
# `storage.task_ttl` where that is shorter (events_ttl).
EVENTS_TTL = 24 * 3600
# A project's active or processing set is read through for the ids of gone records (one read a
# member) at most this often: a project held at its waiting cap or throttle, and a client retrying
# its refused submits, cost a count, not a read of up to `limits.queued_per_project` records, each
# time (lib/prune.lua).
PRUNE_EVERY_MS = 60_000
# And a project's index is read for the ids of gone records (ids created more than a task_ttl ago)
# at most once a PRUNE_EVERY_MS, this many ids a time (lib/admit.lua's prune_index): more than a
# key's default submits a minute (100), so a steady stream of submits cannot outgrow it.
INDEX_PRUNE_BATCH = 1000
# The longest a project's listing counts ({taskd}:project_counts:{project_id}) are kept, even where
# none of its records expires sooner: a project listed once holds no memory for days.
LIST_COUNTS_MAX_MS = 3_600_000
# A listing of a project whose last status event is more recent than this does not count it for
# the listings after it (list_look.lua): a project that busy changes again before they come.
LIST_QUIET_MS = 1000
# The most projects waiting on a queue (in a partition) for which a queue position is counted
# exactly, from every waiting project's head and line (lib/fair.lua's place, one command or more a
# project); past it, a position is estimated from a few counts, so that a submit and a status read
# cost Redis the same however many projects a tenant spreads its tasks over.
EXACT_PLACE_HEADS = 1000
TASK_EVENTS_MAXLEN = 200
PROJECT_EVENTS_MAXLEN = 10_000
# Partition 0's outbox, schedule and counters (METRICS, above): with one partition, the only ones;
# `webhooks_due(p)`, `scheduled(p)` and `metrics(p)` name any partition's.
WEBHOOKS_DUE = f"{PREFIX}webhooks:due"
WEBHOOKS_WAKE = f"{PREFIX}webhooks:wake"
SCHEDULED = f"{PREFIX}scheduled"
# A project's heavy records (lib/stored.lua): one whose caller's data as stored (`task_data` and
# `metadata`, then its result or error with its traceback; until it ends, the result its type expects,
# `result_estimate`) is over STORED_FREE_BYTES, or that is kept
# longer than `storage.task_ttl` (`keep_for`, `run_at`), counts its bytes against
# `limits.stored_bytes_per_project`.
# The others are the sizing formula's (docs/production.md) and cost no command. A typical record
# holds 50-400 bytes of caller's data (its fields 0.4-0.9 KB, 0.7-1.4 KB of Redis memory): 4 KiB is
# ten times that, well under the 1 MiB a body may carry.
STORED_FREE_BYTES = 4096
# Counted for a heavy record on top of its fields' names and values: Redis's own per-key and
# per-field memory, the project index's entry (a typical record's MEMORY USAGE is 300-600 bytes
# over its fields).
STORED_RECORD_OVERHEAD = 512
# A heavy record's bytes are counted until its expiry rounded up to a power-of-two number of seconds
# near 1/STORED_SLICES of how long it is kept: at most ~STORED_SLICES fields per such length, a few
# hundred in all, and a record counted at most ~6% of its life past its expiry.
STORED_SLICES = 32
# How long an Idempotency-Key is remembered: a repeat within this window is answered, not run again.
IDEMPOTENCY_TTL = 24 * 3600

# arq's job locks, in arq's format but under taskd's tag (arq names them arq:in-progress:…;
# taskd's worker claims and drops jobs itself, so arq never reads this prefix: tests/test_keys.py
# checks that a task run writes no key outside the tag). Partition 0's; `arq_in_progress` names a
# job's in its task's partition. arq's job definitions (`arq:job:…`) are not written: the record
# holds what a job needs (its id and enqueue time).
ARQ_IN_PROGRESS_PREFIX = f"{PREFIX}arq:in-progress:"


def events_ttl(task_ttl: int) -> int:
    """Seconds an event stream lives after its last event, for a taskd whose records live `task_ttl`.

    Never past the record: a task's stream (larger than its record for most tasks) answers nothing
    once the record is gone, and an operator who shortens `storage.task_ttl` to bound Redis memory
    must get the streams' share back too. At most a day, as before, whatever the TTL or `keep_for`.
    """
    return min(task_ttl, EVENTS_TTL)


def _tag(partition: int, count: int) -> str:
    # Partition 0 is "taskd"; partition i the first "taskd:<n>" whose slot lies in the i-th of
    # `count` equal slot ranges, so that a cluster whose primaries serve equal ranges (what
    # `valkey-cli --cluster create` makes) has the partitions on different shards.
    if partition == 0:
        return "taskd"
    low, high = (
        partition * REDIS_CLUSTER_HASH_SLOTS // count,
        (partition + 1) * REDIS_CLUSTER_HASH_SLOTS // count,
    )
    n = partition
    while not low <= key_slot(f"taskd:{n}".encode()) < high:
        n += 1
    return f"taskd:{n}"


class _Partitions:
    """How many partitions this process's taskd has (`redis.partitions`), and their key prefixes."""

    def __init__(self) -> None:
        self.count = 1
        self.prefixes: tuple[str, ...] = (PREFIX,)

    def configure(self, count: int) -> None:
        if not 1 <= count <= MAX_PARTITIONS:
            raise ValueError(f"partitions must be 1 to {MAX_PARTITIONS}, not {count}")
        self.count = count
        self.prefixes = tuple("{" + _tag(partition, count) + "}:" for partition in range(count))


_partitions = _Partitions()


def configure_partitions(count: int) -> None:
    """Set the number of partitions (`redis.partitions`) before any key is named; every process of
    one taskd must use the same (taskd.store.layout checks it at start)."""
    _partitions.configure(count)


def partition_count() -> int:
    """How many partitions taskd's tasks are spread over."""
    return _partitions.count


def partitions() -> range:
    """Every partition's number."""
    return range(_partitions.count)


def partition_prefix(partition: int) -> str:
    """The key prefix (with its hash tag) of one partition."""
    return _partitions.prefixes[partition]


Client = TypeVar("Client")


def client_per_partition(client: Client, given: Sequence[Client] | None = None) -> list[Client]:
    """A client per partition: `given` (on a cluster, each pinned to its partition's primary:
    taskd.redis_conn.connect_partitions), else `client` for every one (one server holds them all)."""
    return list(given) if given else [client] * _partitions.count


def partition_of_key(key: str) -> int:
    """The partition a key of taskd's is in, by its prefix."""
    for partition, prefix in enumerate(_partitions.prefixes):
        if key.startswith(prefix):
            return partition
    raise ValueError(f"{key!r} is in no partition of taskd's")


def _hashed(name: str) -> int:
    if _partitions.count == 1:
        return 0
    return zlib.crc32(name.encode("utf-8", "surrogateescape")) % _partitions.count


def project_partition(project_id: str) -> int:
    """The partition that holds a project's tasks, lines and limits."""
    return _hashed(project_id)


def task_partition(task_id: str) -> int:
    """The partition that holds a task: named by its id (new_task_id makes it its project's)."""
    return _hashed(task_id)


def new_task_id(project_id: str) -> str:
    """A new task id (a random UUID) that names the partition of its project."""
    want = project_partition(project_id)
    while True:
        task_id = _uuid4()
        if task_partition(task_id) == want:
            return task_id


def _uuid4() -> str:
    """`str(uuid.uuid4())` without the UUID object in between: 1 µs against 2.5, on every submit."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _of_task(task_id: str) -> str:
    return _partitions.prefixes[_hashed(task_id)] if _partitions.count > 1 else PREFIX


def _of_project(project_id: str) -> str:
    return _partitions.prefixes[_hashed(project_id)] if _partitions.count > 1 else PREFIX


def task(task_id: str) -> str:
    """The hash holding one task record."""
    return f"{_of_task(task_id)}task:{task_id}"


def project(project_id: str) -> str:
    """The per-project index of task ids, scored by creation time."""
    return f"{_of_project(project_id)}project:{project_id}"


def no_key(partition: int) -> str:
    """What a script gets for an optional key it is not given: a name in its partition's slot (a
    cluster refuses a script whose keys hash to several slots, and "" has a slot of its own), never
    written."""
    return f"{partition_prefix(partition)}none"


def keeper_turn(partition: int, group: str) -> str:
    """Who of the processes that keep live records alike (`group`: taskd.engine.keeper) looks at
    the partition's live tasks now, or did last."""
    return f"{partition_prefix(partition)}keeper:{group}"


def in_partition(key: str, partition: int) -> str:
    """`key` (named in partition 0, as taskd.keys.idempotency names it) in another partition."""
    return partition_prefix(partition) + key.removeprefix(PREFIX)


def writes_taken(partition: int) -> str:
    """`WRITES_TAKEN` in one partition's slot: what the health writes to learn that its node takes writes."""
    return in_partition(WRITES_TAKEN, partition)


def metrics(partition: int) -> str:
    """One partition's counters (the scrape adds the partitions' up)."""
    return f"{partition_prefix(partition)}metrics"


def webhooks_due(partition: int) -> str:
    """One partition's webhook outbox."""
    return f"{partition_prefix(partition)}webhooks:due"


def queues(partition: int) -> str:
    """The names of every queue a task of the partition may wait on (taskd.store.records.TaskStore.known_queues)."""
    return f"{partition_prefix(partition)}queues"


def scheduled(partition: int) -> str:
    """One partition's tasks waiting for their time."""
    return f"{partition_prefix(partition)}scheduled"


def running(queue: str, partition: int = 0) -> str:
    """Tasks of `queue` (of one partition) that are processing now, scored by start time."""
    return f"{partition_prefix(partition)}running:{queue}"


def settings(process_id: str) -> str:
    """The digests of the settings one process must agree on with the others (taskd.agreement)."""
    return f"{PREFIX}settings:{process_id}"


def worker(worker_id: str, partition: int = 0) -> str:
    """The heartbeat record of one worker process; in another partition than 0, the mark that it
    is alive, written with the same heartbeat, which the partition's scripts read."""
    return f"{partition_prefix(partition)}worker:{worker_id}"


def wake_worker(worker_id: str) -> str:
    """The pub/sub channel that wakes one worker process (lib/wake.lua publishes a queue name on it)."""
    return f"{WAKE_CHANNEL}:{worker_id}"


def woken(message: str) -> tuple[str, int | None]:
    """The queue and partition a wake-up message names (lib/wake.lua sends `<prefix><queue>`); a bare
    queue name names no partition."""
    if message.startswith("{"):
        partition = partition_of_key(message)
        return message.removeprefix(partition_prefix(partition)), partition
    return message, None


def idle(queue: str, partition: int = 0) -> str:
    """The workers of `queue` with free slots that wait for a job of the partition (a submit wakes one)."""
    return f"{partition_prefix(partition)}idle:{queue}"


def webhook(task_id: str) -> str:
    """The delivery state of a task's webhook (`task_id` may be an outbox member: `webhook_member`)."""
    return f"{_of_task(task_id.partition(':')[0])}webhook:{task_id}"


def webhook_member(task_id: str, event: str) -> str:
    """A task's member in the outbox for one of its `started` or `progress` webhooks (its end's is the bare id)."""
    return f"{task_id}:{event}"


def queue(name: str, partition: int = 0) -> str:
    """arq's queue for taskd's queue `name` (of one partition)."""
    return f"{partition_prefix(partition)}queue:{name}"


def job_id(task_id: str, enqueues: int) -> str:
    """The arq job id of the `enqueues`-th time a task is put on a queue (the store's Lua does the same)."""
    return f"{task_id}.{enqueues}"


def rate_limit(policy: str, key_id: str) -> str:
    """The sliding-window log of one hashed API key under one rate-limit policy."""
    return f"{PREFIX}ratelimit:{policy}:{key_id}"


def project_active(project_id: str) -> str:
    """The project's queued and processing tasks."""
    return f"{_of_project(project_id)}project_active:{project_id}"


def project_processing(project_id: str) -> str:
    """The project's processing tasks, across queues: the concurrency throttle counts them."""
    return f"{_of_project(project_id)}project_processing:{project_id}"


def project_active_pruned(project_id: str) -> str:
    """Set for PRUNE_EVERY_MS when the project's active set was last read through for gone records."""
    return f"{_of_project(project_id)}project_active_pruned:{project_id}"


def stored(project_id: str) -> str:
    """The bytes of the project's heavy records, by the second they are gone (lib/stored.lua)."""
    return f"{_of_project(project_id)}stored:{project_id}"


def project_pruned(project_id: str) -> str:
    """Set for PRUNE_EVERY_MS when a submit last read the project's index for the ids of gone records."""
    return f"{_of_project(project_id)}project_pruned:{project_id}"


def project_counts(project_id: str) -> str:
    """The counts of the project's tasks per listing filter, kept for the listings after the one that made them."""
    return f"{_of_project(project_id)}project_counts:{project_id}"


def project_processing_pruned(project_id: str) -> str:
    """Set for PRUNE_EVERY_MS when the project's processing set was last read through for gone records."""
    return f"{_of_project(project_id)}project_processing_pruned:{project_id}"


def waiting(queue: str, partition: int = 0) -> str:
    """Every waiting job of `queue` in one partition, by its own score (arq's set holds only the
    projects' heads)."""
    return f"{partition_prefix(partition)}waiting:{queue}"


def project_waiting(queue: str, project_id: str) -> str:
    """The waiting jobs of one project on `queue`, by their own score."""
    return f"{_of_project(project_id)}project_waiting:{queue}:{project_id}"


def heads(queue: str, partition: int = 0) -> str:
    """Which job of each project is on arq's set of `queue` now: the project's turn in the round."""
    return f"{partition_prefix(partition)}heads:{queue}"


def dependents(task_id: str) -> str:
    """The tasks whose `depends_on` names `task_id` and that still wait for it."""
    return f"{_of_task(task_id)}dependents:{task_id}"


def run_state(task_id: str) -> str:
    """What a run of the task kept for the next run of the same task (taskd.store.run_state)."""
    return f"{_of_task(task_id)}run:{task_id}"


def task_events(task_id: str) -> str:
    """The stream of one task's events."""
    return f"{_of_task(task_id)}events:task:{task_id}"


def project_events(project_id: str) -> str:
    """The stream of events of every task of a project."""
    return f"{_of_project(project_id)}events:project:{project_id}"


def events_wake(hub_id: str, partition: int = 0) -> str:
    """The wake-up stream of one process's event reader of one partition (`taskd.http.events.EventHub`)."""
    return f"{partition_prefix(partition)}events:wake:{hub_id}"


def gpu_device(host: str, index: str) -> str:
    """Holders of one GPU of one host (`index` "" gives the prefix)."""
    return f"{PREFIX}gpu:{host}:{index}"


def gpu_host(host: str) -> str:
    """The GPU report of one worker host."""
    return f"{PREFIX}gpu_host:{host}"


def arq_in_progress(job: str) -> str:
    """arq's lock on a running job (taskd stores the id of the worker holding it)."""
    return f"{_of_task(job.rpartition('.')[0])}arq:in-progress:{job}"


def provider_slots(name: str) -> str:
    """The holders of the concurrency slots of one outside provider (`llm`, `image`, `speech`)."""
    return f"{PREFIX}provider:{name}:slots"


def provider_minute(name: str) -> str:
    """The sliding-window log of the requests sent to one outside provider."""
    return f"{PREFIX}provider:{name}:minute"


def provider_waiters(name: str) -> str:
    """The requests waiting for a slot of one outside provider, with when each drops out unless it asks again."""
    return f"{PREFIX}provider:{name}:waiters"


def provider_turns(name: str) -> str:
    """The projects with a request waiting for one outside provider, by when each one's turn began."""
    return f"{PREFIX}provider:{name}:turns"


def provider_lines(name: str) -> str:
    """The prefix of the projects' lines for one outside provider (+ a project id: its waiting requests)."""
    return f"{PREFIX}provider:{name}:line:"


def idempotency(key_id: str, idempotency_key: str, partition: int = 0) -> str:
    """What one API key's first request with an Idempotency-Key made; the key is hashed, so any
    header value makes a short key name of fixed shape."""
    # A header that is not UTF-8 arrives with its bytes escaped as surrogates; they are hashed as bytes.
    digest = hashlib.sha256(idempotency_key.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{partition_prefix(partition)}idempotency:{key_id}:{digest}"
