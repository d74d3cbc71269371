"""Issue 19, a worker draining a queue: what each task costs the worker in round trips to Redis
(docs/performance.md, "What the profile showed, and what changed")."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio import Redis
from redis_probes import alive, counting_writes, statuses

from taskd import keys
from taskd.model import TaskStatus
from taskd.store import TaskStore


async def test_runs_that_end_at_once_record_their_ends_in_one_write(start_service: Any, valkey_url: str):
    api = await start_service(workers=False)
    ids = [(await api.submit("noop", {}))["task_id"] for _ in range(6)]
    redis = Redis.from_url(valkey_url)
    writes = counting_writes(redis)  # before the client opens its first connection
    try:
        store = TaskStore(redis, 3600)
        await alive(redis, "worker-a")
        first, *taken = (await store.take("default", "worker-a", time.time(), 6, 100)).started
        at = time.time()
        assert first.record
        await store.finish(first.record, "worker-a", TaskStatus.COMPLETED, at)  # finish.lua loaded in Valkey
        writes[0] = 0

        finished = await asyncio.gather(
            *(
                store.finish(t.record, "worker-a", TaskStatus.COMPLETED, at, result={"n": n})
                for n, t in enumerate(taken)
                if t.record
            )
        )

        assert writes == [1]
        assert [f.written for f in finished] == [True] * 5
        assert await statuses(redis, ids) == ["completed"] * 6
        assert int(await redis.hget(keys.METRICS, "completed_tasks") or 0) == 6
    finally:
        await redis.aclose()
