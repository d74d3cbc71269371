"""`TaskClient` against a server that is not the taskd it expects (a broken proxy, a wrong URL, a
compromised host): a `TaskdError` in bounded time and memory, and the API key never sent elsewhere."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from conftest import API_KEY
from fake_taskd import fake_taskd

from taskd.client import TaskClient, TaskdConnectionError, TaskdError

STATUS = "/api/v1/tasks/t1/status"


async def test_a_server_that_never_answers_raises_connection_error_after_the_timeout():
    async def never(_: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async with fake_taskd({STATUS: never}) as url, TaskClient(url, API_KEY, timeout=1) as client:
        async with asyncio.timeout(10):
            with pytest.raises(TaskdConnectionError, match="did not answer in 1 s"):
                await client.status("t1")


@pytest.mark.parametrize("path", [STATUS, "/api/v1/tasks/t1/events"])
async def test_a_redirect_to_another_host_is_raised_and_never_followed_with_the_key(path):
    keys_elsewhere: list[str | None] = []

    async def elsewhere(request: web.Request) -> web.Response:
        keys_elsewhere.append(request.headers.get("X-API-Key"))
        return web.json_response({"task_id": "t1", "project_id": "p", "status": "completed"})

    async with fake_taskd({"/{anything:.*}": elsewhere}) as other:

        async def redirect(_: web.Request) -> web.Response:
            raise web.HTTPFound(other.replace("127.0.0.1", "localhost") + STATUS)

        routes = {STATUS: redirect, "/api/v1/tasks/t1/events": redirect}
        async with fake_taskd(routes) as url, TaskClient(url, API_KEY) as client:
            with pytest.raises(TaskdError) as refused:
                if path == STATUS:
                    await client.status("t1")
                else:
                    await client.wait("t1", timeout=10)

    assert keys_elsewhere == []
    assert refused.value.status == 302
    assert refused.value.error == "redirected"
    assert "localhost" in refused.value.message
