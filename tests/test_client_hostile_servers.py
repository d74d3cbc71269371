"""`TaskClient` against a server that is not the taskd it expects (a broken proxy, a wrong URL, a
compromised host): a `TaskdError` in bounded time and memory, and the API key never sent elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from aiohttp import web
from conftest import API_KEY
from fake_taskd import Handler, event_stream, fake_taskd

from taskd.backoff import LONGEST_RETRY_AFTER
from taskd.client import (
    InvalidResponse,
    RateLimited,
    TaskClient,
    TaskdConnectionError,
    TaskdError,
    TaskEvent,
    TaskStatus,
)
from taskd.sync_client import SyncTaskClient

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


def answering(*args: Any, **kwargs: Any) -> Handler:
    async def answer(_: web.Request) -> web.Response:
        return web.Response(*args, **kwargs)

    return answer


@pytest.mark.parametrize(
    "answer",
    [
        answering(text='{"task_id": "t1", "project_id": "p", "status": 5, "progress": "half"}'),
        answering(text='{"task_id": "t1", "project_id": "p", "status": "exploded"}'),
        answering(text='{"project_id": "p", "status": "queued"}'),
        answering(text="[1, 2]"),
        answering(text="<html>Welcome to nginx</html>", content_type="text/html"),
        answering(text="[" * 5000 + "]" * 5000),
    ],
    ids=["wrong-types", "unknown-status", "no-task-id", "not-an-object", "html-200", "deeply-nested"],
)
async def test_an_answer_that_is_not_a_taskd_status_raises_invalid_response(answer):
    async with fake_taskd({STATUS: answer}) as url, TaskClient(url, API_KEY) as client:
        with pytest.raises(InvalidResponse) as refused:
            await client.status("t1")

    assert refused.value.status == 200
    assert refused.value.error == "invalid_response"


async def test_a_list_answer_without_its_pagination_raises_invalid_response():
    answer = answering(text='{"tasks": []}')
    async with fake_taskd({"/api/v1/projects/p/tasks": answer}) as url, TaskClient(url, API_KEY) as client:
        with pytest.raises(InvalidResponse, match="not a TaskPage"):
            await client.list_tasks("p")


@pytest.mark.parametrize(
    "data",
    [b"{not json", b"[1]", b'{"task_id": "t1", "project_id": "p", "status": "weird"}'],
    ids=["not-json", "not-an-object", "unknown-status"],
)
async def test_an_event_that_is_not_a_taskd_event_raises_invalid_response_from_wait(data):
    async def events(request: web.Request) -> web.StreamResponse:
        return await event_stream(request, b"id: 1\nevent: status\ndata: " + data + b"\n\n")

    async with fake_taskd({"/api/v1/tasks/t1/events": events}) as url, TaskClient(url, API_KEY) as client:
        with pytest.raises(InvalidResponse, match="not a TaskEvent"):
            await client.wait("t1", timeout=10)


async def test_an_event_type_the_client_does_not_know_is_skipped_not_raised():
    unknown = b'id: 1\nevent: usage\ndata: {"gpu_seconds": 3}\n\n'
    ended = b'id: 2\nevent: status\ndata: {"task_id": "t1", "project_id": "p", "status": "completed"}\n\n'

    async def events(request: web.Request) -> web.StreamResponse:
        return await event_stream(request, unknown + ended)

    status = answering(text='{"task_id": "t1", "project_id": "p", "status": "completed"}')
    seen: list[TaskEvent] = []
    routes = {"/api/v1/tasks/t1/events": events, STATUS: status}
    async with fake_taskd(routes) as url, TaskClient(url, API_KEY) as client:
        task = await client.wait("t1", timeout=10, on_event=seen.append)

    assert task.status is TaskStatus.COMPLETED
    assert [(event.id, event.type) for event in seen] == [("2", "status")]


async def test_a_retry_after_of_non_ascii_digits_is_ignored_not_raised():
    refused = answering(
        text='{"error": "rate_limited", "message": "slow down"}', status=429, headers={"Retry-After": "²"}
    )
    async with fake_taskd({STATUS: refused}) as url, TaskClient(url, API_KEY, retries=0) as client:
        with pytest.raises(RateLimited) as raised:
            await client.status("t1")

    assert raised.value.retry_after is None


async def test_a_retry_after_of_thousands_of_digits_is_the_longest_wait_not_a_value_error():
    # Past 4,300 digits int() refuses to convert a string: a ValueError out of the client's call.
    refused = answering(
        text='{"error": "rate_limited", "message": "slow down"}',
        status=429,
        headers={"Retry-After": "9" * 5000},
    )
    async with fake_taskd({STATUS: refused}) as url, TaskClient(url, API_KEY, retries=0) as client:
        with pytest.raises(RateLimited) as raised:
            await client.status("t1")

    assert raised.value.retry_after == LONGEST_RETRY_AFTER


async def endless(
    request: web.Request, first: bytes, then: bytes, content_type: str = "text/event-stream"
) -> web.StreamResponse:
    """Send `first`, then `then` again and again until the client goes away."""
    response = web.StreamResponse(headers={"Content-Type": content_type})
    await response.prepare(request)
    await response.write(first)
    with contextlib.suppress(ConnectionError):
        while True:
            await response.write(then)
    return response


async def test_an_answer_larger_than_max_response_bytes_raises_before_it_is_held_whole():
    async def huge(request: web.Request) -> web.StreamResponse:
        return await endless(request, b'{"task_id": "t1", "x": "', b"a" * 65536, "application/json")

    async with (
        fake_taskd({STATUS: huge}) as url,
        TaskClient(url, API_KEY, max_response_bytes=1 << 20) as client,
    ):
        with pytest.raises(InvalidResponse, match="an answer over 1048576 bytes"):
            await client.status("t1")


@pytest.mark.parametrize(
    ("first", "then", "what"),
    [(b"data: ", b"a" * 65536, "line"), (b"", b"data: " + b"a" * 1000 + b"\n", "event")],
    ids=["a-line-that-never-ends", "an-event-that-never-ends"],
)
async def test_an_event_larger_than_max_response_bytes_raises_from_wait(first, then, what):
    async def events(request: web.Request) -> web.StreamResponse:
        return await endless(request, first, then)

    async with (
        fake_taskd({"/api/v1/tasks/t1/events": events}) as url,
        TaskClient(url, API_KEY, max_response_bytes=1 << 20) as client,
    ):
        with pytest.raises(InvalidResponse, match=f"{what} over 1048576 bytes"):
            await client.wait("t1", timeout=20)


@pytest.mark.parametrize(
    "refusal",
    [
        answering(
            text='{"error": "service_unavailable", "message": "m"}', status=503, headers={"Retry-After": "0"}
        ),
        answering(text="<html>502 Bad Gateway</html>", status=502, content_type="text/html"),
    ],
    ids=["503-storage-lost", "502-proxy-upstream-restarting"],
)
async def test_wait_reconnects_a_stream_refused_while_taskd_restarts(refusal):
    connections = 0

    async def events(request: web.Request) -> web.StreamResponse:
        nonlocal connections
        connections += 1
        if connections == 1:
            return await refusal(request)
        ended = b'{"task_id": "t1", "project_id": "p", "status": "completed", "progress": 1}'
        return await event_stream(request, b"id: 1-1\nevent: status\ndata: " + ended + b"\n\n")

    done = answering(text='{"task_id": "t1", "project_id": "p", "status": "completed", "progress": 1}')
    routes = {"/api/v1/tasks/t1/events": events, STATUS: done}
    async with fake_taskd(routes) as url, TaskClient(url, API_KEY) as client:
        task = await client.wait("t1", timeout=10)

    assert task.status is TaskStatus.COMPLETED
    assert connections == 2


async def test_an_event_stream_line_that_is_not_utf8_is_read_with_replacement_characters():
    async def events(request: web.Request) -> web.StreamResponse:
        ended = b'{"task_id": "t1", "project_id": "p", "status": "completed", "current_step": "\xff"}'
        return await event_stream(request, b": \xfe\xff\n\nid: 1-1\nevent: status\ndata: " + ended + b"\n\n")

    routes = {
        "/api/v1/tasks/t1/events": events,
        STATUS: answering(text='{"task_id": "t1", "project_id": "p", "status": "completed"}'),
    }
    async with fake_taskd(routes) as url, TaskClient(url, API_KEY) as client:
        seen = []
        await client.wait("t1", timeout=10, on_event=seen.append)

    assert [event.current_step for event in seen] == ["\ufffd"]


async def test_a_batch_answer_with_another_number_of_tasks_raises_invalid_response():
    one = answering(text='{"tasks": [{"task_id": "t1", "status": "queued", "project_id": "p"}]}')
    item = {"project_id": "p", "task_type": "noop", "task_data": {}}
    async with fake_taskd({"/api/v1/tasks/batch": one}) as url, TaskClient(url, API_KEY) as client:
        with pytest.raises(InvalidResponse, match="1 answers for 2 tasks"):
            await client.submit_batch([item, item])


async def test_an_event_id_holding_control_characters_is_ignored_not_sent_back_as_a_header():
    last_event_ids: list[str | None] = []

    async def events(request: web.Request) -> web.StreamResponse:
        last_event_ids.append(request.headers.get("Last-Event-ID"))
        status = "processing" if len(last_event_ids) == 1 else "completed"
        data = b'{"task_id": "t1", "project_id": "p", "status": "' + status.encode() + b'"}'
        return await event_stream(
            request, b"id: 1-1\n\nid: 1\rX-Injected: yes\nevent: status\ndata: " + data + b"\n\n"
        )

    async def status(_: web.Request) -> web.Response:
        ended = len(last_event_ids) > 1
        return web.json_response(
            {"task_id": "t1", "project_id": "p", "status": "completed" if ended else "processing"}
        )

    routes = {"/api/v1/tasks/t1/events": events, STATUS: status}
    async with fake_taskd(routes) as url, TaskClient(url, API_KEY) as client:
        task = await client.wait("t1", timeout=10)

    assert task.status is TaskStatus.COMPLETED
    assert last_event_ids == [None, "1-1"]


async def test_sync_wait_reads_events_no_faster_than_its_callback_so_its_timeout_holds():
    event = b'event: progress\ndata: {"task_id": "t1", "project_id": "p", "status": "processing"}\n\n'

    async def flood(request: web.Request) -> web.StreamResponse:
        return await endless(request, b"", event * 100)

    def slow(_: TaskEvent) -> None:
        time.sleep(0.01)

    def wait(url: str) -> float:
        started = time.monotonic()
        with SyncTaskClient(url, API_KEY) as client, pytest.raises(TimeoutError):
            client.wait("t1", timeout=1, on_event=slow)
        return time.monotonic() - started

    async with fake_taskd({"/api/v1/tasks/t1/events": flood}) as url:
        took = await asyncio.to_thread(wait, url)

    assert took < 3


async def test_wait_reconnects_no_faster_than_its_backoff_to_a_stream_that_ends_at_once():
    streams = 0

    async def events(request: web.Request) -> web.StreamResponse:
        nonlocal streams
        streams += 1
        running = b'{"task_id": "t1", "project_id": "p", "status": "processing"}'
        return await event_stream(request, b"event: progress\ndata: " + running + b"\n\n")

    running = answering(text='{"task_id": "t1", "project_id": "p", "status": "processing"}')
    routes = {"/api/v1/tasks/t1/events": events, STATUS: running}
    async with fake_taskd(routes) as url, TaskClient(url, API_KEY) as client:
        with pytest.raises(TimeoutError):
            await client.wait("t1", timeout=3)

    assert streams <= 4  # 0.4 + 0.8 + 1.6 s between them
