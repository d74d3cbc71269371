"""POST /api/v1/tasks/submit: accepted bodies, validation errors, auth."""

from __future__ import annotations

from datetime import datetime

import pytest
from examples import TASK_DATA
from redis.asyncio import Redis

from taskd import keys

pytestmark = pytest.mark.usefixtures("fake_llm")


@pytest.mark.parametrize("task_type", sorted(TASK_DATA))
async def test_every_documented_task_type_is_accepted(start_service, task_type):
    api_only = await start_service(workers=False)
    body = await api_only.submit(task_type, TASK_DATA[task_type])

    assert body["status"] == "queued"
    assert body["project_id"] == "proj-1"
    assert set(body) == {
        "task_id",
        "status",
        "project_id",
        "estimated_duration",
        "queue_position",
        "created_at",
    }


async def test_submit_response_has_the_documented_types(start_service):
    api_only = await start_service(workers=False)
    body = await api_only.submit("generate_video", TASK_DATA["generate_video"])

    assert isinstance(body["estimated_duration"], int) and body["estimated_duration"] > 0
    assert isinstance(body["queue_position"], int) and body["queue_position"] >= 1
    datetime.strptime(body["created_at"], "%Y-%m-%dT%H:%M:%SZ")


async def test_submitted_task_is_stored_before_the_response(start_service, redis: Redis):
    api_only = await start_service(workers=False)
    body = await api_only.submit("generate_video", {"duration": 7}, project_id="stored")

    assert await redis.hget(keys.task(body["task_id"]), "project_id") == b"stored"
    assert await redis.zscore(keys.project("stored"), body["task_id"]) is not None


async def test_queue_position_counts_the_tasks_waiting_ahead(start_service):
    api_only = await start_service(workers=False)

    positions = [
        (await api_only.submit("generate_video", {"duration": 7}))["queue_position"] for _ in range(3)
    ]

    assert positions == [1, 2, 3]


async def test_high_priority_task_is_placed_ahead_of_normal_ones(start_service):
    api_only = await start_service(workers=False)
    for _ in range(3):
        await api_only.submit("generate_video", {"duration": 7}, priority=2)

    urgent = await api_only.submit("generate_video", {"duration": 7}, priority=1)

    assert urgent["queue_position"] == 1


async def test_estimated_duration_uses_the_observed_average(taskd, redis: Redis):
    await redis.hset(
        keys.METRICS, mapping={"duration_sum:test_prompt": 30.0, "duration_count:test_prompt": 2}
    )

    body = await taskd.submit("test_prompt", TASK_DATA["test_prompt"])

    assert body["estimated_duration"] == 15


async def post(taskd, body, **kwargs):
    async with taskd.client.post("/api/v1/tasks/submit", json=body, **kwargs) as response:
        return response.status, await response.json()


async def test_out_of_range_duration_is_a_field_error(taskd):
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "generate_video", "task_data": {"duration": 31}}
    )

    assert status == 400
    assert body == {
        "error": "validation_error",
        "message": "Invalid task data",
        "details": {"task_data.duration": "Duration must be between 1 and 30 seconds"},
    }


async def test_missing_project_id_is_named(taskd):
    status, body = await post(taskd, {"task_type": "generate_video", "task_data": {"duration": 7}})

    assert status == 400
    assert body["details"] == {"project_id": "Project ID is required"}


async def test_every_bad_field_is_reported_at_once(taskd):
    status, body = await post(
        taskd,
        {
            "project_id": "",
            "task_type": "generate_video",
            "priority": 9,
            "task_data": {"duration": 0, "fps": "fast", "resolution": "big"},
        },
    )

    assert status == 400
    assert set(body["details"]) == {
        "project_id",
        "priority",
        "task_data.duration",
        "task_data.fps",
        "task_data.resolution",
    }


@pytest.mark.parametrize(
    ("task_type", "task_data"),
    [
        ("generate_video", {}),
        ("render_animation", {"character_id": "c", "keyframes": [{"image_url": "https://x.example/c.png"}]}),
    ],
)
async def test_a_resolution_no_h264_frame_holds_is_refused_at_submit(taskd, task_type, task_data):
    # 480x480 macroblocks: over H.264's 139 264; accepted, it ran the encoder out of its address space.
    status, body = await post(
        taskd,
        {"project_id": "p", "task_type": task_type, "task_data": {**task_data, "resolution": "7680x7680"}},
    )

    assert status == 400
    assert body["details"] == {
        "task_data.resolution": "Resolution must fit an H.264 frame: at most 139264 macroblocks of 16x16 "
        "pixels (7680x4320 fits, 7680x7680 does not)"
    }


async def test_unknown_task_type_is_refused(taskd):
    status, body = await post(taskd, {"project_id": "p", "task_type": "make_coffee", "task_data": {}})

    assert status == 400
    assert "task_type" in body["details"]


async def test_missing_required_task_data_field_is_named(taskd):
    status, body = await post(taskd, {"project_id": "p", "task_type": "generate_image", "task_data": {}})

    assert status == 400
    assert body["details"] == {"task_data.prompt": "This field is required"}


@pytest.mark.parametrize("priority", [0, 4, "1", 1.5, True])
async def test_invalid_priority_is_refused(taskd, priority):
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "generate_video", "task_data": {}, "priority": priority}
    )

    assert status == 400
    assert "priority" in body["details"]


async def test_whole_numbers_written_with_a_zero_fraction_are_integers(taskd, redis: Redis):
    # JSON has one kind of number: 1.0 and 24.0 are integers to the OpenAPI document's JSON Schema.
    task = await taskd.submit("generate_video", {"fps": 24.0, "duration": 7}, priority=1.0)

    assert await redis.hget(keys.task(task["task_id"]), "priority") == b"1"


@pytest.mark.parametrize("fps", [24.5, "24", True, 2.0**60])
async def test_an_integer_task_data_field_refuses_what_is_not_a_whole_number(taskd, fps):
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "generate_video", "task_data": {"fps": fps}}
    )

    assert status == 400
    assert body["details"] == {"task_data.fps": "Must be an integer"}


async def test_a_float_of_2_to_the_53_is_not_taken_as_an_integer_as_it_may_have_been_written_one_more(taskd):
    # 9007199254740993.0 reads as the double 2^53: taken, a handler got 9007199254740992.
    body = '{"project_id": "p", "task_type": "collections", "task_data": {"a_mapping": {"n": 9007199254740993.0}}}'
    async with taskd.client.post(
        "/api/v1/tasks/submit", data=body, headers={"Content-Type": "application/json"}
    ) as response:
        status, answer = response.status, await response.json()

    assert status == 400
    assert answer["details"] == {"task_data.a_mapping.n": "Must be an integer"}


async def test_a_literal_field_takes_24_0_as_its_own_24_and_hands_on_an_int(taskd):
    task = await taskd.submit("choice", {"rate": 24.0})
    done = await taskd.wait_terminal(task["task_id"], timeout=30)

    assert done["status"] == "completed", done
    assert done["result"]["rate"] == ["int", 24]


async def test_true_is_not_a_literal_field_s_1(taskd):
    status, body = await post(taskd, {"project_id": "p", "task_type": "choice", "task_data": {"rate": True}})

    assert status == 400
    assert body["details"] == {"task_data.rate": "Must be one of: 1, 24"}


@pytest.mark.parametrize(("field", "value", "message"), [("speed", 5, "1, 24"), ("mode", "final", '"draft"')])
async def test_an_enum_field_refuses_a_value_that_is_no_member_s(taskd, field, value, message):
    # cattrs hands an IntEnum the int hook and a str Enum the str hook: any int or string was taken,
    # and reached the handler as a plain int or str.
    status, body = await post(taskd, {"project_id": "p", "task_type": "choice", "task_data": {field: value}})

    assert status == 400
    assert body["details"] == {f"task_data.{field}": f"Must be one of: {message}"}


async def test_callback_url_must_be_http(taskd):
    status, body = await post(
        taskd,
        {"project_id": "p", "task_type": "generate_video", "task_data": {}, "callback_url": "ftp://x/y"},
    )

    assert status == 400
    assert "callback_url" in body["details"]


@pytest.mark.parametrize(
    "url", ["http://用户:密码@127.0.0.1:8799/ok", "http://%E7%94%A8:x@127.0.0.1:8799/ok"]
)
async def test_a_callback_url_whose_credentials_basic_auth_cannot_send_is_refused(taskd, url):
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "noop", "task_data": {}, "callback_url": url}
    )

    assert status == 400
    assert body["details"] == {
        "callback_url": "Callback URL's user name and password must be Latin-1 text: HTTP Basic "
        "authentication sends them so"
    }


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://example.com:99999/hook", "Port out of range 0-65535"),
        ("http://[::1/hook", "Invalid IPv6 URL"),
        ("http://example.com:0/hook", "port 0 cannot be connected to"),
        ("http://a\x00b.example.com/hook", "its host holds a control character"),
        ("http://xn--.example.com/hook", "its host is not a valid internationalized domain name"),
    ],
)
async def test_a_callback_url_that_is_not_a_valid_url_is_refused_with_its_reason(taskd, url, reason):
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "noop", "task_data": {}, "callback_url": url}
    )

    assert status == 400
    assert body["details"] == {"callback_url": f"Callback URL is not a valid URL: {reason}"}


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://a\x00b.example.com/x.wav", " is not a valid URL: its host holds a control character"),
        ("http://a\x1bb.example.com/x.wav", " is not a valid URL: its host holds a control character"),
        # In the same words on every Python: the IDNA codec's own differ (3.11 "decoding with 'idna'
        # codec failed (UnicodeError: label empty or too long)", 3.13 "'idna' codec can't decode
        # byte 0x78 in position 0: label empty").
        (
            "http://xn--.example.com/x.wav",
            " is not a valid URL: its host is not a valid internationalized domain name",
        ),
        (
            "http://" + "ä" * 64 + ".example.com/x.wav",
            " is not a valid URL: its host is not a valid internationalized domain name",
        ),
        ("http://example.com:99999/x.wav", " is not a valid URL: Port out of range 0-65535"),
        (
            "http://" + "ä" * 300 + "/x.wav",
            " is not a valid URL: its host name is longer than 253 characters",
        ),
        (
            "http://user:密码@example.com/x.wav",
            "'s user name and password must be Latin-1 text: HTTP Basic authentication sends them so",
        ),
    ],
)
async def test_a_task_input_url_that_cannot_be_requested_is_refused_with_its_reason(taskd, url, reason):
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "process_audio", "task_data": {"tracks": [{"url": url}]}}
    )

    assert status == 400
    assert body["details"] == {"task_data.tracks[0].url": f"Track url{reason}"}


@pytest.mark.parametrize(
    ("field", "what"),
    [("character_voice_profile", "Character voice profile"), ("background_noise", "Background noise")],
)
async def test_a_voice_url_that_cannot_be_requested_is_refused_with_its_reason(taskd, field, what):
    task_data = {"text": "Hello", field: "http://a\x00b.example.com/x"}
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "generate_character_voice", "task_data": task_data}
    )

    assert status == 400
    assert body["details"] == {
        f"task_data.{field}": f"{what} is not a valid URL: its host holds a control character"
    }


async def test_a_string_sent_for_a_list_of_names_is_refused_not_split_into_characters(taskd):
    task_data = {"brief": "A noir series.", "departments": "lighting"}
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "automated_gather_creation", "task_data": task_data}
    )

    assert status == 400
    assert body["details"] == {"task_data.departments": "Must be a list"}


@pytest.mark.parametrize("field", ["a_tuple", "a_pair", "a_sequence", "a_set", "a_frozenset", "a_deque"])
async def test_a_string_sent_for_a_tuple_sequence_or_set_is_refused_as_for_a_list(taskd, field):
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "collections", "task_data": {field: "lighting"}}
    )

    assert status == 400
    assert body["details"] == {f"task_data.{field}": "Must be a list"}


async def test_a_list_sent_for_a_string_keyed_mapping_field_must_be_an_object(taskd):
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "collections", "task_data": {"a_mapping": ["a"]}}
    )

    assert status == 400
    assert body["details"] == {"task_data.a_mapping": "Must be an object"}


async def test_lists_sent_for_tuple_sequence_and_set_fields_are_read_as_their_types(taskd):
    task_data = {
        "a_tuple": ["a", "b"],
        "a_pair": ["a", 1],
        "a_sequence": ["a"],
        "a_set": ["a", "a"],
        "a_frozenset": ["b"],
        "a_mapping": {"a": 1},
        "a_deque": ["a", "b"],
    }
    task = await taskd.submit("collections", task_data)
    done = await taskd.wait_terminal(task["task_id"], timeout=30)

    assert done["status"] == "completed", done
    assert done["result"] == {
        "a_tuple": ["tuple", ["a", "b"]],
        "a_pair": ["tuple", ["a", 1]],
        "a_sequence": ["tuple", ["a"]],
        "a_set": ["set", ["a"]],
        "a_frozenset": ["frozenset", ["b"]],
        "a_mapping": ["dict", {"a": 1}],
        "a_deque": ["deque", ["a", "b"]],
    }


async def test_a_long_string_sent_for_a_list_of_objects_is_one_field_error(taskd):
    task_data = {"tracks": "a" * 100_000}
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "process_audio", "task_data": task_data}
    )

    assert status == 400
    assert body["details"] == {"task_data.tracks": "Must be a list"}


async def test_a_string_in_a_list_of_objects_is_named_as_not_an_object(taskd):
    task_data = {"tracks": ["https://media.ft.tc/dialogue.wav"]}
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "process_audio", "task_data": task_data}
    )

    assert status == 400
    assert body["details"] == {"task_data.tracks[0]": "Must be an object"}


@pytest.mark.parametrize("text", ["\u200b", "\u200b\u2060\ufeff", "\u202e\u200f", "\x00\u3000\u2028"])
async def test_text_of_only_zero_width_or_control_characters_counts_as_blank(taskd, text):
    task_data = {"text": text}
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "generate_character_voice", "task_data": task_data}
    )

    assert status == 400
    assert body["details"] == {"task_data.text": "Text is required"}


async def test_body_that_is_not_json_is_a_validation_error(taskd):
    async with taskd.client.post("/api/v1/tasks/submit", data=b"{not json") as response:
        body = await response.json()

    assert response.status == 400
    assert body["error"] == "validation_error"


async def test_refused_submission_stores_nothing(taskd, redis: Redis):
    await post(taskd, {"project_id": "p", "task_type": "generate_video", "task_data": {"duration": 99}})

    assert await redis.hget(keys.METRICS, "total_tasks") is None
    assert await redis.zcard(keys.project("p")) == 0


async def test_unknown_task_data_fields_are_kept(start_service):
    api_only = await start_service(workers=False)
    task = await api_only.submit("generate_video", {"duration": 7, "mood": "tense"})

    async with api_only.client.get("/api/v1/projects/proj-1/tasks") as response:
        listed = (await response.json())["tasks"]

    assert [t["task_data"] for t in listed if t["task_id"] == task["task_id"]] == [
        {"duration": 7, "mood": "tense"}
    ]


async def test_a_dialogue_line_with_a_start_but_no_end_is_a_field_error(taskd):
    task_data = {"dialogue": [{"text": "Hello", "start": 1}]}
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "generate_video", "task_data": task_data}
    )

    assert status == 400
    assert body["details"] == {
        "task_data.dialogue": "Give each dialogue line both a start and an end (start before end), or neither"
    }


@pytest.mark.parametrize(
    ("task_data", "field", "message"),
    [
        (
            {"tracks": [{"url": "https://example.com/a.wav", "start": 2, "end": 1}]},
            "task_data.tracks[0].end",
            "End (1 s) must be after start (2 s)",
        ),
        (
            {"tracks": [{"url": "https://example.com/a.wav", "start": 1.5, "end": 1.5}]},
            "task_data.tracks[0].end",
            "End (1.5 s) must be after start (1.5 s)",
        ),
        (
            {"tracks": [{"url": "https://example.com/a.wav"}], "sample_rate": 96000},
            "task_data.sample_rate",
            "MP3 cannot have a sample rate of 96000 Hz; use one of "
            "(8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)",
        ),
        (
            {"tracks": [{"url": "https://example.com/a.wav"}], "output_format": "mp3", "sample_rate": 44101},
            "task_data.sample_rate",
            "MP3 cannot have a sample rate of 44101 Hz; use one of "
            "(8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)",
        ),
    ],
)
async def test_an_audio_mix_its_run_would_refuse_is_refused_at_submit(taskd, task_data, field, message):
    # Both were taken (200) and failed when the run started.
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "process_audio", "task_data": task_data}
    )

    assert status == 400
    assert body["details"] == {field: message}


@pytest.mark.parametrize(
    "task_data",
    [
        {"tracks": [{"url": "https://example.com/a.wav", "start": 1, "end": 1.5}], "sample_rate": 48000},
        {"tracks": [{"url": "https://example.com/a.wav"}], "output_format": "wav", "sample_rate": 96000},
        {"tracks": [{"url": "https://example.com/a.wav"}], "output_format": "flac", "sample_rate": 44101},
    ],
)
async def test_an_audio_mix_at_the_edge_of_its_rates_and_cuts_is_accepted(taskd, task_data):
    status, _ = await post(taskd, {"project_id": "p", "task_type": "process_audio", "task_data": task_data})

    assert status == 200


async def test_a_character_id_longer_than_the_result_can_repeat_is_refused_at_submit(taskd):
    # The result's metadata.applied repeats each drawn character's id: eight of 130 000 characters
    # were accepted, rendered, and failed the task on its result's size (execution.result_max_bytes).
    task_data = {"character_positions": [{"character_id": "j" * 101}]}
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "generate_video", "task_data": task_data}
    )

    assert status == 400
    assert body["details"] == {
        "task_data.character_positions[0].character_id": "Character ID must have at most 100 characters"
    }


async def test_an_image_prompts_appended_fields_are_bounded_at_submit(taskd):
    # Appended to the prompt the API is sent: unbounded, they took it past its own 4000 characters.
    task_data = {"prompt": "a detective", "character_id": "j" * 101, "pose": "p" * 501, "lighting": "l" * 501}
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "generate_image", "task_data": task_data}
    )

    assert status == 400
    assert body["details"] == {
        "task_data.character_id": "Character ID must have at most 100 characters",
        "task_data.pose": "Pose must have at most 500 characters",
        "task_data.lighting": "Lighting must have at most 500 characters",
    }


async def test_an_animation_of_more_distinct_images_than_a_render_fetches_is_refused_at_submit(taskd):
    # Accepted, it waited its turn and failed "Too many images: 33 given" as it started.
    keyframes = [{"image_url": f"https://x.example/{i}.png"} for i in range(32)]
    task_data = {"character_id": "c", "keyframes": keyframes, "background_url": "https://x.example/bg.png"}
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "render_animation", "task_data": task_data}
    )

    assert status == 400
    assert body["details"] == {
        "task_data.keyframes": "Keyframes must show at most 32 distinct images, background_url included "
        "(33 given): each is a download"
    }


async def test_an_animation_keyframe_at_or_past_its_end_is_refused_at_submit(taskd):
    # Accepted, it waited its turn and failed "Keyframe time 6 s is not before the end …" as it started.
    keyframes = [{"image_url": "https://x.example/c.png", "time": t} for t in (0, 6)]
    task_data = {"character_id": "c", "keyframes": keyframes, "duration": 5}
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "render_animation", "task_data": task_data}
    )

    assert status == 400
    assert body["details"] == {
        "task_data.keyframes": "Keyframe time 6 s is not before the end of the 5 s animation"
    }


async def test_two_animation_keyframes_at_one_time_are_refused_at_submit(taskd):
    keyframes = [{"image_url": "https://x.example/c.png", "time": 1} for _ in range(2)]
    task_data = {"character_id": "c", "keyframes": keyframes}
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "render_animation", "task_data": task_data}
    )

    assert status == 400
    assert body["details"] == {"task_data.keyframes": "Two keyframes have the same time"}


async def test_an_animations_character_id_is_bounded_at_submit(taskd):
    # A line of a video provider's prompt: unbounded, it carried the body's MiB to the provider.
    keyframes = [{"image_url": "https://x.example/c.png"}]
    task_data = {"character_id": "c" * 101, "keyframes": keyframes}
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "render_animation", "task_data": task_data}
    )

    assert status == 400
    assert body["details"] == {"task_data.character_id": "Character ID must have at most 100 characters"}


async def test_an_image_prompts_appended_urls_are_bounded_at_submit(taskd):
    # Not fetched, appended to the prompt as text: 16 URLs of 64 KB took it to the body limit.
    long_url = "https://x.example/" + "r" * (2049 - len("https://x.example/"))
    task_data = {"prompt": "a detective", "style_guide": long_url, "reference_images": [long_url]}
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "generate_image", "task_data": task_data}
    )

    assert status == 400
    assert body["details"] == {
        "task_data.style_guide": "Style guide URL must have at most 2048 characters",
        "task_data.reference_images": "Each reference image URL must have at most 2048 characters",
    }


async def test_a_video_providers_prompt_fields_are_bounded_at_submit(taskd):
    # Written whole into a video provider's prompt: unbounded, they took it to the body limit.
    task_data = {
        "camera_angle": "w" * 501,
        "lighting": "n" * 501,
        "character_positions": [{"character_id": "jones", "position": "c" * 501, "action": "a" * 501}],
    }
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "generate_video", "task_data": task_data}
    )

    assert status == 400
    assert body["details"] == {
        "task_data.camera_angle": "Camera angle must have at most 500 characters",
        "task_data.lighting": "Lighting must have at most 500 characters",
        "task_data.character_positions[0].position": "Position must have at most 500 characters",
        "task_data.character_positions[0].action": "Action must have at most 500 characters",
    }


async def test_a_video_naming_more_characters_than_a_prompt_holds_is_refused_at_submit(taskd):
    # Every entry is a clause of a video provider's prompt (the built-in renderer draws 8).
    task_data = {"character_positions": [{"character_id": f"c{i}"} for i in range(51)]}
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "generate_video", "task_data": task_data}
    )

    assert status == 400
    assert body["details"] == {
        "task_data.character_positions": "Character positions must have at most 50 entries"
    }


async def test_a_voices_emotion_sent_as_instructions_is_bounded_at_submit(taskd):
    # Sent to a speech API as its instructions: unbounded, it went whole to the provider.
    task_data = {"text": "I've been expecting you.", "emotion": "m" * 501}
    status, body = await post(
        taskd, {"project_id": "p", "task_type": "generate_character_voice", "task_data": task_data}
    )

    assert status == 400
    assert body["details"] == {"task_data.emotion": "Emotion must have at most 500 characters"}
