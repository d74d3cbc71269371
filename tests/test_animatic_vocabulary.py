"""The animatic's vocabulary: free-text camera, lighting, position and action words read by keyword."""

from __future__ import annotations

import pytest

from taskd.media import animatic_vocabulary as vocabulary
from taskd.model import ValidationError
from taskd.tasks.builtin import generate_video, render_animation
from taskd.tasks.registry import default_registry


@pytest.mark.parametrize(
    ("text", "camera"),
    [
        ("wide_shot", "zoom_out"),
        ("Establishing shot", "zoom_out"),
        ("close-up", "push_in"),
        ("extreme closeup", "push_in"),
        ("slow pan left", "pan_left"),
        ("pan", "pan_right"),
        ("wide tracking shot", "tracking"),
        ("dutch angle", "dutch_tilt"),
        ("locked-off", "static"),
        ("medium_shot", "static"),
        ("vertigo effect", "unrecognised"),
        (None, "ken_burns"),
        ("  ", "ken_burns"),
    ],
)
def test_camera_angles_map_to_camera_moves(text, camera):
    assert vocabulary.camera(text) == camera


@pytest.mark.parametrize(
    ("text", "grade"),
    [
        ("dramatic_noir", "noir"),
        ("noir_dramatic", "noir"),
        ("black and white", "noir"),
        ("golden hour", "golden_hour"),
        ("moonlit night", "night"),
        ("dark alley at night", "night"),
        ("high_key", "high_key"),
        ("lowkey", "low_key"),
        ("moody shadows", "low_key"),
        ("neon-soaked street", "neon"),
        ("purple haze", "unrecognised"),
        (None, "none"),
    ],
)
def test_lighting_maps_to_a_grade(text, grade):
    assert vocabulary.lighting(text) == grade


@pytest.mark.parametrize(
    ("position", "action", "expected"),
    [
        ("center_frame", "walking_slowly", ("center", "midground", "walk", 1, 0.5)),
        ("left_third", None, ("left_third", "midground", "idle", 1, 1.0)),
        ("right third, background", "running left quickly", ("right_third", "background", "run", -1, 2.0)),
        ("far right", "enters", ("right", "midground", "enter", -1, 1.0)),
        (None, "jumping", ("auto", "midground", "jump", 1, 1.0)),
        ("upstage", "juggling", ("unrecognised", "midground", "unrecognised", 1, 1.0)),
    ],
)
def test_positions_and_actions_map_to_blocking(position, action, expected):
    found = vocabulary.blocking(position, action)

    assert (found.position, found.depth, found.action, found.direction, found.speed) == expected


def test_any_text_the_document_allows_passes_validation():
    task_data = {
        "storyboard_images": ["https://media.ft.tc/storyboard1.jpg"],
        "camera_angle": "something no vocabulary has ∞",
        "lighting": "",
        "character_positions": [{"character_id": "x", "position": "?", "action": "¿"}],
    }

    parsed = default_registry().parse_input(generate_video.TASK, task_data)

    assert parsed.camera_angle == "something no vocabulary has ∞"


def test_keyframe_values_out_of_range_are_named_in_the_details():
    task_data = {
        "character_id": "hero",
        "keyframes": [{"image_url": "https://a.example/k.png", "opacity": 2, "scale": 0, "easing": "bouncy"}],
    }

    with pytest.raises(ValidationError) as raised:
        default_registry().parse_input(render_animation.TASK, task_data)

    assert set(raised.value.details) == {
        "task_data.keyframes[0].opacity",
        "task_data.keyframes[0].scale",
        "task_data.keyframes[0].easing",
    }


def test_only_the_start_of_a_long_text_is_read():
    assert vocabulary.camera("x " * 200 + "wide") == "unrecognised"
    assert vocabulary.camera("wide " + "x " * 100_000) == "zoom_out"


def test_characters_past_the_eighth_are_counted_not_drawn():
    positions = [{"character_id": f"c{i}", "position": "center"} for i in range(11)]
    task_data = {"storyboard_images": ["https://a.example/s.png"], "character_positions": positions}
    data = default_registry().parse_input(generate_video.TASK, task_data)

    clip = generate_video.clip_request("task-1", data)

    assert len(clip.layers) == 8
    assert len(clip.applied["characters"]) == 8
    assert clip.applied["characters_not_drawn"] == 3
