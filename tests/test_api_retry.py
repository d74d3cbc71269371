"""POST /api/v1/tasks/{id}/retry: a failed or cancelled task submitted again as a new task."""

from __future__ import annotations

import json

from examples import TASK_DATA

from taskd import keys


async def retry(service, task_id):
    async with service.client.post(f"/api/v1/tasks/{task_id}/retry") as response:
        return response.status, await response.json()


async def test_failed_task_is_resubmitted_as_a_new_task(taskd, fake_llm):
    fake_llm.fail(400, "bad request")
    original = await taskd.submit(
        "test_prompt", TASK_DATA["test_prompt"], priority=1, metadata={"user_id": "u1"}
    )
    await taskd.wait_terminal(original["task_id"])

    status, body = await retry(taskd, original["task_id"])

    assert status == 200
    assert body["original_task_id"] == original["task_id"]
    assert body["new_task_id"] != original["task_id"]
    assert body["status"] == "queued"
    assert body["message"] == "Task retry submitted successfully"


async def test_retried_task_runs_with_the_same_parameters(taskd, fake_llm):
    fake_llm.fail(400, "bad request")
    original = await taskd.submit("test_prompt", TASK_DATA["test_prompt"], priority=1)
    await taskd.wait_terminal(original["task_id"])

    _, body = await retry(taskd, original["task_id"])
    again = await taskd.wait_terminal(body["new_task_id"])

    assert again["status"] == "completed"
    assert again["priority"] == 1
    assert again["retry_of"] == original["task_id"]
    assert (
        again["result"]["rendered_prompt"]
        == "Create a character based on: mysterious librarian with dark secrets"
    )


async def test_cancelled_task_can_be_retried(start_service):
    api_only = await start_service(workers=False)
    task = await api_only.submit("generate_video", {"duration": 7})
    await api_only.client.delete(f"/api/v1/tasks/{task['task_id']}")

    status, _ = await retry(api_only, task["task_id"])

    assert status == 200


async def test_queued_task_cannot_be_retried(start_service):
    api_only = await start_service(workers=False)
    task = await api_only.submit("generate_video", {"duration": 7})

    status, body = await retry(api_only, task["task_id"])

    assert status == 400
    assert body == {"detail": "Task is queued; only failed or cancelled tasks can be retried"}


async def test_retry_of_unknown_task_is_404(taskd):
    status, body = await retry(taskd, "missing")

    assert status == 404
    assert body["error"] == "task_not_found"


async def _cancelled_with_stored_data(api_only, redis, stored, field="task_data"):
    """A cancelled automated_gather_creation whose record holds `stored` as its `field`, as a
    version whose checks were laxer stored it."""
    task = await api_only.submit("automated_gather_creation", TASK_DATA["automated_gather_creation"])
    await api_only.client.delete(f"/api/v1/tasks/{task['task_id']}")
    await redis.hset(
        keys.task(task["task_id"]), field, json.dumps(stored) if field == "task_data" else stored
    )
    return task["task_id"]


async def test_a_task_whose_stored_data_its_type_now_refuses_is_not_retried(start_service, redis):
    api_only = await start_service(workers=False)
    # Up to 4a69c06 a string was taken for a list (and run a character at a time).
    task_id = await _cancelled_with_stored_data(
        api_only, redis, {"brief": "A noir series.", "departments": "lighting"}
    )

    status, body = await retry(api_only, task_id)

    assert status == 400
    assert body["error"] == "validation_error"
    assert body["details"] == {"task_data.departments": "Must be a list"}
    async with api_only.client.get("/api/v1/projects/proj-1/tasks") as response:
        assert (await response.json())["pagination"]["total"] == 1


async def test_a_refused_retry_names_its_fields_in_details_not_again_in_its_message(start_service, redis):
    api_only = await start_service(workers=False)
    task_id = await _cancelled_with_stored_data(
        api_only, redis, {"brief": "A noir series.", "departments": "lighting"}
    )

    status, body = await retry(api_only, task_id)

    assert status == 400
    assert body == {
        "error": "validation_error",
        "message": "The task as stored no longer passes a submit's checks; submit it corrected",
        "details": {"task_data.departments": "Must be a list"},
    }


async def test_a_resent_retry_gets_its_task_though_the_stored_data_is_now_refused(start_service, redis):
    api_only = await start_service(workers=False)
    task_id = await _cancelled_with_stored_data(api_only, redis, TASK_DATA["automated_gather_creation"])
    headers = {"Idempotency-Key": "retry-once"}
    async with api_only.client.post(f"/api/v1/tasks/{task_id}/retry", headers=headers) as response:
        first = await response.json()
    await redis.hset(
        keys.task(task_id), "task_data", json.dumps({"brief": "A noir series.", "departments": "lighting"})
    )

    async with api_only.client.post(f"/api/v1/tasks/{task_id}/retry", headers=headers) as response:
        status, again = response.status, await response.json()

    assert status == 200
    assert again["new_task_id"] == first["new_task_id"]


async def test_a_task_whose_stored_callback_url_is_now_refused_is_not_retried(start_service, redis):
    api_only = await start_service(workers=False)
    # Up to 4a69c06 an xn-- host that does not decode was taken; every webhook to it fails.
    task_id = await _cancelled_with_stored_data(
        api_only, redis, "https://xn--zz.example/hook", field="callback_url"
    )

    status, body = await retry(api_only, task_id)

    assert status == 400
    assert list(body["details"]) == ["callback_url"]


async def test_a_task_whose_stored_data_holds_a_ref_a_submit_now_refuses_is_not_retried(start_service, redis):
    api_only = await start_service(workers=False)
    # A $ref must name a task of depends_on (this task has none); its run could never resolve it.
    task_id = await _cancelled_with_stored_data(
        api_only, redis, {**TASK_DATA["automated_gather_creation"], "brief": {"$ref": "elsewhere#/brief"}}
    )

    status, body = await retry(api_only, task_id)

    assert status == 400
    assert list(body["details"]) == ["task_data.brief"]


async def test_a_task_whose_stored_data_is_not_an_object_is_a_400_not_a_500(start_service, redis):
    api_only = await start_service(workers=False)
    task_id = await _cancelled_with_stored_data(api_only, redis, ["a", "list"])

    status, body = await retry(api_only, task_id)

    assert status == 400
    assert body["details"] == {"task_data": "Task data must be an object"}


async def test_a_resent_retry_of_a_type_that_estimates_its_result_gets_its_task_though_its_data_is_now_refused(
    start_service, redis
):
    api_only = await start_service(workers=False)
    task = await api_only.submit("test_prompt", TASK_DATA["test_prompt"])
    await api_only.client.delete(f"/api/v1/tasks/{task['task_id']}")
    headers = {"Idempotency-Key": "retry-once"}
    async with api_only.client.post(f"/api/v1/tasks/{task['task_id']}/retry", headers=headers) as response:
        first = await response.json()
    await redis.hset(
        keys.task(task["task_id"]),
        "task_data",
        json.dumps({**TASK_DATA["test_prompt"], "test_parameters": "x"}),
    )

    async with api_only.client.post(f"/api/v1/tasks/{task['task_id']}/retry", headers=headers) as response:
        status, again = response.status, await response.json()

    assert (status, again.get("new_task_id")) == (200, first["new_task_id"])
