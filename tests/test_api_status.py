"""GET /api/v1/tasks/{id}/status through a task's life."""

from __future__ import annotations

from examples import TASK_DATA


async def test_unknown_task_is_404_in_the_documented_shape(taskd):
    async with taskd.client.get("/api/v1/tasks/abc123/status") as response:
        body = await response.json()

    assert response.status == 404
    assert body == {"error": "task_not_found", "message": "Task with ID 'abc123' not found"}


async def test_queued_task_shows_its_queue_position(start_service):
    api_only = await start_service(workers=False)
    await api_only.submit("generate_video", {"duration": 7})
    second = await api_only.submit("generate_video", {"duration": 7})

    body = await api_only.status(second["task_id"])

    assert body["status"] == "queued"
    assert body["queue_position"] == 2
    assert body["progress"] == 0.0
    assert body["started_at"] is None


async def test_completed_task_has_result_times_and_full_progress(taskd, fake_llm):
    fake_llm.reply("A librarian who hides a map in every book.")
    task = await taskd.submit("test_prompt", TASK_DATA["test_prompt"])

    body = await taskd.wait_terminal(task["task_id"])

    assert body["status"] == "completed"
    assert body["progress"] == 1.0
    assert body["error"] is None
    assert body["result"]["response"] == "A librarian who hides a map in every book."
    assert body["started_at"] is not None and body["completed_at"] is not None
    assert isinstance(body["processing_time"], float)


async def test_documented_status_fields_are_all_present(taskd, fake_llm):
    task = await taskd.submit("test_prompt", TASK_DATA["test_prompt"])

    body = await taskd.wait_terminal(task["task_id"])

    documented = {
        "task_id",
        "project_id",
        "status",
        "progress",
        "current_step",
        "result",
        "error",
        "started_at",
        "completed_at",
        "processing_time",
    }
    assert documented <= set(body)


async def test_running_task_shows_processing_with_its_current_step(taskd, fake_llm):
    fake_llm.hang(30)
    task = await taskd.submit("test_prompt", TASK_DATA["test_prompt"])

    body = await taskd.wait_for(task["task_id"], lambda b: b["current_step"] == "calling_llm")

    assert body["status"] == "processing"
    assert 0 < body["progress"] < 1
    assert body["started_at"] is not None


async def test_task_type_without_a_handler_fails_saying_so(taskd):
    task = await taskd.submit("declared_only", {})

    body = await taskd.wait_terminal(task["task_id"])

    assert body["status"] == "failed"
    assert body["error"].startswith("No handler is installed for task type 'declared_only' on worker host ")
    assert body["result"] is None


async def test_provider_failure_fails_the_task_with_the_reason(taskd, fake_llm):
    fake_llm.fail(401, "bad key")
    task = await taskd.submit("test_prompt", TASK_DATA["test_prompt"])

    body = await taskd.wait_terminal(task["task_id"])

    assert body["status"] == "failed"
    assert "401" in body["error"]
    assert "sk-test" not in body["error"]
