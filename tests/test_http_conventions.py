"""HTTP conventions on every route of the app, found from its router: a 405 names the allowed
methods in `Allow` (RFC 9110) with the documented error body, HEAD answers wherever GET does, no
answer under `/api/v1/` may be kept by a cache, every other says how one may keep it, and none
names the server's software versions."""

from __future__ import annotations

import re

import aiohttp
from aiohttp import web

# A value for each path parameter: well-formed, naming nothing that exists (no stream runs forever).
PARAMETERS = {"task_id": "t-missing", "project_id": "p_missing", "filename": "none.png", "asset": "none.js"}


def concrete(template: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda match: PARAMETERS[match[1]], template)


def pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)))


def allowed_at(by_path: dict[str, set[str]], path: str) -> set[str]:
    """Every method some route answers at `path` (`/api/v1/tasks/metrics` is also a task id's path)."""
    return {
        method
        for template, methods in by_path.items()
        if pattern(template).fullmatch(path)
        for method in methods
    }


def routes_by_path(app: web.Application) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for route in app.router.routes():
        if route.resource is not None:
            found.setdefault(route.resource.canonical, set()).add(route.method)
    return found


async def test_every_route_answers_an_unknown_method_with_405_allow_and_the_error_shape(start_service):
    taskd = await start_service(workers=False)
    by_path = routes_by_path(taskd.service._runner.app)

    answers = {}
    for path in by_path:
        async with taskd.client.request("TRACE", concrete(path)) as response:
            allowed = set(response.headers.get("Allow", "").split(","))
            answers[path] = (response.status, allowed, await response.json())

    assert len(by_path) > 20
    for path in by_path:
        assert answers[path] == (
            405,
            allowed_at(by_path, concrete(path)),
            {"error": "method_not_allowed", "message": "Method Not Allowed"},
        ), path


async def test_a_405_lists_the_methods_of_that_path(start_service):
    taskd = await start_service(workers=False)

    async with taskd.client.get("/api/v1/tasks/t-1/retry") as response:
        assert (response.status, response.headers["Allow"]) == (405, "POST")
    async with taskd.client.put("/openapi.json") as response:
        assert (response.status, set(response.headers["Allow"].split(","))) == (405, {"GET", "HEAD"})


async def test_head_answers_like_get_without_a_body_on_every_get_route(start_service):
    taskd = await start_service(workers=False)
    by_path = routes_by_path(taskd.service._runner.app)
    readable = sorted(path for path, methods in by_path.items() if "GET" in methods)

    mismatched = {}
    for path in readable:
        async with taskd.client.get(concrete(path)) as get:
            got = (get.status, get.content_type)
        async with taskd.client.head(concrete(path)) as head:
            headed = (head.status, head.content_type)
            body = await head.read()
        if headed != got or body:
            mismatched[path] = (got, headed, body[:80])

    assert "HEAD" in by_path["/livez"]
    assert mismatched == {}


async def test_no_answer_under_api_v1_may_be_kept_by_a_cache(start_service):
    taskd = await start_service(workers=False)
    task = await taskd.submit("noop", {"note": "one key's data"})
    by_path = routes_by_path(taskd.service._runner.app)
    paths = [
        concrete(path)
        for path, methods in by_path.items()
        if path.startswith("/api/v1/") and "GET" in methods
    ]
    paths += [f"/api/v1/tasks/{task['task_id']}/status", "/api/v1/projects/proj-1/tasks"]

    kept = {}
    for path in paths:
        async with taskd.client.get(path) as response:
            if response.headers.get("Cache-Control") != "no-store":
                kept[path] = (response.status, response.headers.get("Cache-Control"))
    async with aiohttp.ClientSession(taskd.base_url) as anonymous, anonymous.get(paths[-1]) as refused:
        refused_cache_control = (refused.status, refused.headers.get("Cache-Control"))

    assert kept == {}
    assert refused_cache_control == (401, "no-store")


async def test_no_answer_is_left_to_a_cache_s_own_guess(start_service):
    # Without Cache-Control a cache may keep a 200 or a 404 as long as it likes, keyed by the URL
    # alone: a /media 404 to another project's key was then the file's own project's answer.
    taskd = await start_service(workers=False)
    by_path = routes_by_path(taskd.service._runner.app)
    paths = [concrete(path) for path, methods in by_path.items() if "GET" in methods]
    paths += ["/no/such/route"]

    unsaid = {}
    for path in paths:
        async with taskd.client.get(path, headers={"Accept": "application/json"}) as response:
            if "Cache-Control" not in response.headers:
                unsaid[path] = response.status
    async with (
        aiohttp.ClientSession(taskd.base_url) as anonymous,
        anonymous.get("/media/p_missing/none.png") as refused,
    ):
        media_refused = (refused.status, refused.headers.get("Cache-Control"))

    assert unsaid == {}
    assert media_refused == (401, "no-store")


async def test_no_answer_names_the_server_software_or_its_version(start_service):
    taskd = await start_service(workers=False)
    by_path = routes_by_path(taskd.service._runner.app)
    paths = [concrete(path) for path, methods in by_path.items() if "GET" in methods]
    paths += ["/no/such/route"]

    servers = {}
    for path in paths:
        async with taskd.client.get(path, headers={"Accept": "application/json"}) as response:
            servers[path] = response.headers.get("Server")
    async with aiohttp.ClientSession(taskd.base_url) as anonymous, anonymous.get("/api/v1/health") as refused:
        servers["/api/v1/health (no key)"] = refused.headers.get("Server")

    assert {path: server for path, server in servers.items() if server != "taskd"} == {}
