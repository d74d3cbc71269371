"""A primary set to write only with replicas in sync (`min-replicas-to-write`, guarantees.md's advice
for a Sentinel failover) refuses every write with NOREPLICAS while too few of them are: a refusal
that passes once a replica catches up, as a full Redis's does.

The test's Valkey has no replica: `min-replicas-to-write 1` makes it refuse as a primary whose
replica went away does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from redis.asyncio import Redis


@contextlib.asynccontextmanager
async def _without_its_replicas(redis: Redis) -> AsyncIterator[None]:
    await redis.config_set("min-replicas-to-write", 1)
    try:
        yield
    finally:
        await redis.config_set("min-replicas-to-write", 0)


async def test_a_submit_while_redis_lacks_its_replicas_answers_503_not_500(start_service, redis):
    running = await start_service(workers=False)
    async with (
        _without_its_replicas(redis),
        running.client.post(
            "/api/v1/tasks/submit", json={"project_id": "proj-1", "task_type": "noop", "task_data": {}}
        ) as response,
    ):
        status, retry_after, body = (
            response.status,
            response.headers.get("Retry-After"),
            await response.json(),
        )

    assert (status, body["error"]) == (503, "service_unavailable")
    assert body["message"] == "Task storage is unavailable, please try again later"
    assert retry_after is not None


async def test_while_redis_lacks_its_replicas_the_service_health_is_degraded_saying_why(start_service, redis):
    # It answers reads and PING: the health said "unhealthy", Redis "disconnected".
    running = await start_service()
    async with _without_its_replicas(redis), running.client.get("/api/v1/health") as response:
        status, body = response.status, await response.json()

    assert (status, body["status"], body["redis_status"]) == (200, "degraded", "connected")
    assert body["redis_note"].startswith(
        "Redis refuses writes (Redis: too few of its replicas are in sync (min-replicas-to-write)): "
    )


async def test_a_task_ending_while_redis_lacks_its_replicas_completes_once_they_are_back(
    start_service, redis
):
    running = await start_service()
    task = await running.submit("sleep", {"seconds": 1.5})
    await running.wait_for(task["task_id"], lambda body: body["status"] == "processing")
    async with _without_its_replicas(redis):
        await asyncio.sleep(2.5)  # the task ends while no write is taken

    ended = await running.wait_terminal(task["task_id"], timeout=60)

    assert (ended["status"], ended["attempt"]) == ("completed", 1)
