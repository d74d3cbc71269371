"""`depends_on` and `$ref` (issue 17, items 1 and 2): steps that wait for, and read, earlier steps."""

from __future__ import annotations

import sys
import uuid

import pytest
from redis.asyncio import Redis

from taskd import keys
from taskd.config import ExecutionConfig, LimitsConfig
from taskd.model import ValidationError
from taskd.shapes import MAX_DEPENDS_ON
from taskd.submit.submission import parse_submission
from taskd.tasks.registry import Registry, default_registry


def ref(task_id, pointer):
    return {"$ref": f"{task_id}#{pointer}"}


async def refused(service, task_type, task_data, **fields):
    body = {"project_id": fields.pop("project_id", "proj-1"), "task_type": task_type, "task_data": task_data}
    async with service.client.post("/api/v1/tasks/submit", json={**body, **fields}) as response:
        assert response.status == 400, await response.text()
        return await response.json()


async def test_a_three_step_chain_feeds_each_result_into_the_next_step(start_service):
    taskd = await start_service()
    first = await taskd.submit("append", {"text": "storyboard"})
    second = await taskd.submit(
        "append", {"text": ref(first["task_id"], "/text")}, depends_on=[first["task_id"]]
    )
    third = await taskd.submit(
        "append", {"text": ref(second["task_id"], "/text"), "suffix": "?"}, depends_on=[second["task_id"]]
    )

    body = await taskd.wait_terminal(third["task_id"])

    assert body["status"] == "completed", body
    assert body["result"]["text"] == "storyboard!!?"
    assert body["depends_on"] == [second["task_id"]]


async def test_a_completed_dependency_near_its_expiry_is_kept_as_long_as_a_task_submitted_to_read_it(
    start_service, redis: Redis
):
    taskd = await start_service()
    done = (await taskd.submit("noop", {}))["task_id"]
    await taskd.wait_terminal(done)
    # As if it had ended all but a minute of storage.task_ttl (a day) ago: a task queued now behind
    # a line longer than that minute would find it gone.
    await redis.expire(keys.task(done), 60)

    await taskd.submit("noop", {}, depends_on=[done])

    assert await redis.ttl(keys.task(done)) > 3600


async def test_a_waiting_task_is_queued_with_the_ids_it_still_waits_for(start_service):
    api_only = await start_service(workers=False)
    first = await api_only.submit("noop", {})
    second = await api_only.submit("noop", {})

    accepted = await api_only.submit("noop", {}, depends_on=[first["task_id"], second["task_id"]])
    body = await api_only.status(accepted["task_id"])

    assert accepted["status"] == "queued"
    assert accepted["queue_position"] == 0
    assert body["status"] == "queued"
    assert body["waiting_for"] == [first["task_id"], second["task_id"]]


async def test_a_waiting_task_no_longer_lists_a_dependency_that_completed(start_service):
    taskd = await start_service()
    quick = await taskd.submit("noop", {})
    slow = await taskd.submit("sleep", {"seconds": 30})
    waiting = await taskd.submit("noop", {}, depends_on=[quick["task_id"], slow["task_id"]])

    body = await taskd.wait_for(waiting["task_id"], lambda b: b.get("waiting_for") == [slow["task_id"]])

    assert body["status"] == "queued"


async def test_a_failing_first_step_cancels_the_rest_of_the_chain_naming_each_dependency(start_service):
    # The chain is stored before any worker runs: a first step that had already failed would
    # refuse the second's submit.
    taskd = await start_service(workers=False)
    first = await taskd.submit("fail", {})
    second = await taskd.submit("noop", {}, depends_on=[first["task_id"]])
    third = await taskd.submit("noop", {}, depends_on=[second["task_id"]])
    await start_service(http=False)

    assert (await taskd.wait_terminal(first["task_id"]))["status"] == "failed"
    second_body = await taskd.wait_terminal(second["task_id"])
    third_body = await taskd.wait_terminal(third["task_id"])

    assert second_body["status"] == "cancelled"
    assert second_body["error"] == f"Dependency '{first['task_id']}' failed"
    assert second_body["previous_state"] == "queued"
    assert second_body["started_at"] is None
    assert third_body["status"] == "cancelled"
    assert third_body["error"] == f"Dependency '{second['task_id']}' was cancelled"
    assert "waiting_for" not in third_body


async def test_a_task_nothing_waits_for_ends_without_reading_a_dependents_set(start_service, redis: Redis):
    taskd = await start_service()
    await redis.config_resetstat()

    task = await taskd.submit("noop", {})
    await taskd.wait_terminal(task["task_id"])

    assert "cmdstat_smembers" not in await redis.info("commandstats")


async def test_a_dependency_stored_without_the_dependents_flag_still_releases_its_dependents(
    start_service, redis: Redis
):
    api_only = await start_service(workers=False)
    first = await api_only.submit("noop", {})
    second = await api_only.submit("noop", {}, depends_on=[first["task_id"]])
    # As a record written by an earlier version, which kept no `dependents` field.
    await redis.hdel(keys.task(first["task_id"]), "dependents")
    await start_service(http=False)

    body = await api_only.wait_terminal(second["task_id"])

    assert body["status"] == "completed"


async def test_cancelling_a_task_cancels_the_tasks_waiting_for_it(start_service):
    api_only = await start_service(workers=False)
    first = await api_only.submit("noop", {})
    second = await api_only.submit("noop", {}, depends_on=[first["task_id"]])

    async with api_only.client.delete(f"/api/v1/tasks/{first['task_id']}") as response:
        assert response.status == 200
    body = await api_only.status(second["task_id"])

    assert body["status"] == "cancelled"
    assert body["error"] == f"Dependency '{first['task_id']}' was cancelled"


async def test_cancelling_a_waiting_task_cancels_its_own_dependents_and_leaves_its_dependency(start_service):
    api_only = await start_service(workers=False)
    first = await api_only.submit("noop", {})
    second = await api_only.submit("noop", {}, depends_on=[first["task_id"]])
    third = await api_only.submit("noop", {}, depends_on=[second["task_id"]])

    async with api_only.client.delete(f"/api/v1/tasks/{second['task_id']}") as response:
        assert response.status == 200
        assert (await response.json())["previous_state"] == "queued"

    assert (await api_only.status(first["task_id"]))["status"] == "queued"
    third_body = await api_only.status(third["task_id"])
    assert third_body["error"] == f"Dependency '{second['task_id']}' was cancelled"


async def test_cancelling_the_head_of_a_chain_deeper_than_luas_call_limit_cancels_every_link(
    start_service, redis: Redis
):
    # Lua nests at most ~16,000 calls: the chain's end once recursed a call per link.
    api_only = await start_service(
        workers=False,
        limits=LimitsConfig(
            queued_per_project=0, max_queue_length=0, submit_per_minute=0, concurrent_per_project=0
        ),
    )
    head = (await api_only.submit("noop", {}))["task_id"]
    last = head
    for _ in range(170):
        batch = [{"project_id": "proj-1", "task_type": "noop", "task_data": {}, "depends_on": [last]}]
        batch += [{**batch[0], "depends_on": [f"@{i}"]} for i in range(99)]
        async with api_only.client.post("/api/v1/tasks/batch", json={"tasks": batch}) as response:
            assert response.status == 200, await response.text()
            last = (await response.json())["tasks"][-1]["task_id"]

    async with api_only.client.delete(f"/api/v1/tasks/{head}") as response:
        assert response.status == 200, await response.text()

    assert (await api_only.status(last))["status"] == "cancelled"
    assert int(await redis.hget(keys.METRICS, "cancelled_tasks")) == 17_001
    assert await redis.scard(keys.project_active("proj-1")) == 0


async def test_a_dependency_completed_before_the_submit_does_not_hold_the_task(start_service):
    taskd = await start_service()
    first = await taskd.submit("append", {"text": "voice"})
    await taskd.wait_for(first["task_id"], lambda b: b["status"] == "completed")

    second = await taskd.submit(
        "append", {"text": ref(first["task_id"], "/text")}, depends_on=[first["task_id"]]
    )

    assert second["queue_position"] >= 1
    assert (await taskd.wait_terminal(second["task_id"]))["result"]["text"] == "voice!!"


async def test_an_unknown_dependency_is_refused_naming_depends_on(start_service):
    api_only = await start_service(workers=False)
    unknown = str(uuid.uuid4())

    body = await refused(api_only, "noop", {}, depends_on=[unknown])

    assert body["error"] == "validation_error"
    assert body["details"] == {"depends_on": f"Unknown task '{unknown}'"}


async def test_a_dependency_of_another_project_is_refused_naming_depends_on(start_service):
    api_only = await start_service(workers=False)
    theirs = await api_only.submit("noop", {}, project_id="other-project")

    body = await refused(api_only, "noop", {}, depends_on=[theirs["task_id"]])

    assert body["details"] == {"depends_on": f"Task '{theirs['task_id']}' belongs to another project"}


async def test_more_than_twenty_dependencies_are_refused(start_service):
    api_only = await start_service(workers=False)

    body = await refused(
        api_only, "noop", {}, depends_on=[str(uuid.uuid4()) for _ in range(MAX_DEPENDS_ON + 1)]
    )

    assert body["details"] == {"depends_on": f"depends_on may name at most {MAX_DEPENDS_ON} tasks"}


async def test_a_dependency_that_already_failed_is_refused(start_service):
    taskd = await start_service()
    first = await taskd.submit("fail", {})
    await taskd.wait_for(first["task_id"], lambda b: b["status"] == "failed")

    body = await refused(taskd, "noop", {}, depends_on=[first["task_id"]])

    assert body["details"] == {"depends_on": f"Dependency '{first['task_id']}' failed"}


async def test_a_ref_to_a_task_not_in_depends_on_is_refused_naming_the_field(start_service):
    api_only = await start_service(workers=False)
    first = await api_only.submit("noop", {})

    body = await refused(api_only, "append", {"text": ref(first["task_id"], "/text")})

    assert body["details"] == {
        "task_data.text": f"A $ref must name a task in depends_on; '{first['task_id']}' is not"
    }


async def test_a_malformed_ref_is_refused_naming_the_field(start_service):
    api_only = await start_service(workers=False)
    first = await api_only.submit("noop", {})

    body = await refused(api_only, "append", {"text": {"$ref": "no-pointer"}}, depends_on=[first["task_id"]])

    assert body["details"] == {"task_data.text": 'A $ref must be "<task_id>#/<JSON pointer>"'}


@pytest.mark.parametrize("whole", ["first#", "first#/text", 5])
async def test_task_data_that_is_itself_a_ref_is_refused_naming_task_data(start_service, whole):
    api_only = await start_service(workers=False)
    first = await api_only.submit("noop", {})
    value = whole.replace("first", first["task_id"]) if isinstance(whole, str) else whole

    body = await refused(api_only, "noop", {"$ref": value}, depends_on=[first["task_id"]])

    assert body["details"] == {
        "task_data": "Task data must be an object of fields, not a $ref: put the $ref in a field"
    }


async def test_a_batch_item_whose_task_data_is_a_ref_is_refused_naming_the_item(start_service):
    api_only = await start_service(workers=False)
    items = [
        {"project_id": "p", "task_type": "noop", "task_data": {}},
        {"project_id": "p", "task_type": "noop", "task_data": {"$ref": "@0#"}, "depends_on": ["@0"]},
    ]

    async with api_only.client.post("/api/v1/tasks/batch", json={"tasks": items}) as response:
        status, body = response.status, await response.json()

    assert (status, body["details"]) == (
        400,
        {"tasks[1].task_data": "Task data must be an object of fields, not a $ref: put the $ref in a field"},
    )


async def test_a_ref_stands_for_a_typed_value_at_submit_while_other_fields_are_checked(start_service):
    api_only = await start_service(workers=False)
    first = await api_only.submit("noop", {})

    body = await refused(
        api_only,
        "append",
        {"text": ref(first["task_id"], "/text"), "suffix": 5},
        depends_on=[first["task_id"]],
    )

    assert list(body["details"]) == ["task_data.suffix"]


async def test_a_ref_under_a_key_named_like_a_nested_field_leaves_that_fields_error_to_the_submit(
    start_service,
):
    # "tracks[0]" as text is also the first track: its $ref set aside the error at tracks[0].url, and
    # the task was stored to fail at its start.
    api_only = await start_service(workers=False)
    first = await api_only.submit("noop", {})

    body = await refused(
        api_only,
        "process_audio",
        {"tracks": [{"url": "ftp://x"}], "tracks[0]": ref(first["task_id"], "/text")},
        depends_on=[first["task_id"]],
    )

    assert list(body["details"]) == ["task_data.tracks[0].url"]


async def test_a_ref_read_by_a_check_of_the_list_holding_it_is_left_to_the_run(start_service):
    # Each dialogue line has a start before its end, or neither: checked on the whole list, which
    # saw a line "without a start" while its start was a $ref.
    api_only = await start_service(workers=False)
    first = await api_only.submit("noop", {})
    line = {"speaker": "Ada", "text": "Hello", "start": ref(first["task_id"], "/attempt"), "end": 5}

    await api_only.submit("generate_video", {"dialogue": [line]}, depends_on=[first["task_id"]])


async def test_a_list_too_long_is_refused_at_submit_though_an_item_holds_a_ref(start_service):
    # Whole-list checks wait for a $ref in an item (the test above), but a list's length is the
    # caller's whatever the $ref brings: 51 lines were stored, queued behind their dependency, and
    # failed at their start.
    api_only = await start_service(workers=False)
    first = await api_only.submit("noop", {})
    lines = [{"text": "Hello", "start": ref(first["task_id"], "/attempt"), "end": 5}]
    lines += [{"text": "Hello"}] * 50

    body = await refused(api_only, "generate_video", {"dialogue": lines}, depends_on=[first["task_id"]])

    assert body["details"] == {"task_data.dialogue": "Dialogue must have at most 50 lines"}


async def test_a_list_too_long_is_refused_at_submit_though_a_ref_fills_a_string_in_an_item(start_service):
    # The $ref's None where a track's url goes kept the tracks from being built, and with them
    # their length check: 17 tracks were stored, queued behind their dependency, and failed at
    # their start.
    api_only = await start_service(workers=False)
    first = await api_only.submit("noop", {})
    tracks = [{"url": ref(first["task_id"], "/text")}] + [{"url": "https://example.com/a.mp3"}] * 16

    body = await refused(api_only, "process_audio", {"tracks": tracks}, depends_on=[first["task_id"]])

    assert body["details"] == {"task_data.tracks": "Tracks must have at most 16 tracks"}


async def test_a_field_beside_a_ref_in_an_item_is_checked_at_submit(start_service):
    # The $ref's None where a track's url goes kept the track from being built, and with it every
    # check of the task_data below the top: a gain of 100 dB was stored to fail at its start.
    api_only = await start_service(workers=False)
    first = await api_only.submit("noop", {})
    tracks = [{"url": ref(first["task_id"], "/text"), "gain_db": 100}]

    body = await refused(api_only, "process_audio", {"tracks": tracks}, depends_on=[first["task_id"]])

    assert body["details"] == {"task_data.tracks[0].gain_db": "Gain must be between -60 and 24 dB"}


@pytest.mark.parametrize(
    ("field", "holding", "at"),
    [
        ("in_a_tuple", lambda shots: shots, "[1]"),
        ("by_name", lambda shots: dict(zip("ab", shots, strict=True)), ".b"),
    ],
    ids=["tuple", "mapping"],
)
async def test_an_object_beside_a_ref_in_a_tuple_or_mapping_field_is_checked_at_submit(
    start_service, field, holding, at
):
    # Only a list or Sequence of objects was checked inside: in a plugin's tuple or Mapping, a shot
    # of 50 s beside one whose url is a $ref was stored, to fail at its start.
    api_only = await start_service(workers=False)
    first = await api_only.submit("noop", {})
    shots = [{"url": ref(first["task_id"], "/text")}, {"url": "https://example.com/b.png", "seconds": 50}]

    body = await refused(api_only, "shots", {field: holding(shots)}, depends_on=[first["task_id"]])

    assert body["details"] == {f"task_data.{field}{at}.seconds": "Seconds must be between 0 and 10"}


CUT_BACKWARDS = {"url": "https://example.com/a.mp3", "start": 5, "end": 1}


@pytest.mark.parametrize(
    ("ref_at", "task_data", "field"),
    [
        ("/text", lambda pointer: {"tracks": [{"url": pointer}, CUT_BACKWARDS]}, "task_data.tracks[1].end"),
        (
            "/attempt",
            lambda pointer: {"tracks": [CUT_BACKWARDS], "sample_rate": pointer},
            "task_data.tracks[0].end",
        ),
    ],
    ids=["beside-an-item-with-a-ref", "beside-a-top-level-ref"],
)
async def test_an_object_without_a_ref_is_checked_whole_at_submit_beside_one(
    start_service, ref_at, task_data, field
):
    # Its own checks (an end after its start) never ran where a $ref elsewhere kept the whole
    # task_data from being built: the track was stored to fail at its start.
    api_only = await start_service(workers=False)
    first = await api_only.submit("noop", {})

    body = await refused(
        api_only, "process_audio", task_data(ref(first["task_id"], ref_at)), depends_on=[first["task_id"]]
    )

    assert body["details"] == {field: "End (1 s) must be after start (5 s)"}


def python_calls_to_check(registry: Registry, count: int) -> int:
    """The Python function calls a submit's check makes of a list of `count` $refs (a count that
    no machine's load changes, as a time would)."""
    body = {
        "project_id": "proj-1",
        "task_type": "generate_video",
        "depends_on": ["dep"],
        "task_data": {"storyboard_images": [ref("dep", "/url")] * count},
    }
    calls = 0

    def count_calls(_frame, event, _arg):
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count_calls)
    try:
        with pytest.raises(ValidationError):
            parse_submission(body, registry)
    finally:
        sys.setprofile(None)
    return calls


def test_a_submit_checks_its_refs_in_steps_linear_in_their_number():
    # Each error was compared with each $ref: 4,998 $refs (a 1 MB body) held the API's event loop
    # for 8 s, in the time of one submit.
    registry = default_registry()
    python_calls_to_check(registry, 40)  # cattrs builds its hooks on first use

    assert python_calls_to_check(registry, 2000) < 3 * python_calls_to_check(registry, 1000)


async def test_a_ref_that_resolves_to_nothing_fails_the_task_naming_the_ref(start_service):
    taskd = await start_service()
    first = await taskd.submit("append", {"text": "mix"})
    second = await taskd.submit(
        "append", {"text": ref(first["task_id"], "/no/such/field")}, depends_on=[first["task_id"]]
    )

    body = await taskd.wait_terminal(second["task_id"])

    assert body["status"] == "failed"
    assert f"$ref '{first['task_id']}#/no/such/field'" in body["error"]
    assert "task_data.text" in body["error"]


async def test_a_ref_indexing_a_list_with_thousands_of_digits_fails_the_task_naming_the_ref(start_service):
    taskd = await start_service()
    first = await taskd.submit("collections", {})  # its result holds lists: {"a_tuple": ["tuple", []], …}
    pointer = "/a_tuple/" + "1" * 5000  # more digits than int() reads (4,300)
    second = await taskd.submit(
        "append", {"text": ref(first["task_id"], pointer)}, depends_on=[first["task_id"]]
    )

    body = await taskd.wait_terminal(second["task_id"])

    assert body["status"] == "failed"
    # The error is cut to its limit in the middle of the pointer.
    assert body["error"].startswith(f"$ref '{first['task_id']}#/a_tuple/111")
    assert body["error"].endswith("' at task_data.text resolves to nothing in that task's result")


async def test_a_ref_value_of_the_wrong_type_fails_with_the_field_named_message(start_service):
    taskd = await start_service()
    first = await taskd.submit("append", {"text": "scene"})
    second = await taskd.submit(
        "append", {"text": ref(first["task_id"], "/length")}, depends_on=[first["task_id"]]
    )

    body = await taskd.wait_terminal(second["task_id"])

    assert body["status"] == "failed"
    assert body["error"].startswith("Invalid task data: {'task_data.text': ")


async def test_a_run_refusing_what_a_ref_brought_names_the_ref(start_service):
    # The submit set the field's check aside for the $ref; the run's error named the field alone.
    taskd = await start_service()
    first = await taskd.submit("append", {"text": "scene"})
    pointer = f"{first['task_id']}#/length"
    second = await taskd.submit(
        "append", {"text": {"$ref": pointer}, "suffix": "?"}, depends_on=[first["task_id"]]
    )

    body = await taskd.wait_terminal(second["task_id"])

    assert body["status"] == "failed"
    assert body["error"] == (
        f"Invalid task data: {{'task_data.text': 'Must be a string'}}; filled in by $ref: task_data.text = '{pointer}'"
    )


async def test_refs_that_would_copy_a_result_past_the_limit_fail_the_task_before_it_runs(start_service):
    # Limit: max_body_bytes + 20 x result_max_bytes = 10,000 + 20 x 1,000 = 30,000 bytes.
    taskd = await start_service(
        limits=LimitsConfig(max_body_bytes=10_000),
        execution=ExecutionConfig(
            cancel_grace=2, reclaim_interval=0.5, shutdown_grace=2, result_max_bytes=1_000
        ),
    )
    first = await taskd.submit("append", {"text": "x" * 900})
    source = ref(first["task_id"], "/text")
    fits = await taskd.submit("noop", {"copies": [source] * 10}, depends_on=[first["task_id"]])
    over = await taskd.submit("noop", {"copies": [source] * 40}, depends_on=[first["task_id"]])

    assert (await taskd.wait_terminal(fits["task_id"]))["status"] == "completed"
    failed = await taskd.wait_terminal(over["task_id"])
    assert failed["status"] == "failed"
    assert failed["error"].startswith("task_data with its $refs filled in would be ")
    assert failed["error"].endswith(
        "bytes as JSON, over its limit of 30000 (limits.max_body_bytes + 20 x execution.result_max_bytes)"
    )


async def test_a_retry_of_a_task_cancelled_by_its_failed_dependency_is_refused(start_service):
    taskd = await start_service(workers=False)  # stored before its dependency can fail
    first = await taskd.submit("fail", {})
    second = await taskd.submit("noop", {}, depends_on=[first["task_id"]])
    await start_service(http=False)
    await taskd.wait_for(second["task_id"], lambda b: b["status"] == "cancelled")

    async with taskd.client.post(f"/api/v1/tasks/{second['task_id']}/retry") as response:
        assert response.status == 400
        body = await response.json()

    assert body["details"] == {"depends_on": f"Dependency '{first['task_id']}' failed"}


async def test_a_retried_step_runs_alone_and_the_dependents_its_end_cancelled_stay_cancelled(start_service):
    taskd = await start_service(workers=False)  # the chain is stored, and ended, before anything runs
    first = await taskd.submit("append", {"text": "storyboard"})
    second = await taskd.submit(
        "append", {"text": ref(first["task_id"], "/text")}, depends_on=[first["task_id"]]
    )
    async with taskd.client.delete(f"/api/v1/tasks/{first['task_id']}") as response:
        assert response.status == 200
    async with taskd.client.post(f"/api/v1/tasks/{first['task_id']}/retry") as response:
        assert response.status == 200
        retried = (await response.json())["new_task_id"]
    await start_service(http=False)

    assert (await taskd.wait_terminal(retried))["status"] == "completed"
    body = await taskd.status(second["task_id"])
    assert (body["status"], body["error"]) == ("cancelled", f"Dependency '{first['task_id']}' was cancelled")
    # What docs/api.md tells the caller to do instead: submit the rest again, after the retry.
    again = await taskd.submit("append", {"text": ref(retried, "/text")}, depends_on=[retried])
    assert (await taskd.wait_terminal(again["task_id"]))["result"]["text"] == "storyboard!!"
