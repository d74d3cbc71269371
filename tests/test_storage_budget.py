"""limits.stored_bytes_per_project: the bytes one project's heavy records (large task_data, metadata or
results, or kept longer than storage.task_ttl) may hold in Redis. Past it the project's next heavy
submit is a 429 until some of them expire; light tasks are not counted and cost no command for it
(taskd/store/lua/lib/stored.lua, docs/production.md "Memory a task takes")."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import attrs
import orjson
import pytest
from redis.asyncio import Redis
from redis_probes import alive, keeper_looked, monitored
from test_submit_together import new_task

from taskd import keys
from taskd.config import ExecutionConfig, LimitsConfig, load_config
from taskd.engine.keeper import LiveRecords
from taskd.model import RateLimited, TaskStatus
from taskd.store import TaskStore
from taskd.store.records import Admission
from taskd.tasks.builtin.test_prompt import RENDERED_LIMIT

# Over the 4 KiB a record may hold of the caller's data without being counted: a record of ~9 KB.
LARGE = {"notes": "x" * 8000}
# Room for two such records, not three.
BUDGET = 25_000
WEEK = 7 * 24 * 3600


def heavy_body(project: str) -> dict[str, Any]:
    return {"project_id": project, "task_type": "noop", "task_data": {}, "metadata": LARGE}


async def stored(redis: Redis, project: str) -> dict[int, int]:
    """The project's counted bytes by the second they are gone."""
    return {int(at): int(size) for at, size in (await redis.hgetall(keys.stored(project))).items()}


async def test_a_project_at_its_budget_gets_429_for_a_heavy_submit_while_light_ones_and_other_projects_pass(
    start_service: Any,
):
    api = await start_service(workers=False, limits=LimitsConfig(stored_bytes_per_project=BUDGET))
    for _ in range(2):
        await api.submit("noop", {}, project_id="big", metadata=LARGE)

    async with api.client.post("/api/v1/tasks/submit", json=heavy_body("big")) as refused:
        body = await refused.json()
    light = await api.submit("noop", {"n": 1}, project_id="big", metadata={"scene": 4})
    other = await api.submit("noop", {}, project_id="other", metadata=LARGE)

    assert refused.status == 429
    assert body["error"] == "rate_limited"
    assert body["message"].startswith("Project 'big' stores 17.")
    assert f"at most {BUDGET / 1024:.1f} KiB may be stored" in body["message"]
    assert "large or long-kept tasks" in body["message"]
    # Until the older of the two records expires: storage.task_ttl from its submit, rounded up.
    assert 0 < body["retry_after"] == int(refused.headers["Retry-After"]) <= 24 * 3600 + 4096
    assert light["status"] == other["status"] == "queued"


async def test_a_refused_heavy_submit_stores_nothing(start_service: Any, redis: Redis):
    api = await start_service(workers=False, limits=LimitsConfig(stored_bytes_per_project=BUDGET))
    for _ in range(2):
        await api.submit("noop", {}, project_id="big", metadata=LARGE)
    before = (await redis.zcard(keys.project("big")), await stored(redis, "big"))

    async with api.client.post("/api/v1/tasks/submit", json=heavy_body("big")) as refused:
        assert refused.status == 429

    assert (await redis.zcard(keys.project("big")), await stored(redis, "big")) == before


async def test_a_task_kept_longer_than_the_task_ttl_counts_however_small(start_service: Any, redis: Redis):
    api = await start_service(workers=False, limits=LimitsConfig(stored_bytes_per_project=1500))
    await api.submit("noop", {}, project_id="kept", keep_for=WEEK)

    async with api.client.post(
        "/api/v1/tasks/submit",
        json={"project_id": "kept", "task_type": "noop", "task_data": {}, "keep_for": WEEK},
    ) as refused:
        assert refused.status == 429
    await api.submit("noop", {}, project_id="kept", keep_for=3600)


async def test_the_budget_is_given_back_when_the_heavy_records_expire(start_service: Any, redis: Redis):
    await start_service(workers=False)  # the task types, the scripts' keys
    # A two-second storage.task_ttl (the config's least is a minute): the test waits for real expiry.
    store = TaskStore(redis, 2)
    admission = Admission(stored_bytes_per_project=12_000)
    await alive(redis, "worker-a")
    first = large_task("brief")
    await store.create(*first, admission)
    # Ended: a queued record is kept as long as it waits, by the look of the service's keeper
    # (taskd.engine.keeper), which on a loaded machine came after the create now and then.
    (start,) = (await store.take("default", "worker-a", time.time(), 1, 100)).started
    assert start.record is not None
    await store.finish(start.record, "worker-a", TaskStatus.COMPLETED, time.time())

    with pytest.raises(RateLimited) as refused:
        await store.create(*large_task("brief"), admission)
    assert 1 <= refused.value.retry_after <= 3
    await asyncio.sleep(refused.value.retry_after)

    assert not await redis.exists(keys.task(first[0].task_id))
    await store.create(*large_task("brief"), admission)


def large_task(project: str) -> Any:
    """A noop task of `project` with LARGE metadata, and its job."""
    record, job = new_task(project)
    return attrs.evolve(record, metadata=LARGE, created_at=time.time()), job


async def test_a_heavy_record_renewed_at_its_end_is_moved_to_its_new_expiry_not_counted_twice(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    store = TaskStore(redis, 24 * 3600)
    submitted = await api.submit("noop", {}, project_id="moved", metadata=LARGE, keep_for=WEEK)
    at_submit = await stored(redis, "moved")
    await alive(redis, "worker-a")
    (start,) = (await store.take("default", "worker-a", time.time(), 1, 100)).started
    assert start.record is not None
    await store.finish(start.record, "worker-a", TaskStatus.COMPLETED, time.time())

    at_end = await stored(redis, "moved")
    record = await redis.hmget(keys.task(submitted["task_id"]), "stored_until", "stored_bytes")

    # Counted until a day from its submit, then until a week from its end: once, where it is now.
    ((until_then, _),) = at_submit.items()
    assert abs(until_then - (time.time() + 24 * 3600)) < 24 * 3600 / 16
    assert at_end == {int(record[0]): int(record[1])}
    assert abs(int(record[0]) - (time.time() + WEEK)) < WEEK / 16


async def test_a_heavy_task_queued_late_for_its_time_is_counted_until_its_new_expiry_once(
    start_service: Any, redis: Redis
):
    await start_service(workers=False)
    store = TaskStore(redis, 60)
    record, job = large_task("late")
    record = attrs.evolve(record, scheduled_for=record.created_at + 120)
    await store.create(record, job, Admission())
    (was,) = await stored(redis, "late")

    assert await store.queue_due(record.created_at + 200, 10) == 1

    at_due = await stored(redis, "late")
    until, size = await redis.hmget(keys.task(record.task_id), "stored_until", "stored_bytes")
    assert at_due == {int(until): int(size)}
    assert int(until) > was


async def test_a_light_dependency_kept_for_a_task_scheduled_days_ahead_is_counted_until_then(
    start_service: Any, redis: Redis
):
    taskd = await start_service()
    first = await taskd.submit("noop", {}, project_id="kept")
    await taskd.wait_terminal(first["task_id"])
    assert await stored(redis, "kept") == {}

    await taskd.submit(
        "noop", {}, project_id="kept", depends_on=[first["task_id"]], delay_seconds=3 * 24 * 3600
    )

    until, size = await redis.hmget(keys.task(first["task_id"]), "stored_until", "stored_bytes")
    assert int(until) >= time.time() + 3 * 24 * 3600
    assert (await stored(redis, "kept"))[int(until)] >= int(size) > 0


async def test_a_heavy_task_queued_by_its_dependencys_end_is_counted_once(start_service: Any, redis: Redis):
    api = await start_service(workers=False)
    store = TaskStore(redis, 24 * 3600)
    first = await api.submit("noop", {}, project_id="chain")
    second = await api.submit("noop", {}, project_id="chain", metadata=LARGE, depends_on=[first["task_id"]])
    await alive(redis, "worker-a")
    (start,) = (await store.take("default", "worker-a", time.time(), 1, 100)).started
    assert start.record is not None
    await store.finish(start.record, "worker-a", TaskStatus.COMPLETED, time.time())

    assert (await api.status(second["task_id"]))["status"] == "queued"
    until, size = await redis.hmget(keys.task(second["task_id"]), "stored_until", "stored_bytes")
    assert await stored(redis, "chain") == {int(until): int(size)}


async def test_a_batch_with_a_heavy_task_over_the_budget_stores_none_of_its_tasks(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False, limits=LimitsConfig(stored_bytes_per_project=12_000))
    tasks = [
        {"project_id": "batched", "task_type": "noop", "task_data": {}},
        heavy_body("batched"),
        heavy_body("batched"),
    ]

    async with api.client.post("/api/v1/tasks/batch", json={"tasks": tasks}) as refused:
        body = await refused.json()

    assert refused.status == 429, body
    assert body["error"] == "rate_limited" and "tasks[2]" in body["message"]
    assert await redis.zcard(keys.project("batched")) == 0
    assert not await redis.exists(keys.stored("batched"))


async def held_with_end_events(redis: Redis, task_id: str, project: str, marker: bytes) -> tuple[int, int]:
    """How many of the task's and its project's event streams' events carry `marker` (its end's
    copies of a result or error), and the bytes its record and those events hold."""
    record = await redis.hgetall(keys.task(task_id))
    ends = [
        fields[b"event"]
        for stream in (keys.task_events(task_id), keys.project_events(project))
        for _, fields in await redis.xrange(stream)
        if marker in fields[b"event"]
    ]
    held = sum(len(name) + len(value) for name, value in record.items()) + sum(len(event) for event in ends)
    return len(ends), held


async def test_a_failed_tasks_error_counts_with_its_copies_in_the_task_and_project_event_streams(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    store = TaskStore(redis, 24 * 3600)
    submitted = await api.submit("noop", {}, project_id="failing", metadata=LARGE)
    await alive(redis, "worker-a")
    (start,) = (await store.take("default", "worker-a", time.time(), 1, 100)).started
    assert start.record is not None
    await store.finish(start.record, "worker-a", TaskStatus.FAILED, time.time(), error="e" * 3900)

    ends, held = await held_with_end_events(redis, submitted["task_id"], "failing", b"e" * 3900)

    assert ends == 2
    assert sum((await stored(redis, "failing")).values()) >= held


async def test_a_failed_tasks_long_traceback_counts_however_short_its_data_and_error(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    store = TaskStore(redis, 24 * 3600)
    submitted = await api.submit("noop", {}, project_id="traced")
    await alive(redis, "worker-a")
    (start,) = (await store.take("default", "worker-a", time.time(), 1, 100)).started
    assert start.record is not None
    # A handler's exception raised from one whose message held 30,000 characters of what it read.
    trace = "Traceback (most recent call last):\n" + "t" * 30_000
    await store.finish(
        start.record, "worker-a", TaskStatus.FAILED, time.time(), error="short", traceback=trace
    )

    record = await redis.hgetall(keys.task(submitted["task_id"]))

    assert sum((await stored(redis, "traced")).values()) >= sum(
        len(name) + len(value) for name, value in record.items()
    )


async def test_a_batch_whose_heavy_tasks_together_are_over_the_budget_is_told_so_not_to_wait_an_hour(
    start_service: Any,
):
    # Room for two of the batch's three heavy tasks, in a project that stores nothing yet.
    api = await start_service(workers=False, limits=LimitsConfig(stored_bytes_per_project=BUDGET))
    tasks = [heavy_body("batched")] * 3

    async with api.client.post("/api/v1/tasks/batch", json={"tasks": tasks}) as refused:
        body = await refused.json()

    assert refused.status == 429, body
    assert "this batch's large or long-kept tasks together" in body["message"], body["message"]
    assert "smaller batches" in body["message"]


async def test_a_large_result_is_stored_and_counted_and_the_projects_next_heavy_submit_waits(
    start_service: Any, redis: Redis
):
    api = await start_service(limits=LimitsConfig(stored_bytes_per_project=12_000))
    big = await api.submit("big_result", {"characters": 20_000}, project_id="results")

    ended = await api.wait_terminal(big["task_id"])
    async with api.client.post("/api/v1/tasks/submit", json=heavy_body("results")) as refused:
        assert refused.status == 429
    light = await api.submit("noop", {}, project_id="results")

    assert ended["status"] == "completed"
    assert sum((await stored(redis, "results")).values()) > 20_000
    assert light["status"] in ("queued", "processing", "completed")


async def test_a_completed_tasks_result_counts_with_its_copies_in_the_task_and_project_event_streams(
    start_service: Any, redis: Redis
):
    api = await start_service(limits=LimitsConfig(stored_bytes_per_project=0))
    big = await api.submit("big_result", {"characters": 20_000}, project_id="copies")
    await api.wait_terminal(big["task_id"])

    ends, held = await held_with_end_events(redis, big["task_id"], "copies", b'"result"')

    # Its end's event carries the result on both streams, which live a day past it (lib/emit.lua).
    assert ends == 2
    assert sum((await stored(redis, "copies")).values()) >= held


async def test_a_light_task_sends_no_command_for_the_budget_from_its_submit_to_its_end(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    store = TaskStore(redis, 24 * 3600)
    await alive(redis, "worker-a")

    async def submit_run_and_end() -> None:
        await api.submit("noop", {"scene": 1}, project_id="light", metadata={"shot": 2})
        (start,) = (await store.take("default", "worker-a", time.time(), 1, 100)).started
        assert start.record is not None
        await store.finish(start.record, "worker-a", TaskStatus.COMPLETED, time.time(), result={"ok": 1})

    await submit_run_and_end()  # the scripts loaded
    _, sent, ran = await monitored(redis, submit_run_and_end)

    assert [command for command in sent + ran if "stored" in command] == []
    assert not await redis.exists(keys.stored("light"))


async def test_with_no_budget_heavy_tasks_are_all_accepted_and_still_counted(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False, limits=LimitsConfig(stored_bytes_per_project=0))
    for _ in range(3):
        await api.submit("noop", {}, project_id="unbounded", metadata=LARGE)

    assert sum((await stored(redis, "unbounded")).values()) > 3 * 8000


async def test_a_new_second_in_a_projects_count_drops_its_past_ones(start_service: Any, redis: Redis):
    api = await start_service(workers=False, limits=LimitsConfig(stored_bytes_per_project=0))
    await redis.hset(keys.stored("old"), "1000", "5000")  # gone since 1970, never read by a submit

    await api.submit("noop", {}, project_id="old", metadata=LARGE)

    assert 1000 not in await stored(redis, "old")


def test_the_storage_budget_is_set_by_its_documented_name_and_defaults_to_256_mib():
    assert load_config(None, {}).limits.stored_bytes_per_project == 256 * 1024 * 1024
    environ = {"TASKD_LIMITS__STORED_BYTES_PER_PROJECT": "0"}
    assert load_config(None, environ).limits.stored_bytes_per_project == 0


async def test_a_large_result_leaves_its_projects_busy_event_stream_once_its_record_is_gone(
    start_service: Any, redis: Redis
):
    await start_service(workers=False)  # the task types, the scripts' keys
    # A two-second storage.task_ttl: records, and so the streams (keys.events_ttl), live 2 s.
    store = TaskStore(redis, 2)
    await alive(redis, "worker-a")

    async def large_result() -> str:
        record, job = new_task("busy")
        await store.create(record, job, Admission())
        (start,) = (await store.take("default", "worker-a", time.time(), 1, 100)).started
        assert start.record is not None
        await store.finish(
            start.record, "worker-a", TaskStatus.COMPLETED, time.time(), result={"x": "r" * 20_000}
        )
        return start.record.task_id  # the oldest queued task of the project's

    first = await large_result()
    # Light tasks keep the project's stream alive past the first record's life.
    for _ in range(3):
        await asyncio.sleep(1)
        await store.create(*new_task("busy"), Admission())
    assert not await redis.exists(keys.task(first))
    second = await large_result()

    results = [
        orjson.loads(fields[b"event"])["task_id"]
        for _, fields in await redis.xrange(keys.project_events("busy"))
        if b'"result"' in fields[b"event"]
    ]
    assert results == [second]


async def test_a_task_whose_stored_trace_context_is_large_counts_however_small_its_data(
    start_service: Any, redis: Redis
):
    await start_service(workers=False)  # the task types, the scripts' keys
    store = TaskStore(redis, 24 * 3600)
    record, job = new_task("traced_submit")
    # A record written before taskd dropped the caller's `tracestate` keeps it (up to 8 KiB).
    state = ",".join(f"k{n}={'v' * 250}" for n in range(30))
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await store.create(
        attrs.evolve(record, trace_context={"traceparent": parent, "tracestate": state}), job, Admission()
    )

    fields = await redis.hgetall(keys.task(record.task_id))

    assert sum((await stored(redis, "traced_submit")).values()) >= sum(
        len(name) + len(value) for name, value in fields.items()
    )


# ~4 KiB of input whose prompt renders ~760,000 characters: test_prompt's result repeats it.
AMPLIFIED = {"prompt_template": "{{a}}" * 400, "test_parameters": {"a": "y" * 1900}}
RENDERED = 400 * 1900


def prompt_body(project: str) -> dict[str, Any]:
    return {"project_id": project, "task_type": "test_prompt", "task_data": AMPLIFIED}


async def test_a_light_input_whose_test_prompt_renders_large_reserves_its_result_and_is_refused_past_the_budget(
    start_service: Any, redis: Redis
):
    # Room for one such result (the record and its two end events: ~2.3 MB), not two.
    api = await start_service(workers=False, limits=LimitsConfig(stored_bytes_per_project=3 * 2**20))
    first = await api.submit("test_prompt", AMPLIFIED, project_id="echo")
    counted = await stored(redis, "echo")

    async with api.client.post("/api/v1/tasks/submit", json=prompt_body("echo")) as refused:
        body = await refused.json()

    assert refused.status == 429, body
    assert body["error"] == "rate_limited"
    assert await redis.zcard(keys.project("echo")) == 1
    assert await stored(redis, "echo") == counted
    estimate, size = await redis.hmget(keys.task(first["task_id"]), "result_estimate", "stored_bytes")
    assert int(estimate) == RENDERED
    assert sum(counted.values()) == int(size) > 3 * RENDERED


async def test_a_batch_of_light_inputs_whose_test_prompts_render_large_over_the_budget_stores_none(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False, limits=LimitsConfig(stored_bytes_per_project=3 * 2**20))
    tasks = [{"project_id": "echoes", "task_type": "noop", "task_data": {}}] + [prompt_body("echoes")] * 2

    async with api.client.post("/api/v1/tasks/batch", json={"tasks": tasks}) as refused:
        body = await refused.json()

    assert refused.status == 429, body
    assert "tasks[2]" in body["message"]
    assert await redis.zcard(keys.project("echoes")) == 0
    assert not await redis.exists(keys.stored("echoes"))


async def test_a_test_prompts_reservation_is_replaced_by_its_real_result_at_its_end(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    store = TaskStore(redis, 24 * 3600)
    submitted = await api.submit("test_prompt", AMPLIFIED, project_id="answered")
    reserved = sum((await stored(redis, "answered")).values())
    await alive(redis, "worker-a")
    (start,) = (await store.take("default", "worker-a", time.time(), 1, 100)).started
    assert start.record is not None
    # A result smaller than the estimate, still over the free 4 KiB: counted as it is, once.
    result = {"rendered_prompt": "z" * 50_000, "response": "ok"}
    await store.finish(start.record, "worker-a", TaskStatus.COMPLETED, time.time(), result=result)

    record = await redis.hgetall(keys.task(submitted["task_id"]))
    counted = await stored(redis, "answered")

    assert counted == {int(record[b"stored_until"]): int(record[b"stored_bytes"])}
    held = sum(len(name) + len(value) for name, value in record.items())
    # The record and its result's two copies on the event streams, not the reservation as well.
    assert held + 2 * 50_000 < sum(counted.values()) < held + 2 * 50_000 + 2 * 4096 < reserved


async def test_a_cancelled_test_prompt_gives_its_reservation_back(start_service: Any, redis: Redis):
    api = await start_service(workers=False)
    submitted = await api.submit("test_prompt", AMPLIFIED, project_id="dropped")

    async with api.client.delete(f"/api/v1/tasks/{submitted['task_id']}") as cancelled:
        assert cancelled.status == 200
    record = await redis.hgetall(keys.task(submitted["task_id"]))

    assert record[b"status"] == b"cancelled"
    assert await stored(redis, "dropped") == {int(record[b"stored_until"]): int(record[b"stored_bytes"])}
    assert int(record[b"stored_bytes"]) < 8192


async def test_a_small_test_prompt_stays_light(start_service: Any, redis: Redis):
    api = await start_service(workers=False, limits=LimitsConfig(stored_bytes_per_project=1500))
    data = {"prompt_template": "Describe {{who}}.", "test_parameters": {"who": "a librarian"}}
    submitted = await api.submit("test_prompt", data, project_id="small")

    assert await redis.hget(keys.task(submitted["task_id"]), "result_estimate") == b"%d" % len(
        "Describe a librarian."
    )
    assert not await redis.exists(keys.stored("small"))


async def test_a_test_prompt_whose_parameter_is_a_ref_reserves_the_rendered_limit(
    start_service: Any, redis: Redis
):
    # A small dependency's result may still render large when the template repeats it.
    api = await start_service(workers=False)
    first = await api.submit("noop", {}, project_id="referring")
    data = {"prompt_template": "{{a}}" * 400, "test_parameters": {"a": {"$ref": f"{first['task_id']}#/text"}}}
    submitted = await api.submit("test_prompt", data, project_id="referring", depends_on=[first["task_id"]])

    estimate = await redis.hget(keys.task(submitted["task_id"]), "result_estimate")

    assert int(estimate) == RENDERED_LIMIT


async def test_a_test_prompt_reserves_no_more_than_a_result_may_hold(start_service: Any, redis: Redis):
    # Its parameter, a $ref, may render up to RENDERED_LIMIT; its result, at most result_max_bytes.
    api = await start_service(workers=False, execution=ExecutionConfig(result_max_bytes=300_000))
    first = await api.submit("noop", {}, project_id="referring")
    data = {"prompt_template": "{{a}}", "test_parameters": {"a": {"$ref": f"{first['task_id']}#/text"}}}
    submitted = await api.submit("test_prompt", data, project_id="referring", depends_on=[first["task_id"]])

    assert await redis.hget(keys.task(submitted["task_id"]), "result_estimate") == b"300000"


async def submit_prompt_made_by_a_ref(api: Any, task_data: dict[str, Any]) -> dict[str, Any]:
    """A test_prompt whose task_data has a $ref (to "@dependency") where its type refuses None."""
    first = await api.submit("noop", {}, project_id="referring")
    filled = orjson.loads(orjson.dumps(task_data).replace(b"@dependency", first["task_id"].encode()))
    return await api.submit("test_prompt", filled, project_id="referring", depends_on=[first["task_id"]])


async def test_a_test_prompt_whose_template_is_a_ref_is_accepted_and_reserves_the_result_limit(
    start_service: Any, redis: Redis
):
    # The template, and so the rendered prompt, is known only when it runs.
    api = await start_service(workers=False, execution=ExecutionConfig(result_max_bytes=300_000))
    submitted = await submit_prompt_made_by_a_ref(api, {"prompt_template": {"$ref": "@dependency#/text"}})

    assert await redis.hget(keys.task(submitted["task_id"]), "result_estimate") == b"300000"


async def test_a_test_prompt_whose_parameters_are_one_ref_is_accepted_and_reserves_the_result_limit(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False, execution=ExecutionConfig(result_max_bytes=300_000))
    data = {"prompt_template": "{{a}}", "test_parameters": {"$ref": "@dependency#"}}
    submitted = await submit_prompt_made_by_a_ref(api, data)

    assert await redis.hget(keys.task(submitted["task_id"]), "result_estimate") == b"300000"


async def test_a_retry_of_a_test_prompt_whose_template_is_a_ref_reserves_the_result_limit(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False, execution=ExecutionConfig(result_max_bytes=300_000))
    submitted = await submit_prompt_made_by_a_ref(api, {"prompt_template": {"$ref": "@dependency#/text"}})
    async with api.client.delete(f"/api/v1/tasks/{submitted['task_id']}") as cancelled:
        assert cancelled.status == 200

    async with api.client.post(f"/api/v1/tasks/{submitted['task_id']}/retry") as retried:
        assert retried.status == 200, await retried.text()
        again = (await retried.json())["new_task_id"]

    assert await redis.hget(keys.task(again), "result_estimate") == b"300000"


@pytest.mark.parametrize(
    "parameter",
    [{"v": {"$ref": "@dependency#/text"}}, [{"$ref": "@dependency#/text"}]],
    ids=["object", "list"],
)
async def test_a_test_prompt_whose_parameter_holds_a_ref_reserves_the_rendered_limit(
    start_service: Any, redis: Redis, parameter: Any
):
    # Only a parameter that was itself a $ref counted: one inside it rendered as null, a light submit.
    api = await start_service(workers=False)
    data = {"prompt_template": "{{a}}" * 400, "test_parameters": {"a": parameter}}
    submitted = await submit_prompt_made_by_a_ref(api, data)

    estimate = await redis.hget(keys.task(submitted["task_id"]), "result_estimate")

    assert int(estimate) == RENDERED_LIMIT


async def test_a_heavy_queued_record_kept_past_its_expiry_stays_counted_until_its_new_one(
    start_service: Any, redis: Redis
):
    api = await start_service(workers=False)
    task_id = (await api.submit("noop", {}, project_id="big", metadata=LARGE))["task_id"]
    # The service's own look at its start, had it come after the changes below, renewed the record
    # before the test's look, which then had nothing to renew.
    await keeper_looked(redis)
    # As if it had waited all but a few seconds of storage.task_ttl: the keeper renews it.
    await redis.expire(keys.task(task_id), 3)
    record = await redis.hgetall(keys.task(task_id))
    await redis.hset(keys.task(task_id), "stored_until", int(time.time()) + 3)
    await redis.hset(keys.stored("big"), str(int(time.time()) + 3), record[b"stored_bytes"])
    await redis.hdel(keys.stored("big"), record[b"stored_until"])

    await LiveRecords(TaskStore(redis, 24 * 3600), ["default"]).once()

    assert max(await stored(redis, "big")) > time.time() + 23 * 3600
