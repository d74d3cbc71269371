"""`/dashboard` and `GET /api/v1/dashboard/overview`, and the page end to end in headless Chromium."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from chromium import CHROMIUM, Browser, needs_chromium, open_live, row
from conftest import API_KEY

from taskd import keys
from taskd.gpu.devices import SimulatedBackend


async def test_the_page_is_served_without_a_key_and_with_a_strict_content_security_policy(taskd):
    async with aiohttp.ClientSession(taskd.base_url) as anonymous, anonymous.get("/dashboard") as response:
        html = await response.text()

    assert response.status == 200
    assert response.content_type == "text/html"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert '<script src="/dashboard/dashboard.js"' in html
    assert "https://" not in html, "no CDN"


@pytest.mark.parametrize(
    ("name", "content_type"), [("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")]
)
async def test_the_pages_files_are_served_from_package_data(taskd, name, content_type):
    async with taskd.client.get(f"/dashboard/{name}") as response:
        assert (response.status, response.content_type) == (200, content_type)


async def test_an_unknown_dashboard_file_is_404(taskd):
    async with taskd.client.get("/dashboard/..%2fconfig.py") as response:
        assert response.status == 404


async def test_overview_lists_queues_with_running_counts_and_live_workers(taskd):
    task = await taskd.submit("sleep", {"seconds": 30, "steps": 30})
    await taskd.wait_for(task["task_id"], lambda body: body["status"] == "processing")

    async with taskd.client.get("/api/v1/dashboard/overview") as response:
        overview = await response.json()

    queues = {queue["name"]: queue for queue in overview["queues"]}
    assert (queues["default"]["running"], queues["default"]["running_tasks"]) == (1, [task["task_id"]])
    assert queues["gpu_heavy"]["concurrency"] == 2
    [worker] = overview["workers"]
    assert "default" in worker["queues"]
    assert 0 <= worker["heartbeat_age"] < 3  # younger than the heartbeat TTL
    assert worker["last_heartbeat"].endswith("Z")


async def test_overview_says_when_there_are_no_gpus(start_service):
    service = await start_service(gpu_backend=SimulatedBackend(0))

    async with service.client.get("/api/v1/dashboard/overview") as response:
        gpus = (await response.json())["gpus"]

    assert gpus == {
        "available": False,
        "note": "no GPUs on any live worker host (NVML not available or no device)",
        "devices": [],
    }


async def test_overview_shows_which_tasks_hold_each_gpu(start_service):
    service = await start_service(gpu_backend=SimulatedBackend(1))
    task = await service.submit("gpu_hold", {"seconds": 30})
    async with asyncio.timeout(20):
        while True:
            async with service.client.get("/api/v1/dashboard/overview") as response:
                [device] = (await response.json())["gpus"]["devices"]
            if device["holders"]:
                break
            await asyncio.sleep(0.05)

    assert device["holders"] == [task["task_id"]]
    assert device["slots"] == 4


async def test_overview_needs_the_key(taskd):
    async with (
        aiohttp.ClientSession(taskd.base_url) as anonymous,
        anonymous.get("/api/v1/dashboard/overview") as response,
    ):
        assert response.status == 401


async def test_the_task_list_the_page_shows_carries_waiting_for_and_scheduled_for(start_service):
    api_only = await start_service(workers=False)  # nothing runs: both stay waiting
    first = await api_only.submit("noop", {})
    dependent = await api_only.submit("noop", {}, depends_on=[first["task_id"]])
    later = await api_only.submit("noop", {}, delay_seconds=3600)

    async with api_only.client.get("/api/v1/projects/proj-1/tasks") as response:
        listed = {task["task_id"]: task for task in (await response.json())["tasks"]}

    assert listed[dependent["task_id"]]["waiting_for"] == [first["task_id"]]
    assert listed[dependent["task_id"]]["depends_on"] == [first["task_id"]]
    assert (
        listed[later["task_id"]]["scheduled_for"]
        == (await api_only.status(later["task_id"]))["scheduled_for"]
    )
    assert {"waiting_for", "depends_on", "scheduled_for"}.isdisjoint(listed[first["task_id"]])


@needs_chromium
async def test_in_chromium_a_submitted_task_shows_up_its_progress_moves_and_cancel_works(
    taskd, tmp_path: Path
):
    browser = await Browser.start(CHROMIUM, tmp_path / "chromium")
    try:
        await open_live(browser, taskd.base_url, "proj-1", API_KEY)
        await browser.wait_for("document.querySelectorAll('#workers tbody tr').length === 1")

        task = await taskd.submit("sleep", {"seconds": 3, "steps": 6})
        await browser.wait_for(f"{row(task['task_id'])} !== null")
        await browser.wait_for(f"{row(task['task_id'])}.querySelector('progress').value > 0")
        step = await browser.evaluate(f"{row(task['task_id'])}.querySelector('.step').textContent")

        await browser.evaluate(f"{row(task['task_id'])}.click(); true")
        await browser.wait_for(f"document.getElementById('detail-id').textContent === '{task['task_id']}'")
        await browser.evaluate("document.getElementById('cancel-button').click(); true")
        await browser.wait_for(f"{row(task['task_id'])}.querySelector('.status').textContent === 'cancelled'")
        await browser.wait_for("document.getElementById('detail').dataset.status === 'cancelled'")
        await browser.screenshot(tmp_path / "dashboard.png")
        exceptions = browser.exceptions
    finally:
        await browser.close()

    assert step.startswith("step_")
    assert (await taskd.status(task["task_id"]))["status"] == "cancelled"
    assert (tmp_path / "dashboard.png").stat().st_size > 0
    assert exceptions == []


@needs_chromium
async def test_in_chromium_a_waiting_task_shows_what_it_waits_for_and_a_scheduled_one_its_time(
    taskd, tmp_path: Path
):
    first = await taskd.submit("sleep", {"seconds": 30})
    dependent = await taskd.submit("noop", {}, depends_on=[first["task_id"]])
    later = await taskd.submit("noop", {}, delay_seconds=3600)
    scheduled_for = (await taskd.status(later["task_id"]))["scheduled_for"]
    browser = await Browser.start(CHROMIUM, tmp_path / "chromium")
    try:
        await open_live(browser, taskd.base_url, "proj-1", API_KEY)
        await browser.wait_for(f"{row(dependent['task_id'])} !== null")
        waits = await browser.evaluate(
            f"{row(dependent['task_id'])}.querySelector('.waiting-for').textContent"
        )
        link = await browser.evaluate(
            f"{row(dependent['task_id'])}.querySelector('.waiting-for a').dataset.taskId"
        )
        when = await browser.evaluate(
            f"{row(later['task_id'])}.querySelector('.scheduled-for time').dateTime"
        )

        await browser.evaluate(f"{row(dependent['task_id'])}.querySelector('.waiting-for a').click(); true")
        await browser.wait_for(f"document.getElementById('detail-id').textContent === '{first['task_id']}'")
        async with taskd.client.delete(f"/api/v1/tasks/{first['task_id']}") as response:
            assert response.status == 200
        await browser.wait_for(
            f"{row(dependent['task_id'])}.querySelector('.status').textContent === 'cancelled'"
        )
        after_cancel = await browser.evaluate(f"{row(dependent['task_id'])}.querySelector('.waiting-for')")
        await browser.screenshot(tmp_path / "waiting.png")
        exceptions = browser.exceptions
    finally:
        await browser.close()

    assert waits == f"waits for {first['task_id'][:8]}"
    assert link == first["task_id"]
    assert when == scheduled_for
    assert after_cancel is None
    assert exceptions == []


@needs_chromium
async def test_in_chromium_a_double_click_on_retry_runs_the_task_again_once(taskd, tmp_path: Path):
    failed = await taskd.submit("fail", {"message": "bad input"})
    await taskd.wait_terminal(failed["task_id"])
    browser = await Browser.start(CHROMIUM, tmp_path / "chromium")
    try:
        await open_live(browser, taskd.base_url, "proj-1", API_KEY)
        await browser.wait_for(f"{row(failed['task_id'])} !== null")
        await browser.evaluate(f"{row(failed['task_id'])}.click(); true")
        await browser.wait_for("document.getElementById('detail').dataset.status === 'failed'")

        await browser.evaluate(
            "const button = document.getElementById('retry-button'); button.click(); button.click(); true"
        )
        await browser.wait_for(
            "document.getElementById('action-message').textContent.startsWith('retried as')"
        )
        await browser.wait_for(f"document.getElementById('detail-id').textContent !== '{failed['task_id']}'")
        exceptions = browser.exceptions
    finally:
        await browser.close()

    async with taskd.client.get("/api/v1/projects/proj-1/tasks") as response:
        listed = (await response.json())["tasks"]
    assert [task["task_type"] for task in listed].count("fail") == 2  # the failed task and one retry
    assert exceptions == []


@needs_chromium
async def test_in_chromium_a_refused_retry_shows_the_fields_its_details_name(taskd, redis, tmp_path: Path):
    failed = await taskd.submit("fail", {"message": "bad input"})
    await taskd.wait_terminal(failed["task_id"])
    # Stored by an earlier version whose checks were laxer: the retry is a 400 whose message names
    # no field (they are in `details` alone).
    await redis.hset(keys.task(failed["task_id"]), "task_data", json.dumps({"fail_times": "7"}))
    browser = await Browser.start(CHROMIUM, tmp_path / "chromium")
    try:
        await open_live(browser, taskd.base_url, "proj-1", API_KEY)
        await browser.wait_for(f"{row(failed['task_id'])} !== null")
        await browser.evaluate(f"{row(failed['task_id'])}.click(); true")
        await browser.wait_for("document.getElementById('detail').dataset.status === 'failed'")

        await browser.evaluate("document.getElementById('retry-button').click(); true")
        await browser.wait_for("document.getElementById('action-message').textContent !== ''")
        shown = await browser.evaluate("document.getElementById('action-message').textContent")
    finally:
        await browser.close()

    assert shown == (
        "The task as stored no longer passes a submit's checks; submit it corrected "
        "(task_data.fail_times: Must be an integer)"
    )


@needs_chromium
async def test_in_chromium_a_list_refused_with_429_is_read_again_after_its_retry_after(taskd, tmp_path: Path):
    task = await taskd.submit("noop", {})
    browser = await Browser.start(CHROMIUM, tmp_path / "chromium")
    try:
        await open_live(browser, taskd.base_url, "proj-1", API_KEY)
        await browser.wait_for(f"{row(task['task_id'])} !== null")
        # The list is emptied and read again; its first read is refused as a spent status quota
        # refuses it, and a live event asks for a reload during the Retry-After.
        waits = await browser.evaluate(
            """(async () => {
              const fetched = window.fetch;
              let refused = 0;
              window.fetch = (path, options) => {
                if (String(path).includes("/tasks?") && !refused++) {
                  return Promise.resolve(new Response(
                    JSON.stringify({ error: "rate_limited", message: "Too many status requests", retry_after: 1 }),
                    { status: 429, headers: { "Retry-After": "1", "Content-Type": "application/json" } },
                  ));
                }
                return fetched(path, options);
              };
              const waits = [];
              const later = window.setTimeout;
              window.setTimeout = (run, ms, ...args) => { waits.push(ms); return later(run, ms, ...args); };
              state.tasks = new Map();
              renderTasks();
              await loadTasks();
              reloadSoon();
              return waits;
            })()"""
        )
        await browser.wait_for(f"{row(task['task_id'])} !== null")
        exceptions = browser.exceptions
    finally:
        await browser.close()

    assert waits == [1000]  # the Retry-After's reload, and no earlier one for the live event
    assert exceptions == []
