"""One definition per shape: the events the store's Lua writes, and the bodies the client reads,
are the classes of `taskd.shapes` that the views render and the OpenAPI document is generated from."""

from __future__ import annotations

import attrs
import orjson
import pytest

from taskd import client, keys, shapes
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

    assert schemas["GenerateVideoInput"]["properties"]["duration"] == {
        "type": "number",
        "minimum": 1,
        "maximum": 30,
        "default": 7,
    }
    assert schemas["ProcessAudioInput"]["properties"]["output_format"]["enum"] == [
        "mp3",
        "wav",
        "flac",
        "ogg",
    ]
    assert schemas["ProcessAudioInput"]["properties"]["tracks"]["minItems"] == 1


def test_a_body_taskd_sends_lists_every_field_it_always_sends_as_required_and_no_other():

    status = document(default_registry())["components"]["schemas"]["TaskStatus"]

    assert "current_step" in status["required"]
    assert "queue_position" not in status["required"]
    assert status["additionalProperties"] is False
