"""Limits on input: body size (413), nesting depth and size of task_data (400), unknown fields."""

from __future__ import annotations

import io
from types import SimpleNamespace

import orjson
from examples import TASK_DATA

from taskd import keys, wide_ints
from taskd.config import MAX_TASK_DATA_DEPTH, LimitsConfig


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


async def test_an_integer_past_64_bits_in_task_data_is_refused_by_name_and_nothing_stored(
    start_service, redis
):
    taskd = await start_service(workers=False)
    # orjson reads it as 1.8446744073709552e+19: stored, it came back as that float.
    body = b'{"project_id": "p", "task_type": "test_prompt", "task_data": {"prompt_template": "Hi", "seed": 18446744073709551616}}'

    status, error = await post(taskd, body)

    assert status == 400
    assert error["details"] == {
        "body": "18446744073709551616 is an integer outside -9223372036854775808 to "
        "18446744073709551615, which taskd cannot keep exactly: send it as a string"
    }
    assert await redis.zcard(keys.project("p")) == 0


async def test_an_integer_too_large_for_a_float_is_named_not_called_invalid_json(start_service):
    taskd = await start_service(workers=False)
    body = (
        b'{"project_id": "p", "task_type": "test_prompt", "task_data": {"prompt_template": "Hi", "n": 1'
        + b"0" * 400
        + b"}}"
    )

    status, error = await post(taskd, body)

    assert status == 400
    assert error["details"]["body"].startswith("1" + "0" * 39 + "… is an integer outside")


async def test_integers_at_the_ends_of_the_64_bit_range_read_back_exactly(start_service):
    taskd = await start_service(workers=False)
    body = (
        b'{"project_id": "p", "task_type": "test_prompt", "task_data": {"prompt_template": "Hi",'
        b' "low": -9223372036854775808, "high": 18446744073709551615, "text": "123456789012345678901234"}}'
    )

    status, _ = await post(taskd, body)
    async with taskd.client.get("/api/v1/projects/p/tasks") as response:
        (listed,) = (await response.json())["tasks"]

    assert status == 200
    assert (listed["task_data"]["low"], listed["task_data"]["high"], listed["task_data"]["text"]) == (
        -(2**63),
        2**64 - 1,
        "123456789012345678901234",
    )


async def test_a_body_that_is_not_json_is_told_why_and_where(start_service):
    taskd = await start_service(workers=False)
    # A byte order mark, as some Windows tools write: the body looks like JSON in an editor.
    body = (
        b'\xef\xbb\xbf{"project_id": "p", "task_type": "test_prompt", "task_data": {"prompt_template": "Hi"}}'
    )

    status, error = await post(taskd, body)

    assert status == 400
    # orjson's own words (its reason, then the place), which its versions may phrase differently.
    message = error["details"]["body"]
    assert message.startswith("Request body must be valid JSON: ")
    assert message.endswith("line 1 column 1 (char 0)")


async def test_a_body_that_is_not_utf8_is_told_so_and_where(start_service):
    taskd = await start_service(workers=False)
    # A Latin-1 body, as a client whose strings are Latin-1 sends it: "é" is one byte, 0xe9.
    body = '{"project_id": "p", "task_type": "test_prompt", "task_data": {"prompt_template": "été"}}'

    status, error = await post(taskd, body.encode("latin-1"))

    assert status == 400
    assert error["details"]["body"] == (
        "Request body must be valid JSON: it is not UTF-8 text (byte 0xe9 at offset 82); JSON is sent "
        "as UTF-8, whatever charset the Content-Type names"
    )


async def test_a_body_that_is_not_json_is_not_parsed_a_second_time(start_service, monkeypatch):
    taskd = await start_service(workers=False)
    parsed = []
    monkeypatch.setattr(wide_ints, "json", SimpleNamespace(loads=lambda *args, **kwargs: parsed.append(args)))
    # A long digit run (in a string) and a trailing comma: the second parse, for integers past
    # 64 bits, ran for it too, at some 30 times orjson's cost for a body of many numbers.
    body = b'{"project_id": "p", "task_type": "test_prompt", "task_data": {"id": "1234567890123456789", "n": [1, 2,]}}'

    status, error = await post(taskd, body)

    assert status == 400
    assert error["details"]["body"].startswith("Request body must be valid JSON: ")
    assert parsed == []


async def test_task_data_at_the_deepest_depth_a_config_may_allow_is_stored_and_read_back(start_service):
    taskd = await start_service(workers=False, limits=LimitsConfig(max_task_data_depth=MAX_TASK_DATA_DEPTH))
    deepest = nested(MAX_TASK_DATA_DEPTH - 1)  # task_data itself is the first level
    batch = {"tasks": [submission(deep=deepest)]}

    # A batch with an Idempotency-Key writes it deepest: in the fingerprint of [route, body].
    async with taskd.client.post(
        "/api/v1/tasks/batch",
        data=orjson.dumps(batch),
        headers={"Content-Type": "application/json", "Idempotency-Key": "deepest"},
    ) as response:
        status = response.status
    async with taskd.client.get("/api/v1/projects/p/tasks") as response:
        (listed,) = (await response.json())["tasks"]

    assert status == 200
    assert listed["task_data"]["deep"] == deepest
