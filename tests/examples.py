"""Valid `task_data` for every task type: the API document's own examples where it has them."""

from __future__ import annotations

from typing import Any

TASK_DATA: dict[str, dict[str, Any]] = {
    "generate_video": {
        "storyboard_images": ["https://media.ft.tc/storyboard1.jpg"],
        "scene_description": "Detective walks through rain-soaked alley",
        "camera_angle": "wide_shot",
        "lighting": "dramatic_noir",
        "character_positions": [
            {"character_id": "detective_jones", "position": "center_frame", "action": "walking_slowly"}
        ],
        "duration": 7,
        "fps": 24,
        "resolution": "1920x1080",
    },
    "generate_image": {
        "prompt": "1920s detective in film noir style, wearing trench coat",
        "style_guide": "https://media.ft.tc/style_guide.jpg",
        "reference_images": ["https://media.ft.tc/ref1.jpg"],
        "character_id": "detective_jones",
        "pose": "standing_confident",
        "lighting": "dramatic_shadow",
        "resolution": "1024x1024",
        "quality": "high",
    },
    "generate_character_voice": {
        "text": "I've been expecting you, detective.",
        "character_voice_profile": "https://media.ft.tc/voices/detective_voice.json",
        "emotion": "mysterious",
        "pace": "slow",
        "background_noise": "rain_ambience",
        "output_format": "mp3",
        "sample_rate": 44100,
    },
    "process_audio": {
        "tracks": [
            {"url": "https://media.ft.tc/dialogue.wav"},
            {"url": "https://media.ft.tc/rain.wav", "gain_db": -12},
        ],
        "normalize": True,
        "target_lufs": -16,
        "output_format": "mp3",
    },
    "render_animation": {
        "character_id": "detective_jones",
        "keyframes": [
            {"image_url": "https://media.ft.tc/k1.png"},
            {"image_url": "https://media.ft.tc/k2.png"},
        ],
        "duration": 4,
    },
    "evaluate_department": {
        "department_slug": "story",
        "department_number": 1,
        "gather_data": [
            {
                "content": "A young detective arrives in a small coastal town to investigate disappearances...",
                "summary": "Main story premise",
                "context": "Mystery thriller genre",
            }
        ],
        "previous_evaluations": [
            {"department": "concept", "rating": 85, "summary": "Strong conceptual foundation"}
        ],
        "threshold": 80,
    },
    "automated_gather_creation": {
        "brief": "A noir detective series set in 1920s Chicago.",
        "departments": ["story"],
    },
    "test_prompt": {
        "prompt_id": "character_creator_v2_1",
        "prompt_template": "Create a character based on: {{concept}}",
        "agent_type": "character_creator",
        "test_parameters": {"concept": "mysterious librarian with dark secrets", "genre": "thriller"},
        "test_result_id": "test_result_123",
    },
}
