"""`TaskClient` against a server that is not the taskd it expects (a broken proxy, a wrong URL, a
compromised host): a `TaskdError` in bounded time and memory, and the API key never sent elsewhere."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from conftest import API_KEY
from fake_taskd import fake_taskd

from taskd.client import TaskClient, TaskdConnectionError

STATUS = "/api/v1/tasks/t1/status"


async def test_a_server_that_never_answers_raises_connection_error_after_the_timeout():
    async def never(_: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async with fake_taskd({STATUS: never}) as url, TaskClient(url, API_KEY, timeout=1) as client:
        async with asyncio.timeout(10):
            with pytest.raises(TaskdConnectionError, match="did not answer in 1 s"):
                await client.status("t1")
