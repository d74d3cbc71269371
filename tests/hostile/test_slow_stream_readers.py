"""Event stream clients that fall behind or stop reading: what each may hold in taskd's memory."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tracemalloc
from collections.abc import AsyncIterator

import orjson
from conftest import API_KEY, RunningService

from taskd import keys

RESULT_BYTES = 256 * 1024
STORED_EVENTS = 64  # 16 MiB of a project's results in its stream


def completed_event(index: int) -> bytes:
    return orjson.dumps(
        {
            "type": "status",
            "task_id": f"task-{index}",
            "project_id": "heavy",
            "task_type": "noop",
            "status": "completed",
            "progress": 1,
            "current_step": None,
            "error": None,
            "attempt": 1,
            "at": 1700000000.0 + index,
            "result": {"filler": "x" * RESULT_BYTES},
        }
    )


@contextlib.asynccontextmanager
async def stalled_stream(service: RunningService, path: str, last_event_id: str) -> AsyncIterator[None]:
    """A client that asks for `path` from `last_event_id`, reads its first event's start, then nothing."""
    host, port = service.base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {API_KEY}\r\nLast-Event-ID: {last_event_id}\r\n\r\n".encode()
    )
    await reader.readuntil(b"data: ")
    try:
        yield
    finally:
        writer.close()


async def test_clients_resuming_a_projects_stream_from_far_back_hold_a_page_of_it_not_all(
    start_service, redis
):
    service = await start_service(workers=False)
    stream = keys.project_events("heavy")
    for index in range(STORED_EVENTS):
        await redis.xadd(stream, {"event": completed_event(index)})
    path = "/api/v1/projects/heavy/events"

    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(4):
                await stack.enter_async_context(stalled_stream(service, path, "0-1"))
            held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Four clients that stopped reading hold less than one whole stream: read whole, each held it
    # several times over (the entries, their frames, the joined write).
    assert held - before < STORED_EVENTS * RESULT_BYTES
