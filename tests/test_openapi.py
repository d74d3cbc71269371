"""`GET /openapi.json`: it describes exactly the app's routes and their bodies (test_openapi_conformance.py
checks the running service against it)."""

from __future__ import annotations

from pathlib import Path

import attrs
import jsonschema_rs
import orjson
import pytest
import support_tasks
from examples import TASK_DATA

from taskd.http.health import HEALTH_WAIT_S
from taskd.http.media import _FILE_HEADERS
from taskd.http.openapi import document, schema_name
from taskd.http.projects import RECORDS_AT_ONCE
from taskd.model import ValidationError
from taskd.submit.submission import parse_submission
from taskd.tasks.builtin.render_animation import MAX_IMAGES
from taskd.tasks.registry import Registry, default_registry
from taskd.tasks.spec import TaskType

DOCUMENT = document(default_registry())
ROOT = Path(__file__).resolve().parent.parent
# A task_data field's alternative: a $ref object in its place.
TASK_REF = {"$ref": "#/components/schemas/TaskRef"}


def described(doc: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


def validator(schema_name: str, doc: dict = DOCUMENT) -> jsonschema_rs.Validator:
    root = {**doc, "$ref": f"#/components/schemas/{schema_name}"}
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
    # URLs appended to the prompt as text: each bounded, and the bound published for generated clients.
    assert image["properties"]["reference_images"] == {
        "anyOf": [
            {
                "type": "array",
                "items": {
                    "anyOf": [
                        {"type": "string", "maxLength": 2048, "pattern": "^https?://[^\\s/]+"},
                        TASK_REF,
                    ]
                },
                "maxItems": 16,
            },
            TASK_REF,
        ]
    }
    assert image["properties"]["style_guide"] == {
        "anyOf": [{"type": "string"}, {"type": "null"}, TASK_REF],
        "maxLength": 2048,
        "pattern": "^https?://[^\\s/]+",
    }
    assert image["additionalProperties"] is True


@pytest.mark.parametrize(
    ("task_type", "task_data", "accepted"),
    [
        ("generate_character_voice", {"text": "Hello", "sample_rate": 48000}, True),
        ("generate_character_voice", {"text": "Hello", "sample_rate": 44101}, False),
        ("generate_character_voice", {"text": "Hello", "sample_rate": 96000}, False),
        ("generate_video", {"duration": 30, "fps": 60}, True),
        ("generate_video", {"duration": 30.5}, False),
        ("generate_video", {"storyboard_images": ["https://example.com/a.png"] * 33}, False),
        ("process_audio", {"tracks": [{"url": "https://example.com/a.wav"}], "sample_rate": 96001}, False),
        ("evaluate_department", {"department_slug": "s", "department_number": 13, "gather_data": []}, False),
    ],
)
async def test_the_published_bounds_of_task_data_are_the_ones_the_server_checks(
    start_service, task_type, task_data, accepted
):
    api_only = await start_service(workers=False)
    async with api_only.client.get("/openapi.json") as response:
        published = await response.json()
    body = {"project_id": "p", "task_type": task_type, "task_data": task_data}

    async with api_only.client.post("/api/v1/tasks/submit", json=body) as response:
        status = response.status

    assert status == (200 if accepted else 400)
    assert validator("SubmitRequest", published).is_valid(body) is accepted


@pytest.mark.parametrize(("project_id", "listed"), [("p" * 128, True), ("p" * 129, False), ("_p", False)])
async def test_a_project_path_takes_the_ids_a_submit_takes_and_its_published_pattern_says_so(
    start_service, project_id, listed
):
    # A listing of an id no submit takes is a 404; the path parameter was any string.
    api_only = await start_service(workers=False)
    async with api_only.client.get("/openapi.json") as response:
        paths = (await response.json())["paths"]

    async with api_only.client.get(f"/api/v1/projects/{project_id}/tasks") as response:
        status = response.status

    assert status == (200 if listed else 404)
    for path in ("/api/v1/projects/{project_id}/tasks", "/api/v1/projects/{project_id}/events"):
        (param,) = (p for p in paths[path]["get"]["parameters"] if p["name"] == "project_id")
        assert jsonschema_rs.Draft202012Validator(param["schema"]).is_valid(project_id) is listed


@pytest.mark.parametrize(
    ("schema", "field", "rule"),
    [
        ("GenerateVideoInput", "resolution", "even width and height"),
        ("RenderAnimationInput", "resolution", "139264 macroblocks"),
        ("GenerateVideoInput", "resolution", "each side 16..7680"),
        ("RenderAnimationInput", "resolution", "each side 16..7680"),
        ("GenerateImageInput", "resolution", "each side 16..4096"),
        ("RenderAnimationInput", "keyframes", "a time for every keyframe or for none"),
        ("GenerateVideoInput", "dialogue", "both a start and an end"),
        ("AudioTrack", "end", "After start"),
        ("ProcessAudioInput", "sample_rate", "With output_format mp3, one of 8000, 11025, 12000"),
        ("GenerateCharacterVoiceInput", "pace", "0.25..4 written as a string"),
        ("GenerateCharacterVoiceInput", "background_noise", "rain_ambience, wind, room_tone, white_noise"),
        ("TestPromptInput", "test_parameters", "at most 1000000 characters"),
    ],
)
async def test_a_task_data_rule_no_schema_keyword_says_is_in_its_fields_description(
    start_service, schema, field, rule
):
    # api.md: a bound no keyword says is published in the field's description. These were not: the
    # schema took values the submit refuses (an odd width, a side of 8000, an MP3 at 96000 Hz, pace 9).
    api_only = await start_service(workers=False)
    async with api_only.client.get("/openapi.json") as response:
        schemas = (await response.json())["components"]["schemas"]

    assert rule in schemas[schema]["properties"][field].get("description", "")


def test_a_plugin_s_tuple_sequence_set_and_mapping_fields_are_published_as_arrays_and_objects():
    collections = next(task_type for task_type in support_tasks.TASKS if task_type.name == "collections")
    schemas = document(Registry([collections]))["components"]["schemas"]
    fields = schemas[schema_name(collections.input)]["properties"]

    # Each field, item and value, or a $ref object in its place.
    strings = {"type": "array", "items": {"anyOf": [{"type": "string"}, TASK_REF]}}
    assert fields["a_tuple"] == {"anyOf": [strings, TASK_REF], "default": []}
    assert fields["a_pair"] == {
        "anyOf": [
            {
                "type": "array",
                "prefixItems": [
                    {"anyOf": [{"type": "string"}, TASK_REF]},
                    {"anyOf": [{"type": "integer"}, TASK_REF]},
                ],
                "minItems": 2,
                "maxItems": 2,
            },
            TASK_REF,
        ],
        "default": ["", 0],
    }
    assert fields["a_sequence"] == {"anyOf": [strings, TASK_REF], "default": []}
    assert fields["a_set"] == {"anyOf": [strings, TASK_REF]}
    # JSON has no sets: the default is a list, in one order (a set in the document was a 500).
    assert fields["a_frozenset"] == {"anyOf": [strings, TASK_REF], "default": ["a", "b"]}
    assert fields["a_mapping"] == {
        "anyOf": [
            {"type": "object", "additionalProperties": {"anyOf": [{"type": "integer"}, TASK_REF]}},
            TASK_REF,
        ]
    }
    assert fields["a_deque"] == {"anyOf": [strings, TASK_REF]}


@attrs.frozen
class _Style:
    size: int = 3
    tags: frozenset[str] = frozenset({"b", "a"})


@attrs.frozen
class _NestedDefaultsInput:
    style: _Style = _Style()
    groups: tuple[frozenset[str], ...] = (frozenset({"x"}),)


def test_a_plugin_s_int_enum_field_is_published_as_its_numbers():
    choice = next(task_type for task_type in support_tasks.TASKS if task_type.name == "choice")
    schemas = document(Registry([choice]))["components"]["schemas"]
    fields = schemas[schema_name(choice.input)]["properties"]

    # Not {"type": "string", "enum": [1, 24]}, which no value is.
    assert fields["speed"] == {"anyOf": [{"enum": [1, 24]}, TASK_REF], "default": 1}
    assert fields["mode"] == {"anyOf": [{"type": "string", "const": "draft"}, TASK_REF], "default": "draft"}


def test_a_plugin_s_attrs_instance_or_nested_set_default_is_published_as_the_json_it_stands_for():
    nested = TaskType("nested_defaults", _NestedDefaultsInput, queue="default", expected_duration=1.0)
    served = orjson.loads(orjson.dumps(document(Registry([nested]))))  # as GET /openapi.json renders it
    fields = served["components"]["schemas"][schema_name(_NestedDefaultsInput)]["properties"]

    assert fields["style"]["default"] == {"size": 3, "tags": ["a", "b"]}
    assert fields["groups"]["default"] == [["x"]]


def test_a_submission_without_required_task_data_fields_is_not_valid():
    body = {"project_id": "p", "task_type": "generate_image", "task_data": {}}

    assert not validator("SubmitRequest").is_valid(body)


# A $ref object in place of each kind of task_data field the server accepts one for.
REF_PLACES = {
    "a string": ("generate_image", {"prompt": "@"}),
    "a number": ("generate_video", {"duration": "@"}),
    "a choice": ("generate_video", {"transition": "@"}),
    "a list": ("generate_video", {"storyboard_images": "@"}),
    "a list item": ("generate_video", {"storyboard_images": ["https://media.example/1.png", "@"]}),
    "a field of an object in a list": ("generate_video", {"dialogue": [{"text": "Hello", "start": "@"}]}),
}


def _with_ref(data: object, ref: dict) -> object:
    if data == "@":
        return ref
    if isinstance(data, dict):
        return {key: _with_ref(value, ref) for key, value in data.items()}
    if isinstance(data, list):
        return [_with_ref(value, ref) for value in data]
    return data


@pytest.mark.parametrize("place", sorted(REF_PLACES))
async def test_a_submission_with_a_ref_in_place_of_a_field_is_accepted_and_valid_by_the_document(
    start_service, place
):
    # The task_data schemas allowed no $ref object: a generated client (or a validator of requests)
    # refused a chain of steps the server takes.
    taskd = await start_service(workers=False)
    first = await taskd.submit("test_prompt", TASK_DATA["test_prompt"])
    task_type, task_data = REF_PLACES[place]
    ref = {"$ref": f"{first['task_id']}#/response"}
    body = {"project_id": "proj-1", "task_type": task_type, "depends_on": [first["task_id"]]}
    body["task_data"] = _with_ref(task_data, ref)

    async with taskd.client.get("/openapi.json") as response:
        served = await response.json()
    await taskd.submit(task_type, body["task_data"], depends_on=body["depends_on"])
    validator("SubmitRequest", served).validate(body)


async def test_a_batch_with_a_ref_to_an_earlier_item_is_accepted_and_valid_by_the_document(start_service):
    taskd = await start_service(workers=False)
    first = {"project_id": "proj-1", "task_type": "test_prompt", "task_data": TASK_DATA["test_prompt"]}
    second = {
        "project_id": "proj-1",
        "task_type": "generate_image",
        "depends_on": ["@0"],
        "task_data": {"prompt": {"$ref": "@0#/response"}},
    }
    body = {"tasks": [first, second]}

    async with taskd.client.post("/api/v1/tasks/batch", json=body) as response:
        assert response.status == 200, await response.text()
    validator("BatchRequest").validate(body)


@pytest.mark.parametrize("ref", ["t-1#/response", 5])
def test_task_data_that_is_itself_a_ref_is_refused_by_the_parser_and_not_valid_by_the_document(ref):
    # generate_video requires no field: its schema took a bare $ref object as task_data, a 400.
    body = {
        "project_id": "p",
        "task_type": "generate_video",
        "depends_on": ["t-1"],
        "task_data": {"$ref": ref},
    }

    with pytest.raises(ValidationError) as refused:
        parse_submission(body, default_registry())
    assert list(refused.value.details) == ["task_data"]
    assert not validator("SubmitRequest").is_valid(body)
    beside_a_field = {**body, "task_data": {"$ref": ref, "duration": 5}}  # an unknown field, kept as sent
    parse_submission(beside_a_field, default_registry())
    assert validator("SubmitRequest").is_valid(beside_a_field)


@pytest.mark.parametrize("text", ["t-1", "t 1#/response", "#/response", "t-1#response"])
def test_a_malformed_ref_is_refused_by_the_parser_and_not_valid_by_the_document(text):
    body = {
        "project_id": "p",
        "task_type": "generate_image",
        "depends_on": ["t-1"],
        "task_data": {"prompt": {"$ref": text}},
    }

    with pytest.raises(ValidationError) as refused:
        parse_submission(body, default_registry())
    assert list(refused.value.details) == ["task_data.prompt"]
    assert not validator("SubmitRequest").is_valid(body)


# A task input URL (downloaded when the task runs), by task type, the field's place and its value.
NOT_HTTP_URLS = [
    ("generate_image", "style_guide", {"prompt": "a door", "style_guide": ""}),
    (
        "generate_image",
        "reference_images",
        {"prompt": "a door", "reference_images": ["ftp://media.example/a.png"]},
    ),
    ("generate_video", "storyboard_images", {"storyboard_images": ["media.example/a.png"]}),
    ("process_audio", "tracks[0].url", {"tracks": [{"url": "file:///etc/passwd"}]}),
    (
        "render_animation",
        "background_url",
        {
            "character_id": "hero",
            "keyframes": [{"image_url": "https://media.example/a.png"}],
            "background_url": "0",
        },
    ),
]


@pytest.mark.parametrize(("task_type", "field", "task_data"), NOT_HTTP_URLS)
async def test_a_task_input_url_that_is_not_http_is_refused_by_the_service_and_not_valid_by_the_document(
    start_service, task_type, field, task_data
):
    # The document published these as any string: a generated client sent "" as a valid style
    # guide and got the 400.
    api_only = await start_service(workers=False)
    body = {"project_id": "p", "task_type": task_type, "task_data": task_data}

    async with api_only.client.post("/api/v1/tasks/submit", json=body) as response:
        status, refused = response.status, await response.json()

    assert status == 400
    assert list(refused["details"]) == [f"task_data.{field}"]
    assert not validator("SubmitRequest").is_valid(body)


async def test_null_depends_on_and_metadata_are_accepted_by_the_service_and_valid_by_the_document(
    start_service,
):
    # As if left out, as docs/api.md says; the document published an array and an object only.
    api_only = await start_service(workers=False)
    body = {**submission(), "depends_on": None, "metadata": None}

    async with api_only.client.post("/api/v1/tasks/submit", json=body) as response:
        assert response.status == 200, await response.text()
    validator("SubmitRequest").validate(body)


async def test_an_empty_task_id_in_depends_on_is_refused_by_the_service_and_not_valid_by_the_document(
    start_service,
):
    api_only = await start_service(workers=False)
    body = submission(depends_on=[""])

    async with api_only.client.post("/api/v1/tasks/submit", json=body) as response:
        status, refused = response.status, await response.json()

    assert status == 400
    assert list(refused["details"]) == ["depends_on"]
    assert not validator("SubmitRequest").is_valid(body)


async def test_run_at_with_delay_seconds_is_refused_by_the_service_and_not_valid_by_the_document(
    start_service,
):
    api_only = await start_service(workers=False)
    body = submission(run_at="2030-01-31T09:00:00Z", delay_seconds=5)

    async with api_only.client.post("/api/v1/tasks/submit", json=body) as response:
        status, refused = response.status, await response.json()

    assert status == 400
    assert set(refused["details"]) == {"run_at", "delay_seconds"}
    assert not validator("SubmitRequest").is_valid(body)
    # One of them null is as if left out: the other schedules it.
    assert validator("SubmitRequest").is_valid({**body, "run_at": None})
    assert validator("SubmitRequest").is_valid({**body, "delay_seconds": None})


async def test_a_last_event_id_longer_than_a_stream_id_is_refused_by_the_service_and_not_valid_by_the_document(
    start_service,
):
    # The document's pattern took any run of digits: 21 of them was valid there and a 400 here.
    api_only = await start_service(workers=False)
    task = await api_only.submit("noop", {})
    too_long = "1" * 21 + "-0"

    async with api_only.client.get(
        f"/api/v1/tasks/{task['task_id']}/events", headers={"Last-Event-ID": too_long}
    ) as response:
        status, refused = response.status, await response.json()

    assert status == 400
    assert list(refused["details"]) == ["Last-Event-ID"]
    parameters = DOCUMENT["paths"]["/api/v1/tasks/{task_id}/events"]["get"]["parameters"]
    header = jsonschema_rs.Draft202012Validator(
        next(parameter for parameter in parameters if parameter["name"] == "Last-Event-ID")["schema"]
    )
    assert not header.is_valid(too_long)
    assert header.is_valid("1700000000000-3")
    assert header.is_valid("")  # as if not sent


@pytest.mark.parametrize("route", ["tasks", "events"])
async def test_a_project_id_no_task_can_have_is_a_documented_404_on_the_project_s_routes(
    start_service, route
):
    # The project's event stream answered it 404 without documenting a 404.
    api_only = await start_service(workers=False)

    async with api_only.client.get(f"/api/v1/projects/-films/{route}") as response:
        status, refused = response.status, await response.json()

    assert status == 404
    assert refused["error"] == "not_found"
    responses = DOCUMENT["paths"][f"/api/v1/projects/{{project_id}}/{route}"]["get"]["responses"]
    assert responses["404"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


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
    "keep_for": ({"keep_for": 30 * 24 * 3600}, {"keep_for": 30 * 24 * 3600 + 1}),
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


def test_a_task_data_list_past_its_bound_is_refused_by_the_parser_and_not_valid_by_the_document():
    # A list's bound was left out of the document (only a string's was published): a generated
    # client sent 33 storyboard images as valid and got the 400.
    images = [f"https://media.example/{i}.png" for i in range(33)]
    body = {"project_id": "p", "task_type": "generate_video", "task_data": {"storyboard_images": images}}

    with pytest.raises(ValidationError) as refused:
        parse_submission(body, default_registry())
    assert list(refused.value.details) == ["task_data.storyboard_images"]
    assert not validator("SubmitRequest").is_valid(body)
    assert validator("SubmitRequest").is_valid({**body, "task_data": {"storyboard_images": images[:32]}})


@pytest.mark.parametrize("path", ["/api/v1/tasks/submit", "/api/v1/tasks/{task_id}/retry"])
def test_submit_and_retry_document_the_idempotency_key_its_replay_and_its_422(path):
    operation = DOCUMENT["paths"][path]["post"]

    (header,) = [p for p in operation["parameters"] if p["name"] == "Idempotency-Key"]
    assert (header["in"], header["schema"]["maxLength"]) == ("header", 255)
    assert "Idempotent-Replayed" in operation["responses"]["200"]["headers"]
    assert "idempotency_key_reused" in operation["responses"]["422"]["description"]


def test_the_service_health_documents_degraded_while_redis_refuses_writes():
    answer = DOCUMENT["paths"]["/api/v1/health"]["get"]["responses"]["200"]

    assert "Redis refuses writes" in answer["description"]
    assert "redis_note" in answer["description"]


def test_the_schemathesis_run_left_out_of_the_serial_pass_holds_no_serial_test():
    makefile = (ROOT / "Makefile").read_text()
    conformance = ROOT / "tests" / "test_openapi_conformance.py"

    assert "SCHEMATHESIS_RUN := tests/test_openapi_conformance.py" in makefile
    assert "mark.serial" not in conformance.read_text()


def test_a_submission_s_webhook_events_are_validated_by_the_document_as_by_the_parser():
    body = {"project_id": "p", "task_type": "test_prompt", "task_data": TASK_DATA["test_prompt"]}

    assert validator("SubmitRequest").is_valid({**body, "webhook_events": ["started", "progress"]})
    assert not validator("SubmitRequest").is_valid({**body, "webhook_events": ["finished"]})


async def test_a_waited_submit_answer_is_valid_by_the_document(start_service):
    taskd = await start_service(workers=False)
    body = {"project_id": "p", "task_type": "sleep", "task_data": {"seconds": 1}}
    answer_schema = DOCUMENT["paths"]["/api/v1/tasks/submit"]["post"]["responses"]["200"]
    prefer = DOCUMENT["paths"]["/api/v1/tasks/submit"]["post"]["parameters"]

    async with taskd.client.post("/api/v1/tasks/submit", json=body, headers={"Prefer": "wait=1"}) as response:
        answer = await response.json()

    assert "Prefer" in [parameter["name"] for parameter in prefer]
    assert "Preference-Applied" in answer_schema["headers"]
    assert "estimated_duration" in answer
    validator("WaitedTaskStatus").validate(answer)
    assert not validator("SubmitResponse").is_valid(answer)


def test_media_files_document_the_cache_control_they_are_sent_with_and_their_304():
    answers = DOCUMENT["paths"]["/media/{project_id}/{filename}"]["get"]["responses"]

    assert answers["200"]["headers"]["Cache-Control"]["schema"]["const"] == _FILE_HEADERS["Cache-Control"]
    assert "304" in answers


def test_media_files_document_the_answers_of_a_range_and_of_the_s3_backend():
    answers = DOCUMENT["paths"]["/media/{project_id}/{filename}"]["get"]["responses"]

    # aiohttp's FileResponse answers Range and the preconditions; the s3 backend redirects, or is a
    # 503 when the bucket cannot be asked whether the file is there.
    assert {"206", "302", "412", "416", "503"} <= set(answers)
    assert answers["302"]["headers"]["Cache-Control"]["schema"]["const"] == "no-store"


def test_the_listing_documents_its_status_units_per_ids_read_and_its_pages_sent_as_read():
    listing = DOCUMENT["paths"]["/api/v1/projects/{project_id}/tasks"]["get"]

    assert "1,000 ids of the project's index it reads" in listing["summary"]
    assert "unchanged since its last listing" in listing["summary"]
    assert (
        f"more than {RECORDS_AT_ONCE} tasks is sent as it is read"
        in listing["responses"]["200"]["description"]
    )


@pytest.mark.parametrize("path", ["/api/v1/health", "/api/v1/tasks/health", "/api/v1/tasks/metrics"])
def test_the_health_routes_document_their_503_for_a_redis_that_does_not_answer_in_time(path):
    answer = DOCUMENT["paths"][path]["get"]["responses"]["503"]

    assert f"did not answer within {HEALTH_WAIT_S:g} s" in answer["description"]


def test_a_submit_s_429_documents_the_key_s_open_bodies():
    answer = DOCUMENT["paths"]["/api/v1/tasks/submit"]["post"]["responses"]["429"]

    assert "limits.open_bodies" in answer["description"]


def test_the_batch_documents_its_400_for_a_batch_no_wait_lets_pass():
    description = DOCUMENT["paths"]["/api/v1/tasks/batch"]["post"]["description"]

    assert "limits.queued_per_project" in description
    assert "limits.max_queue_length" in description


def test_a_retry_s_400_documents_a_stored_task_a_submit_s_checks_now_refuse():
    answer = DOCUMENT["paths"]["/api/v1/tasks/{task_id}/retry"]["post"]["responses"]["400"]

    assert "stored `task_data` or `callback_url`" in answer["description"]


def test_a_project_stream_documents_its_gap_for_a_client_resuming_from_before_the_streams_life():
    answer = DOCUMENT["paths"]["/api/v1/projects/{project_id}/events"]["get"]["responses"]["200"]

    assert "older than the streams' life" in answer["description"]
    assert "`event: gap` first" in answer["description"]


def test_render_animation_s_keyframes_document_their_bound_on_distinct_images():
    keyframes = DOCUMENT["components"]["schemas"]["RenderAnimationInput"]["properties"]["keyframes"]

    assert (
        f"At most {MAX_IMAGES} distinct image_url values, background_url included" in keyframes["description"]
    )
