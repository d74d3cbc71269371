"""What the end of a coroutine run stops (taskd.runtasks): its handler's own tasks, not the ones a
shared library started for every caller."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from taskd import runtasks
from taskd.runtasks import RunTasks


async def _ok(_: web.Request) -> web.Response:
    return web.Response(text="ok")


@contextlib.asynccontextmanager
async def _serving(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]], port: int
) -> AsyncIterator[None]:
    """An HTTP server on 127.0.0.1:`port` answering GET / with `handler`, while in the block."""
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield
    finally:
        await runner.cleanup()


class _HeldResolver(AbstractResolver):
    """Answers every name with 127.0.0.1 once `answer` is set, counting the lookups."""

    def __init__(self) -> None:
        self.answer = asyncio.Event()
        self.lookups = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups += 1
        await self.answer.wait()
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
        ]

    async def close(self) -> None:
        pass


async def test_a_host_name_lookup_begun_by_a_runs_request_outlives_the_end_of_that_run(
    unused_tcp_port: int,
) -> None:
    # aiohttp looks a name up once for every request to it meanwhile: were that lookup one of the
    # tasks of the run whose request came first, the run's end would fail the other requests.
    runtasks.watch(asyncio.get_running_loop())
    resolver = _HeldResolver()
    run = RunTasks()
    url = f"http://provider.test:{unused_tcp_port}/"
    async with (
        _serving(_ok, unused_tcp_port),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver)) as session,
    ):

        async def get() -> Any:
            async with session.get(url) as response:
                return await response.text()

        async def get_in_a_run() -> Any:
            run.enter()
            return await get()

        in_run = asyncio.create_task(get_in_a_run())
        await asyncio.sleep(0.05)
        beside = asyncio.create_task(get())
        await asyncio.sleep(0.05)
        assert resolver.lookups == 1  # the two requests wait on one lookup

        await run.stop(timeout=5)
        resolver.answer.set()

        async with asyncio.timeout(10):
            assert await beside == "ok"
            assert await in_run == "ok"


async def test_a_task_a_handler_makes_of_a_shared_librarys_coroutine_ends_with_its_run(
    unused_tcp_port: int,
) -> None:
    # The handler made this task (a read of a response's body), not aiohttp: its run's, though its
    # coroutine is aiohttp's; taken for aiohttp's own, it read on after the run had ended.
    runtasks.watch(asyncio.get_running_loop())
    release = asyncio.Event()

    async def held_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"begun")
        await release.wait()
        return response

    run = RunTasks()
    async with _serving(held_body, unused_tcp_port), aiohttp.ClientSession() as session:
        try:

            async def handler() -> asyncio.Task[bytes]:
                run.enter()
                response = await session.get(f"http://127.0.0.1:{unused_tcp_port}/")
                return asyncio.create_task(response.read())

            reading = await asyncio.create_task(handler())
            assert reading in run

            assert await run.stop(timeout=10) == []
            assert reading.cancelled()
        finally:
            release.set()
