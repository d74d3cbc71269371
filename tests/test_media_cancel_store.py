"""A cancel (or a time limit) that races the storing of a media task's output: whenever it comes,
the task that ends without a result leaves no file in the media store; each built-in type that
stores media, with real ffmpeg and the loopback fakes of its inputs, providers and CMS."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from fake_media_apis import FakeImagesAPI, FakeSpeechAPI, FileServer, png, sine_wav
from fake_payload import FakePayload

from taskd import keys
from taskd.config import (
    ExecutionConfig,
    ImageProvider,
    MediaConfig,
    NetworkConfig,
    PayloadConfig,
    ProvidersConfig,
    RetryConfig,
    SpeechProvider,
    TasksConfig,
    WorkerConfig,
)
from taskd.media import publish
from taskd.media.store import media_dir

PROJECT = "noir_001"


@attrs.frozen
class Fakes:
    """The loopback servers a media task may read from or send to."""

    files: FileServer
    images: FakeImagesAPI
    speech: FakeSpeechAPI
    cms: FakePayload


# Small, quick inputs of each built-in type that stores media (ffmpeg renders, fake providers).
MEDIA_TASKS: dict[str, Callable[[Fakes], dict[str, Any]]] = {
    "process_audio": lambda f: {
        "tracks": [{"url": f.files.add("tone.wav", sine_wav(1.0))}],
        "output_format": "wav",
        "normalize": False,
    },
    "generate_video": lambda f: {
        "storyboard_images": [f.files.add("frame.png", png(64, 48))],
        "duration": 1,
        "fps": 4,
        "resolution": "64x48",
    },
    "render_animation": lambda f: {
        "character_id": "detective_jones",
        "keyframes": [{"image_url": f.files.add("k1.png", png(64, 48))}],
        "duration": 1,
        "fps": 4,
        "resolution": "64x48",
    },
    "generate_image": lambda f: {"prompt": "a detective in the rain", "resolution": "1024x1024"},
    "generate_character_voice": lambda f: {"text": "I've been expecting you.", "output_format": "wav"},
}


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    async with (
        FileServer() as files,
        FakeImagesAPI() as images,
        FakeSpeechAPI() as speech,
        FakePayload() as cms,
    ):
        yield Fakes(files, images, speech, cms)


async def start(start_service, fakes: Fakes, tmp_path: Path, **sections: Any):
    return await start_service(
        media=MediaConfig(scratch_dir=str(tmp_path / "scratch")),
        network=NetworkConfig(allow_private=True),
        providers=ProvidersConfig(
            image=ImageProvider(base_url=fakes.images.base_url, api_key="sk-img"),
            speech=SpeechProvider(base_url=fakes.speech.base_url, api_key="sk-speech"),
        ),
        payload=PayloadConfig(base_url=fakes.cms.url, api_key=fakes.cms.api_key),
        **sections,
    )


def stored_files(service) -> list[str]:
    folder = media_dir(service.service.config) / PROJECT
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


async def cancel(service, task_id: str) -> None:
    async with service.client.delete(f"/api/v1/tasks/{task_id}") as response:
        assert response.status == 200


@pytest.mark.parametrize("task_type", sorted(MEDIA_TASKS))
async def test_a_cancel_while_the_output_is_copied_into_the_store_leaves_no_stored_file(
    start_service, fakes, tmp_path, held_store, task_type
):
    began, release = held_store
    service = await start(start_service, fakes, tmp_path)
    task = await service.submit(task_type, MEDIA_TASKS[task_type](fakes), project_id=PROJECT)
    assert await asyncio.to_thread(began.wait, 60)

    await cancel(service, task["task_id"])
    release.set()  # the copy, which no cancel can stop, goes on in its thread
    await service.wait_idle()

    assert (await service.status(task["task_id"]))["status"] == "cancelled"
    assert stored_files(service) == []
    assert not any((tmp_path / "scratch").iterdir())


async def test_a_cancel_whose_copy_into_the_store_outlasts_the_cancel_grace_leaves_no_stored_file(
    start_service, fakes, tmp_path, held_store, monkeypatch
):
    # The copy holds the handler past execution.cancel_grace: the run ends without it, and its
    # withdrawal of the output came before the copy put the file into the store.
    began, release = held_store
    held, copied = publish._store, threading.Event()

    def store(config: Any, project_id: str, source: Path, filename: str) -> Any:
        # A copy under way reads a file it opened: the scratch dir's removal does not take it away.
        reading = tmp_path / "being-copied"
        shutil.copyfile(source, reading)
        try:
            return held(config, project_id, reading, filename)
        finally:
            copied.set()

    monkeypatch.setattr(publish, "_store", store)
    execution = ExecutionConfig(cancel_grace=0.5, reclaim_interval=0.5, shutdown_grace=2)
    service = await start(start_service, fakes, tmp_path, execution=execution)
    task = await service.submit("process_audio", MEDIA_TASKS["process_audio"](fakes), project_id=PROJECT)
    assert await asyncio.to_thread(began.wait, 60)
    running = service.service._executor.running[task["task_id"]]

    await cancel(service, task["task_id"])
    async with asyncio.timeout(30):  # the grace is over: the run no longer waits for its handler
        while running.ended is None or not running.ended.done():
            await asyncio.sleep(0.05)
    release.set()
    assert await asyncio.to_thread(copied.wait, 60)
    await service.wait_idle()

    assert (await service.status(task["task_id"]))["status"] == "cancelled"
    assert stored_files(service) == []


@pytest.mark.parametrize("task_type", sorted(MEDIA_TASKS))
async def test_a_cancel_while_the_output_goes_to_the_cms_leaves_no_stored_file(
    start_service, fakes, tmp_path, task_type
):
    fakes.cms.hold = asyncio.Event()  # the file is in the store; the CMS has not answered
    service = await start(start_service, fakes, tmp_path)
    task = await service.submit(task_type, MEDIA_TASKS[task_type](fakes), project_id=PROJECT)
    async with asyncio.timeout(60):
        while not fakes.cms.posts:
            await asyncio.sleep(0.02)

    await cancel(service, task["task_id"])
    await service.wait_idle()
    fakes.cms.hold.set()

    assert (await service.status(task["task_id"]))["status"] == "cancelled"
    assert stored_files(service) == []


@pytest.mark.parametrize("task_type", sorted(MEDIA_TASKS))
async def test_a_task_that_completes_after_a_cancel_its_worker_did_not_hear_leaves_no_stored_file(
    start_service, fakes, tmp_path, task_type
):
    fakes.cms.hold = asyncio.Event()
    # Heartbeats far apart: the worker learns of the cancel only when its `completed` is refused.
    service = await start(
        start_service, fakes, tmp_path, worker=WorkerConfig(heartbeat_interval=60, heartbeat_ttl=180)
    )
    task = await service.submit(task_type, MEDIA_TASKS[task_type](fakes), project_id=PROJECT)
    async with asyncio.timeout(60):
        while not fakes.cms.posts:
            await asyncio.sleep(0.02)
    service.deafen()

    await cancel(service, task["task_id"])
    fakes.cms.hold.set()  # the handler returns its result, with the media's URL
    await service.wait_idle()

    body = await service.status(task["task_id"])
    assert (body["status"], body["result"]) == ("cancelled", None)
    assert len(fakes.cms.uploads) == 1  # the CMS document is the CMS's: docs/media.md
    assert stored_files(service) == []


async def test_a_run_whose_task_another_worker_started_since_stores_no_file(
    start_service, fakes, tmp_path, redis
):
    fakes.images.delay = 5  # the answer comes once the record names another run
    # Heartbeats far apart: the run learns it was taken over when its `storing_media` is refused.
    service = await start(
        start_service, fakes, tmp_path, worker=WorkerConfig(heartbeat_interval=60, heartbeat_ttl=180)
    )
    task = await service.submit("generate_image", MEDIA_TASKS["generate_image"](fakes), project_id=PROJECT)
    async with asyncio.timeout(60):
        while not fakes.images.requests:
            await asyncio.sleep(0.02)

    # As another worker's take of the task, queued again while this worker stalled, writes it.
    await redis.hset(keys.task(task["task_id"]), mapping={"worker_id": "worker-b", "job_id": "job-b"})
    await service.wait_idle()

    # Before, the older run went on and stored its file under the newer run's name.
    assert stored_files(service) == []
    assert (await service.status(task["task_id"]))["status"] == "processing"


async def test_a_hard_time_limit_reached_while_the_output_is_stored_fails_the_task_for_the_hard_limit(
    start_service, fakes, tmp_path, held_store
):
    began, release = held_store
    limits = TasksConfig(soft_time_limits={"process_audio": 1.0}, hard_time_limits={"process_audio": 1.5})
    service = await start(start_service, fakes, tmp_path, tasks=limits)
    task = await service.submit("process_audio", MEDIA_TASKS["process_audio"](fakes), project_id=PROJECT)
    assert await asyncio.to_thread(began.wait, 60)
    running = service.service._executor.running[task["task_id"]]
    async with asyncio.timeout(30):  # the soft limit, then the hard one, while the copy waits
        while running.stopped_for != "hard_limit":
            await asyncio.sleep(0.05)

    release.set()
    body = await service.wait_terminal(task["task_id"])

    assert body["error"] == "Task exceeded its hard time limit of 1.5 seconds"


async def test_a_task_failed_at_its_hard_time_limit_while_its_output_was_stored_leaves_no_stored_file(
    start_service, fakes, tmp_path, held_store
):
    began, release = held_store
    limits = TasksConfig(hard_time_limits={"process_audio": 1.0})
    service = await start(start_service, fakes, tmp_path, tasks=limits)
    task = await service.submit("process_audio", MEDIA_TASKS["process_audio"](fakes), project_id=PROJECT)
    assert await asyncio.to_thread(began.wait, 60)
    running = service.service._executor.running[task["task_id"]]
    async with asyncio.timeout(30):
        while running.stopped_for != "hard_limit":
            await asyncio.sleep(0.05)

    release.set()  # the copy, which the limit cannot stop, goes on in its thread
    await service.wait_idle()

    assert (await service.status(task["task_id"]))["status"] == "failed"
    assert stored_files(service) == []


async def test_a_task_failed_for_a_result_over_its_limit_leaves_no_stored_file(
    start_service, fakes, tmp_path
):
    # Its output is stored, then its result (which names it) is refused: no result ever names it.
    service = await start(start_service, fakes, tmp_path, execution=ExecutionConfig(result_max_bytes=64))
    task = await service.submit("process_audio", MEDIA_TASKS["process_audio"](fakes), project_id=PROJECT)
    body = await service.wait_terminal(task["task_id"])
    await service.wait_idle()

    assert body["status"] == "failed"
    assert "over the limit of 64 bytes" in body["error"]
    assert stored_files(service) == []


async def test_a_task_cancelled_while_it_waits_to_run_again_leaves_no_file_an_earlier_run_stored(
    start_service, fakes, tmp_path, answer_lost_once
):
    retry = RetryConfig(base_delay=3600, max_delay=3600)  # the task waits its retry until cancelled
    service = await start(start_service, fakes, tmp_path, retry=retry)
    task = await service.submit("process_audio", MEDIA_TASKS["process_audio"](fakes), project_id=PROJECT)
    await service.wait_for(task["task_id"], lambda body: body.get("next_retry_at") is not None, 30)
    assert stored_files(service) == [f"audio_{task['task_id']}.wav"]

    await cancel(service, task["task_id"])

    # Before, nothing deleted it: the file stayed for media.retention (7 days).
    async with asyncio.timeout(30):
        while stored_files(service):
            await asyncio.sleep(0.05)


async def test_a_task_whose_later_run_fails_for_good_leaves_no_file_an_earlier_run_stored(
    start_service, fakes, tmp_path, answer_lost_once
):
    service = await start(start_service, fakes, tmp_path, retry=RetryConfig(base_delay=0.2, max_delay=0.2))
    data = MEDIA_TASKS["process_audio"](fakes)
    task = await service.submit("process_audio", data, project_id=PROJECT)
    assert await asyncio.to_thread(answer_lost_once.wait, 60)
    fakes.files.files.clear()  # the next run's input is gone (404): it fails for good before it stores

    body = await service.wait_terminal(task["task_id"], 60)
    await service.wait_idle()

    assert body["status"] == "failed"
    assert stored_files(service) == []


async def test_a_cancel_answers_without_waiting_for_the_media_store_to_delete_an_earlier_runs_file(
    start_service, fakes, tmp_path, answer_lost_once, monkeypatch
):
    retry = RetryConfig(base_delay=3600, max_delay=3600)  # the task waits its retry until cancelled
    service = await start(start_service, fakes, tmp_path, retry=retry)
    task = await service.submit("process_audio", MEDIA_TASKS["process_audio"](fakes), project_id=PROJECT)
    await service.wait_for(task["task_id"], lambda body: body.get("next_retry_at") is not None, 30)
    # A store that takes its time to answer a delete (a bucket out of reach: boto3's timeouts, up
    # to minutes a file), until released.
    release, real = threading.Event(), publish._withdraw
    monkeypatch.setattr(publish, "_withdraw", lambda *args: (release.wait(120), real(*args)))

    try:
        # Before, the DELETE's answer waited for the store: a client that gave up and sent it again
        # was told the task was already cancelled.
        async with asyncio.timeout(30):
            await cancel(service, task["task_id"])
        assert stored_files(service) == [f"audio_{task['task_id']}.wav"]
    finally:
        release.set()

    async with asyncio.timeout(30):
        while stored_files(service):
            await asyncio.sleep(0.05)


async def test_a_cancel_heard_before_a_later_run_began_here_leaves_no_file_an_earlier_run_stored(
    start_service, fakes, tmp_path, answer_lost_once, monkeypatch
):
    service = await start(start_service, fakes, tmp_path, retry=RetryConfig(base_delay=0.2, max_delay=0.2))
    executor = service.service._executor
    # The second run pauses between its start (the record says processing, so the API's cancel
    # leaves the file to the worker) and its registration here: where it reads its $refs, one round
    # trip that the cancel message can overtake.
    paused, go, heard = asyncio.Event(), asyncio.Event(), asyncio.Event()
    resolve, cancel_local = executor._resolve_refs, executor.cancel_local

    async def resolve_when_told(record):
        if record.attempt > 1:
            paused.set()
            await go.wait()
        return await resolve(record)

    def hear(task_id: str) -> bool:
        stopped = cancel_local(task_id)
        heard.set()
        return stopped

    monkeypatch.setattr(executor, "_resolve_refs", resolve_when_told)
    monkeypatch.setattr(executor, "cancel_local", hear)
    first = await service.submit("noop", {}, project_id=PROJECT)
    data = MEDIA_TASKS["process_audio"](fakes)
    data["tracks"][0]["gain_db"] = {"$ref": f"{first['task_id']}#/attempt"}
    task = await service.submit("process_audio", data, project_id=PROJECT, depends_on=[first["task_id"]])
    async with asyncio.timeout(60):
        await paused.wait()
    assert stored_files(service) == [f"audio_{task['task_id']}.wav"]
    await cancel(service, task["task_id"])  # "Task was running and has been terminated"
    async with asyncio.timeout(20):
        await heard.wait()
    go.set()

    # Before, the run ended before it read what its earlier runs stored: the file stayed for
    # media.retention (7 days).
    async with asyncio.timeout(30):
        while stored_files(service):
            await asyncio.sleep(0.05)
    assert (await service.status(task["task_id"]))["status"] == "cancelled"
