"""A Redis busy running another client's long script answers BUSY to everything else until the
script ends or is killed: taskd takes it as a Redis it cannot reach for now (the API answers 503,
never a 500, and a task ending meanwhile keeps its outcome and writes it after)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from faultkit import Api, ValkeyServer, serving
from redis.exceptions import ResponseError

from taskd.config import RedisConfig

# Someone else's script that runs until it is killed (SCRIPT KILL: it writes nothing).
_FOREVER = "while true do end"


@contextlib.asynccontextmanager
async def _busy(server: ValkeyServer) -> AsyncIterator[None]:
    """While inside, `server` runs a script that never ends (past its busy-reply-threshold: BUSY)."""
    runner = server.client()
    script = asyncio.create_task(runner.eval(_FOREVER, 0))
    try:
        async with server.client() as probe, asyncio.timeout(20):
            while True:
                try:
                    await probe.ping()
                except ResponseError as exc:
                    if str(exc).startswith("BUSY "):
                        break
                    raise
                await asyncio.sleep(0.05)
        yield
    finally:
        async with server.client() as killer:
            await killer.script_kill()
        with contextlib.suppress(ResponseError):
            await script
        await runner.aclose()


@contextlib.asynccontextmanager
async def _serving_busy_server(tmp_path: Path, *, workers: bool) -> AsyncIterator[tuple[ValkeyServer, Api]]:
    server = await ValkeyServer(tmp_path / "valkey", None, "busy-reply-threshold 200").start()
    try:
        redis = RedisConfig(url=server.url, socket_timeout=5)
        async with serving(tmp_path, redis, workers=workers) as (_, api):
            yield server, api
    finally:
        server.stop()


async def test_while_redis_runs_another_clients_long_script_requests_get_503_not_500(tmp_path):
    async with _serving_busy_server(tmp_path, workers=False) as (server, api):
        async with _busy(server):
            submitted = await api.call(
                "POST", "/api/v1/tasks/submit", json={"project_id": "p", "task_type": "noop", "task_data": {}}
            )
            listed = await api.call("GET", "/api/v1/projects/p/tasks")
        after = await api.call(
            "POST", "/api/v1/tasks/submit", json={"project_id": "p", "task_type": "noop", "task_data": {}}
        )

    for status, body in (submitted, listed):
        assert status == 503
        assert body == {
            "error": "service_unavailable",
            "message": "Task storage is unavailable, please try again later",
            "retry_after": 5,
        }
    assert after[0] == 200


async def test_a_task_ending_while_redis_runs_another_clients_long_script_completes_after_it(tmp_path):
    async with _serving_busy_server(tmp_path, workers=True) as (server, api):
        running = await api.submit("sleep", {"seconds": 1})
        await api.wait_all([running], lambda body: body["status"] == "processing", timeout=20)
        async with _busy(server):
            await asyncio.sleep(2)  # the task ends while Redis answers BUSY
        [ended] = await api.wait_all([running], timeout=30)

    assert ended["status"] == "completed"
    assert ended["result"]["attempt"] == 1
