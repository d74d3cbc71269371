"""The key layout: taskd's keys under the hash tag `{taskd}` (taskd.keys), the one-time rename of
the keys that versions before the tag wrote as `taskd:…`, and the filling of the known queues
({taskd}:queues) from the queues that tasks of versions before that set wait on (`know_queues`; again
after a start or a rolling upgrade's end, while such versions may have run: `Relook`).

Every start calls `upgrade`; after the first it costs one GET (the marker). The first start of
this version on an existing Redis renames each `taskd:…` key to `{taskd}:…` with RENAMENX, which
keeps its value and its expiry. Stop every taskd process of the older version before starting
this one: a process of the older version still running writes `taskd:…` keys that nobody reads
any more. Two processes of this version starting together are safe: a key the other one moved
first is gone (skipped), and a name already taken under the tag is left as it is, the old key kept
and logged. arq's `arq:job:…` and `arq:in-progress:…` keys of the older version are not moved:
nothing reads a job definition (the task record holds what a job needs), and the locks matter only
to workers, which were all stopped; both expire on their own (a day past the job's score, the
queue's timeout plus 100 s).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from taskd import keys
from taskd.config import ConfigError

log = logging.getLogger(__name__)

UNTAGGED_PREFIX = "taskd:"
# The marker's value: the layout the keys are in.
TAGGED = "tagged"
SCAN_COUNT = 1000
# A partition's waiting and running sets (taskd.keys.waiting, running: `{taskd}:waiting:<queue>`,
# `{taskd:<n>}:running:<queue>`) in one glob after its prefix; the names it lets by are checked exactly.
QUEUE_KEYS_MATCH = "[rw][ua][ni][nt]ing:*"
# The prefix of every partition's keys, for the pass over a server that holds several.
ANY_PARTITION = keys.PREFIX.removesuffix("}:") + "*}:"


async def upgrade(redis: Redis) -> int:
    """Rename the keys of the untagged layout, once; returns how many were renamed."""
    if await redis.get(keys.LAYOUT) == TAGGED.encode():
        return 0
    renamed = 0
    cursor = 0
    while True:
        cursor, names = await redis.scan(cursor, match=UNTAGGED_PREFIX + "*", count=SCAN_COUNT)
        renamed += await _rename(redis, [name.decode("utf-8", "surrogateescape") for name in names])
        if not cursor:
            break
    await redis.set(keys.LAYOUT, TAGGED)
    if renamed:
        log.info("renamed %d keys to the tagged layout ({taskd}:…)", renamed)
    return renamed


async def know_queues(clients: Sequence[Redis], *, again: bool = False) -> int:
    """Fill each partition's known queues ({taskd}:queues, taskd.keys) from the queues its tasks
    wait or run on, once: the first start of a version that keeps that set finds the tasks an
    earlier one queued, on a queue this start's config may name no more (renamed, removed), which
    would otherwise be kept by no keeper and shown by no health. `again` looks though the set is
    there: processes of an earlier version, which line up jobs without naming their queue there,
    may have run since the last look (taskd.service: a start with no process of this version alive,
    and the moment the last earlier one is gone). Otherwise one EXISTS a partition. Returns how
    many names were added.

    Each server's keys are read in one pass (SCAN) for every partition it holds: a pass per
    partition and per kind of key read all of a big keyspace twice a partition (64 times with 32
    partitions on one server) while the start waited. On a cluster each partition's pass reads
    its slot alone."""
    unknown = [
        partition
        for partition, client in enumerate(clients)
        if again or not await client.exists(keys.queues(partition))
    ]
    on_server: dict[int, list[int]] = {}
    for partition in unknown:
        on_server.setdefault(id(clients[partition]), []).append(partition)
    found: dict[int, set[str]] = {partition: set() for partition in unknown}
    for partitions in on_server.values():
        # Only the names of these partitions' waiting and running sets, exactly: another key the
        # glob lets by (another server's partition, a name of an unforeseen shape) adds nothing.
        names_of = [
            (start, partition)
            for partition in partitions
            for start in (keys.waiting("", partition), keys.running("", partition))
        ]
        # A partition alone on its server (a cluster's) is matched by its own hash tag: Valkey then
        # reads only that slot's keys, not the whole node's.
        prefix = keys.partition_prefix(partitions[0]) if len(partitions) == 1 else ANY_PARTITION
        async for raw in clients[partitions[0]].scan_iter(match=prefix + QUEUE_KEYS_MATCH, count=SCAN_COUNT):
            name = raw.decode("utf-8", "surrogateescape")
            for start, partition in names_of:
                if name.startswith(start):
                    found[partition].add(name.removeprefix(start))
    added = 0
    for partition, names in found.items():
        if names:
            added += await clients[partition].sadd(keys.queues(partition), *sorted(names))
    if added:
        log.info("found %d queues with tasks waiting or running", added)
    return added


async def queues_known(clients: Sequence[Redis]) -> bool:
    """True when every partition has its known queues: `know_queues` has no first look to make."""
    for partition, client in enumerate(clients):
        if not await client.exists(keys.queues(partition)):
            return False
    return True


class Relook:
    """The look for queues again (`know_queues(again=True)`), asked for by a start with no other
    process of this version alive and by the settings loop when the last live process of an
    earlier version is gone (taskd.service), made by a loop of its own (`look_if_asked`, run every
    `worker.heartbeat_interval`): a pass over a big keyspace takes seconds, which neither a start
    nor the loop that renews this process's settings record (it would expire meanwhile, the process
    then counted as gone by every other) should wait. Asks made during a look are one more look
    after it; one that fails is made again at the next round. A look begins `EVERY_MIN_S` at least
    after the last one began: a process of an earlier version restarting in a loop (or any settings
    record without the mark, taskd.agreement) is gone at each of its stops, and each was a pass
    over the whole keyspace by every process of this version. The set is shared: one process's look
    tells every other, so one that waits its turn delays nothing the others found. The start's
    look (`at_start`) is not counted: a rolling upgrade's first new process starts beside the old
    ones, which may all be gone a minute later."""

    EVERY_MIN_S = 300.0

    def __init__(self, clients: Sequence[Redis], *, at_start: bool) -> None:
        self.clients = clients
        self._at_start = at_start
        self._asked = 0
        self._looked = 0
        self._began: float | None = None  # time.monotonic() the last look that ended began

    def ask(self) -> None:
        """Look again at the next round: a process of an earlier version is gone."""
        self._asked += 1

    async def look_if_asked(self) -> None:
        """Look again if asked at the start, or by a departure since the last look began."""
        if self._at_start:
            await know_queues(self.clients, again=True)
            self._at_start = False
            return
        asked = self._asked
        if asked == self._looked:
            return
        began = time.monotonic()
        if self._began is not None and began - self._began < self.EVERY_MIN_S:
            return
        await know_queues(self.clients, again=True)
        self._looked, self._began = asked, began


async def check_partitions(redis: Redis) -> None:
    """Keep this process's number of partitions with the data the first time; refuse to start with
    another one later (ConfigError): a task's id and its project name its partition by that number,
    so with another one every stored task would be looked for in the wrong place.

    A Redis that holds tasks from before the number was kept has them in one partition."""
    count = keys.partition_count()
    if await redis.set(keys.PARTITIONS, count, nx=True):
        if count > 1 and await redis.exists(keys.metrics(0)):
            await redis.delete(keys.PARTITIONS)
            raise ConfigError(
                f"redis.partitions = {count}, but this Redis holds tasks stored in one partition: "
                "keep redis.partitions = 1 for it (docs/cluster.md)"
            )
        return
    kept = int(await redis.get(keys.PARTITIONS) or count)
    if kept != count:
        raise ConfigError(
            f"redis.partitions = {count}, but this Redis holds taskd's tasks in {kept}: every process "
            f"must use redis.partitions = {kept} (it cannot change once tasks are stored; docs/cluster.md)"
        )


async def _rename(redis: Redis, names: list[str]) -> int:
    if not names:
        return 0
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.renamenx(name, keys.PREFIX + name.removeprefix(UNTAGGED_PREFIX))
        replies = await pipe.execute(raise_on_error=False)
    renamed = 0
    for name, reply in zip(names, replies, strict=True):
        if isinstance(reply, ResponseError):
            continue  # gone meanwhile: another process of this version moved it, or it expired
        if reply:
            renamed += 1
        else:
            log.warning(
                "key %s kept: %s already exists under the tagged layout",
                name,
                keys.PREFIX + name.removeprefix(UNTAGGED_PREFIX),
            )
    return renamed
