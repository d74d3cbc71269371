"""`GET /openapi.json`: it describes exactly the app's routes, and schemathesis finds the service true to it."""

from __future__ import annotations

from collections.abc import Iterator

import childproc
import jsonschema_rs
import pytest
import schemathesis
from conftest import API_KEY
from examples import TASK_DATA
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from taskd.http.openapi import document
from taskd.model import ValidationError
from taskd.submit.submission import parse_submission
from taskd.tasks.registry import default_registry

DOCUMENT = document(default_registry())
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def described(doc: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


def validator(schema_name: str) -> jsonschema_rs.Validator:
    root = {**DOCUMENT, "$ref": f"#/components/schemas/{schema_name}"}
    return jsonschema_rs.Draft202012Validator(root)


async def test_every_route_is_described_and_every_described_route_exists(start_service):
    taskd = await start_service(workers=False)
    app = taskd.service._runner.app
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"  # aiohttp adds HEAD to every GET
    }

    async with taskd.client.get("/openapi.json", headers={"X-API-Key": ""}) as response:
        doc = await response.json()

    assert response.status == 200
    assert doc["openapi"] == "3.1.0"
    assert described(doc) - served == set(), "described but not served"
    assert served - described(doc) == set(), "served but not described"


def test_every_api_v1_operation_requires_the_key_and_no_other_does():
    for path, item in DOCUMENT["paths"].items():
        for operation in item.values():
            needs_key = {"ApiKey": []} in operation["security"] and {} not in operation["security"]
            assert needs_key == path.startswith("/api/v1/"), path


@pytest.mark.parametrize("task_type", sorted(TASK_DATA))
def test_the_documented_examples_are_valid_submissions(task_type):
    body = {"project_id": "detective_series_001", "task_type": task_type, "task_data": TASK_DATA[task_type]}

    validator("SubmitRequest").validate(body)


def test_task_data_schemas_follow_the_input_classes():
    image = DOCUMENT["components"]["schemas"]["GenerateImageInput"]

    assert image["required"] == ["prompt"]
    assert image["properties"]["reference_images"] == {"type": "array", "items": {"type": "string"}}
    assert image["properties"]["style_guide"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert image["additionalProperties"] is True


def test_a_submission_without_required_task_data_fields_is_not_valid():
    body = {"project_id": "p", "task_type": "generate_image", "task_data": {}}

    assert not validator("SubmitRequest").is_valid(body)


def submission(**fields: object) -> dict:
    return {"project_id": "p", "task_type": "test_prompt", "task_data": TASK_DATA["test_prompt"], **fields}


# A submission at each limit `taskd.shapes.SubmitRequest` publishes, and one past it, by field.
AT_THE_LIMITS = {
    "project_id": ({"project_id": "p" * 128}, {"project_id": "p" * 129}),
    "callback_url": (
        {"callback_url": "https://hooks.example/" + "x" * (2048 - 22)},
        {"callback_url": "https://hooks.example/" + "x" * (2048 - 21)},
    ),
    "priority": ({"priority": 3}, {"priority": 4}),
}


@pytest.mark.parametrize("field", sorted(AT_THE_LIMITS))
def test_a_submission_at_a_limit_is_accepted_by_the_parser_and_valid_by_the_document(field):
    body = submission(**AT_THE_LIMITS[field][0])

    parse_submission(body, default_registry())
    validator("SubmitRequest").validate(body)


@pytest.mark.parametrize("field", sorted(AT_THE_LIMITS))
def test_a_submission_past_a_limit_is_refused_by_the_parser_and_not_valid_by_the_document(field):
    body = submission(**AT_THE_LIMITS[field][1])

    with pytest.raises(ValidationError) as refused:
        parse_submission(body, default_registry())
    assert list(refused.value.details) == [field]
    assert not validator("SubmitRequest").is_valid(body)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An API-only `taskd serve` child with its own embedded Valkey; its base URL."""
    tmp = tmp_path_factory.mktemp("openapi")
    env = childproc.taskd_env(
        tmp / "data",
        TASKD_AUTH__API_KEYS=API_KEY,
        TASKD_WEBHOOKS__ALLOW_PRIVATE="true",  # no DNS look-ups of generated callback hosts
        TASKD_LOGGING__LEVEL="WARNING",
    )
    proc = childproc.start(["serve", "--no-worker"], env, tmp)
    try:
        yield childproc.wait_listening(proc)
    finally:
        childproc.stop(proc)


# A project's event stream stays open until the client leaves, so a request to it never completes.
@SCHEMA.exclude(operation_id="project_events").parametrize()
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_the_service_keeps_to_its_openapi_document(case, served):
    case.call_and_validate(base_url=served, headers={"X-API-Key": API_KEY}, checks=CHECKS, timeout=10)
