"""`[providers.video]`: generate_video rendered by a video-generation API (the OpenAI Videos API or
Replicate-style predictions), against a loopback fake that speaks both, with a real ffmpeg MP4."""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path

import pytest
from fake_media_apis import BROKEN_STATUS_LINE, NotHttpAPI, OversizedAPI, RedirectingAPI, make_ctx, png
from fake_video_apis import FakeVideoAPI, make_mp4
from PIL import Image

from taskd import keys
from taskd.config import (
    Config,
    ConfigError,
    ExecutionConfig,
    MediaConfig,
    NetworkConfig,
    ProvidersConfig,
    VideoProvider,
    load_config,
)
from taskd.logs import SHORT_MESSAGE_CHARS
from taskd.media import ffmpeg
from taskd.media.store import MediaStore
from taskd.providers import video, video_api
from taskd.providers.http import JSON_REPLY_LIMIT, ProviderError
from taskd.providers.video_api import ProviderCalls, VideoRequest
from taskd.tasks.builtin import generate_video, render_animation
from taskd.tasks.builtin.generate_video import CharacterPosition, GenerateVideoInput
from taskd.tasks.builtin.render_animation import Keyframe, RenderAnimationInput
from taskd.tasks.spec import TaskError

MODELS = {"openai": "sora-2", "replicate": "acme/video-model"}
PROTOCOLS = sorted(MODELS)


def scene(**fields: object) -> GenerateVideoInput:
    """The API document's example scene, 4 s at 1280x720."""
    detective = CharacterPosition("detective_jones", "center_frame", "walking_slowly")
    example = {
        "scene_description": "Detective enters a dark alley",
        "camera_angle": "wide_shot",
        "lighting": "dramatic_noir",
        "character_positions": [detective],
        "duration": 4,
        "resolution": "1280x720",
    }
    return GenerateVideoInput(**{**example, **fields})  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def mp4(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 1 s, 160x120, 10 fps MP4: unlike anything a test asks for, so the result shows it was measured."""
    return make_mp4(tmp_path_factory.mktemp("mp4") / "fake.mp4")


@pytest.fixture
async def api(mp4: bytes):
    async with FakeVideoAPI(mp4) as server:
        yield server


def provider(api: FakeVideoAPI, protocol: str, **settings: object) -> VideoProvider:
    fields = {
        "protocol": protocol,
        "base_url": api.base_url,
        "api_key": "sk-video",
        "model": MODELS[protocol],
        "poll_interval": 0.05,
        "retry_delay": 0.01,
        **settings,
    }
    return VideoProvider(**fields)  # type: ignore[arg-type]


def config_for(
    tmp_path: Path, video: VideoProvider, *, allow_private: bool = True, **media: object
) -> Config:
    settings = {"base_url": "http://media.test", "scratch_dir": str(tmp_path / "scratch"), **media}
    return Config(
        data_dir=str(tmp_path / "data"),
        media=MediaConfig(**settings),  # type: ignore[arg-type]
        providers=ProvidersConfig(video=video),
        network=NetworkConfig(allow_private=allow_private),
    )


def stored(config: Config) -> list[Path]:
    root = MediaStore.from_config(config).root
    return sorted(path for path in root.rglob("*") if path.is_file()) if root.exists() else []


# What is sent


async def test_openai_create_sends_prompt_seconds_size_and_the_fitted_reference(tmp_path, http, api, files):
    image = files.add("board.png", png(64, 48))
    ctx, _ = make_ctx(http, config_for(tmp_path, provider(api, "openai")))

    await generate_video.run(ctx, scene(storyboard_images=[image]))

    form = api.created[0]
    assert (form["model"], form["seconds"], form["size"]) == ("sora-2", "4", "1280x720")
    assert form["prompt"] == (
        "Detective enters a dark alley\nCamera: wide shot.\nLighting: dramatic noir.\n"
        "Characters: detective jones at center frame, walking slowly."
    )
    # The API wants the reference at the video's size.
    assert Image.open(io.BytesIO(form["input_reference"])).size == (1280, 720)


async def test_replicate_create_uses_the_model_path_and_the_configured_input_names(
    tmp_path, http, api, files
):
    image = files.add("board.png", png(64, 48))
    video = provider(
        api, "replicate", inputs={"image": "start_image", "size": "resolution"}, extra_input={"cfg": 0.5}
    )
    ctx, _ = make_ctx(http, config_for(tmp_path, video))

    await generate_video.run(ctx, scene(storyboard_images=[image]))

    assert api.requests[0] == ("POST", "/v1/models/acme/video-model/predictions")
    inputs = api.created[0]["input"]
    assert inputs == {
        "prompt": inputs["prompt"],
        "duration": 4,
        "resolution": "1280x720",
        "start_image": image,
        "cfg": 0.5,
    }
    assert inputs["prompt"].startswith("Detective enters a dark alley\nCamera: wide shot.")


async def test_replicate_model_with_a_version_creates_through_predictions(tmp_path, http, api):
    ctx, _ = make_ctx(http, config_for(tmp_path, provider(api, "replicate", model="acme/video-model:abc123")))

    await generate_video.run(ctx, GenerateVideoInput(scene_description="Rain on a window", duration=2))

    assert api.requests[0] == ("POST", "/v1/predictions")
    assert api.created[0]["version"] == "abc123"


async def test_a_task_with_nothing_to_describe_fails_before_asking_the_provider(tmp_path, http, api, files):
    ctx, _ = make_ctx(http, config_for(tmp_path, provider(api, "openai")))

    with pytest.raises(TaskError, match="needs a description to write its prompt"):
        await generate_video.run(ctx, GenerateVideoInput(storyboard_images=[files.add("a.png", png())]))

    assert api.requests == []


# What comes back


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_result_is_measured_from_the_downloaded_file_and_names_the_model(
    tmp_path, http, api, protocol
):
    config = config_for(tmp_path, provider(api, protocol))
    ctx, _ = make_ctx(http, config)

    result = await generate_video.run(ctx, scene())

    meta = result["metadata"]
    assert (meta["resolution"], meta["fps"], meta["generation_model"]) == ("160x120", 10, MODELS[protocol])
    assert meta["duration"] == pytest.approx(1.0, abs=0.1)
    [path] = stored(config)
    assert (await ffmpeg.probe(path)).video_codec == "h264"
    assert path.stat().st_size == meta["file_size"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_completed_render_shows_the_providers_progress_on_the_task(start_service, api, protocol):
    api.steps = 4
    taskd = await start_service(
        providers=ProvidersConfig(video=provider(api, protocol, poll_interval=0.3)),
        network=NetworkConfig(allow_private=True),
    )
    task = await taskd.submit("generate_video", {"scene_description": "Rain", "duration": 2})

    seen = set()
    body = await taskd.wait_for(
        task["task_id"], lambda body: seen.add(body["progress"]) or body["status"] in ("completed", "failed")
    )

    assert body["status"] == "completed", body
    assert body["result"]["metadata"]["generation_model"] == MODELS[protocol]
    # The provider's 0, 25, 50, 75 % of its share of the task (0.05 + 0.9 * (0.2 + 0.7 * p)).
    assert {0.23, 0.3875, 0.545, 0.7025} <= {round(p, 4) for p in seen}


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_failed_job_fails_the_task_with_the_providers_message(tmp_path, http, api, protocol):
    api.fail = "The prompt was flagged by moderation"
    config = config_for(tmp_path, provider(api, protocol))
    ctx, _ = make_ctx(http, config)

    with pytest.raises(TaskError, match="Video provider could not make the video: The prompt was flagged"):
        await generate_video.run(ctx, scene())

    assert stored(config) == []


async def test_a_long_provider_message_is_cut_short(tmp_path, http, api):
    api.fail = "x" * 5000
    ctx, _ = make_ctx(http, config_for(tmp_path, provider(api, "replicate")))

    with pytest.raises(TaskError) as failure:
        await generate_video.run(ctx, scene())

    assert len(str(failure.value)) < 400 and str(failure.value).endswith("…")


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_429_and_503_on_create_are_retried(tmp_path, http, api, protocol):
    api.create_errors = [429, 503]
    ctx, _ = make_ctx(http, config_for(tmp_path, provider(api, protocol)))

    result = await generate_video.run(ctx, scene())

    assert len(api.created) == 3
    assert result["metadata"]["generation_model"] == MODELS[protocol]


@pytest.mark.parametrize("retry_after", ["-5", "nan", "0", "0.2"])
async def test_a_retry_after_that_is_no_wait_gets_the_backoffs_wait(http, api, caplog, retry_after):
    # A negative or unreadable number of seconds asks for nothing, and one shorter than the back-off's
    # wait is not waited instead of it: taken as 0, every try was sent at once.
    api.create_errors, api.retry_after = [429], retry_after
    calls = ProviderCalls(provider(api, "replicate", retry_delay=1.0, max_retries=1), http)

    with caplog.at_level(logging.INFO, logger="taskd.providers"):
        await calls.call("POST", "predictions", lambda: {"version": "v", "input": {}})

    assert [record.getMessage().rsplit(" ", 1)[-1] for record in caplog.records] == ["1.0s"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_400_on_create_fails_at_once_with_the_providers_message(tmp_path, http, api, protocol):
    api.create_errors = [400]
    ctx, _ = make_ctx(http, config_for(tmp_path, provider(api, protocol)))

    with pytest.raises(TaskError, match="Video provider returned HTTP 400: fake create refused") as failure:
        await generate_video.run(ctx, scene())

    assert not failure.value.transient
    assert len(api.created) == 1


@pytest.mark.parametrize(("protocol", "cancel"), [("openai", "DELETE"), ("replicate", "POST")])
async def test_cancelling_the_task_cancels_the_providers_job(start_service, api, protocol, cancel):
    api.hang = True
    taskd = await start_service(
        providers=ProvidersConfig(video=provider(api, protocol)), network=NetworkConfig(allow_private=True)
    )
    task = await taskd.submit("generate_video", {"scene_description": "Rain", "duration": 2})
    await taskd.wait_for(task["task_id"], lambda _: api.jobs.get("job_1", 0) >= 2)

    async with taskd.client.delete(f"/api/v1/tasks/{task['task_id']}") as response:
        assert response.status == 200
    await taskd.wait_for(task["task_id"], lambda _: api.cancelled == ["job_1"], timeout=10)

    path = "/v1/videos/job_1" if protocol == "openai" else "/v1/predictions/job_1/cancel"
    assert (cancel, path) in api.requests
    assert (await taskd.status(task["task_id"]))["status"] == "cancelled"


async def test_a_run_whose_task_another_worker_started_since_leaves_the_job_to_that_run(
    start_service, api, redis
):
    api.hang = True
    taskd = await start_service(
        providers=ProvidersConfig(video=provider(api, "openai")), network=NetworkConfig(allow_private=True)
    )
    task = await taskd.submit("generate_video", {"scene_description": "Rain", "duration": 2})
    await taskd.wait_for(task["task_id"], lambda _: api.jobs.get("job_1", 0) >= 2)
    executor = taskd.service._executor
    assert executor is not None

    # As another worker's take of the task, queued again while this worker stalled, writes it:
    # that run reads the job this one kept and follows it.
    await redis.hset(keys.task(task["task_id"]), mapping={"worker_id": "worker-b", "job_id": "job-b"})
    await executor.reconcile([task["task_id"]])
    await taskd.wait_idle()

    # Before, the stopped run cancelled the job at the provider, under the newer run following it.
    assert api.cancelled == []
    assert len(api.created) == 1


async def test_a_run_whose_task_ended_meanwhile_under_its_job_cancels_the_job(start_service, api, redis):
    api.hang = True
    taskd = await start_service(
        providers=ProvidersConfig(video=provider(api, "openai")), network=NetworkConfig(allow_private=True)
    )
    task = await taskd.submit("generate_video", {"scene_description": "Rain", "duration": 2})
    await taskd.wait_for(task["task_id"], lambda _: api.jobs.get("job_1", 0) >= 2)
    executor = taskd.service._executor
    assert executor is not None

    # As the reclaim writes it once the task's worker died execution.max_worker_deaths times: no
    # run comes next to follow the job.
    await redis.hset(keys.task(task["task_id"]), mapping={"status": "failed", "worker_id": ""})
    await executor.reconcile([task["task_id"]])
    await taskd.wait_idle()

    assert api.cancelled == ["job_1"]


async def test_a_task_cancelled_while_its_create_answers_slower_than_the_cancel_grace_cancels_the_job(
    start_service, api
):
    # The handler waits for the create's answer (the job's id) to cancel that job; past the cancel
    # grace its run ends without it, and that end cancelled the wait: the job ran on, paid for.
    api.create_delay = 3.0
    taskd = await start_service(
        providers=ProvidersConfig(video=provider(api, "openai")),
        network=NetworkConfig(allow_private=True),
        execution=ExecutionConfig(cancel_grace=0.5, reclaim_interval=0.5, shutdown_grace=2),
    )
    task = await taskd.submit("generate_video", {"scene_description": "Rain", "duration": 2})
    await taskd.wait_for(task["task_id"], lambda _: bool(api.created))

    async with taskd.client.delete(f"/api/v1/tasks/{task['task_id']}") as response:
        assert response.status == 200

    await taskd.wait_for(task["task_id"], lambda _: api.cancelled == ["job_1"], timeout=20)
    assert api.active == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_task_stopped_while_its_create_is_in_flight_cancels_the_job_it_made(
    tmp_path, http, api, protocol
):
    api.create_delay = 0.5
    ctx, _ = make_ctx(http, config_for(tmp_path, provider(api, protocol)))
    running = asyncio.create_task(generate_video.run(ctx, scene()))
    while not api.created:
        await asyncio.sleep(0.02)

    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running

    assert api.cancelled == ["job_1"]
    assert api.active == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_task_stopped_as_its_create_answers_cancels_the_job_it_made(
    tmp_path, http, api, protocol, monkeypatch
):
    render = video.renderer(config_for(tmp_path, provider(api, protocol)), http)
    assert render is not None
    create, made = render._api.create, []

    async def create_and_note(request: VideoRequest) -> str:
        made.append(await create(request))
        return made[-1]

    monkeypatch.setattr(render._api, "create", create_and_note)
    creating = asyncio.create_task(render._create(VideoRequest("a dark alley", 4, 1280, 720, 24)))
    while not made:
        await asyncio.sleep(0)

    # The create has its answer, but the stop reaches the task before it resumes with it.
    creating.cancel()
    with pytest.raises(asyncio.CancelledError):
        await creating

    assert api.cancelled == made == ["job_1"]


async def test_a_job_whose_polls_keep_failing_is_cancelled_before_the_task_fails(tmp_path, http, api):
    api.poll_errors = [503, 503]
    ctx, _ = make_ctx(http, config_for(tmp_path, provider(api, "openai", max_retries=1)))

    with pytest.raises(TaskError, match="Video provider returned HTTP 503: fake poll refused") as failure:
        await generate_video.run(ctx, scene())

    assert failure.value.transient  # the task is retried: its job must not run on meanwhile
    assert api.cancelled == ["job_1"]


# What is refused


async def test_a_job_state_over_the_size_limit_fails_at_once_without_being_read_in_full(http):
    async with OversizedAPI(b'{"id": "video_1", "status": "', 2 * JSON_REPLY_LIMIT) as api:
        calls = ProviderCalls(VideoProvider(protocol="openai", base_url=api.url, model="sora-2"), http)
        with pytest.raises(ProviderError) as caught:
            await calls.call("GET", "videos/video_1")
    assert str(caught.value) == f"Video provider sent a reply larger than {JSON_REPLY_LIMIT} bytes"
    assert not caught.value.transient
    assert api.sent < 2 * JSON_REPLY_LIMIT


async def test_a_retry_after_longer_than_the_backoffs_wait_is_waited(http, api, caplog):
    api.create_errors, api.retry_after = [429], "1"
    calls = ProviderCalls(provider(api, "replicate", retry_delay=0.01, max_retries=1), http)

    with caplog.at_level(logging.INFO, logger="taskd.providers"):
        await calls.call("POST", "predictions", lambda: {"version": "v", "input": {}})

    assert [record.getMessage().rsplit(" ", 1)[-1] for record in caplog.records] == ["1.0s"]


async def test_a_retry_after_date_is_waited_up_to_the_cap(http, api, caplog, monkeypatch):
    # RFC 9110's other form, read as taskd's client reads it; a date this far ahead waits the cap.
    monkeypatch.setattr(video_api, "RETRY_CAP", 1.0)
    api.create_errors, api.retry_after = [503], "Wed, 21 Oct 2099 07:28:00 GMT"
    calls = ProviderCalls(provider(api, "replicate", retry_delay=0.01, max_retries=1), http)

    with caplog.at_level(logging.INFO, logger="taskd.providers"):
        await calls.call("POST", "predictions", lambda: {"version": "v", "input": {}})

    assert [record.getMessage().rsplit(" ", 1)[-1] for record in caplog.records] == ["1.0s"]


async def test_the_error_of_a_job_state_that_is_not_http_is_one_short_line(http):
    # aiohttp's parser error quotes the bytes it could not read, kilobytes over lines.
    async with NotHttpAPI(BROKEN_STATUS_LINE) as api:
        settings = VideoProvider(protocol="openai", base_url=api.url, model="sora-2", max_retries=0)
        with pytest.raises(ProviderError) as caught:
            await ProviderCalls(settings, http).call("GET", "videos/video_1")
    message = str(caught.value)
    assert message.startswith("Video provider unreachable: ClientResponseError")
    assert len(message) <= len("Video provider unreachable: ") + SHORT_MESSAGE_CHARS
    assert "\n" not in message


async def test_a_redirect_of_a_provider_call_is_not_followed(http, api):
    # Where the provider points is its choice, not the operator's: any internal address.
    async with RedirectingAPI(f"{api.url}/v1/videos/video_1", status=302) as provider:
        settings = VideoProvider(
            protocol="openai", base_url=provider.url, model="sora-2", api_key="sk-video", max_retries=0
        )
        with pytest.raises(ProviderError) as caught:
            await ProviderCalls(settings, http).call("GET", "videos/video_1")
    assert str(caught.value) == (
        "Video provider returned HTTP 302 (taskd does not follow a provider's redirects)"
    )
    assert not caught.value.transient
    assert api.requests == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_an_oversized_download_fails_and_nothing_is_stored(tmp_path, http, api, protocol):
    config = config_for(tmp_path, provider(api, protocol), max_download_bytes=2048)
    ctx, _ = make_ctx(http, config)

    with pytest.raises(TaskError, match=r"Generated video \S+ is larger than the 2048 byte limit"):
        await generate_video.run(ctx, scene())

    assert stored(config) == []
    assert not list((tmp_path / "scratch").iterdir())


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_download_that_is_not_an_mp4_fails_and_nothing_is_stored(tmp_path, http, api, protocol):
    api.video = b"<html><body>not a video</body></html>"
    config = config_for(tmp_path, provider(api, protocol))
    ctx, _ = make_ctx(http, config)

    with pytest.raises(TaskError, match=r"Generated video \S+ is not a supported video file"):
        await generate_video.run(ctx, scene())

    assert stored(config) == []


async def test_an_mp4_header_with_no_video_in_it_fails_and_nothing_is_stored(tmp_path, http, api, mp4):
    api.video = mp4[:32] + b"\0" * 2000
    config = config_for(tmp_path, provider(api, "openai"))
    ctx, _ = make_ctx(http, config)

    with pytest.raises(TaskError, match="Reading the generated video failed"):
        await generate_video.run(ctx, scene())

    assert stored(config) == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_another_projects_media_link_as_the_reference_is_refused(tmp_path, http, api, protocol):
    config = config_for(tmp_path, provider(api, protocol))
    source = tmp_path / "theirs.png"
    source.write_bytes(png(40, 40))
    # Signed by this taskd for proj-2; the task is proj-1's. Fetched over HTTP (or handed to the
    # provider to fetch), taskd's media route serves it for its good signature.
    url = MediaStore.from_config(config).put("proj-2", "image_theirs.png", source).url
    ctx, _ = make_ctx(http, config)

    with pytest.raises(TaskError) as refused:
        await generate_video.run(ctx, scene(storyboard_images=[url]))

    assert str(refused.value) == f"Image {url} was refused: it is a media link of another project"
    assert api.created == []


async def test_the_tasks_own_media_link_is_read_from_the_store_as_the_reference(tmp_path, http, api):
    config = config_for(tmp_path, provider(api, "openai"), allow_private=False)  # the guard closed
    source = tmp_path / "earlier.png"
    source.write_bytes(png(40, 40))
    # At http://media.test, which resolves nowhere: only the store can answer it.
    url = MediaStore.from_config(config).put("proj-1", "image_earlier.png", source).url
    ctx, _ = make_ctx(http, config)

    await generate_video.run(ctx, scene(storyboard_images=[url]))

    assert Image.open(io.BytesIO(api.created[0]["input_reference"])).size == (1280, 720)


async def test_an_output_url_on_another_host_goes_through_the_guard(tmp_path, http, api):
    # The provider's own origin (127.0.0.1:<port>) is trusted; the same server named otherwise is not.
    api.output_url = f"http://localhost:{api.port}/files/out.mp4"
    config = config_for(tmp_path, provider(api, "replicate"), allow_private=False)
    ctx, _ = make_ctx(http, config)

    with pytest.raises(TaskError, match=r"Generated video http://localhost:\d+/files/out.mp4 was refused"):
        await generate_video.run(ctx, scene())

    assert ("GET", "/files/out.mp4") not in api.requests


async def test_the_key_goes_only_to_the_providers_own_origin(tmp_path, http, api):
    api.output_url = f"http://localhost:{api.port}/v1/videos/job_1/content"
    ctx, _ = make_ctx(http, config_for(tmp_path, provider(api, "replicate")))

    # The fake's content route wants the key: fetched from "another" host, it is not sent.
    with pytest.raises(TaskError, match="could not be fetched: HTTP 401"):
        await generate_video.run(ctx, scene())


async def test_the_key_is_not_sent_where_the_providers_own_url_redirects(tmp_path, http, api):
    api.content_redirect = f"http://localhost:{api.port}/files/out.mp4"
    ctx, _ = make_ctx(http, config_for(tmp_path, provider(api, "openai")))

    await generate_video.run(ctx, scene())

    assert ("GET", "/files/out.mp4") in api.requests
    assert api.file_authorizations == [None]


# Limits and configuration


async def test_jobs_in_flight_never_exceed_max_concurrency(start_service, api):
    api.steps = 3
    taskd = await start_service(
        providers=ProvidersConfig(video=provider(api, "openai", max_concurrency=1)),
        network=NetworkConfig(allow_private=True),
    )

    tasks = [
        await taskd.submit("generate_video", {"scene_description": f"Scene {i}", "duration": 1})
        for i in range(2)
    ]
    ended = [await taskd.wait_terminal(task["task_id"], timeout=30) for task in tasks]

    assert [body["status"] for body in ended] == ["completed", "completed"]
    assert api.most_active == 1


def test_a_protocol_and_a_plugin_together_stop_start_up():
    environ = {
        "TASKD_PROVIDERS__VIDEO__PROTOCOL": "openai",
        "TASKD_PROVIDERS__VIDEO__BASE_URL": "https://api.openai.com/v1",
        "TASKD_PROVIDERS__VIDEO__MODEL": "sora-2",
        "TASKD_PROVIDERS__VIDEO__PLUGIN": "mypackage:renderer",
    }

    with pytest.raises(
        ConfigError, match=r"set providers\.video\.protocol or providers\.video\.plugin, not both"
    ):
        load_config(None, environ)


def test_a_protocol_without_a_base_url_stops_start_up():
    with pytest.raises(ConfigError, match=r"protocol 'replicate' needs providers\.video\.base_url"):
        load_config(
            None, {"TASKD_PROVIDERS__VIDEO__PROTOCOL": "replicate", "TASKD_PROVIDERS__VIDEO__MODEL": "a/b"}
        )


async def test_an_animation_is_described_by_its_character_and_motion(tmp_path, http, api, files):
    keyframes = [Keyframe(files.add(f"k{i}.png", png(40, 40))) for i in range(2)]
    ctx, _ = make_ctx(http, config_for(tmp_path, provider(api, "openai")))

    await render_animation.run(ctx, RenderAnimationInput("detective_jones", keyframes, duration=3))

    form = api.created[0]
    assert form["prompt"] == "Character: detective jones.\nMotion: ken burns."
    assert Image.open(io.BytesIO(form["input_reference"])).size == (1280, 720)


# A job kept for the next run of the task (taskd.store.run_state)


async def render_twice(tmp_path, http, api, run_state, protocol, *, between=lambda: None, **second):
    """Two runs of one task (the second as after a kill while the first stored its video); the
    second run's settings may differ by `second`. The second's result."""
    first, _ = make_ctx(http, config_for(tmp_path, provider(api, protocol)))
    first.run_state = run_state()
    await generate_video.run(first, scene())
    between()
    again, _ = make_ctx(http, config_for(tmp_path, provider(api, protocol, **second)))
    again.run_state = run_state()
    return await generate_video.run(again, scene())


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_next_run_of_a_task_follows_the_job_its_earlier_run_created(
    tmp_path, http, api, run_state, protocol
):
    result = await render_twice(tmp_path, http, api, run_state, protocol)

    assert len(api.created) == 1
    assert result["metadata"]["generation_model"] == MODELS[protocol]
    assert api.cancelled == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_kept_job_the_provider_no_longer_knows_is_created_again_and_the_log_says_so(
    tmp_path, http, api, run_state, protocol, caplog
):
    await render_twice(tmp_path, http, api, run_state, protocol, between=lambda: api.jobs.pop("job_1"))

    assert len(api.created) == 2
    assert (
        "job job_1 of an earlier run is unknown to the provider (HTTP 404); a new job is created"
        in caplog.text
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_kept_job_that_ended_without_a_video_is_created_again_and_the_log_says_so(
    tmp_path, http, api, run_state, protocol, caplog
):
    await render_twice(
        tmp_path, http, api, run_state, protocol, between=lambda: api.cancelled.append("job_1")
    )

    assert len(api.created) == 2
    assert "job job_1 of an earlier run ended without a video" in caplog.text


async def test_a_job_kept_under_other_provider_settings_is_not_followed(tmp_path, http, api, run_state):
    await render_twice(tmp_path, http, api, run_state, "replicate", model="acme/other-model")

    assert len(api.created) == 2
    assert api.created[1]["input"]
