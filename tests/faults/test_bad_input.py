"""Random and hostile request bodies and parameters: always a documented 4xx, never a 5xx, never half a record."""

from __future__ import annotations

import json
from urllib.parse import quote

import httpx
import pytest
import redis as redis_sync
from conftest import API_KEY
from faultkit import child_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskd import keys
from taskd.embedded import EmbeddedValkey

DOCUMENTED_4XX = {400, 401, 404, 405, 413, 429}
FIELDS = ["project_id", "task_type", "task_data", "priority", "callback_url", "metadata"]
TASK_TYPES = ["noop", "sleep", "generate_video", "generate_image", "process_audio", "evaluate_department"]
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50)
    | st.sampled_from(TASK_TYPES)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=10) | st.sampled_from(FIELDS), inner, max_size=6)
    ),
    max_leaves=30,
)
submit_bodies = json_values | st.fixed_dictionaries(
    {},
    optional={
        "project_id": json_values | st.text(min_size=1, max_size=300),
        "task_type": st.sampled_from(TASK_TYPES) | json_values,
        "task_data": json_values | st.dictionaries(st.text(max_size=20), json_values, max_size=8),
        "priority": json_values,
        "callback_url": json_values
        | st.sampled_from(["http://10.0.0.1/x", "ftp://x", "http://[::1]/", "http://"]),
        "metadata": json_values,
    },
)
HOSTILE_TEXT = [
    "NaN",
    "Infinity",
    "-Infinity",
    '{"project_id": "p", "task_type": "noop", "task_data": {}, "priority": NaN}',
    '{"project_id": "p", "task_type": "sleep", "task_data": {"seconds": Infinity}}',
    '{"project_id": "p", "task_type": "noop", "task_data": {}',
    "",
    "\ufeff{}",
    '{"project_id": "' + "x" * 200_000 + '", "task_type": "noop", "task_data": {}}',
    json.dumps({"project_id": "p", "task_type": "noop", "task_data": {"items": list(range(10_000))}}),
    json.dumps(
        {
            "project_id": "p",
            "task_type": "generate_video",
            "task_data": {"storyboard_images": ["http://a/b.png"] * 10_000},
        }
    ),
    '{"project_id": "p", "task_type": "noop", "task_data": {}, "metadata": ' + "[" * 5000 + "]" * 5000 + "}",
    json.dumps({"project_id": "\ud800", "task_type": "noop", "task_data": {}}, ensure_ascii=True),
    json.dumps({"project_id": "p\u0000q", "task_type": "noop", "task_data": {}}),
    "x" * (2 * 1024 * 1024),
]


# One child for the module: every check here compares the records before and after its own request.
@pytest.fixture(scope="module")
def api(module_spawn_taskd, tmp_path_factory):
    """An API-only taskd child (nothing runs the tasks), an HTTP client and a Redis client of its data."""
    data = tmp_path_factory.mktemp("bad-input") / "data"
    proc = module_spawn_taskd("serve", "--no-worker", env=child_env(data))
    store = redis_sync.Redis.from_url(EmbeddedValkey.running_url(data))
    with httpx.Client(base_url=proc.base_url, headers={"X-API-Key": API_KEY}, timeout=30) as client:
        yield client, store
    store.close()


def records(store) -> int:
    """Task records and waiting jobs in Redis."""
    return len(store.keys(keys.task("*"))) + sum(store.zcard(line) for line in store.keys(keys.waiting("*")))


def check_refusal(response: httpx.Response, before: int, store) -> None:
    """A non-200 is a documented 4xx with a JSON error body, and stored nothing."""
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert response.status_code in DOCUMENTED_4XX, response.text
        body = response.json()
        assert "error" in body or "detail" in body, body
        assert records(store) == before


@given(body=submit_bodies)
@SETTINGS
def test_random_submit_bodies_get_a_documented_4xx_and_store_nothing(api, body):
    client, store = api
    before = records(store)

    response = client.post("/api/v1/tasks/submit", json=body)

    check_refusal(response, before, store)


@pytest.mark.parametrize("text", HOSTILE_TEXT, ids=lambda text: text[:30])
def test_hostile_submit_text_gets_a_documented_4xx_and_stores_nothing(api, text):
    client, store = api
    before = records(store)

    response = client.post("/api/v1/tasks/submit", content=text.encode("utf-8", "surrogatepass"))

    assert response.status_code in DOCUMENTED_4XX, response.text
    check_refusal(response, before, store)


@given(
    page=st.text(max_size=12)
    | st.integers(min_value=-(2**40), max_value=2**70).map(str)
    | st.floats().map(str),
    limit=st.text(max_size=12)
    | st.integers(min_value=-(2**40), max_value=2**70).map(str)
    | st.floats().map(str),
    status=st.text(max_size=12),
)
@SETTINGS
def test_random_list_parameters_get_200_or_a_documented_400(api, page, limit, status):
    client, _ = api

    response = client.get("/api/v1/projects/p/tasks", params={"page": page, "limit": limit, "status": status})

    assert response.status_code in {200, 400}, response.text


ROUTES = {
    "status": ("GET", "/status"),
    "cancel": ("DELETE", ""),
    "retry": ("POST", "/retry"),
    "redeliver": ("POST", "/webhook/redeliver"),
}


@given(task_id=st.text(min_size=1, max_size=300), route=st.sampled_from(sorted(ROUTES)))
@SETTINGS
def test_random_task_ids_get_a_documented_4xx_on_every_task_route(api, task_id, route):
    client, store = api
    before = records(store)
    method, suffix = ROUTES[route]

    response = client.request(method, f"/api/v1/tasks/{quote(task_id, safe='')}{suffix}")

    check_refusal(response, before, store)
