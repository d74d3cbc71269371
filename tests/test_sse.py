"""`GET /api/v1/tasks/{id}/events` and `GET /api/v1/projects/{id}/events`: order, resume, auth, shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from conftest import API_KEY
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from sse import iter_events, read_events

from taskd import keys
from taskd.http import events as events_module
from taskd.model import now

EXPECTED_SLEEP_3 = [
    ("status", "queued", None),
    ("status", "processing", None),
    ("progress", "processing", "step_1_of_3"),
    ("progress", "processing", "step_2_of_3"),
    ("progress", "processing", "step_3_of_3"),
    ("status", "completed", "step_3_of_3"),
]


def shape(seen):
    return [(e.event, e.data["status"], e.data["current_step"]) for e in seen]


def order_key(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


async def test_task_stream_sends_every_event_in_order_and_ends_after_the_terminal_event(taskd):
    task = await taskd.submit("sleep", {"seconds": 0.3, "steps": 3})

    async with asyncio.timeout(10), taskd.client.get(f"/api/v1/tasks/{task['task_id']}/events") as response:
        seen = await read_events(response)

    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert shape(seen) == EXPECTED_SLEEP_3
    assert [e.id for e in seen] == sorted((e.id for e in seen), key=order_key)
    assert seen[-1].data["result"] == {"slept": 0.3, "attempt": 1}


async def test_event_ids_are_the_stream_entry_ids(taskd, redis):
    task = await taskd.submit("noop", {})
    await taskd.wait_terminal(task["task_id"])

    async with taskd.client.get(f"/api/v1/tasks/{task['task_id']}/events") as response:
        seen = await read_events(response)

    entries = await redis.xrange(keys.task_events(task["task_id"]))
    assert [e.id for e in seen] == [entry_id.decode() for entry_id, _ in entries]


async def test_reconnecting_mid_task_with_last_event_id_loses_and_repeats_nothing(taskd):
    task = await taskd.submit("sleep", {"seconds": 0.6, "steps": 3})
    path = f"/api/v1/tasks/{task['task_id']}/events"
    async with asyncio.timeout(10):
        async with taskd.client.get(path) as response:
            first = await read_events(response, count=2)

        async with taskd.client.get(path, headers={"Last-Event-ID": first[-1].id}) as response:
            rest = await read_events(response)

    assert shape(first + rest) == EXPECTED_SLEEP_3


async def test_reconnecting_after_the_task_ended_still_gets_the_terminal_event(taskd):
    task = await taskd.submit("sleep", {"seconds": 0.3, "steps": 3})
    path = f"/api/v1/tasks/{task['task_id']}/events"
    async with taskd.client.get(path) as response:
        first = await read_events(response, count=3)
    await taskd.wait_terminal(task["task_id"])

    async with taskd.client.get(path, headers={"Last-Event-ID": first[-1].id}) as response:
        rest = await read_events(response)

    assert shape(first + rest) == EXPECTED_SLEEP_3


async def test_reconnecting_with_the_terminal_event_id_gets_204_so_eventsource_stops(taskd):
    task = await taskd.submit("noop", {})
    await taskd.wait_terminal(task["task_id"])
    path = f"/api/v1/tasks/{task['task_id']}/events"
    async with taskd.client.get(path) as response:
        terminal = (await read_events(response))[-1]

    async with taskd.client.get(path, headers={"Last-Event-ID": terminal.id}) as response:
        assert response.status == 204


async def test_a_finished_task_whose_stream_expired_still_gets_a_terminal_event(taskd, redis):
    task = await taskd.submit("fail", {"message": "no good"})
    await taskd.wait_terminal(task["task_id"])
    await redis.delete(keys.task_events(task["task_id"]))

    async with taskd.client.get(f"/api/v1/tasks/{task['task_id']}/events") as response:
        seen = await read_events(response)

    assert [(e.event, e.data["status"], e.data["error"]) for e in seen] == [("status", "failed", "no good")]


async def test_reconnecting_with_the_id_of_an_end_made_from_the_record_gets_204_so_eventsource_stops(
    taskd, redis
):
    # A record kept past its stream (a keep_for over a day): the end is made from the record. Sent
    # without an id, EventSource reconnected every 3 s with nothing to resume from, and was sent the
    # end again each time, for as long as the record was kept.
    task = await taskd.submit("noop", {}, keep_for=604800)
    await taskd.wait_terminal(task["task_id"])
    await redis.delete(keys.task_events(task["task_id"]))
    path = f"/api/v1/tasks/{task['task_id']}/events"
    async with taskd.client.get(path) as response:
        (end,) = await read_events(response)

    async with taskd.client.get(path, headers={"Last-Event-ID": end.id}) as response:
        assert (end.data["status"], response.status) == ("completed", 204)


async def test_a_task_stream_ends_when_the_tasks_record_goes_while_it_is_followed(taskd, redis, monkeypatch):
    monkeypatch.setattr(events_module, "RECHECK_SECONDS", 0.2)
    task = await taskd.submit("sleep", {"seconds": 1}, delay_seconds=3600)
    path = f"/api/v1/tasks/{task['task_id']}/events"

    async with asyncio.timeout(20), taskd.client.get(path) as response:
        queued = await read_events(response, 1)
        # As the record of a task that waited past storage.task_ttl expires, or a Redis restarted
        # without its data: no event will come.
        await redis.delete(keys.task(task["task_id"]), keys.task_events(task["task_id"]))
        rest = await read_events(response)
    async with taskd.client.get(path, headers={"Last-Event-ID": queued[0].id}) as again:
        body = await again.json()

    assert [e.data["status"] for e in queued] == ["queued"]
    assert rest == []
    assert (again.status, body["error"]) == (404, "task_not_found")


async def test_a_task_stream_sends_the_end_its_record_holds_when_no_event_brought_it(
    taskd, redis, monkeypatch
):
    monkeypatch.setattr(events_module, "RECHECK_SECONDS", 0.2)
    task = await taskd.submit("sleep", {"seconds": 1}, delay_seconds=3600)

    async with asyncio.timeout(20), taskd.client.get(f"/api/v1/tasks/{task['task_id']}/events") as response:
        await read_events(response, 1)
        # The record ends without an entry in the streams, as one the hub's read never brings.
        await redis.hset(keys.task(task["task_id"]), mapping={"status": "failed", "error": "gone"})
        rest = await read_events(response)

    assert [(e.data["status"], e.data["error"]) for e in rest] == [("failed", "gone")]


async def test_an_end_made_from_the_record_while_followed_comes_after_the_events_sent_and_ends_eventsource(
    taskd, redis, monkeypatch
):
    monkeypatch.setattr(events_module, "RECHECK_SECONDS", 0.2)
    task = await taskd.submit("sleep", {"seconds": 1}, delay_seconds=3600)
    path = f"/api/v1/tasks/{task['task_id']}/events"

    async with asyncio.timeout(20), taskd.client.get(path) as response:
        queued = await read_events(response, 1)
        await redis.hset(keys.task(task["task_id"]), mapping={"status": "failed", "error": "gone"})
        (end,) = await read_events(response)
    async with taskd.client.get(path, headers={"Last-Event-ID": end.id}) as again:
        assert again.status == 204
    assert events_module.id_key(end.id) > events_module.id_key(queued[0].id)


async def test_the_made_up_end_of_another_task_sent_as_last_event_id_skips_none_of_this_tasks_events(
    taskd, redis
):
    # Any id with the made-up end's sequence was a 204: an id held from one task's stream (a client
    # that reuses its Last-Event-ID) made another, ended task's stream send nothing, neither the
    # events its stream holds after that id nor its end.
    first = await taskd.submit("noop", {}, keep_for=604800)
    await taskd.wait_terminal(first["task_id"])
    await redis.delete(keys.task_events(first["task_id"]))
    async with taskd.client.get(f"/api/v1/tasks/{first['task_id']}/events") as response:
        (first_end,) = await read_events(response)
    task = await taskd.submit("sleep", {"seconds": 1}, delay_seconds=3600)
    # Its record ends without an entry in its stream, which holds the `queued` event only.
    await redis.hset(keys.task(task["task_id"]), mapping={"status": "failed", "error": "gone"})

    path = f"/api/v1/tasks/{task['task_id']}/events"
    async with taskd.client.get(path, headers={"Last-Event-ID": first_end.id}) as response:
        seen = await read_events(response)

    assert (response.status, [e.data["status"] for e in seen]) == (200, ["queued", "failed"])


async def test_unknown_task_is_404_task_not_found_before_any_stream(taskd):
    async with taskd.client.get("/api/v1/tasks/nope/events") as response:
        body = await response.json()

    assert response.status == 404
    assert body == {"error": "task_not_found", "message": "Task with ID 'nope' not found"}


async def test_a_malformed_last_event_id_is_a_400_validation_error(taskd):
    task = await taskd.submit("noop", {})

    async with taskd.client.get(
        f"/api/v1/tasks/{task['task_id']}/events", headers={"Last-Event-ID": "yesterday"}
    ) as response:
        body = await response.json()

    assert response.status == 400
    assert body["error"] == "validation_error"
    assert "Last-Event-ID" in body["details"]


async def test_event_streams_take_the_key_from_the_query_for_eventsource(taskd):
    task = await taskd.submit("noop", {})
    await taskd.wait_terminal(task["task_id"])

    async with aiohttp.ClientSession(taskd.base_url) as anonymous:
        async with anonymous.get(f"/api/v1/tasks/{task['task_id']}/events?api_key={API_KEY}") as response:
            assert response.status == 200
        async with anonymous.get(f"/api/v1/tasks/{task['task_id']}/events?api_key=wrong") as response:
            assert response.status == 401
        async with anonymous.get(f"/api/v1/tasks/{task['task_id']}/status?api_key={API_KEY}") as response:
            assert response.status == 401, "only the event streams accept ?api_key="


async def test_project_stream_sends_the_projects_events_from_now_on(taskd):
    before = await taskd.submit("noop", {}, project_id="films")
    await taskd.wait_terminal(before["task_id"])

    async with asyncio.timeout(10), taskd.client.get("/api/v1/projects/films/events") as response:
        first = await taskd.submit("noop", {}, project_id="films")
        await taskd.submit("noop", {}, project_id="elsewhere")
        second = await taskd.submit("noop", {}, project_id="films")
        seen = []
        async for event in iter_events(response):
            seen.append(event)
            if sum(e.data["status"] == "completed" for e in seen) == 2:
                break

    assert {e.data["task_id"] for e in seen} == {first["task_id"], second["task_id"]}
    for task in (first, second):
        statuses = [e.data["status"] for e in seen if e.data["task_id"] == task["task_id"]]
        assert statuses == ["queued", "processing", "completed"]


async def test_project_stream_resumes_after_last_event_id(taskd):
    tasks = [await taskd.submit("noop", {}, project_id="films") for _ in range(2)]
    for task in tasks:
        await taskd.wait_terminal(task["task_id"])
    async with taskd.client.get("/api/v1/projects/films/events", headers={"Last-Event-ID": "0"}) as response:
        everything = await read_events(response, count=6)

    async with taskd.client.get(
        "/api/v1/projects/films/events", headers={"Last-Event-ID": everything[2].id}
    ) as response:
        rest = await read_events(response, count=3)

    assert rest == everything[3:]


async def first_event_id(taskd, task_id: str) -> str:
    async with asyncio.timeout(10), taskd.client.get(f"/api/v1/tasks/{task_id}/events") as response:
        (first,) = await read_events(response, 1)
    assert first.id is not None
    return first.id


async def test_a_task_stream_resumed_past_what_its_cap_trimmed_says_gap_first(taskd):
    # More progress events than a task's stream keeps (keys.TASK_EVENTS_MAXLEN): the first are trimmed.
    task = await taskd.submit("sleep", {"seconds": 0.5, "steps": 300})
    first_id = await first_event_id(taskd, task["task_id"])
    await taskd.wait_terminal(task["task_id"])

    async with taskd.client.get(
        f"/api/v1/tasks/{task['task_id']}/events", headers={"Last-Event-ID": first_id}
    ) as response:
        seen = await read_events(response)

    assert (seen[0].id, seen[0].event, seen[0].data["after"]) == (None, "gap", first_id)
    assert seen[0].data["kept_from"] == seen[1].id
    assert order_key(seen[1].id) > order_key(first_id)
    assert shape(seen[-1:]) == [("status", "completed", "step_300_of_300")]


async def test_a_project_stream_resumed_past_what_its_cap_trimmed_says_gap_first(taskd, redis):
    tasks = [await taskd.submit("noop", {}, project_id="films") for _ in range(2)]
    for task in tasks:
        await taskd.wait_terminal(task["task_id"])
    stream = keys.project_events("films")
    first_id = (await redis.xrange(stream, count=1))[0][0].decode()
    kept = await redis.xrange(stream)
    await redis.xtrim(stream, maxlen=2, approximate=False)

    async with (
        asyncio.timeout(10),
        taskd.client.get("/api/v1/projects/films/events", headers={"Last-Event-ID": first_id}) as response,
    ):
        seen = await read_events(response, count=3)

    assert (seen[0].id, seen[0].event, seen[0].data["after"]) == (None, "gap", first_id)
    assert seen[0].data["kept_from"] == kept[-2][0].decode()
    assert [e.id for e in seen[1:]] == [entry_id.decode() for entry_id, _ in kept[-2:]]


async def test_a_project_stream_resumed_from_before_a_streams_life_sends_no_older_event_but_a_gap(
    taskd, redis
):
    # A task's end drops its project's events older than a stream's life, but only then: between two
    # ends (up to a day apart) the stream still held a gone task's `completed` event with its result,
    # and replayed it, near two days old, to any key of the project resuming from an early id.
    stream = keys.project_events("films")
    aged = {"type": "status", "task_id": "gone", "status": "completed", "result": {"secret": "kept"}}
    aged_ms = int((now() - keys.EVENTS_TTL - 60) * 1000)
    await redis.xadd(stream, {"event": orjson.dumps(aged)}, id=f"{aged_ms}-0")
    recent = await redis.xadd(stream, project_event(1))

    async with (
        asyncio.timeout(10),
        taskd.client.get("/api/v1/projects/films/events", headers={"Last-Event-ID": "1-0"}) as response,
    ):
        seen = await read_events(response, count=2)

    assert (seen[0].id, seen[0].event, seen[0].data["after"]) == (None, "gap", "1-0")
    assert (seen[1].id, seen[1].data["task_id"]) == (recent.decode(), "t1")


def project_event(index: int) -> dict[str, bytes]:
    event = {"type": "status", "task_id": f"t{index}", "project_id": "films", "status": "queued"}
    return {"event": orjson.dumps(event)}


async def test_a_project_stream_whose_events_were_trimmed_while_the_hubs_redis_was_away_says_gap(
    start_service, redis, monkeypatch
):
    reader_away = asyncio.Event()  # set: the hub's next read fails once `back` is set
    reading_again = asyncio.Event()
    back = asyncio.Event()

    class ReaderThatLosesRedis(Redis):
        """The hub's reader connection, which loses Redis (a network cut) when the test says so, while
        the workers of other hosts go on writing its project's events."""

        async def xread(self, *args, **kwargs):
            if reader_away.is_set():
                reader_away.clear()
                reading_again.set()
                await back.wait()
                raise RedisConnectionError("Connection reset by peer")
            return await super().xread(*args, **kwargs)

    monkeypatch.setattr(events_module, "Redis", ReaderThatLosesRedis)
    # No read ends by its timeout while the test counts on the one in flight to bring `t1`.
    monkeypatch.setattr(events_module, "BLOCK_MS", 60_000)
    service = await start_service(workers=False)
    stream = keys.project_events("films")

    async with asyncio.timeout(30), service.client.get("/api/v1/projects/films/events") as response:
        events = iter_events(response)
        await redis.xadd(stream, project_event(0))
        assert (await anext(events)).data["task_id"] == "t0"
        reader_away.set()
        await redis.xadd(stream, project_event(1))  # the read in flight returns it; the next fails
        last_sent = await anext(events)
        await reading_again.wait()
        # More events than the cap keeps are written while the reader is away.
        for index in range(2, 7):
            await redis.xadd(stream, project_event(index))
        await redis.xtrim(stream, maxlen=2, approximate=False)
        back.set()
        seen = []
        while not seen or seen[-1].data.get("task_id") != "t6":
            seen.append(await anext(events))

    assert [(e.event, e.data.get("task_id")) for e in seen] == [
        ("gap", None),
        ("status", "t5"),
        ("status", "t6"),
    ]
    assert seen[0].data["after"] == last_sent.id


FROM_THE_FUTURE = "99999999999999-0"  # past every entry a stream can have now


async def completion_of(response: aiohttp.ClientResponse, task_id: str) -> Any:
    async for event in iter_events(response):
        if event.data["task_id"] == task_id and event.data["status"] == "completed":
            return event
    return None


@pytest.mark.parametrize("stream", ["project", "task"])
async def test_a_last_event_id_from_the_future_holds_back_no_other_clients_live_events(taskd, stream):
    # The hub reads each stream from where its first watcher asked: one key's made-up id stopped
    # every other client of that stream in the process from getting anything live.
    task = await taskd.submit("sleep", {"seconds": 1, "steps": 1}, project_id="films")
    path = (
        "/api/v1/projects/films/events" if stream == "project" else f"/api/v1/tasks/{task['task_id']}/events"
    )
    async with (
        asyncio.timeout(10),
        taskd.client.get(path, headers={"Last-Event-ID": FROM_THE_FUTURE}) as first,
        taskd.client.get(path) as second,
    ):
        assert first.status == second.status == 200
        assert await completion_of(second, task["task_id"]) is not None
        # The one that asked from the future gets what comes next, as if it had asked for now.
        assert await completion_of(first, task["task_id"]) is not None


async def test_events_raised_by_a_worker_in_another_taskd_reach_the_stream(start_service):
    api_node = await start_service(workers=False)
    await start_service(http=False)  # the only worker: a second taskd on the same Redis

    task = await api_node.submit("sleep", {"seconds": 0.3, "steps": 3})
    async with (
        asyncio.timeout(10),
        api_node.client.get(f"/api/v1/tasks/{task['task_id']}/events") as response,
    ):
        seen = await read_events(response)

    assert shape(seen) == EXPECTED_SLEEP_3


async def test_an_idle_stream_sends_keep_alive_comments(taskd, monkeypatch):
    monkeypatch.setattr(events_module, "KEEPALIVE_SECONDS", 0.2)

    async with asyncio.timeout(10), taskd.client.get("/api/v1/projects/quiet/events") as response:
        lines = []
        async for raw in response.content:
            lines.append(raw.decode().strip())
            if ": keep-alive" in lines:
                break

    assert lines[0] == f"retry: {events_module.RECONNECT_MS}"


async def test_open_streams_end_when_the_server_stops(taskd):
    async with taskd.client.get("/api/v1/projects/films/events") as response:
        stop = asyncio.create_task(taskd.service.stop(grace=1))
        async with asyncio.timeout(5):
            await read_events(response)
        await stop


async def test_many_clients_share_one_blocking_redis_read(taskd, redis):
    streams = [taskd.client.get(f"/api/v1/projects/p{i}/events") for i in range(20)]
    responses = [await stream.__aenter__() for stream in streams]
    try:
        await asyncio.sleep(0.3)
        clients = (await redis.execute_command("CLIENT", "LIST")).decode().splitlines()
    finally:
        for stream in streams:
            await stream.__aexit__(None, None, None)

    assert all(response.status == 200 for response in responses)
    assert sum("cmd=xread" in line for line in clients) == 1


@pytest.mark.parametrize("path", ["/api/v1/tasks/x/events", "/api/v1/projects/x/events"])
async def test_event_streams_need_the_key(taskd, path):
    async with aiohttp.ClientSession(taskd.base_url) as anonymous, anonymous.get(path) as response:
        assert response.status == 401


async def test_a_task_stream_reads_the_record_and_its_backlog_in_one_round_trip(taskd, monkeypatch):
    task = await taskd.submit("sleep", {"seconds": 0.3, "steps": 1})
    record_key, stream_key = keys.task(task["task_id"]).encode(), keys.task_events(task["task_id"]).encode()
    sends: list[bytes] = []
    original = AbstractConnection.send_packed_command

    async def counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        packed = command if isinstance(command, bytes | str) else b"".join(command)
        packed = packed.encode() if isinstance(packed, str) else packed
        if (b"HGETALL" in packed and record_key in packed) or (b"XRANGE" in packed and stream_key in packed):
            sends.append(packed)
        await original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)

    async with asyncio.timeout(10), taskd.client.get(f"/api/v1/tasks/{task['task_id']}/events") as response:
        seen = await read_events(response)

    assert seen[-1].data["status"] == "completed"
    # Read in one MULTI; before, the record, the stream and the record again: three round trips.
    assert len(sends) == 1
