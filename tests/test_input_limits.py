"""Limits on input: body size (413), nesting depth and size of task_data (400), unknown fields."""

from __future__ import annotations

import io

import orjson
from examples import TASK_DATA

from taskd import keys
from taskd.config import LimitsConfig


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"inner": value}
    return value


async def post(taskd, body: bytes | dict):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with taskd.client.post(
        "/api/v1/tasks/submit", data=io.BytesIO(data), headers={"Content-Type": "application/json"}
    ) as response:
        return response.status, await response.json()


def submission(**task_data) -> dict:
    return {
        "project_id": "p",
        "task_type": "test_prompt",
        "task_data": {**TASK_DATA["test_prompt"], **task_data},
    }


async def test_a_body_over_the_limit_gets_413_in_the_documented_shape(start_service):
    taskd = await start_service(workers=False)
    body = orjson.dumps(submission(padding="x" * (1024 * 1024 + 1)))

    status, error = await post(taskd, body)

    assert status == 413
    assert error == {
        "error": "payload_too_large",
        "message": "Request body is larger than the limit of 1048576 bytes",
    }


async def test_the_body_limit_is_configurable(start_service):
    taskd = await start_service(workers=False, limits=LimitsConfig(max_body_bytes=4096))

    small, _ = await post(taskd, submission(padding="x" * 1000))
    large, _ = await post(taskd, submission(padding="x" * 5000))

    assert (small, large) == (200, 413)


async def test_deeply_nested_task_data_is_refused(start_service):
    taskd = await start_service(workers=False)

    status, error = await post(taskd, submission(test_parameters=nested(40)))

    assert status == 400
    assert error["error"] == "validation_error"
    assert error["details"] == {"task_data": "Task data must be nested at most 32 levels deep"}


async def test_task_data_with_too_many_values_is_refused(start_service):
    taskd = await start_service(workers=False)

    status, error = await post(taskd, submission(test_parameters={"many": list(range(20_000))}))

    assert status == 400
    assert error["details"] == {"task_data": "Task data must hold at most 10000 values in all"}


async def test_deeply_nested_metadata_is_refused(start_service):
    taskd = await start_service(workers=False)

    status, error = await post(taskd, {**submission(), "metadata": nested(40)})

    assert status == 400
    assert error["details"] == {"metadata": "Metadata must be nested at most 32 levels deep"}


async def test_json_nested_beyond_the_parser_limit_is_a_clean_400(start_service):
    taskd = await start_service(workers=False)
    body = b'{"project_id": "p", "task_type": "test_prompt", "task_data": ' + b"[" * 5000 + b"]" * 5000 + b"}"

    status, error = await post(taskd, body)

    assert status == 400
    assert error["error"] == "validation_error"


async def test_unknown_top_level_fields_are_ignored(start_service, redis):
    taskd = await start_service(workers=False)

    status, accepted = await post(taskd, {**submission(), "colour": "blue"})

    stored = await redis.hgetall(keys.task(accepted["task_id"]))
    assert status == 200
    assert b"colour" not in stored
    assert b"colour" not in stored[b"task_data"]
