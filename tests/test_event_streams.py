"""Every change of a task is appended to its stream and its project's stream, in order."""

from __future__ import annotations

import aiohttp
import orjson

from taskd import keys
from taskd.config import Config, StorageConfig
from taskd.model import now
from taskd.store import TaskStore
from taskd.tasks.spec import ProcessContext, TaskContext


async def events(redis, stream: str) -> list[dict]:
    return [orjson.loads(fields[b"event"]) for _, fields in await redis.xrange(stream)]


async def test_task_stream_holds_queued_processing_and_completed_with_the_result(taskd, redis):
    task = await taskd.submit("noop", {})
    await taskd.wait_terminal(task["task_id"])

    seen = await events(redis, keys.task_events(task["task_id"]))

    assert [event["status"] for event in seen] == ["queued", "processing", "completed"]
    assert seen[-1]["result"]["ok"] is True
    assert {event["project_id"] for event in seen} == {"proj-1"}


async def test_progress_events_carry_the_current_step(taskd, redis):
    task = await taskd.submit("sleep", {"seconds": 0.2, "steps": 2})
    await taskd.wait_terminal(task["task_id"])

    progress = [e for e in await events(redis, keys.task_events(task["task_id"])) if e["type"] == "progress"]

    assert [(e["progress"], e["current_step"]) for e in progress] == [
        (0.5, "step_1_of_2"),
        (1.0, "step_2_of_2"),
    ]


async def test_a_progress_report_below_the_recorded_one_is_dropped(taskd, redis):
    # Reports a handler makes at once go on several connections: Redis may run an older one last.
    task_id = (await taskd.submit("report_step", {"step": "halfway"}))["task_id"]
    await taskd.wait_for(task_id, lambda body: body["progress"] == 0.5)
    worker_id, job_id = [raw.decode() for raw in await redis.hmget(keys.task(task_id), "worker_id", "job_id")]

    written = await TaskStore(redis, 3600).progress(task_id, job_id, worker_id, 0.25, "older", now())

    assert written  # still this run's: no reconcile
    status = await taskd.status(task_id)
    assert (status["progress"], status["current_step"]) == (0.5, "halfway")
    progress = [e for e in await events(redis, keys.task_events(task_id)) if e["type"] == "progress"]
    assert [(e["progress"], e["current_step"]) for e in progress] == [(0.5, "halfway")]


async def test_reports_made_at_once_keep_the_last_step_named_whichever_redis_runs_first(
    taskd, redis, http: aiohttp.ClientSession
):
    # A handler names a step, and another of its asyncio tasks reports more progress at once: if
    # Redis runs the later report first, the earlier one is dropped as below it, and its step with it.
    task_id = (await taskd.submit("report_step", {"step": "halfway"}))["task_id"]
    await taskd.wait_for(task_id, lambda body: body["progress"] == 0.5)
    worker_id, job_id = [raw.decode() for raw in await redis.hmget(keys.task(task_id), "worker_id", "job_id")]
    reports: list[tuple[float, str | None]] = []

    async def made(fraction: float, step: str | None) -> None:
        reports.append((fraction, step))

    ctx = TaskContext(task_id, "p", 1, 1, Config(), http, {}, made)
    await ctx.progress(0.5, "halfway")
    await ctx.progress(0.6, "downloading")
    await ctx.progress(0.7)
    store = TaskStore(redis, 3600)
    for fraction, step in reversed(reports[1:]):  # as Redis may run them
        await store.progress(task_id, job_id, worker_id, fraction, step, now())

    status = await taskd.status(task_id)
    assert (status["progress"], status["current_step"]) == (0.7, "downloading")


async def test_reports_made_at_once_in_a_job_process_keep_the_last_step_named(taskd, redis):
    # A plain-function handler's threads report at once: the worker may get the later report's
    # frame first, and the earlier one is then dropped as below it, and its step with it.
    task_id = (await taskd.submit("report_step", {"step": "halfway"}))["task_id"]
    await taskd.wait_for(task_id, lambda body: body["progress"] == 0.5)
    worker_id, job_id = [raw.decode() for raw in await redis.hmget(keys.task(task_id), "worker_id", "job_id")]
    reports: list[tuple[float, str | None]] = []
    ctx = ProcessContext(task_id, "p", 1, 1, Config(), {}, None, lambda *report: reports.append(report))
    ctx.progress(0.5, "halfway")
    ctx.progress(0.6, "downloading")
    ctx.progress(0.7)
    store = TaskStore(redis, 3600)
    for fraction, step in reversed(reports[1:]):  # as the frames may come
        await store.progress(task_id, job_id, worker_id, fraction, step, now())

    status = await taskd.status(task_id)
    assert (status["progress"], status["current_step"]) == (0.7, "downloading")


async def test_failure_event_carries_the_error(taskd, redis):
    task = await taskd.submit("fail", {"message": "no good"})
    await taskd.wait_terminal(task["task_id"])

    last = (await events(redis, keys.task_events(task["task_id"])))[-1]

    assert (last["status"], last["error"]) == ("failed", "no good")


async def test_cancel_event_reaches_the_project_stream(start_service, redis):
    api_only = await start_service(workers=False)
    task = await api_only.submit("noop", {}, project_id="films")
    await api_only.client.delete(f"/api/v1/tasks/{task['task_id']}")

    seen = await events(redis, keys.project_events("films"))

    assert [(e["task_id"], e["status"]) for e in seen] == [
        (task["task_id"], "queued"),
        (task["task_id"], "cancelled"),
    ]


async def test_a_tasks_end_drops_its_projects_events_older_than_a_streams_life(taskd, redis):
    # A quiet project's stream (far fewer events a day than its cap) is pushed back by each event:
    # its tasks' results stayed in it, replayed from an early Last-Event-ID, long after their records.
    stream = keys.project_events("films")
    written_ms = int((now() - keys.EVENTS_TTL - 60) * 1000)
    old = {"type": "status", "task_id": "gone", "status": "completed", "result": {"secret": "kept"}}
    await redis.xadd(stream, {"event": orjson.dumps(old)}, id=f"{written_ms}-0")
    task = await taskd.submit("noop", {}, project_id="films")
    await taskd.wait_terminal(task["task_id"])

    seen = await events(redis, stream)

    assert [(e["task_id"], e["status"]) for e in seen] == [
        (task["task_id"], "queued"),
        (task["task_id"], "processing"),
        (task["task_id"], "completed"),
    ]


async def test_empty_lists_in_a_result_stay_lists(taskd, redis, fake_llm):
    fake_llm.reply('{"rating": 90, "summary": "fine", "issues": [], "suggestions": [], "confidence": 0.9}')
    from examples import TASK_DATA

    task = await taskd.submit("evaluate_department", TASK_DATA["evaluate_department"])
    await taskd.wait_terminal(task["task_id"])

    last = (await events(redis, keys.task_events(task["task_id"])))[-1]

    assert last["result"]["issues"] == []


async def test_event_streams_expire_with_the_records_when_task_ttl_is_shorter_than_a_day(
    start_service, redis
):
    # An operator shortens storage.task_ttl to bound Redis memory: a task's stream (larger than its
    # record) and its project's stream must go as soon as the records do, not a day later.
    short = await start_service(storage=StorageConfig(task_ttl=120))
    task = await short.submit("sleep", {"seconds": 0.1, "steps": 1}, project_id="brief")
    await short.wait_terminal(task["task_id"])

    record_ttl = await redis.ttl(keys.task(task["task_id"]))
    stream_ttls = [
        await redis.ttl(keys.task_events(task["task_id"])),
        await redis.ttl(keys.project_events("brief")),
    ]

    assert 0 < record_ttl <= 120
    assert all(0 < ttl <= 120 for ttl in stream_ttls), stream_ttls


async def test_event_streams_live_a_day_at_most_whatever_the_task_ttl(start_service, redis):
    long = await start_service(storage=StorageConfig(task_ttl=7 * 86400))
    task = await long.submit("noop", {}, project_id="kept")
    await long.wait_terminal(task["task_id"])

    assert 86_000 < await redis.ttl(keys.task_events(task["task_id"])) <= keys.EVENTS_TTL
    assert 86_000 < await redis.ttl(keys.project_events("kept")) <= keys.EVENTS_TTL


async def test_an_ended_tasks_stream_expires_with_its_record_when_its_keep_for_is_shorter(taskd, redis):
    # A caller shortens keep_for so that a result goes sooner: the task's stream, which holds the
    # result too and which nothing reads once the record is gone, must not stay the day.
    task = await taskd.submit("noop", {}, keep_for=60)
    await taskd.wait_terminal(task["task_id"])

    assert 0 < await redis.ttl(keys.task_events(task["task_id"])) <= 60


async def test_a_short_kept_dependencys_stream_lives_on_with_its_record_kept_for_a_waiting_dependent(
    taskd, redis
):
    # Its end expires its stream with its keep_for; a dependent scheduled an hour ahead keeps its
    # record that long. The stream had gone a minute after the end: its events route sent one event
    # made from the record, even to a client resuming with the end's id (no 204: EventSource went on
    # reconnecting for the hour).
    first = await taskd.submit("sleep", {"seconds": 0.5, "steps": 1}, keep_for=60)
    await taskd.submit("noop", {}, depends_on=[first["task_id"]], delay_seconds=3600)
    await taskd.wait_terminal(first["task_id"])

    assert await redis.ttl(keys.task(first["task_id"])) > 3000
    assert await redis.ttl(keys.task_events(first["task_id"])) > 3000
