"""`taskd.client.TaskClient` against a real taskd, and the API document's own `TaskServiceClient` unchanged."""

from __future__ import annotations

import asyncio
import pickle
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from conftest import API_KEY
from fake_taskd import event_stream, fake_taskd

from taskd import keys
from taskd.client import (
    AuthenticationFailed,
    EventsLost,
    IdempotencyKeyReused,
    InvalidState,
    RateLimited,
    ServiceUnavailable,
    StreamGap,
    Task,
    TaskCancelled,
    TaskClient,
    TaskdConnectionError,
    TaskdError,
    TaskFailed,
    TaskNotFoundError,
    TaskStatus,
    ValidationFailed,
)
from taskd.config import ExecutionConfig, LimitsConfig


@pytest.fixture
async def client(taskd):
    async with TaskClient(taskd.base_url, API_KEY) as client:
        yield client


async def test_submit_returns_the_task_id_and_where_it_stands(client):
    submitted = await client.submit("films", "noop", {}, priority=1, metadata={"user_id": "u1"})

    assert submitted.status is TaskStatus.QUEUED
    assert submitted.project_id == "films"
    assert submitted.queue_position >= 0
    assert submitted.created_at is not None


async def test_submit_with_depends_on_feeds_a_result_into_the_next_task(client):
    first = await client.submit("films", "append", {"text": "frame"})
    second = await client.submit(
        "films", "append", {"text": {"$ref": f"{first.task_id}#/text"}}, depends_on=[first.task_id]
    )

    task = await client.wait(second.task_id, timeout=10)

    assert task.result == {"text": "frame!!", "length": 7}
    assert task.depends_on == [first.task_id]


async def test_submit_batch_chains_its_items_by_index_and_answers_in_order(client):
    first, second = await client.submit_batch(
        [
            {"project_id": "films", "task_type": "append", "task_data": {"text": "frame"}},
            {
                "project_id": "films",
                "task_type": "append",
                "task_data": {"text": {"$ref": "@0#/text"}},
                "depends_on": ["@0"],
            },
        ]
    )

    task = await client.wait(second.task_id, timeout=10)

    assert task.result == {"text": "frame!!", "length": 7}
    assert task.depends_on == [first.task_id]


async def test_submit_takes_any_mapping_and_sequence_for_its_data_and_dependencies(client):
    first, *_ = await client.submit_batch(
        (MappingProxyType({"project_id": "films", "task_type": "append", "task_data": {"text": "frame"}}),)
    )
    second = await client.submit(
        "films",
        "append",
        MappingProxyType({"text": {"$ref": f"{first.task_id}#/text"}}),
        metadata=MappingProxyType({"user_id": "u1"}),
        depends_on=(first.task_id,),
    )

    task = await client.wait(second.task_id, timeout=10)

    assert task.result == {"text": "frame!!", "length": 7}


@pytest.mark.parametrize(
    ("arguments", "field", "problem"),
    [
        ({"task_data": {"text": "a"}, "depends_on": "abc"}, "depends_on", "must be a list"),
        ({"task_data": [("text", "a")]}, "task_data", "must be an object"),
        ({"task_data": None}, "task_data", "required"),
        ({"task_data": {"text": "a"}, "metadata": [("user_id", "u1")]}, "metadata", "must be an object"),
    ],
    ids=["str-depends-on", "pairs-task-data", "none-task-data", "pairs-metadata"],
)
async def test_submit_leaves_a_value_of_the_wrong_kind_for_taskd_to_refuse(client, arguments, field, problem):
    with pytest.raises(ValidationFailed) as refused:
        await client.submit("films", "append", **arguments)

    assert problem in refused.value.details[field]


async def test_submit_batch_leaves_an_item_that_is_no_mapping_for_taskd_to_refuse(client):
    with pytest.raises(ValidationFailed) as refused:
        await client.submit_batch([None])

    assert "tasks[0]" in refused.value.details


async def test_submit_batch_raises_validation_failed_naming_the_item(client):
    with pytest.raises(ValidationFailed) as refused:
        await client.submit_batch([{"project_id": "films", "task_type": "noop", "task_data": {}}, {}])

    assert "tasks[1].project_id" in refused.value.details


async def test_submit_with_wait_returns_the_ended_task_in_one_request(client):
    submitted = await client.submit("films", "sleep", {"seconds": 0.2, "steps": 1}, wait=10)

    assert submitted.task is not None
    assert (submitted.task.status, submitted.task.result) == (
        TaskStatus.COMPLETED,
        {"slept": 0.2, "attempt": 1},
    )
    assert submitted.status is TaskStatus.COMPLETED


async def test_submit_without_wait_has_no_task(client):
    submitted = await client.submit("films", "noop", {})

    assert submitted.task is None


async def test_submit_sends_webhook_events(client):
    with pytest.raises(ValidationFailed) as refused:
        await client.submit("films", "noop", {}, webhook_events=["finished"])

    assert set(refused.value.details) == {"webhook_events"}


async def test_wait_follows_the_events_and_returns_the_final_status(client):
    submitted = await client.submit("films", "sleep", {"seconds": 0.3, "steps": 3})
    seen = []

    task = await client.wait(submitted.task_id, timeout=10, on_event=seen.append)

    assert isinstance(task, Task)
    assert (task.status, task.result) == (TaskStatus.COMPLETED, {"slept": 0.3, "attempt": 1})
    assert [e.current_step for e in seen if e.type == "progress"] == [
        "step_1_of_3",
        "step_2_of_3",
        "step_3_of_3",
    ]
    assert all(event.id for event in seen)
    assert seen[-1].is_terminal


async def test_a_completed_event_carrying_the_largest_result_the_server_keeps_is_read_whole(client):
    # A result of execution.result_max_bytes of JSON (1 MiB by default) travels in one `data:` line.
    characters = ExecutionConfig().result_max_bytes - len('{"filler":""}')
    submitted = await client.submit("films", "big_result", {"characters": characters})
    seen = []

    task = await client.wait(submitted.task_id, timeout=20, on_event=seen.append)
    replayed = [event async for event in client.events(submitted.task_id)]

    assert task.result == {"filler": "x" * characters}
    assert seen[-1].is_terminal
    assert seen[-1].result == task.result
    assert replayed[-1].result == task.result


async def _trimmed_project_stream(taskd, redis) -> tuple[str, list[str]]:
    """Two ended tasks of `films`, their project stream trimmed to its last two events: the id of
    its first event (which the trim passed) and the ids kept."""
    for task in [await taskd.submit("noop", {}, project_id="films") for _ in range(2)]:
        await taskd.wait_terminal(task["task_id"])
    stream = keys.project_events("films")
    first_id = (await redis.xrange(stream, count=1))[0][0].decode()
    await redis.xtrim(stream, maxlen=2, approximate=False)
    return first_id, [entry_id.decode() for entry_id, _ in await redis.xrange(stream)]


async def test_project_events_raises_events_lost_where_the_stream_says_gap(client, taskd, redis):
    first_id, kept = await _trimmed_project_stream(taskd, redis)

    with pytest.raises(EventsLost) as lost:
        async with asyncio.timeout(10):
            async for _ in client.project_events("films", last_event_id=first_id):
                pass

    assert lost.value.gap == StreamGap(after=first_id, kept_from=kept[0])
    assert lost.value.error == "events_lost"


async def test_project_events_with_gaps_yields_the_gap_then_the_events_kept(client, taskd, redis):
    first_id, kept = await _trimmed_project_stream(taskd, redis)
    seen: list[Any] = []

    async with asyncio.timeout(10):
        async for item in client.project_events("films", last_event_id=first_id, gaps=True):
            seen.append(item)
            if len(seen) == 3:
                break

    assert seen[0] == StreamGap(after=first_id, kept_from=kept[0])
    assert [event.id for event in seen[1:]] == kept


async def test_wait_raises_task_failed_carrying_the_final_status(client):
    submitted = await client.submit("films", "fail", {"message": "no good"})

    with pytest.raises(TaskFailed) as failed:
        await client.wait(submitted.task_id, timeout=10)

    assert failed.value.task.status is TaskStatus.FAILED
    assert failed.value.task.error == "no good"


async def test_a_task_failed_survives_pickling_with_its_final_status(client):
    # As a ProcessPoolExecutor's worker hands it to its parent.
    submitted = await client.submit("films", "fail", {"message": "no good"})
    with pytest.raises(TaskFailed) as failed:
        await client.wait(submitted.task_id, timeout=10)

    again = pickle.loads(pickle.dumps(failed.value))

    assert (type(again), again.task, str(again)) == (TaskFailed, failed.value.task, str(failed.value))


async def test_a_refusal_survives_pickling_with_its_status_and_body(client):
    with pytest.raises(ValidationFailed) as refused:
        await client.submit("films", "generate_video", {"duration": 99})

    again = pickle.loads(pickle.dumps(refused.value))

    assert (type(again), again.status, again.body, again.details, str(again)) == (
        ValidationFailed,
        400,
        refused.value.body,
        refused.value.details,
        str(refused.value),
    )


async def test_a_closed_client_refuses_calls_rather_than_opening_a_session_again(taskd):
    client = TaskClient(taskd.base_url, API_KEY)
    await client.health()
    await client.close()

    with pytest.raises(RuntimeError, match="closed"):
        await client.health()
    assert client._session is None


async def test_a_client_on_the_callers_session_is_usable_after_it_is_closed(taskd):
    async with aiohttp.ClientSession() as session:
        client = TaskClient(taskd.base_url, API_KEY, session=session)
        async with client:
            await client.health()

        health = await client.health()

    assert health.status == "healthy"


async def test_a_client_used_in_an_event_loop_that_ended_says_so_in_another(taskd):
    client = TaskClient(taskd.base_url, API_KEY)

    async def first_use() -> None:
        client.session  # noqa: B018 -- made there, as by a request (which would leave its socket open)

    # A first asyncio.run (in a thread: this test's own loop is the second one).
    await asyncio.to_thread(asyncio.run, first_use())

    with pytest.raises(RuntimeError, match="first used in another event loop"):
        await client.health()
    await client.close()  # closing is still possible, from any loop


@pytest.mark.parametrize("url", ["127.0.0.1:8001", "localhost", "ftp://127.0.0.1:8001", "http://"])
def test_a_url_without_http_and_a_host_is_refused_when_the_client_is_made(url):
    with pytest.raises(ValueError, match=r"^url must be http\(s\)://host\[:port\]"):
        TaskClient(url, API_KEY)


def test_an_api_key_with_a_control_character_is_refused_when_the_client_is_made():
    with pytest.raises(ValueError, match=r"^api_key holds a line break or another control character$"):
        TaskClient("http://127.0.0.1:8001", API_KEY + "\n")


async def test_wait_raises_task_cancelled_when_the_task_is_cancelled(client):
    submitted = await client.submit("films", "sleep", {"seconds": 30, "steps": 30})
    waiting = asyncio.create_task(client.wait(submitted.task_id, timeout=10))
    await asyncio.sleep(0.3)

    cancellation = await client.cancel(submitted.task_id)

    with pytest.raises(TaskCancelled):
        await waiting
    assert cancellation.status is TaskStatus.CANCELLED


async def test_wait_without_raising_returns_a_failed_task(client):
    submitted = await client.submit("films", "fail", {"message": "no good"})

    task = await client.wait(submitted.task_id, timeout=10, raise_on_failure=False)

    assert task.status is TaskStatus.FAILED


async def test_wait_gives_up_after_its_timeout(client):
    submitted = await client.submit("films", "sleep", {"seconds": 30, "steps": 1})

    with pytest.raises(TimeoutError):
        await client.wait(submitted.task_id, timeout=0.5)


async def test_an_invalid_submission_raises_validation_failed_with_the_details(client):
    with pytest.raises(ValidationFailed) as refused:
        await client.submit("films", "generate_video", {"duration": 99})

    assert refused.value.status == 400
    assert "task_data.duration" in refused.value.details


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
async def test_a_submit_holding_a_non_finite_float_raises_naming_it_and_stores_nothing(client, redis, value):
    # orjson writes NaN and the infinities as null: the task was stored holding null.
    with pytest.raises(ValueError, match=r"^task_data\.scores\[1\] is not a finite number"):
        await client.submit("films", "noop", {"scores": [1.0, value]})

    assert await redis.zcard(keys.project("films")) == 0


async def test_an_unknown_task_raises_task_not_found_with_the_documented_body(client):
    with pytest.raises(TaskNotFoundError) as missing:
        await client.status("nope")

    assert missing.value.body == {"error": "task_not_found", "message": "Task with ID 'nope' not found"}


async def test_an_id_holding_a_path_names_that_id_and_never_reaches_another_task(client):
    victim = await client.submit("films", "sleep", {"seconds": 30, "steps": 30})

    with pytest.raises(TaskNotFoundError) as missing:
        await client.cancel(f"whatever/../{victim.task_id}")

    assert missing.value.body["message"] == f"Task with ID 'whatever/../{victim.task_id}' not found"
    assert (await client.status(victim.task_id)).status is not TaskStatus.CANCELLED
    await client.cancel(victim.task_id)


@pytest.mark.parametrize("task_id", ["..", ".", "a?b", "a#b", "100%"])
async def test_an_id_of_dots_or_url_characters_is_asked_for_as_itself(client, task_id):
    with pytest.raises(TaskNotFoundError) as missing:
        await client.status(task_id)

    assert missing.value.body["message"] == f"Task with ID '{task_id}' not found"


async def test_a_project_id_holding_a_path_names_that_project_and_never_lists_another(client):
    await client.submit("films", "noop", {})

    with pytest.raises(TaskdError) as missing:
        await client.list_tasks("nothing/../films")

    assert missing.value.status == 404
    assert missing.value.body["message"] == "Project 'nothing/../films' not found"


async def test_cancelling_a_completed_task_raises_invalid_state_with_the_detail(client):
    submitted = await client.submit("films", "noop", {})
    await client.wait(submitted.task_id, timeout=10)

    with pytest.raises(InvalidState) as refused:
        await client.cancel(submitted.task_id)

    assert refused.value.detail == "Task has already completed successfully and cannot be cancelled"


async def test_retry_submits_a_failed_task_again(client):
    submitted = await client.submit("films", "fail", {"message": "no good"})
    await client.wait(submitted.task_id, timeout=10, raise_on_failure=False)

    retried = await client.retry(submitted.task_id)

    assert retried.original_task_id == submitted.task_id
    assert (await client.status(retried.new_task_id)).retry_of == submitted.task_id


async def test_submit_with_the_same_idempotency_key_gives_the_same_task(client):
    first = await client.submit("films", "noop", {}, idempotency_key="scene-1")

    again = await client.submit("films", "noop", {}, idempotency_key="scene-1")

    assert again.task_id == first.task_id


async def test_an_idempotency_key_reused_for_another_submit_raises_idempotency_key_reused(client):
    await client.submit("films", "noop", {}, idempotency_key="scene-1")

    with pytest.raises(IdempotencyKeyReused) as refused:
        await client.submit("films", "noop", {}, priority=1, idempotency_key="scene-1")

    assert (refused.value.status, refused.value.error) == (422, "idempotency_key_reused")


async def test_retry_with_the_same_idempotency_key_gives_the_same_new_task(client):
    submitted = await client.submit("films", "fail", {"message": "no good"})
    await client.wait(submitted.task_id, timeout=10, raise_on_failure=False)

    first = await client.retry(submitted.task_id, idempotency_key="again-1")
    again = await client.retry(submitted.task_id, idempotency_key="again-1")

    assert again.new_task_id == first.new_task_id


async def test_submit_sends_keep_for(client, redis):
    submitted = await client.submit("films", "noop", {}, keep_for=600)

    assert await redis.hget(keys.task(submitted.task_id), "keep_for") == b"600"


async def test_submit_with_delay_seconds_or_run_at_schedules_the_task(client):
    at = datetime.now(UTC) + timedelta(hours=1)

    delayed = await client.submit("films", "noop", {}, delay_seconds=300)
    timed = await client.submit("films", "noop", {}, run_at=at)
    delayed_task = await client.status(delayed.task_id)
    timed_task = await client.status(timed.task_id)

    assert delayed_task.status is TaskStatus.QUEUED
    assert delayed_task.scheduled_for is not None
    assert timedelta(seconds=290) < delayed_task.scheduled_for - datetime.now(UTC) <= timedelta(seconds=300)
    assert timed_task.scheduled_for == at.replace(microsecond=0)


async def test_submit_sends_a_run_at_whose_offset_has_seconds_as_the_same_instant(client):
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    odd_zone = timezone(timedelta(minutes=19, seconds=32))  # Amsterdam's local mean time

    timed = await client.submit("films", "noop", {}, run_at=at.astimezone(odd_zone))

    assert (await client.status(timed.task_id)).scheduled_for == at


async def test_submit_refuses_a_naive_run_at_before_sending_it(client):
    with pytest.raises(ValueError, match="timezone-aware"):
        await client.submit("films", "noop", {}, run_at=datetime.now())


async def test_list_tasks_filters_and_pages(client):
    done = await client.submit("films", "noop", {})
    await client.wait(done.task_id, timeout=10)
    failed = await client.submit("films", "fail", {})
    await client.wait(failed.task_id, timeout=10, raise_on_failure=False)

    page = await client.list_tasks("films", status="failed", limit=1)

    assert [t.task_id for t in page.tasks] == [failed.task_id]
    assert (page.page, page.limit, page.total, page.total_pages) == (1, 1, 1, 1)
    assert page.tasks[0].task_type == "fail"


async def test_listed_tasks_say_what_they_wait_for(client):
    first = await client.submit("films", "sleep", {"seconds": 30})
    dependent = await client.submit("films", "noop", {}, depends_on=[first.task_id])
    later = await client.submit("films", "noop", {}, delay_seconds=3600)

    listed = {t.task_id: t for t in (await client.list_tasks("films")).tasks}

    assert listed[dependent.task_id].waiting_for == [first.task_id]
    assert listed[dependent.task_id].depends_on == [first.task_id]
    scheduled_for = listed[later.task_id].scheduled_for
    assert scheduled_for is not None
    assert timedelta(minutes=59) < scheduled_for - datetime.now(UTC) <= timedelta(hours=1)


async def test_health_queue_health_and_metrics_are_typed(client):
    submitted = await client.submit("films", "noop", {})
    await client.wait(submitted.task_id, timeout=10)

    health, queues, metrics = await client.health(), await client.queue_health(), await client.metrics()

    assert (health.status, health.redis_status, health.worker_count) == ("healthy", "connected", 1)
    assert (queues.status, queues.alerts) == ("healthy", [])
    assert (metrics.total_tasks, metrics.completed_tasks, metrics.success_rate) == (1, 1, 100.0)


async def test_a_wrong_key_raises_authentication_failed(taskd):
    async with TaskClient(taskd.base_url, "wrong") as client:
        with pytest.raises(AuthenticationFailed) as refused:
            await client.health()

    assert refused.value.body["error"] == "authentication_failed"


async def test_too_many_submissions_raise_rate_limited_with_retry_after(start_service):
    taskd = await start_service(workers=False, limits=LimitsConfig(submit_per_minute=1))
    async with TaskClient(taskd.base_url, API_KEY, retries=0) as client:
        await client.submit("films", "noop", {})
        with pytest.raises(RateLimited) as limited:
            await client.submit("films", "noop", {})

    assert limited.value.retry_after >= 1


async def test_a_full_queue_raises_service_unavailable_with_retry_after(start_service):
    taskd = await start_service(workers=False, limits=LimitsConfig(max_queue_length=1))
    async with TaskClient(taskd.base_url, API_KEY, retries=0) as client:
        await client.submit("films", "noop", {})
        with pytest.raises(ServiceUnavailable) as full:
            await client.submit("films", "noop", {})

    assert full.value.status == 503
    assert full.value.retry_after == 30


async def test_a_submit_refused_with_429_is_sent_again_after_its_retry_after():
    answers = [
        web.json_response(
            {"error": "rate_limited", "message": "slow down"}, status=429, headers={"Retry-After": "1"}
        ),
        web.json_response({"task_id": "t1", "status": "queued", "project_id": "films"}),
    ]
    arrivals: list[float] = []

    async def submit(_: web.Request) -> web.Response:
        arrivals.append(asyncio.get_running_loop().time())
        return answers.pop(0)

    app = web.Application()
    app.router.add_post("/api/v1/tasks/submit", submit)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        async with TaskClient(f"http://{host}:{port}", API_KEY) as client:
            submitted = await client.submit("films", "noop", {})
    finally:
        await runner.cleanup()

    assert submitted.task_id == "t1"
    assert len(arrivals) == 2 and arrivals[1] - arrivals[0] >= 0.95


async def test_an_unreachable_server_raises_taskd_connection_error():
    async with TaskClient("http://127.0.0.1:1", API_KEY, timeout=2) as client:
        with pytest.raises(TaskdConnectionError):
            await client.status("x")


class ScriptedServer:
    """A stand-in taskd whose event stream drops after two events, or that has no stream at all."""

    def __init__(self, *, streams: bool) -> None:
        self.streams = streams
        self.last_event_ids: list[str | None] = []
        self.polls = 0
        self.runner: web.AppRunner | None = None

    def _status(self, status: str, progress: float) -> dict[str, Any]:
        return {"task_id": "t1", "project_id": "p", "status": status, "progress": progress, "result": None}

    async def status(self, _: web.Request) -> web.Response:
        self.polls += 1
        done = self.polls >= 3 if not self.streams else len(self.last_event_ids) >= 2
        return web.json_response(self._status("completed" if done else "processing", 1.0 if done else 0.5))

    async def events(self, request: web.Request) -> web.StreamResponse:
        if not self.streams:
            return web.json_response({"error": "not_found", "message": "Not Found"}, status=404)
        self.last_event_ids.append(request.headers.get("Last-Event-ID"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        event = 'id: 1-{n}\nevent: {kind}\ndata: {{"task_id":"t1","project_id":"p","status":"{status}","progress":{p}}}\n\n'
        if len(self.last_event_ids) == 1:
            await response.write(event.format(n=1, kind="status", status="processing", p=0).encode())
            await response.write(event.format(n=2, kind="progress", status="processing", p=0.5).encode())
        else:
            await response.write(event.format(n=3, kind="status", status="completed", p=1).encode())
        return response

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_get("/api/v1/tasks/t1/status", self.status)
        app.router.add_get("/api/v1/tasks/t1/events", self.events)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def __aexit__(self, *_: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def test_wait_resumes_a_dropped_stream_with_last_event_id():
    server = ScriptedServer(streams=True)
    async with server as url, TaskClient(url, API_KEY) as client:
        seen = []
        task = await client.wait("t1", timeout=10, on_event=seen.append)

    assert server.last_event_ids == [None, "1-2"]
    assert [event.id for event in seen] == ["1-1", "1-2", "1-3"]
    assert task.status is TaskStatus.COMPLETED


async def test_wait_rides_out_a_restart_that_refuses_the_status_asked_after_its_stream_ended():
    streams = 0

    async def events(request: web.Request) -> web.StreamResponse:
        nonlocal streams
        streams += 1
        status = "processing" if streams == 1 else "completed"
        data = b'{"task_id": "t1", "project_id": "p", "status": "' + status.encode() + b'"}'
        return await event_stream(
            request, b"id: 1-" + str(streams).encode() + b"\nevent: status\ndata: " + data + b"\n\n"
        )

    async def status(request: web.Request) -> web.Response:
        # Asked while taskd restarts (the first stream ended, no other came yet): the connection
        # drops, every time (aiohttp sends a request dropped on a reused connection once more).
        if streams == 1:
            assert request.transport is not None
            request.transport.close()
        return web.json_response({"task_id": "t1", "project_id": "p", "status": "completed"})

    routes = {"/api/v1/tasks/t1/events": events, "/api/v1/tasks/t1/status": status}
    async with fake_taskd(routes) as url, TaskClient(url, API_KEY) as client:
        task = await client.wait("t1", timeout=10)

    assert task.status is TaskStatus.COMPLETED
    assert streams == 2


async def test_wait_polls_through_a_restart_longer_than_its_stream_reconnections(monkeypatch):
    # The reconnections' pauses made short: what matters is that they all fail, then the polls too.
    monkeypatch.setattr("taskd.client._STREAM_RETRY_FIRST", 0.01)
    monkeypatch.setattr("taskd.client._STREAM_RETRY_CAP", 0.01)
    streams = dropped = 0

    def restarting(request: web.Request) -> bool:
        """Drop the connection while taskd restarts: from its first stream's end, 20 requests long."""
        nonlocal dropped
        if streams == 0 or dropped >= 20:
            return False
        dropped += 1
        assert request.transport is not None
        request.transport.close()
        return True

    async def events(request: web.Request) -> web.StreamResponse:
        nonlocal streams
        if restarting(request):
            return web.Response()
        streams += 1
        running = b'{"task_id": "t1", "project_id": "p", "status": "processing"}'
        return await event_stream(request, b"id: 1-1\nevent: status\ndata: " + running + b"\n\n")

    async def status(request: web.Request) -> web.Response:
        restarting(request)
        return web.json_response({"task_id": "t1", "project_id": "p", "status": "completed"})

    routes = {"/api/v1/tasks/t1/events": events, "/api/v1/tasks/t1/status": status}
    async with fake_taskd(routes) as url, TaskClient(url, API_KEY, timeout=10) as client:
        task = await client.wait("t1", timeout=20, poll_interval=0.01)

    assert task.status is TaskStatus.COMPLETED
    assert dropped == 20


async def test_wait_on_a_url_where_nothing_ever_answered_raises_without_polling_through(monkeypatch):
    monkeypatch.setattr("taskd.client._STREAM_RETRY_FIRST", 0.01)
    monkeypatch.setattr("taskd.client._STREAM_RETRY_CAP", 0.01)
    async with TaskClient("http://127.0.0.1:1", API_KEY, timeout=30) as client:
        with pytest.raises(TaskdConnectionError):
            await client.wait("t1", timeout=10)


async def test_a_request_is_answered_while_a_hundred_waits_hold_their_streams_open():
    opened = 0

    async def silent(request: web.Request) -> web.StreamResponse:
        nonlocal opened
        opened += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await asyncio.sleep(3600)  # a long task: its stream stays open
        return response

    async def status(_: web.Request) -> web.Response:
        return web.json_response({"task_id": "t1", "project_id": "p", "status": "processing"})

    routes = {"/api/v1/tasks/{task_id}/events": silent, "/api/v1/tasks/{task_id}/status": status}
    async with fake_taskd(routes) as url, TaskClient(url, API_KEY, timeout=2) as client:
        waits = [asyncio.create_task(client.wait(f"t{n}")) for n in range(100)]
        try:
            async with asyncio.timeout(10):
                while opened < 100:
                    await asyncio.sleep(0.05)
            task = await client.status("t1")
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    assert task.status is TaskStatus.PROCESSING


async def test_wait_polls_the_status_when_the_server_has_no_event_stream():
    server = ScriptedServer(streams=False)
    async with server as url, TaskClient(url, API_KEY) as client:
        seen = []
        task = await client.wait("t1", timeout=10, on_event=seen.append, poll_interval=0.05)

    assert task.status is TaskStatus.COMPLETED
    assert [(event.status, event.progress) for event in seen] == [
        (TaskStatus.PROCESSING, 0.5),
        (TaskStatus.COMPLETED, 1.0),
    ]


# The API document's own client, unchanged (tests/task_service_client.py is a verbatim copy).


@pytest.fixture
async def document_client(taskd, monkeypatch):
    from task_service_client import TaskServiceClient

    monkeypatch.setenv("TASK_SERVICE_URL", taskd.base_url)
    monkeypatch.setenv("CELERY_TASK_API_KEY", API_KEY)
    client = TaskServiceClient()
    yield client
    await client.close()


async def test_the_documents_client_submits_and_waits_for_completion(document_client):
    submitted = await document_client.submit_task("films", "noop", {}, metadata={"user_id": "user123"})

    final = await document_client.wait_for_completion(submitted["task_id"], timeout=20, poll_interval=0.1)

    assert final["status"] == "completed"
    assert final["result"]["ok"] is True


async def test_the_documents_client_reports_a_failed_task_as_its_exception(document_client):
    submitted = await document_client.submit_task("films", "fail", {"message": "no good"})

    with pytest.raises(Exception, match="Task failed: no good"):
        await document_client.wait_for_completion(submitted["task_id"], timeout=20, poll_interval=0.1)


async def test_the_documents_client_gets_an_http_error_for_an_unknown_task(document_client):
    with pytest.raises(httpx.HTTPStatusError) as refused:
        await document_client.get_task_status("nope")

    assert refused.value.response.status_code == 404
