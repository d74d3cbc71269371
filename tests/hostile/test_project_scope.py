"""A key scoped to one project, walked over every route of the real router: it sees nothing of another project.

Tasks of two projects are running, holding a GPU, raising alerts, with callback URLs and a media file;
the attacker holds a key scoped to `tenant-a` and asks every route for `tenant-b`'s things.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import API_KEY

from taskd import keys
from taskd.config import AuthConfig, GpuConfig, ScopedKey, WebhooksConfig
from taskd.gpu.devices import SimulatedBackend
from taskd.http.app import create_app
from taskd.http.context import API
from taskd.http.scope import Touches, declared
from taskd.media.store import MediaStore

TENANT_KEY = "tenant-a-only-key-5e0c2b7d91"
OWN, OTHER = "tenant-a", "tenant-b"
OTHER_HOOK_PATH = "/hooks/tenant-b-private-hook-4f1d"
LONG_AGO = 10 * 60  # seconds: past the task-duration alert's critical threshold
TIMEOUT = aiohttp.ClientTimeout(total=15)


@attrs.frozen
class Seeded:
    """The running service and what each project has in it."""

    running: Any
    app: web.Application
    own_task: str
    other_tasks: dict[str, str]  # role -> task id
    other_hook_url: str
    other_media: str
    own_media: str

    def other_markers(self) -> list[str]:
        """Strings that only something of the other project can contain."""
        return [*self.other_tasks.values(), self.other_hook_url, OTHER_HOOK_PATH, self.other_media]


async def submit(running: Any, project: str, task_type: str, data: dict, **fields: Any) -> str:
    return (await running.submit(task_type, data, project_id=project, **fields))["task_id"]


def served_app(running: Any) -> web.Application:
    """The application the running service serves."""
    return running.service._runner.app


async def started_long_ago(running: Any, task_id: str, queue: str) -> None:
    """Make a running task look ten minutes old, as one that hangs would be."""
    redis = served_app(running)[API].redis
    await redis.zadd(keys.running(queue), {task_id: (time.time() - LONG_AGO) * 1000}, xx=True)


@pytest.fixture
async def seeded(start_service, receiver, tmp_path) -> Seeded:
    running = await start_service(
        auth=AuthConfig(api_keys=[API_KEY], keys=[ScopedKey(TENANT_KEY, [OWN])]),
        gpu_backend=SimulatedBackend(1),
        gpu=GpuConfig(slots=4),
        webhooks=WebhooksConfig(allow_private=True),
    )
    hook = receiver.url(OTHER_HOOK_PATH)
    own = await submit(running, OWN, "sleep", {"seconds": 60, "steps": 60})
    other = {
        "running": await submit(running, OTHER, "sleep", {"seconds": 60, "steps": 60}, callback_url=hook),
        "gpu": await submit(running, OTHER, "gpu_hold", {"seconds": 60}, callback_url=hook),
        "done": await submit(running, OTHER, "noop", {}, callback_url=hook),
    }
    for task_id in (own, other["running"], other["gpu"]):
        await running.wait_for(task_id, lambda body: body["status"] == "processing")
    await running.wait_terminal(other["done"])
    await started_long_ago(running, own, "default")
    await started_long_ago(running, other["running"], "default")
    # What a worker records when a job process of the task passes the memory limit.
    await served_app(running)[API].store.note_memory_recycle(
        {"task_id": other["running"], "worker_id": "w-1", "rss_mb": 2100.0}, time.time()
    )
    store = MediaStore.from_config(running.service.config)
    other_media = f"audio_{other['done']}.wav"
    for project, name in ((OTHER, other_media), (OWN, "audio_own.wav")):
        source = tmp_path / name
        source.write_text(f"media of {project}, made for {hook if project == OTHER else 'us'}")
        store.put(project, name, source)
    return Seeded(running, served_app(running), own, other, hook, other_media, "audio_own.wav")


def route_url(route: web.AbstractRoute, seeded: Seeded) -> str:
    """The route's path, aimed at the other project's things."""
    values = {
        "project_id": OTHER,
        "task_id": seeded.other_tasks["running"],
        "filename": seeded.other_media,
        "asset": "dashboard.js",
    }
    assert route.resource is not None
    return route.resource.canonical.format_map(values)


async def call(
    session: aiohttp.ClientSession, route: web.AbstractRoute, url: str, key: str
) -> tuple[int, str]:
    body = {"project_id": OTHER, "task_type": "noop", "task_data": {}} if route.method == "POST" else None
    async with session.request(route.method, url, json=body, headers={"X-API-Key": key}) as response:
        return response.status, await response.text()


def api_routes(app: web.Application) -> list[web.AbstractRoute]:
    return [route for route in app.router.routes() if route.resource is not None]


async def test_every_route_declares_which_project_it_touches(seeded):
    undeclared = [
        f"{route.method} {route.resource.canonical}"
        for route in api_routes(seeded.app)
        if declared(route.handler) is None
    ]

    assert undeclared == []


async def test_a_scoped_key_gets_404_on_every_route_that_names_another_projects_project_or_task(seeded):
    refused: dict[str, tuple[int, str]] = {}
    async with aiohttp.ClientSession(seeded.running.base_url, timeout=TIMEOUT) as session:
        for route in api_routes(seeded.app):
            if declared(route.handler) in (Touches.PATH_PROJECT, Touches.PATH_TASK):
                url = route_url(route, seeded)
                refused[f"{route.method} {url}"] = await call(session, route, url, TENANT_KEY)

    assert len(refused) >= 12  # status, cancel, retry, redeliver, events (x2), list, media, with HEADs
    assert {status for status, _ in refused.values()} == {404}
    errors = {json.loads(body)["error"] for _, body in refused.values() if body}  # HEADs have no body
    assert errors == {"not_found", "task_not_found"}
    status = await seeded.running.status(seeded.other_tasks["running"])
    assert status["status"] == "processing", "the refused DELETE must not have cancelled it"


async def test_a_scoped_key_cannot_submit_to_another_project(seeded):
    [submit_route] = [r for r in api_routes(seeded.app) if declared(r.handler) is Touches.BODY_PROJECT]

    async with aiohttp.ClientSession(seeded.running.base_url, timeout=TIMEOUT) as session:
        status, body = await call(session, submit_route, submit_route.resource.canonical, TENANT_KEY)

    assert status == 400
    assert f"Project '{OTHER}' is not available to this API key" in body


async def test_a_scoped_key_cannot_name_another_project_in_a_batch(seeded):
    own = {"project_id": OWN, "task_type": "noop", "task_data": {}}
    other = {"project_id": OTHER, "task_type": "noop", "task_data": {}}

    async with (
        aiohttp.ClientSession(seeded.running.base_url, timeout=TIMEOUT) as session,
        session.post(
            "/api/v1/tasks/batch", json={"tasks": [own, other]}, headers={"X-API-Key": TENANT_KEY}
        ) as response,
    ):
        status, body = response.status, await response.json()

    assert status == 400
    assert body["details"] == {"tasks[1].project_id": f"Project '{OTHER}' is not available to this API key"}


@pytest.mark.parametrize("route", ["/api/v1/tasks/submit", "/api/v1/tasks/batch"])
async def test_a_scoped_key_naming_another_projects_task_as_a_dependency_is_told_it_is_unknown(seeded, route):
    theirs = seeded.other_tasks["done"]
    task = {"project_id": OWN, "task_type": "noop", "task_data": {}, "depends_on": [theirs]}
    field = "depends_on" if route.endswith("submit") else "tasks[0].depends_on"

    async with (
        aiohttp.ClientSession(seeded.running.base_url, timeout=TIMEOUT) as session,
        session.post(
            route,
            json=task if route.endswith("submit") else {"tasks": [task]},
            headers={"X-API-Key": TENANT_KEY},
        ) as response,
    ):
        status, body = response.status, await response.json()

    # Word for word what an id that no task has gets: nothing says the task exists.
    assert (status, body["details"]) == (400, {field: f"Unknown task '{theirs}'"})


async def test_no_route_shows_a_scoped_key_an_id_or_url_of_another_project(seeded):
    leaks: dict[str, list[str]] = {}
    async with aiohttp.ClientSession(seeded.running.base_url, timeout=TIMEOUT) as session:
        for route in api_routes(seeded.app):
            url = route_url(route, seeded)
            status, body = await call(session, route, url, TENANT_KEY)
            # A 404 may repeat the id the request itself named; nothing else of the other project.
            found = [marker for marker in seeded.other_markers() if marker in body and marker not in url]
            if found or status >= 500:
                leaks[f"{route.method} {url} -> {status}"] = found

    assert leaks == {}


async def test_the_global_views_do_show_the_other_projects_ids_to_an_unscoped_key(seeded):
    # The check above is only worth something if those views carry the ids to begin with.
    shown = ""
    async with aiohttp.ClientSession(seeded.running.base_url, timeout=TIMEOUT) as session:
        for route in api_routes(seeded.app):
            if route.method == "GET" and declared(route.handler) is Touches.FILTERED:
                shown += (await call(session, route, route_url(route, seeded), API_KEY))[1]

    assert seeded.other_tasks["running"] in shown  # dashboard running tasks, duration and memory alerts
    assert seeded.other_tasks["gpu"] in shown  # GPU holders


async def test_a_scoped_keys_global_views_name_its_own_tasks_and_count_the_others_anonymously(seeded):
    headers = {"X-API-Key": TENANT_KEY}
    client = seeded.running.client

    async with client.get("/api/v1/dashboard/overview", headers=headers) as response:
        overview = await response.json()
    async with client.get("/api/v1/tasks/health", headers=headers) as response:
        health = await response.json()

    default = next(queue for queue in overview["queues"] if queue["name"] == "default")
    assert default["running_tasks"] == [seeded.own_task]
    assert default["running"] == 2  # counts stay those of every project
    durations = [alert for alert in health["alerts"] if alert["metric"] == "task_duration"]
    named = {alert.get("task_id") for alert in durations}
    assert len(durations) == 2 and named == {seeded.own_task, None}
    assert health["status"] == "critical"


async def test_a_scoped_key_gets_its_own_projects_media_and_404_for_another_projects(seeded):
    headers = {"X-API-Key": TENANT_KEY}
    async with aiohttp.ClientSession(seeded.running.base_url, timeout=TIMEOUT) as anonymous:
        async with anonymous.get(f"/media/{OWN}/{seeded.own_media}", headers=headers) as own:
            own_status = own.status
        async with anonymous.get(f"/media/{OTHER}/{seeded.other_media}", headers=headers) as other:
            other_status, other_body = other.status, await other.json()

    assert own_status == 200
    assert other_status == 404
    assert other_body == {"error": "not_found", "message": f"Project '{OTHER}' not found"}


async def test_a_signed_media_url_is_served_without_a_key(seeded):
    store = MediaStore.from_config(seeded.running.service.config)
    url = store.url(OTHER, seeded.other_media).removeprefix(store.base)

    async with (
        aiohttp.ClientSession(seeded.running.base_url, timeout=TIMEOUT) as anonymous,
        anonymous.get(url) as response,
    ):
        status = response.status

    assert status == 200


async def test_a_route_that_declares_nothing_is_refused_to_a_scoped_key(seeded):
    async def undeclared(_: web.Request) -> web.Response:
        return web.json_response({"secret": "every project's data"})

    app = create_app(seeded.app[API])
    app.router.add_get("/api/v1/undeclared", undeclared)
    statuses = {}
    async with TestServer(app) as server, aiohttp.ClientSession(timeout=TIMEOUT) as session:
        for key in (TENANT_KEY, API_KEY):
            async with session.get(server.make_url("/api/v1/undeclared"), headers={"X-API-Key": key}) as r:
                statuses[key] = (r.status, (await r.json()).get("error"))

    assert statuses == {TENANT_KEY: (404, "not_found"), API_KEY: (200, None)}


async def test_a_scoped_keys_dashboard_lists_its_running_task_behind_fifty_longer_running_of_others(seeded):
    # Fifty tasks of another project that started before the key's own: the dashboard's first fifty.
    redis = seeded.app[API].redis
    await redis.zadd(
        keys.running("default"), {f"other-{n}": (time.time() - 2 * LONG_AGO) * 1000 for n in range(50)}
    )
    headers = {"X-API-Key": TENANT_KEY}

    async with seeded.running.client.get("/api/v1/dashboard/overview", headers=headers) as response:
        overview = await response.json()

    default = next(queue for queue in overview["queues"] if queue["name"] == "default")
    assert default["running_tasks"] == [seeded.own_task]
