"""schemathesis finds the running service true to its OpenAPI document.

Its own module: collecting it builds schemathesis's coverage cases (about 11 s of CPU), which
`make test`'s serial pass skips by leaving this file out (it holds no serial test).
"""

from __future__ import annotations

from collections.abc import Iterator

import childproc
import pytest
import schemathesis
from conftest import API_KEY
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from taskd.http.openapi import document
from taskd.tasks.registry import default_registry

SCHEMA = schemathesis.openapi.from_dict(document(default_registry()))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


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
