"""The README's "A whole scene in one request" batch, read from README.md and run end to end.

taskd runs as a user would start it (no `network.allow_private`, media links at its own address),
with its image and speech providers pointed at the local fakes: the video must be made from the
generated image, fetched through the image task's `media_url`, and the mix from the voice track.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from conftest import API_KEY, child_env
from fake_media_apis import FakeImagesAPI, FakeSpeechAPI

from taskd.media import ffmpeg

README = Path(__file__).parent.parent / "README.md"


def readme_batch() -> dict[str, Any]:
    """The JSON body of the curl in the README's "A whole scene in one request", as written there."""
    text = README.read_text()
    section = text[text.index("**A whole scene in one request**") :]
    body = re.search(r"-d '(.*?)'\n", section, re.DOTALL)
    assert body is not None, "the README's scene example has no -d '…' body"
    parsed: dict[str, Any] = json.loads(body.group(1))
    return parsed


def free_port() -> int:
    # The media links carry taskd's own address (media.base_url unset), so the port must be known
    # before it starts, as it is for a user (http.port).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def mean_colour(video: Path) -> tuple[float, float, float]:
    """The mean RGB of the video's middle frame."""
    proc = await asyncio.create_subprocess_exec(
        ffmpeg.ffmpeg_exe(),
        *("-v", "error", "-ss", "0.5", "-i", str(video), "-frames:v", "1", "-s", "16x16"),
        *("-f", "rawvideo", "-pix_fmt", "rgb24", "-"),
        stdout=asyncio.subprocess.PIPE,
    )
    raw, _ = await proc.communicate()
    assert proc.returncode == 0 and len(raw) == 16 * 16 * 3
    pixels = len(raw) // 3
    red, green, blue = (sum(raw[i::3]) / pixels for i in range(3))
    return red, green, blue


async def wait_terminal(client: aiohttp.ClientSession, task_id: str) -> dict[str, Any]:
    async with asyncio.timeout(120):
        while True:
            async with client.get(f"/api/v1/tasks/{task_id}/status") as response:
                body: dict[str, Any] = await response.json()
            if body["status"] in ("completed", "failed", "cancelled"):
                return body
            await asyncio.sleep(0.1)


async def download(media_url: str, dest: Path) -> Path:
    """A result's media, fetched at its signed `media_url` as a user would, without a key."""
    async with aiohttp.ClientSession() as anonymous, anonymous.get(media_url) as response:
        assert response.status == 200
        dest.write_bytes(await response.read())
    return dest


# One test, not one per step: the behaviour is the whole example working, and each run of it
# renders a 7 s 1080p video (several CPU-seconds).
async def test_the_readme_scene_runs_end_to_end_video_from_its_image_mix_from_its_voice(
    spawn_taskd, valkey_url: str, tmp_path: Path
):
    async with FakeImagesAPI() as images, FakeSpeechAPI() as speech:
        env = child_env(
            tmp_path / "data",
            TASKD_HTTP__PORT=str(free_port()),
            TASKD_REDIS__URL=valkey_url,
            TASKD_PROVIDERS__IMAGE__BASE_URL=images.base_url,
            TASKD_PROVIDERS__SPEECH__BASE_URL=speech.base_url,
        )
        taskd = await asyncio.to_thread(spawn_taskd, "serve", env=env)
        assert taskd.base_url is not None
        async with aiohttp.ClientSession(taskd.base_url, headers={"X-API-Key": API_KEY}) as client:
            async with client.post("/api/v1/tasks/batch", data=orjson.dumps(readme_batch())) as response:
                assert response.status == 200, await response.text()
                accepted = (await response.json())["tasks"]
            steps = {
                body["task_type"]: body
                for body in [await wait_terminal(client, t["task_id"]) for t in accepted]
            }
        video = await download(steps["generate_video"]["result"]["media_url"], tmp_path / "scene.mp4")

    assert {task_type: (body["status"], body["error"]) for task_type, body in steps.items()} == {
        "generate_image": ("completed", None),
        "generate_video": ("completed", None),
        "generate_character_voice": ("completed", None),
        "process_audio": ("completed", None),
    }
    # The fake image is blue (10, 120, 200) with a white stripe; the no-image title card is near black.
    red, _, blue = await mean_colour(video)
    assert blue > 120 and blue > red + 60, (red, blue)
    voice, mix = (steps[name]["result"]["metadata"] for name in ("generate_character_voice", "process_audio"))
    assert mix["tracks"] == 1
    assert mix["duration"] == pytest.approx(voice["duration"] + 0.5, abs=0.1)  # the track's offset
    assert mix["loudness_lufs"] == pytest.approx(-16, abs=1.5)
