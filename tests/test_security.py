"""API keys looked up by digest (nothing told by timing), per-project keys that see nothing of other projects, no key in bodies."""

from __future__ import annotations

import hmac

import pytest
from conftest import API_KEY

from taskd import keys, wide_ints
from taskd.config import AuthConfig, ScopedKey
from taskd.http import keytable

P1_KEY = "p1-only-key-0123456789"


async def test_a_request_key_is_only_hashed_never_compared_as_sent(start_service, monkeypatch):
    # Compared as sent, byte by byte, its timing would tell how much of a configured key it got
    # right; looked up by its SHA-256 digest (taskd.http.keytable), it tells nothing.
    service = await start_service(workers=False)
    hashed: list[str] = []
    digest = keytable._digest
    monkeypatch.setattr(keytable, "_digest", lambda key: hashed.append(key) or digest(key))
    compared: list[bytes] = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.extend((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    async with service.client.get("/api/v1/tasks/metrics", headers={"X-API-Key": "wrong"}) as response:
        assert response.status == 401

    assert "wrong" in hashed
    assert not [value for value in compared if value in (b"wrong", "wrong")]


@pytest.fixture
async def scoped(start_service):
    service = await start_service(auth=AuthConfig(api_keys=[API_KEY], keys=[ScopedKey(P1_KEY, ["p1"])]))
    other = await service.submit("fail", {"message": "x"}, project_id="p2")
    await service.wait_terminal(other["task_id"])
    return service, other["task_id"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/tasks/{id}/status"),
        ("DELETE", "/api/v1/tasks/{id}"),
        ("POST", "/api/v1/tasks/{id}/retry"),
        ("POST", "/api/v1/tasks/{id}/webhook/redeliver"),
        ("GET", "/api/v1/tasks/{id}/events"),
    ],
)
async def test_a_project_key_gets_404_task_not_found_for_another_projects_task(scoped, method, path):
    service, other = scoped
    headers = {"X-API-Key": P1_KEY}

    async with service.client.request(method, path.format(id=other), headers=headers) as response:
        body = await response.json()

    assert response.status == 404
    assert body == {"error": "task_not_found", "message": f"Task with ID '{other}' not found"}


async def test_a_project_key_gets_404_for_another_projects_task_list(scoped):
    service, _ = scoped

    async with service.client.get("/api/v1/projects/p2/tasks", headers={"X-API-Key": P1_KEY}) as response:
        body = await response.json()

    assert response.status == 404
    assert body == {"error": "not_found", "message": "Project 'p2' not found"}


async def test_a_project_keys_submit_that_is_refused_as_not_json_is_parsed_once(scoped, monkeypatch):
    # The scope check reads the body first and leaves a refusal to the handler, which read it again.
    service, _ = scoped
    parses = []
    loads = wide_ints.loads
    monkeypatch.setattr(wide_ints, "loads", lambda raw: parses.append(raw) or loads(raw))
    body = (
        b'{"project_id": "p1", "task_type": "echo", "task_data": {"message": "x", "n": 18446744073709551616}}'
    )

    async with service.client.post(
        "/api/v1/tasks/submit", data=body, headers={"X-API-Key": P1_KEY, "Content-Type": "application/json"}
    ) as response:
        error = await response.json()

    assert response.status == 400
    assert error["details"]["body"].startswith("18446744073709551616 is an integer outside")
    assert len(parses) == 1


async def test_a_project_key_cannot_submit_to_another_project(scoped, redis):
    service, _ = scoped
    before = await stored_keys(redis)
    request = {"project_id": "p2", "task_type": "noop", "task_data": {}}

    async with service.client.post("/api/v1/tasks/submit", json=request, headers={"X-API-Key": P1_KEY}) as r:
        body = await r.json()

    assert r.status == 400
    assert body["details"] == {"project_id": "Project 'p2' is not available to this API key"}
    assert await stored_keys(redis) == before


async def stored_keys(redis) -> set[bytes]:
    """Every key but the rate limiter's (a refused request still counts against its key's quota)."""
    return {key for key in await redis.keys("*") if not key.startswith(keys.rate_limit("", "")[:-1].encode())}


async def test_a_project_key_uses_its_own_project_as_usual(scoped):
    service, _ = scoped
    request = {"project_id": "p1", "task_type": "noop", "task_data": {}}
    headers = {"X-API-Key": P1_KEY}

    async with service.client.post("/api/v1/tasks/submit", json=request, headers=headers) as response:
        task_id = (await response.json())["task_id"]
    async with service.client.get(f"/api/v1/tasks/{task_id}/status", headers=headers) as response:
        status = response.status

    assert status == 200


async def test_scoped_keys_come_from_the_environment_as_json():
    from taskd.config import load_config

    config = load_config(None, environ={"TASKD_AUTH__KEYS": '[{"key": "k1", "projects": ["p1", "p2"]}]'})

    assert config.auth.keys == [ScopedKey("k1", ["p1", "p2"])]


async def test_error_bodies_never_contain_key_material(start_service):
    service = await start_service(workers=False)
    wrong = "sk-wrong-but-secret-0123456789"
    bodies = []
    for headers in ({"X-API-Key": wrong}, {}):
        async with service.client.get("/api/v1/tasks/x/status", headers=headers) as response:
            bodies.append(await response.text())
    async with service.client.get("/api/v1/tasks/missing/status") as response:
        bodies.append(await response.text())
    async with service.client.post("/api/v1/tasks/submit", data=b"{bad") as response:
        bodies.append(await response.text())

    assert not any(secret in body for body in bodies for secret in (wrong, API_KEY))
