"""Event stream clients that fall behind or stop reading: what each may hold in taskd's memory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import tracemalloc
from collections.abc import AsyncIterator

import orjson
from conftest import API_KEY, RunningService
from sse import iter_events

from taskd import keys
from taskd.config import LimitsConfig

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
async def stalled_stream(
    service: RunningService, path: str, last_event_id: str | None, first: bytes = b"data: "
) -> AsyncIterator[asyncio.StreamReader]:
    """A client that asks for `path` (after `last_event_id`), reads up to `first` (its first event's
    start), then nothing until the caller reads on from the reader it is given."""
    host, port = service.base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    resume = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {API_KEY}\r\n{resume}\r\n".encode())
    await reader.readuntil(first)
    try:
        yield reader
    finally:
        writer.close()


async def fill_stream(redis, stream: str) -> None:
    for index in range(STORED_EVENTS):
        await redis.xadd(stream, {"event": completed_event(index)})


async def test_clients_resuming_a_projects_stream_from_far_back_hold_a_page_of_it_not_all(
    start_service, redis
):
    service = await start_service(workers=False)
    stream = keys.project_events("heavy")
    await fill_stream(redis, stream)
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


async def test_a_client_that_leaves_while_taskd_waits_to_send_it_more_is_no_warning(
    start_service, redis, caplog
):
    # One stream at a time for the key: the next opens once taskd has ended the first.
    service = await start_service(workers=False, limits=LimitsConfig(open_streams=1))
    # One event larger than the kernel's buffers on both ends take (net.ipv4.tcp_wmem's largest is
    # 4 MiB by default): taskd is still waiting to write the rest of it when the client leaves.
    huge = orjson.dumps({**orjson.loads(completed_event(0)), "result": {"filler": "x" * 32 * 2**20}})
    await redis.xadd(keys.project_events("heavy"), {"event": huge})
    caplog.set_level(logging.INFO, logger="taskd")

    async with stalled_stream(service, "/api/v1/projects/heavy/events", "0-1"):
        pass
    async with asyncio.timeout(10):
        while True:
            async with service.client.get("/api/v1/projects/other/events") as response:
                if response.status == 200:
                    break
            await asyncio.sleep(0.1)

    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []


async def test_a_client_that_fell_behind_past_what_the_cap_trimmed_is_told_of_the_gap(start_service, redis):
    service = await start_service(workers=False)
    stream = keys.project_events("heavy")
    path = "/api/v1/projects/heavy/events"

    async with (
        asyncio.timeout(60),
        stalled_stream(service, path, None, first=b"retry: ") as behind,
        service.client.get(path) as keeping_up,
    ):
        await fill_stream(redis, stream)  # far more than the kernel's buffers and MAX_PENDING_BYTES
        newest = (await redis.xrevrange(stream, count=1))[0][0].decode()
        # The process's reader has handed every event to both clients once this one has the newest.
        async for event in iter_events(keeping_up):
            if event.id == newest:
                break
        # As the cap does to a busy project's stream: what the stalled client was not sent is gone.
        await redis.xtrim(stream, maxlen=2, approximate=False)
        received = b""
        while f"id: {newest}\n".encode() not in received:
            received += await behind.read(2**20)

    assert b"event: gap\n" in received


async def test_a_resuming_client_whose_unread_backlog_the_cap_trims_meanwhile_is_told_of_the_gap(
    start_service, redis
):
    service = await start_service(workers=False)
    stream = keys.project_events("heavy")
    await fill_stream(redis, stream)
    ids = [entry_id.decode() for entry_id, _ in await redis.xrange(stream)]
    path = "/api/v1/projects/heavy/events"

    # Nothing was trimmed when it resumed: taskd reads the backlog a page at a time, and the client
    # stops reading after its first event, far less than the backlog (16 MiB) the buffers take.
    async with asyncio.timeout(60), stalled_stream(service, path, ids[0]) as behind:
        # As the cap does to a busy project's stream while the client reads its backlog slowly.
        await redis.xtrim(stream, maxlen=2, approximate=False)
        received = b""
        while f"id: {ids[-1]}\n".encode() not in received:
            received += await behind.read(2**20)

    sent = [line.removeprefix(b"id: ").decode() for line in received.split(b"\n") if line.startswith(b"id: ")]
    # ids[1], the first event, was read (its id with it) before the trim.
    before_trim = [ids[1], *sent[:-2]]
    assert sent == [*ids[2 : len(before_trim) + 1], *ids[-2:]]
    assert len(sent) < len(ids) - 1  # events were lost: the test is not one where nothing was trimmed
    assert b"event: gap\n" in received
    gap = orjson.loads(received.split(b"event: gap\ndata: ")[1].split(b"\n")[0])
    # After the last id sent before it (or one before that, where the trim came between a page's
    # read and the question whether entries past the client's last id were trimmed).
    assert gap["after"] in before_trim[-2:]
    assert gap["kept_from"] == ids[-2]
    assert received.index(b"event: gap\n") < received.index(f"id: {ids[-2]}\n".encode())
