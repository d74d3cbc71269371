"""`Prefer: wait=<seconds>` on submit: one round trip for a quick task, its status for a slow one."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from conftest import API_KEY, RunningService

from taskd.config import LimitsConfig


async def submit_waiting(
    service: RunningService, task_data: dict[str, float], prefer: str | None
) -> tuple[int, dict[str, str], dict]:
    headers = {"Prefer": prefer} if prefer is not None else {}
    body = {"project_id": "proj-1", "task_type": "sleep", "task_data": task_data}
    async with service.client.post("/api/v1/tasks/submit", json=body, headers=headers) as response:
        return response.status, dict(response.headers), await response.json()


async def test_wait_answers_a_quick_task_completed_in_one_response(start_service):
    service = await start_service()

    status, headers, body = await submit_waiting(service, {"seconds": 0.2, "steps": 1}, "wait=5")

    assert status == 200
    assert headers["Preference-Applied"] == "wait=5"
    assert body["status"] == "completed"
    assert body["result"]["slept"] == 0.2
    assert body["progress"] == 1.0
    assert isinstance(body["estimated_duration"], int) and body["estimated_duration"] >= 1


async def test_wait_answers_the_current_status_when_the_time_is_up(start_service):
    service = await start_service()

    began = time.monotonic()
    status, headers, body = await submit_waiting(service, {"seconds": 30, "steps": 1}, "wait=1")

    assert status == 200
    assert 0.9 <= time.monotonic() - began < 5
    assert headers["Preference-Applied"] == "wait=1"
    assert body["status"] in ("queued", "processing")
    assert body["result"] is None
    assert "estimated_duration" in body


async def test_without_prefer_the_submit_answers_at_once_as_before(start_service):
    service = await start_service(workers=False)

    status, headers, body = await submit_waiting(service, {"seconds": 0.1}, None)

    assert status == 200
    assert "Preference-Applied" not in headers
    assert set(body) == {
        "task_id",
        "status",
        "project_id",
        "estimated_duration",
        "queue_position",
        "created_at",
    }


async def test_a_wait_out_of_range_or_malformed_is_ignored(start_service):
    service = await start_service(workers=False)

    for prefer in ("wait=0", "wait=61", "wait=abc", "wait=1.5", "wait=", "respond-async"):
        began = time.monotonic()
        status, headers, body = await submit_waiting(service, {"seconds": 0.1}, prefer)

        assert status == 200, prefer
        assert time.monotonic() - began < 1, prefer
        assert "Preference-Applied" not in headers, prefer
        assert body["status"] == "queued" and "queue_position" in body, prefer


async def test_wait_is_read_among_other_preferences(start_service):
    service = await start_service(workers=False)

    status, headers, body = await submit_waiting(service, {"seconds": 0.1}, "respond-async, wait=1")

    assert status == 200
    assert headers["Preference-Applied"] == "wait=1"
    assert body["status"] == "queued"


async def test_a_client_that_disconnects_during_the_wait_changes_nothing(start_service):
    service = await start_service()
    body = {"project_id": "proj-1", "task_type": "sleep", "task_data": {"seconds": 1, "steps": 1}}

    async with aiohttp.ClientSession(base_url=service.base_url) as session:
        request = asyncio.ensure_future(
            session.post(
                "/api/v1/tasks/submit", json=body, headers={"X-API-Key": API_KEY, "Prefer": "wait=30"}
            )
        )
        await asyncio.sleep(0.5)
        request.cancel()  # the connection closes mid-wait
        await asyncio.gather(request, return_exceptions=True)

    async with service.client.get("/api/v1/projects/proj-1/tasks") as response:
        tasks = (await response.json())["tasks"]
    assert len(tasks) == 1
    final = await service.wait_terminal(tasks[0]["task_id"])
    assert final["status"] == "completed"


async def test_a_wait_whose_client_went_away_gives_back_its_place_among_the_keys_open_requests(start_service):
    service = await start_service(limits=LimitsConfig(open_streams=1))
    body = {"project_id": "proj-1", "task_type": "sleep", "task_data": {"seconds": 120, "steps": 1}}

    async def stream_status() -> int:
        async with service.client.get("/api/v1/projects/proj-1/events") as response:
            return response.status

    async def listed() -> int:
        async with service.client.get("/api/v1/projects/proj-1/tasks") as response:
            return len((await response.json())["tasks"])

    async with aiohttp.ClientSession(base_url=service.base_url) as session:
        request = asyncio.ensure_future(
            session.post(
                "/api/v1/tasks/submit", json=body, headers={"X-API-Key": API_KEY, "Prefer": "wait=60"}
            )
        )
        # Stored means waiting: the wait takes the key's one place as the submit script returns.
        while not await listed():
            await asyncio.sleep(0.05)
        assert await stream_status() == 429
        request.cancel()  # the client gives up and its connection closes, mid-wait
        await asyncio.gather(request, return_exceptions=True)

    # Before, the place stayed taken until the wait's 60 s were up: the key's streams got 429 for
    # a request that no longer had a connection. Now the wait ends once its client is gone.
    async with asyncio.timeout(30):
        while await stream_status() != 200:
            await asyncio.sleep(0.2)
