"""The Payload CMS upload of media outputs, against a loopback server speaking Payload's REST upload protocol."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fake_media_apis import FileServer, mono_wav, sine_wav
from fake_payload import FakePayload

from taskd.config import Config, MediaConfig, NetworkConfig, PayloadConfig
from taskd.media.payload import MAX_ANSWER_BYTES, MAX_MESSAGE_CHARS
from taskd.media.publish import publish
from taskd.media.store import MediaStore


@pytest.fixture
async def cms():
    async with FakePayload() as server:
        yield server


def config_for(tmp_path: Path, cms: FakePayload, **payload: object) -> Config:
    settings = {"base_url": cms.url, "api_key": cms.api_key, "retry_delay": 0.01, **payload}
    return Config(data_dir=str(tmp_path / "data"), payload=PayloadConfig(**settings))


async def publish_one(config: Config, tmp_path: Path, data: bytes = b"RIFF-not-really-audio") -> dict:
    source = tmp_path / "out.wav"
    source.write_bytes(data)
    return await publish(config, "noir_001", source, "audio_t1.wav", {"format": "wav"})


async def test_an_output_is_uploaded_and_its_doc_id_is_the_payload_media_id(tmp_path, cms):
    result = await publish_one(config_for(tmp_path, cms), tmp_path, b"the bytes")

    assert result["payload_media_id"] == "101"
    (upload,) = cms.uploads
    assert (upload.filename, upload.data) == ("audio_t1.wav", b"the bytes")
    assert upload.content_type in ("audio/wav", "audio/x-wav")  # as the platform's mimetypes name it
    assert upload.fields == {"alt": "audio_t1.wav"}
    assert upload.authorization == f"users API-Key {cms.api_key}"
    assert "payload_error" not in result["metadata"]


async def test_user_credentials_log_in_and_upload_with_the_jwt(tmp_path, cms):
    config = config_for(tmp_path, cms, api_key="", email=cms.email, password=cms.password)

    result = await publish_one(config, tmp_path)

    assert result["payload_media_id"] == "101"
    assert cms.uploads[0].authorization.startswith("JWT ")


async def test_refused_credentials_are_reported_without_losing_the_media(tmp_path, cms):
    config = config_for(tmp_path, cms, api_key="wrong-key")

    result = await publish_one(config, tmp_path, b"kept")

    assert result["payload_media_id"] is None
    assert result["metadata"]["payload_error"] == (
        "Payload CMS refused the credentials (HTTP 403): You are not allowed to perform this action."
    )
    assert cms.posts == 1  # a refusal is not retried
    assert (tmp_path / "data" / "media" / "noir_001" / "audio_t1.wav").read_bytes() == b"kept"


async def test_a_refusal_that_echoes_the_credentials_is_reported_with_them_masked(tmp_path, cms):
    cms.refusal = "Invalid header: {authorization}"
    config = config_for(tmp_path, cms, api_key="wrong-payload-key-0123")

    result = await publish_one(config, tmp_path)

    assert result["metadata"]["payload_error"] == (
        "Payload CMS refused the credentials (HTTP 403): Invalid header: users API-Key ***"
    )


async def test_a_credential_where_the_message_is_cut_is_masked_before_the_cut(tmp_path, cms):
    # The message is cut at MAX_MESSAGE_CHARS in the middle of the echoed key.
    cms.refusal = "x" * (MAX_MESSAGE_CHARS - len("users API-Key ") - 5) + "{authorization}"
    config = config_for(tmp_path, cms, api_key="wrong-payload-key-0123")

    result = await publish_one(config, tmp_path)

    assert "wrong" not in result["metadata"]["payload_error"]
    assert result["metadata"]["payload_error"].endswith("users API-Key ***")


async def test_a_refusal_that_echoes_the_login_token_is_reported_with_it_masked(tmp_path, cms):
    cms.refusal = "Invalid header: {authorization}"
    cms.accept_tokens = False  # the login succeeds, its token is refused: 403 from the upload
    config = config_for(tmp_path, cms, api_key="", email=cms.email, password=cms.password)

    result = await publish_one(config, tmp_path)

    assert result["metadata"]["payload_error"] == (
        "Payload CMS refused the credentials (HTTP 403): Invalid header: JWT ***"
    )


async def test_a_failed_login_is_reported(tmp_path, cms):
    config = config_for(tmp_path, cms, api_key="", email=cms.email, password="wrong")

    result = await publish_one(config, tmp_path)

    assert result["payload_media_id"] is None
    assert "refused the credentials (HTTP 401)" in result["metadata"]["payload_error"]
    assert cms.posts == 0


async def test_server_errors_are_retried_until_the_upload_succeeds(tmp_path, cms):
    cms.fail_next = 2

    result = await publish_one(config_for(tmp_path, cms, max_attempts=3), tmp_path)

    assert result["payload_media_id"] == "101"
    assert cms.posts == 3


async def test_server_errors_past_max_attempts_are_reported(tmp_path, cms):
    cms.fail_next = 5

    result = await publish_one(config_for(tmp_path, cms, max_attempts=2), tmp_path)

    assert result["payload_media_id"] is None
    assert result["metadata"]["payload_error"] == (
        "Payload CMS upload answered HTTP 500: Something went wrong. (gave up after 2 attempts)"
    )
    assert cms.posts == 2


async def test_an_unreachable_cms_is_retried_then_reported(tmp_path, cms):
    config = config_for(tmp_path, cms, base_url="http://127.0.0.1:9", api_key="k", max_attempts=2)

    result = await publish_one(config, tmp_path)

    assert result["payload_media_id"] is None
    assert result["metadata"]["payload_error"].startswith("Payload CMS upload failed: ")
    assert result["metadata"]["payload_error"].endswith("(gave up after 2 attempts)")


@pytest.mark.parametrize(
    "answer",
    [
        b'{"doc": {"id": "../../etc/passwd"}}',
        b'{"doc": {"id": {"$gt": ""}}}',
        b'{"doc": {"id": true}}',
        b'{"doc": {}}',
        b'["not", "an", "object"]',
    ],
)
async def test_an_answer_without_a_usable_doc_id_is_reported(tmp_path, cms, answer):
    cms.answer = answer

    result = await publish_one(config_for(tmp_path, cms), tmp_path)

    assert result["payload_media_id"] is None
    assert "without a usable doc id" in result["metadata"]["payload_error"] or (
        "no JSON object" in result["metadata"]["payload_error"]
    )


async def test_an_oversized_answer_is_refused(tmp_path, cms):
    cms.answer = b'{"doc": {"id": 1}, "pad": "' + b"x" * MAX_ANSWER_BYTES + b'"}'

    result = await publish_one(config_for(tmp_path, cms), tmp_path)

    assert result["payload_media_id"] is None
    assert result["metadata"]["payload_error"] == f"Payload CMS answered more than {MAX_ANSWER_BYTES} bytes"


async def test_a_deeply_nested_answer_is_reported_without_failing_the_publish(tmp_path, cms):
    # Within the size bound, but deeper than the JSON parser recurses: it raises RecursionError.
    cms.answer = b"[" * (MAX_ANSWER_BYTES - 1)

    result = await publish_one(config_for(tmp_path, cms), tmp_path)

    assert result["payload_media_id"] is None
    assert result["metadata"]["payload_error"] == "Payload CMS upload answered with no JSON object"


async def test_a_string_doc_id_is_kept_as_it_is(tmp_path, cms):
    cms.answer = b'{"doc": {"id": "64f1b2c3a8d9e0f1a2b3c4d5"}, "message": "ok"}'

    result = await publish_one(config_for(tmp_path, cms), tmp_path)

    assert result["payload_media_id"] == "64f1b2c3a8d9e0f1a2b3c4d5"


async def test_a_media_task_reports_its_payload_media_id_in_its_status(start_service, tmp_path, cms):
    files = FileServer()
    async with files:
        running = await start_service(
            media=MediaConfig(scratch_dir=str(tmp_path / "scratch")),
            network=NetworkConfig(allow_private=True),
            payload=PayloadConfig(base_url=cms.url, api_key=cms.api_key),
        )
        task = await running.submit(
            "process_audio",
            {
                "tracks": [{"url": files.add("tone.wav", sine_wav(1.0))}],
                "output_format": "wav",
                "normalize": False,
            },
            project_id="noir_001",
        )
        body = await running.wait_terminal(task["task_id"], timeout=30)

    assert body["status"] == "completed", body
    assert body["result"]["payload_media_id"] == "101"
    store = MediaStore.from_config(running.service.config)
    assert cms.uploads[0].data == store.path_of("noir_001", f"audio_{task['task_id']}.wav").read_bytes()


async def test_a_task_cancelled_while_its_media_goes_to_the_cms_stops_the_upload(
    start_service, tmp_path, cms
):
    cms.read_delay = 3.0  # the CMS reads slowly: the upload is still being sent when the cancel comes
    async with FileServer() as files:
        running = await start_service(
            media=MediaConfig(scratch_dir=str(tmp_path / "scratch")),
            network=NetworkConfig(allow_private=True),
            payload=PayloadConfig(base_url=cms.url, api_key=cms.api_key),
        )
        # 100 s of silence, stored as 96 kHz stereo WAV: ~38 MB, more than the sockets between them hold.
        silence = files.add("silence.wav", mono_wav(b"\0\0" * 8000 * 100, 8000))
        task = await running.submit(
            "process_audio",
            {"tracks": [{"url": silence}], "output_format": "wav", "normalize": False, "sample_rate": 96000},
            project_id="noir_001",
        )
        async with asyncio.timeout(60):
            while not cms.posts:
                await asyncio.sleep(0.02)
        async with running.client.delete(f"/api/v1/tasks/{task['task_id']}") as resp:
            assert resp.status == 200

        await asyncio.sleep(cms.read_delay + 2.0)  # the CMS has read what it was sent by now

    assert cms.uploads == []


# The next run of a task (taskd.store.run_state)


async def publish_again(config: Config, tmp_path: Path, data: bytes, state) -> dict:
    """publish_one as a run of the task with the run state `state`."""
    source = tmp_path / "out.wav"
    source.write_bytes(data)
    return await publish(config, "noir_001", source, "audio_t1.wav", {"format": "wav"}, state)


async def cut_short_after_the_cms_had_the_file(
    config: Config, tmp_path: Path, cms: FakePayload, state
) -> None:
    """A run whose upload of b"the bytes" the CMS made a document of, stopped before the answer."""
    cms.answer_hold = asyncio.Event()
    cut_short = asyncio.create_task(publish_again(config, tmp_path, b"the bytes", state))
    async with asyncio.timeout(10):
        while not cms.uploads:
            await asyncio.sleep(0.01)
    cut_short.cancel()
    cms.answer_hold.set()


async def test_the_next_run_reuses_the_document_its_earlier_run_uploaded_of_the_same_file(
    tmp_path, cms, run_state
):
    config = config_for(tmp_path, cms)
    await publish_again(config, tmp_path, b"the bytes", run_state())

    result = await publish_again(config, tmp_path, b"the bytes", run_state())

    assert result["payload_media_id"] == "101"
    assert (len(cms.uploads), cms.searches) == (1, 0)


async def test_the_next_run_finds_the_document_the_cms_made_after_the_earlier_run_was_cut_short(
    tmp_path, cms, run_state
):
    config = config_for(tmp_path, cms)
    await cut_short_after_the_cms_had_the_file(config, tmp_path, cms, run_state())

    result = await publish_again(config, tmp_path, b"the bytes", run_state())

    assert result["payload_media_id"] == "101"
    assert (len(cms.uploads), cms.searches) == (1, 1)


async def test_the_next_run_uploads_when_the_cms_cannot_be_searched(tmp_path, cms, run_state, caplog):
    config = config_for(tmp_path, cms)
    await cut_short_after_the_cms_had_the_file(config, tmp_path, cms, run_state())
    cms.searchable = False

    result = await publish_again(config, tmp_path, b"the bytes", run_state())

    assert result["payload_media_id"] == "102"
    assert (
        "could not look for an earlier run's CMS document (Payload CMS search answered HTTP 404"
        in caplog.text
    )


async def test_a_search_answered_503_is_tried_again(tmp_path, cms, run_state):
    config = config_for(tmp_path, cms)
    await cut_short_after_the_cms_had_the_file(config, tmp_path, cms, run_state())
    cms.search_errors = [503]

    result = await publish_again(config, tmp_path, b"the bytes", run_state())

    assert result["payload_media_id"] == "101"
    assert (len(cms.uploads), cms.searches) == (1, 2)


async def test_the_next_run_uploads_a_file_that_differs_from_the_earlier_runs(tmp_path, cms, run_state):
    config = config_for(tmp_path, cms)
    await publish_again(config, tmp_path, b"the first image", run_state())

    result = await publish_again(config, tmp_path, b"another image", run_state())

    assert result["payload_media_id"] == "102"
    assert [upload.data for upload in cms.uploads] == [b"the first image", b"another image"]


async def test_the_next_run_uploads_again_when_the_cms_it_goes_to_changed(tmp_path, cms, run_state):
    # Between the runs the operator pointed `[payload]` at another CMS: the earlier run's document
    # id names a document of the first, not of the one the result will be read against.
    await publish_again(config_for(tmp_path, cms), tmp_path, b"the bytes", run_state())

    async with FakePayload() as moved:
        result = await publish_again(config_for(tmp_path, moved), tmp_path, b"the bytes", run_state())

    assert [upload.data for upload in moved.uploads] == [b"the bytes"]
    assert result["payload_media_id"] == "101"
