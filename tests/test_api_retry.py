"""POST /api/v1/tasks/{id}/retry: a failed or cancelled task submitted again as a new task."""

from __future__ import annotations

from examples import TASK_DATA


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
