"""`GET /livez` and `GET /readyz`: no key, the probe's JSON, and 503 in the error shape when not ready.

Redis going away is in tests/faults/test_redis_outage.py."""

from __future__ import annotations

import asyncio

import aiohttp


async def anonymous_get(service, path):
    async with aiohttp.ClientSession(service.base_url) as anonymous, anonymous.get(path) as response:
        return response.status, response.headers, await response.json()


async def test_livez_answers_without_a_key(start_service):
    service = await start_service(workers=False)

    status, _, body = await anonymous_get(service, "/livez")

    assert (status, body) == (200, {"status": "alive"})


async def test_readyz_becomes_ready_once_every_served_queue_has_a_polling_worker(start_service):
    service = await start_service()

    async with asyncio.timeout(10):
        while (answer := await anonymous_get(service, "/readyz"))[0] != 200:
            assert answer[2]["error"] == "service_unavailable"
            await asyncio.sleep(0.05)

    assert answer[2] == {"status": "ready"}
    assert service.service._pool.unready() == []


async def test_readyz_of_an_api_only_node_needs_only_redis(start_service):
    api_only = await start_service(workers=False)

    status, _, body = await anonymous_get(api_only, "/readyz")

    assert (status, body) == (200, {"status": "ready"})


async def test_readyz_is_503_with_the_error_shape_while_the_workers_stop(start_service):
    service = await start_service(serve_queues=["default", "cpu_intensive"])
    await service.service._pool.stop(grace=0)

    status, headers, body = await anonymous_get(service, "/readyz")

    assert status == 503
    assert headers["Retry-After"] == "5"
    assert body == {
        "error": "service_unavailable",
        "message": "Not ready: no worker polls queue(s) default, cpu_intensive yet",
        "retry_after": 5,
    }


async def test_livez_still_answers_while_the_node_is_not_ready(start_service):
    service = await start_service()
    await service.service._pool.stop(grace=0)

    status, _, body = await anonymous_get(service, "/livez")

    assert (status, body) == (200, {"status": "alive"})
