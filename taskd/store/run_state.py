"""A task's run state: what one run of a task keeps for the next run of the same task.

A handler runs at least once (docs/guarantees.md): a run cut short (its worker killed, a transient
error) is run again. What an outside party was already asked for and answered, and costs to ask
again (a video provider's job, an LLM's answer, a CMS document), is kept here as soon as it is
answered, and the next run reads it instead of asking again.

One Redis hash per task (`{taskd}:run:{id}`, taskd.keys.run_state), in its task's slot: written
only while the task is `processing` under the writing worker (lua/keep.lua), living as long as the
task's record, deleted when the task ends (lib/ended.lua), so a retry through the API or a new
task starts afresh. The key is named by the task id (taskd makes it) and each field by the handler
(a constant, or the department's slug, bounded by the input's own limits); a caller never reads
it, the API has no way to. At most MAX_BYTES per task: a value that would pass it is not kept
(logged), and the next run asks for that one again.

Keeping and reading are best effort: with Redis out of reach, the run goes on as it would without
(a read finds nothing, a value is not kept), and only the saving is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from taskd import keys
from taskd.store import scripts

log = logging.getLogger("taskd.store")

# What one task may keep: a result's default cap (execution.result_max_bytes), which what a run
# keeps (each department's items, a job id) stays well under.
MAX_BYTES = 1024 * 1024
# The field of the files the task's runs put into the media store, `[[project_id, filename], …]`:
# noted before each copy begins, so that the task's end without a result deletes them whichever run
# stored them (a run whose worker was killed, or whose store failed after writing, is run again).
STORED_MEDIA = "stored_media"


class RunState:
    """The run state of one task, for its handler: `get` what an earlier run kept, `keep` a value."""

    def __init__(self, redis: Redis, script: scripts.Script, task_id: str, worker_id: str) -> None:
        self._redis = redis
        self._keep = script
        self.task_id = task_id
        self._worker_id = worker_id
        self._key = keys.run_state(task_id)
        # Set (by the executor) just before this run is cancelled to be handed back, its worker
        # stopping: the task runs again, and what this run started and kept (a provider's job) is
        # left to that run instead of being stopped with this one.
        self.handed_back = False

    async def get(self, name: str) -> Any:
        """The value an earlier run of this task kept as `name`; None when there is none (or it
        cannot be read)."""
        try:
            raw = await self._redis.hget(self._key, name)
        except RedisError as exc:
            log.warning("task %s: its run state could not be read (%s); it is asked again", self.task_id, exc)
            return None
        if raw is None:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("task %s: the %s it kept is unreadable and is not used", self.task_id, name)
            return None

    async def keep(self, name: str, value: Any) -> bool:
        """Keep `value` (JSON) as `name` for the next run; False when it was not kept."""
        raw = orjson.dumps(value)
        try:
            kept = await self._keep(
                {"task": keys.task(self.task_id), "state": self._key},
                {"worker_id": self._worker_id, "name": name, "value": raw, "limit": MAX_BYTES},
                client=self._redis,
            )
        except RedisError as exc:
            log.warning("task %s: its %s could not be kept for a next run: %s", self.task_id, name, exc)
            return False
        if kept == -1:
            log.warning(
                "task %s: its %s (%d bytes) is not kept for a next run: a task's run state holds at "
                "most %d bytes",
                self.task_id,
                name,
                len(raw),
                MAX_BYTES,
            )
        return bool(kept == 1)

    async def note_media(self, project_id: str, filename: str) -> None:
        """Note that a run of this task puts `project_id/filename` into the media store."""
        noted = await stored_media(self._redis, self.task_id)
        if (project_id, filename) not in noted:
            await self.keep(STORED_MEDIA, [*noted, (project_id, filename)])


async def stored_media(redis: Redis, task_id: str) -> list[tuple[str, str]]:
    """The files the runs of `task_id` noted they put into the media store (RunState.note_media);
    none when there are none or they cannot be read (the media sweeper then deletes them later)."""
    try:
        raw = await redis.hget(keys.run_state(task_id), STORED_MEDIA)
        noted = orjson.loads(raw) if raw is not None else []
    except (RedisError, orjson.JSONDecodeError) as exc:
        log.warning("task %s: the media its runs stored could not be read: %s", task_id, exc)
        return []
    if not isinstance(noted, list):
        return []
    return [(str(pair[0]), str(pair[1])) for pair in noted if isinstance(pair, list) and len(pair) == 2]


class RunStates:
    """Makes the RunState of each task one worker process runs."""

    def __init__(self, redis: Redis, clients: Sequence[Redis], worker_id: str) -> None:
        # Registered once (registering sends nothing), run on the client of the task's partition.
        self._keep = scripts.load(redis, "keep")
        self._clients = list(clients)
        self._worker_id = worker_id

    def of(self, task_id: str) -> RunState:
        """The run state of `task_id`."""
        client = self._clients[keys.task_partition(task_id)]
        return RunState(client, self._keep, task_id, self._worker_id)
