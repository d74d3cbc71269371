"""A task's caller reads that Redis failed in its run, never where that Redis is (docs/security.md,
"What taskd says, to whom"): redis-py names the server in its message and its traceback."""

from __future__ import annotations

import json
import logging

import pytest
from faultkit import free_port


async def test_a_redis_failure_in_a_run_is_shown_without_the_servers_address(start_service):
    service = await start_service()
    port = free_port()
    task = await service.submit("call_a_redis_that_is_down", {"port": port})

    body = await service.wait_terminal(task["task_id"])

    assert body["status"] == "failed"
    assert body["error"] == (
        "Task execution failed: taskd's task storage (Redis) failed: ConnectionError; the operator's "
        "log has the detail"
    )
    assert str(port) not in json.dumps(body)


async def test_a_redis_failure_in_a_run_is_logged_with_the_servers_address(
    start_service, caplog: pytest.LogCaptureFixture
):
    service = await start_service()
    port = free_port()
    with caplog.at_level(logging.WARNING, logger="taskd.engine"):
        task = await service.submit("call_a_redis_that_is_down", {"port": port})
        await service.wait_terminal(task["task_id"])

    logged = [
        logging.Formatter().formatException(record.exc_info)
        for record in caplog.records
        if record.exc_info
        and record.getMessage() == f"task {task['task_id']}: its handler met a Redis failure"
    ]
    assert logged  # one a run (its retries' too)
    assert all(f"127.0.0.1:{port}" in detail for detail in logged)
