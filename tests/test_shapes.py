"""One definition per shape: the events the store's Lua writes, and the bodies the client reads,
are the classes of `taskd.shapes` that the views render and the OpenAPI document is generated from."""

from __future__ import annotations

import asyncio

import attrs
import jsonschema_rs
import orjson
import pytest

from taskd import client, keys, model, shapes
from taskd.gpu.devices import SimulatedBackend
from taskd.http import errors
from taskd.http.openapi import document
from taskd.tasks.registry import default_registry

STRICT = shapes.make_converter(forbid_extra_keys=True)


async def project_events(redis, project_id: str) -> list[dict]:
    return [
        orjson.loads(fields[b"event"]) for _, fields in await redis.xrange(keys.project_events(project_id))
    ]


async def test_every_event_the_lua_writes_is_a_task_event_with_no_field_more_or_less(taskd, redis):
    project = {"project_id": "shapes"}
    done = await taskd.submit("sleep", {"seconds": 0.2, "steps": 2}, **project)
    failed = await taskd.submit("fail", {"message": "no good"}, **project)
    await taskd.wait_terminal(done["task_id"])
    await taskd.wait_terminal(failed["task_id"])
    async with taskd.client.post(f"/api/v1/tasks/{failed['task_id']}/retry") as response:
        retried = await response.json()
    long = await taskd.submit("sleep", {"seconds": 30}, **project)
    async with taskd.client.delete(f"/api/v1/tasks/{long['task_id']}"):
        pass
    await taskd.wait_terminal(retried["new_task_id"])

    seen = await project_events(redis, "shapes")
    events = [STRICT.structure(event, shapes.TaskEvent) for event in seen]

    assert {(event.type, event.status.value) for event in events} >= {
        ("status", "queued"),
        ("status", "processing"),
        ("progress", "processing"),
        ("status", "completed"),
        ("status", "failed"),
        ("status", "cancelled"),
    }
    assert [shapes.render(event) for event in events] == seen


async def test_only_the_completed_status_event_carries_the_result(taskd, redis):
    task = await taskd.submit("noop", {}, project_id="results")
    await taskd.wait_terminal(task["task_id"])

    events = [STRICT.structure(event, shapes.TaskEvent) for event in await project_events(redis, "results")]

    assert [event.status.value for event in events if event.result is not shapes.ABSENT] == ["completed"]


# The client's result classes, the body each stands for, and the fields it leaves in `raw` (or flattens).
CLIENT_READS = [
    (client.Submitted, shapes.SubmitResponse, set()),
    (client.Task, shapes.TaskStatusBody, set()),
    (client.TaskSummary, shapes.TaskListItem, set()),
    (client.TaskPage, shapes.ProjectTasks, {"pagination"}),
    (client.Cancellation, shapes.CancelResponse, set()),
    (client.Retried, shapes.RetryResponse, set()),
    (client.Health, shapes.ServiceHealth, {"gpus", "gpu_note"}),
    (client.Metrics, shapes.Counters, {"webhooks_delivered", "webhooks_failed"}),
    (client.Alert, shapes.Alert, {"used_memory", "maxmemory"}),
    (client.QueueHealth, shapes.QueueHealth, set()),
    (client.TaskEvent, shapes.TaskEvent, set()),
]


@pytest.mark.parametrize(
    ("result", "shape", "elsewhere"), CLIENT_READS, ids=lambda v: getattr(v, "__name__", "")
)
def test_the_client_reads_every_field_of_the_body_it_stands_for(result, shape, elsewhere):
    read = {field.name for field in attrs.fields(result)}

    assert {field.name for field in attrs.fields(shape)} - elsewhere - read == set()


def test_task_data_is_published_with_the_defaults_ranges_and_enums_of_its_validators():

    schemas = document(default_registry())["components"]["schemas"]

    # Each field, or a $ref object in its place (TaskRef).
    assert schemas["GenerateVideoInput"]["properties"]["duration"] == {
        "anyOf": [{"type": "number", "minimum": 1, "maximum": 30}, {"$ref": "#/components/schemas/TaskRef"}],
        "default": 7,
    }
    assert schemas["ProcessAudioInput"]["properties"]["output_format"]["anyOf"][0]["enum"] == [
        "mp3",
        "wav",
        "flac",
        "ogg",
    ]
    assert schemas["ProcessAudioInput"]["properties"]["tracks"]["anyOf"][0]["minItems"] == 1


def test_a_body_taskd_sends_lists_every_field_it_always_sends_as_required_and_no_other():

    status = document(default_registry())["components"]["schemas"]["TaskStatus"]

    assert "current_step" in status["required"]
    assert "queue_position" not in status["required"]
    assert status["additionalProperties"] is False


# Every error the model raises, as the views raise them.
API_ERRORS = [
    model.ApiError(401, "authentication_failed", "Invalid or missing API key"),
    model.ValidationError({"task_data.prompt": "This field is required"}),
    model.TaskNotFound("t-1"),
    model.InvalidState("Task is completed; only failed or cancelled tasks can be retried"),
    model.RateLimited("Rate limit exceeded", retry_after=7),
    model.ServiceUnavailable("Task storage is unavailable, please try again later"),
]


@pytest.mark.parametrize("error", API_ERRORS, ids=lambda error: type(error).__name__)
def test_an_error_is_rendered_through_its_shape_to_the_same_bytes_as_its_body(error):
    rendered = shapes.render(errors.shape(error))

    assert orjson.dumps(rendered) == orjson.dumps(error.body)


async def test_the_dashboard_overview_is_exactly_its_shape_and_valid_by_the_document(start_service):
    service = await start_service(gpu_backend=SimulatedBackend(1))
    task = await service.submit("gpu_hold", {"seconds": 30})
    async with asyncio.timeout(20):
        while True:  # until every part of the overview has something in it: a worker, a GPU holder
            async with service.client.get("/api/v1/dashboard/overview") as response:
                overview = await response.json()
            if overview["workers"] and overview["gpus"]["devices"][0]["holders"] == [task["task_id"]]:
                break
            await asyncio.sleep(0.05)
    doc = document(default_registry())
    schema = jsonschema_rs.Draft202012Validator({**doc, "$ref": "#/components/schemas/DashboardOverview"})

    assert shapes.render(STRICT.structure(overview, shapes.DashboardOverview)) == overview
    schema.validate(overview)
