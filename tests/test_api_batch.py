"""`POST /api/v1/tasks/batch` (issue 17, item 3): several submissions, stored all or none, whose
items may depend on earlier items of the same batch by index ("@<index>")."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from taskd import keys
from taskd.config import LimitsConfig
from taskd.shapes import MAX_BATCH

BATCH = "/api/v1/tasks/batch"


def item(task_type: str, task_data: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"project_id": "scene-1", "task_type": task_type, "task_data": task_data, **fields}


async def post_batch(service, tasks: Any, **headers: str) -> tuple[int, Any, Any]:
    async with service.client.post(BATCH, json={"tasks": tasks}, headers=headers) as response:
        return response.status, await response.json(), response.headers


async def stored_tasks(redis: Redis, project_id: str = "scene-1") -> int:
    return int(await redis.zcard(keys.project(project_id)))


async def test_a_batch_of_three_chained_items_runs_as_a_chain_and_answers_in_order(start_service, redis):
    taskd = await start_service()
    status, body, _ = await post_batch(
        taskd,
        [
            item("append", {"text": "storyboard"}),
            item("append", {"text": {"$ref": "@0#/text"}}, depends_on=["@0"]),
            item("append", {"text": {"$ref": "@1#/text"}, "suffix": "?"}, depends_on=["@1"]),
        ],
    )

    assert status == 200, body
    first, second, third = body["tasks"]
    assert [task["status"] for task in body["tasks"]] == ["queued"] * 3
    assert [task["queue_position"] for task in (second, third)] == [0, 0]
    last = await taskd.wait_terminal(third["task_id"])
    assert last["status"] == "completed", last
    assert last["result"]["text"] == "storyboard!!?"
    assert last["depends_on"] == [second["task_id"]]
    stored_data = orjson.loads(await redis.hget(keys.task(third["task_id"]), "task_data"))
    assert stored_data["text"] == {"$ref": f"{second['task_id']}#/text"}
    assert (await taskd.status(second["task_id"]))["depends_on"] == [first["task_id"]]


async def test_a_batch_with_one_bad_item_stores_nothing_and_names_the_item(start_service, redis):
    api_only = await start_service(workers=False)
    good = item("generate_video", {"duration": 7})

    status, body, _ = await post_batch(api_only, [good, good, good, item("generate_video", {"duration": -1})])

    assert status == 400, body
    assert body["error"] == "validation_error"
    assert list(body["details"]) == ["tasks[3].task_data.duration"]
    assert await stored_tasks(redis) == 0


async def test_refused_callback_urls_are_named_by_their_items_and_store_nothing(start_service, redis):
    taskd = await start_service(workers=False)  # the SSRF guard on: loopback and private refused

    status, body, _ = await post_batch(
        taskd,
        [
            item("noop", {}, callback_url="https://93.184.216.34/hook"),
            item("noop", {}, callback_url="http://10.0.0.5/hook"),
            item("noop", {}, callback_url="http://127.0.0.1/hook"),
        ],
    )

    assert status == 400
    assert body["details"] == {
        "tasks[1].callback_url": "Callback URL must point to a public address: 10.0.0.5 is not a public address",
        "tasks[2].callback_url": "Callback URL must point to a public address: 127.0.0.1 is not a public address",
    }
    assert await stored_tasks(redis) == 0


async def test_an_item_naming_a_later_or_missing_item_is_400_and_stores_nothing(start_service, redis):
    api_only = await start_service(workers=False)

    status, body, _ = await post_batch(
        api_only,
        [
            item("noop", {}, depends_on=["@1"]),
            item("noop", {}, depends_on=["@1"]),
            item("noop", {}, depends_on=["@7"]),
            item("noop", {}),
        ],
    )

    assert status == 400, body
    assert set(body["details"]) == {"tasks[0].depends_on", "tasks[1].depends_on", "tasks[2].depends_on"}
    assert await stored_tasks(redis) == 0


async def test_an_item_depending_on_a_bad_item_of_another_project_is_named_in_the_same_400(
    start_service, redis
):
    api_only = await start_service(workers=False)

    status, body, _ = await post_batch(
        api_only, [item("noop", {}, project_id="scene-2", priority=9), item("noop", {}, depends_on=["@0"])]
    )

    assert status == 400, body
    assert set(body["details"]) == {"tasks[0].priority", "tasks[1].depends_on"}
    assert body["details"]["tasks[1].depends_on"].startswith("'@0' is an item of another project ('scene-2')")
    assert await stored_tasks(redis, "scene-2") == 0


async def test_an_item_naming_an_index_of_thousands_of_digits_is_400_not_500(start_service, redis):
    api_only = await start_service(workers=False)
    # More digits than int() reads (4,300): the check converted it to compare, and answered 500.
    huge = "@" + "1" * 5000

    status, body, _ = await post_batch(api_only, [item("noop", {}), item("noop", {}, depends_on=[huge])])

    assert status == 400, body
    assert body["details"] == {
        "tasks[1].depends_on": f"'{huge}' must name an earlier item of the batch, '@0' to '@0'"
    }
    assert await stored_tasks(redis) == 0


async def test_a_ref_to_an_item_not_in_depends_on_is_400(start_service):
    api_only = await start_service(workers=False)

    status, body, _ = await post_batch(
        api_only, [item("append", {"text": "a"}), item("append", {"text": {"$ref": "@0#/text"}})]
    )

    assert status == 400, body
    assert list(body["details"]) == ["tasks[1].task_data.text"]


async def test_an_unknown_dependency_outside_the_batch_stores_nothing(start_service, redis):
    api_only = await start_service(workers=False)

    status, body, _ = await post_batch(api_only, [item("noop", {}), item("noop", {}, depends_on=["nope"])])

    assert status == 400, body
    assert body["details"] == {"tasks[1].depends_on": "Unknown task 'nope'"}
    assert await stored_tasks(redis) == 0


async def test_an_item_depending_on_an_earlier_item_of_another_project_is_400_naming_it_as_written(
    start_service, redis
):
    api_only = await start_service(workers=False)

    status, body, _ = await post_batch(
        api_only, [item("noop", {}, project_id="scene-2"), item("noop", {}, depends_on=["@0"])]
    )

    assert status == 400, body
    # Not the id the batch chose for item 0: nothing was stored, and the caller never saw it.
    assert body["details"] == {
        "tasks[1].depends_on": "'@0' is an item of another project ('scene-2'): a task may depend only "
        "on tasks of its own project"
    }
    assert await stored_tasks(redis, "scene-2") == 0


async def test_more_than_100_items_or_none_is_400(start_service, redis):
    api_only = await start_service(workers=False)

    too_many = await post_batch(api_only, [item("noop", {})] * (MAX_BATCH + 1))
    empty = await post_batch(api_only, [])

    assert (too_many[0], empty[0]) == (400, 400)
    assert list(too_many[1]["details"]) == ["tasks"]
    assert await stored_tasks(redis) == 0


async def test_an_item_that_is_not_an_object_is_named_as_the_item_and_stores_nothing(start_service, redis):
    api_only = await start_service(workers=False)

    status, body, _ = await post_batch(api_only, [item("noop", {}), ["noop"]])

    assert status == 400
    # It was "tasks[1].body": "Request body must be a JSON object", as if the batch's body were not one.
    assert body["details"] == {"tasks[1]": "Each item of tasks must be a submission: a JSON object"}
    assert await stored_tasks(redis) == 0


async def test_a_full_project_refuses_the_whole_batch(start_service, redis):
    api_only = await start_service(workers=False, limits=LimitsConfig(queued_per_project=2))
    await api_only.submit("noop", {}, project_id="scene-1")

    status, body, _ = await post_batch(api_only, [item("noop", {})] * 2)

    assert status == 429, body
    assert body["message"].startswith(
        "Project 'scene-1' already has 2 tasks waiting to start, counting the 1 of this batch before tasks[1]; "
    )
    assert await stored_tasks(redis) == 1


async def test_a_batch_of_more_tasks_of_a_project_than_may_wait_is_a_400_without_retry_after(
    start_service, redis
):
    api_only = await start_service(workers=False, limits=LimitsConfig(queued_per_project=2))

    too_large = await post_batch(api_only, [item("noop", {})] * 3)
    accepted = await post_batch(api_only, [item("noop", {})] * 2)

    assert too_large[0] == 400, too_large[1]
    assert too_large[1]["details"] == {
        "tasks": "A batch of 3 tasks of project 'scene-1' is more than the 2 a project may have waiting "
        "at once: send them in smaller batches"
    }
    assert "Retry-After" not in too_large[2]
    assert accepted[0] == 200, accepted[1]
    assert await stored_tasks(redis) == 2


async def test_a_batch_of_more_tasks_to_queue_at_once_than_the_queue_holds_is_a_400(start_service, redis):
    api_only = await start_service(workers=False, limits=LimitsConfig(max_queue_length=2))
    # Two to queue now, and one that waits for the first: it goes on the queue later.
    chained = [item("noop", {}), item("noop", {}, depends_on=["@0"]), item("noop", {})]

    too_large = await post_batch(api_only, [item("noop", {})] * 3)
    accepted = await post_batch(api_only, chained)

    assert too_large[0] == 400, too_large[1]
    assert too_large[1]["details"] == {
        "tasks": "tasks[2] comes after 2 tasks of this batch to queue at once on queue 'default', which "
        "holds 2 at most: send them in smaller batches"
    }
    assert "Retry-After" not in too_large[2]
    assert accepted[0] == 200, accepted[1]
    assert await stored_tasks(redis) == 3


async def test_each_item_counts_for_the_rate_limit(start_service, redis):
    api_only = await start_service(
        workers=False, limits=LimitsConfig(submit_per_minute=3, concurrent_per_project=0)
    )

    accepted = await post_batch(api_only, [item("noop", {})] * 2)
    refused = await post_batch(api_only, [item("noop", {})] * 2)
    after = await post_batch(api_only, [item("noop", {})])

    assert accepted[0] == 200, accepted[1]
    assert accepted[2]["RateLimit"] == '"submit";r=1;t=60'
    assert refused[0] == 429, refused[1]
    assert refused[1]["message"].startswith("Too many submit requests (2 at once): at most 3 per minute")
    assert after[0] == 200, after[1]
    assert await stored_tasks(redis) == 3


async def test_a_batch_larger_than_the_rate_limit_is_a_400_that_spends_one_unit(start_service, redis):
    api_only = await start_service(
        workers=False, limits=LimitsConfig(submit_per_minute=3, concurrent_per_project=0)
    )

    too_large = await post_batch(api_only, [item("noop", {})] * 4)
    accepted = await post_batch(api_only, [item("noop", {})] * 2)

    assert too_large[0] == 400, too_large[1]
    assert too_large[1]["details"] == {
        "tasks": "A batch of 4 is more than this API key's 3 submissions per minute"
    }
    assert "Retry-After" not in too_large[2]
    assert too_large[2]["RateLimit"] == '"submit";r=2;t=60'
    assert accepted[0] == 200, accepted[1]
    assert await stored_tasks(redis) == 2


async def test_batches_refused_for_their_body_are_refused_with_429_past_the_rate_limit(start_service):
    # Each such body is read and parsed whole: unspent, one key could send them without end.
    api_only = await start_service(workers=False, limits=LimitsConfig(submit_per_minute=3))
    not_a_batch = [await post_batch(api_only, "not a list") for _ in range(4)]

    assert [status for status, _, _ in not_a_batch] == [400, 400, 400, 429]
    assert not_a_batch[3][1]["message"].startswith("Too many submit requests: at most 3 per minute")


async def test_an_idempotent_batch_replays_the_first_answer_and_creates_nothing(start_service, redis):
    api_only = await start_service(workers=False)
    tasks = [item("noop", {}), item("noop", {}, depends_on=["@0"])]
    first = await post_batch(api_only, tasks, **{"Idempotency-Key": "scene-1"})

    again = await post_batch(api_only, tasks, **{"Idempotency-Key": "scene-1"})
    other = await post_batch(api_only, tasks[:1], **{"Idempotency-Key": "scene-1"})

    assert (first[0], again[0]) == (200, 200)
    assert again[1] == first[1]
    assert again[2]["Idempotent-Replayed"] == "true"
    assert other[0] == 422
    assert await stored_tasks(redis) == 2


async def test_the_readme_pipeline_example_is_accepted(start_service):
    api_only = await start_service(workers=False)
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    example = re.search(r"curl [^`]*?/api/v1/tasks/batch[^`]*?-d '(?P<body>.*?)'\n", readme, re.DOTALL)
    assert example is not None

    async with api_only.client.post(BATCH, data=example["body"]) as response:
        body = await response.json()

    assert response.status == 200, body
    assert len(body["tasks"]) == len(orjson.loads(example["body"])["tasks"])


async def test_a_batch_item_scheduled_for_later_waits_for_its_time_off_the_queue(start_service, redis):
    api_only = await start_service(workers=False)
    status, body, _ = await post_batch(
        api_only, [item("noop", {}), item("noop", {}, delay_seconds=600), item("noop", {})]
    )

    assert status == 200, body
    later = body["tasks"][1]["task_id"]
    assert (await api_only.status(later))["scheduled_for"] is not None
    assert await redis.zscore(keys.SCHEDULED, later) is not None
    assert [task["queue_position"] for task in body["tasks"]] == [1, 0, 2]


async def test_a_batchs_items_of_one_project_queue_in_the_batchs_order(start_service):
    api_only = await start_service(workers=False)

    status, body, _ = await post_batch(api_only, [item("noop", {}) for _ in range(8)])

    assert status == 200, body
    assert [task["queue_position"] for task in body["tasks"]] == list(range(1, 9))


async def test_a_batch_whose_task_comes_after_more_to_queue_at_once_than_the_queue_holds_is_a_400(
    start_service, redis
):
    # A task that waits for an earlier one or for its time is refused by a queue that is full, as a
    # submit is (batch.lua): behind two of its own to queue at once on a queue holding 2, the third
    # task of this batch is refused on an empty queue too, and a later resend would be as well.
    api_only = await start_service(workers=False, limits=LimitsConfig(max_queue_length=2))
    behind = [item("noop", {}), item("noop", {}), item("noop", {}, depends_on=["@0"])]

    status, body, headers = await post_batch(api_only, behind)

    assert status == 400, body
    assert body["details"] == {
        "tasks": "tasks[2] comes after 2 tasks of this batch to queue at once on queue 'default', which "
        "holds 2 at most: send them in smaller batches"
    }
    assert "Retry-After" not in headers
    assert await stored_tasks(redis) == 0


async def test_a_batch_whose_tasks_after_a_completed_dependency_fill_the_queue_is_a_400(start_service, redis):
    # A task whose dependencies have completed queues at once, which only the batch script sees: two
    # of them fill a queue holding 2, so the third task is refused on any queue, for ever.
    taskd = await start_service(limits=LimitsConfig(max_queue_length=2))
    done = (await taskd.submit("noop", {}, project_id="scene-1"))["task_id"]
    assert (await taskd.wait_terminal(done))["status"] == "completed"
    behind = [item("noop", {}, depends_on=[done]), item("noop", {}, depends_on=[done]), item("noop", {})]

    status, body, headers = await post_batch(taskd, behind)

    assert status == 400, body
    assert body["details"] == {
        "tasks": "tasks[2] comes after 2 tasks of this batch to queue at once on queue 'default', which "
        "holds 2 at most: send them in smaller batches"
    }
    assert "Retry-After" not in headers
    assert await stored_tasks(redis) == 1
