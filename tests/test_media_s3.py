"""Media in an S3 bucket (`media.backend = "s3"`), against a real SeaweedFS started by the suite."""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from fake_media_apis import FileServer, _Server, png, sine_wav
from fake_video_apis import FakeVideoAPI, make_mp4
from seaweedfs import ACCESS_KEY, SECRET_KEY, SeaweedS3
from yarl import URL

from taskd.config import (
    Config,
    ConfigError,
    MediaConfig,
    NetworkConfig,
    ProvidersConfig,
    RetryConfig,
    S3Config,
    VideoProvider,
)
from taskd.errors import TransientError
from taskd.media.backend import media_backend
from taskd.media.own import OwnMedia
from taskd.media.retention import MediaSweeper
from taskd.media.s3 import DELETE_BATCH, S3Store
from taskd.tasks.spec import TaskError

PREFIX = "taskd/media/"


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory):
    # One server per module and xdist worker (it takes a few seconds to start); each test has its own bucket.
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def bucket(seaweed: SeaweedS3) -> str:
    return seaweed.make_bucket(f"taskd-{secrets.token_hex(6)}")


def s3_media(seaweed: SeaweedS3, bucket: str, tmp_path: Path, **s3: str) -> MediaConfig:
    settings = {
        "endpoint": seaweed.endpoint,
        "bucket": bucket,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "prefix": PREFIX,
        **s3,
    }
    return MediaConfig(backend="s3", s3=S3Config(**settings), scratch_dir=str(tmp_path / "scratch"))


async def start(start_service, media: MediaConfig, **sections):
    return await start_service(media=media, network=NetworkConfig(allow_private=True), **sections)


async def submit_audio(running, files: FileServer) -> dict:
    """Submit a one-second `process_audio` task of project noir_001: the submit's answer."""
    return await running.submit(
        "process_audio",
        {
            "tracks": [{"url": files.add("tone.wav", sine_wav(1.0))}],
            "output_format": "wav",
            "normalize": False,
        },
        project_id="noir_001",
    )


async def audio_task(running, files: FileServer) -> dict:
    task = await submit_audio(running, files)
    return await running.wait_terminal(task["task_id"], timeout=60)


async def download(url: str) -> tuple[int, bytes]:
    # encoded=True: the presigned query is sent exactly as signed.
    async with aiohttp.ClientSession() as anonymous, anonymous.get(URL(url, encoded=True)) as resp:
        return resp.status, await resp.read()


def signed_at(url: str) -> str:
    return parse_qs(urlsplit(url).query)["X-Amz-Date"][0]


def key_of(body: dict) -> str:
    return f"{PREFIX}noir_001/audio_{body['task_id']}.wav"


async def test_a_tasks_media_lands_in_the_bucket_and_its_presigned_url_downloads_it(
    start_service, seaweed, bucket, files, tmp_path
):
    running = await start(start_service, s3_media(seaweed, bucket, tmp_path))

    body = await audio_task(running, files)

    assert body["status"] == "completed", body
    stored = seaweed.client().get_object(Bucket=bucket, Key=key_of(body))["Body"].read()
    assert len(stored) == body["result"]["metadata"]["file_size"]
    url = body["result"]["media_url"]
    assert url.startswith(f"{seaweed.endpoint}/{bucket}/{key_of(body)}?")
    assert "X-Amz-Signature=" in url
    assert await download(url) == (200, stored)
    assert not (tmp_path / "data" / "media").exists()  # nothing kept on the worker's disk


async def test_another_api_node_serves_and_re_signs_the_same_media(
    start_service, seaweed, bucket, files, tmp_path
):
    media = s3_media(seaweed, bucket, tmp_path)
    worker = await start(start_service, media)
    body = await audio_task(worker, files)
    # Another API node: same Redis and bucket, its own data dir, no workers, no shared disk.
    node = await start(start_service, media, workers=False, data_dir=str(tmp_path / "node2"))
    await asyncio.sleep(1.1)  # SigV4 dates are to the second: a re-signed URL then differs

    status = await node.status(body["task_id"])
    async with node.client.get("/api/v1/projects/noir_001/tasks") as resp:
        listed = (await resp.json())["tasks"][0]
    async with node.client.get(f"/media/noir_001/audio_{body['task_id']}.wav", allow_redirects=False) as resp:
        redirect = resp.status, resp.headers["Location"]

    stored = seaweed.client().get_object(Bucket=bucket, Key=key_of(body))["Body"].read()
    for url in (status["result"]["media_url"], listed["result"]["media_url"], redirect[1]):
        assert signed_at(url) > signed_at(body["result"]["media_url"])
        assert await download(url) == (200, stored)
    assert redirect[0] == 302


async def test_a_later_status_read_signs_the_url_again(start_service, seaweed, bucket, files, tmp_path):
    running = await start(start_service, s3_media(seaweed, bucket, tmp_path))
    body = await audio_task(running, files)

    first = (await running.status(body["task_id"]))["result"]["media_url"]
    await asyncio.sleep(1.1)
    later = (await running.status(body["task_id"]))["result"]["media_url"]

    assert signed_at(later) > signed_at(first)
    assert urlsplit(later).path == urlsplit(first).path


async def test_a_task_cancelled_while_its_upload_runs_leaves_no_object_in_the_bucket(
    start_service, seaweed, bucket, files, tmp_path, held_store
):
    began, release = held_store
    running = await start(start_service, s3_media(seaweed, bucket, tmp_path))
    task = await submit_audio(running, files)
    assert await asyncio.to_thread(began.wait, 60)

    async with running.client.delete(f"/api/v1/tasks/{task['task_id']}") as resp:
        assert resp.status == 200
    release.set()  # boto3's upload, which no cancel can stop, goes on in its thread
    await running.wait_idle()

    assert (await running.status(task["task_id"]))["status"] == "cancelled"
    assert seaweed.client().list_objects_v2(Bucket=bucket).get("Contents", []) == []


async def test_a_task_cancelled_while_it_waits_to_run_again_leaves_no_object_an_earlier_run_stored(
    start_service, seaweed, bucket, files, tmp_path, answer_lost_once
):
    retry = RetryConfig(base_delay=3600, max_delay=3600)  # the task waits its retry until cancelled
    running = await start(start_service, s3_media(seaweed, bucket, tmp_path), retry=retry)
    task = await submit_audio(running, files)
    await running.wait_for(task["task_id"], lambda body: body.get("next_retry_at") is not None, 30)
    assert len(seaweed.client().list_objects_v2(Bucket=bucket).get("Contents", [])) == 1

    async with running.client.delete(f"/api/v1/tasks/{task['task_id']}") as resp:
        assert resp.status == 200

    # Before, the object stayed in the bucket for media.retention (7 days). The cancel's answer
    # does not wait for the delete: it is gone a moment later.
    async with asyncio.timeout(30):
        while seaweed.client().list_objects_v2(Bucket=bucket).get("Contents", []):
            await asyncio.sleep(0.1)


async def test_the_media_route_needs_a_key_and_answers_404_for_a_missing_object(
    start_service, seaweed, bucket, tmp_path
):
    running = await start(start_service, s3_media(seaweed, bucket, tmp_path))

    async with running.client.get("/media/noir_001/none.wav", allow_redirects=False) as resp:
        assert (resp.status, (await resp.json())["error"]) == (404, "not_found")
    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.get(f"{running.base_url}/media/noir_001/x.wav") as resp,
    ):
        assert (resp.status, (await resp.json())["error"]) == (401, "authentication_failed")


def test_the_sweeper_deletes_objects_past_retention_under_the_prefix_only(seaweed, bucket, tmp_path):
    config = Config(data_dir=str(tmp_path / "data"), media=s3_media(seaweed, bucket, tmp_path))
    client = seaweed.client()
    for key in (f"{PREFIX}p1/a.mp4", f"{PREFIX}p2/b.wav", f"{PREFIX}p1/sub/deep.mp4", "elsewhere/keep.txt"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    sweeper = MediaSweeper.from_config(config)

    assert sweeper.sweep().media_files == 0  # all are new
    report = sweeper.sweep(at=time.time() + config.media.retention + 5)

    assert (report.media_files, report.errors) == (2, 0)
    left = sorted(item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert left == ["elsewhere/keep.txt", f"{PREFIX}p1/sub/deep.mp4"]


def test_the_sweeper_deletes_old_objects_as_it_lists_them_and_misses_none(
    seaweed, bucket, tmp_path, monkeypatch
):
    config = Config(data_dir=str(tmp_path / "data"), media=s3_media(seaweed, bucket, tmp_path))
    client = seaweed.client()
    count = DELETE_BATCH * 2 + 500  # three pages of the listing (1,000 keys a page)
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda n: client.put_object(Bucket=bucket, Key=f"{PREFIX}p1/a_{n:05d}.wav", Body=b"x"),
                range(count),
            )
        )
    sweeper = MediaSweeper.from_config(config)
    assert sweeper.bucket is not None
    listed, listed_at_first_delete = [0], []
    objects, delete = sweeper.bucket.objects, sweeper.bucket.delete

    def counted() -> Iterator[tuple[str, datetime]]:
        for item in objects():
            listed[0] += 1
            yield item

    def deleting(keys: list[str]) -> tuple[int, int]:
        listed_at_first_delete.append(listed[0])
        return delete(keys)

    monkeypatch.setattr(sweeper.bucket, "objects", counted)
    monkeypatch.setattr(sweeper.bucket, "delete", deleting)
    report = sweeper.sweep(at=time.time() + config.media.retention + 5)

    # Before, every old key of the bucket was listed and held before the first was deleted.
    assert listed_at_first_delete[0] == DELETE_BATCH
    assert (report.media_files, report.errors) == (count, 0)
    assert client.list_objects_v2(Bucket=bucket).get("Contents", []) == []


def test_the_sweeper_aborts_a_multipart_upload_a_killed_worker_left_once_older_than_any_task_can_run(
    seaweed, bucket, tmp_path
):
    config = Config(data_dir=str(tmp_path / "data"), media=s3_media(seaweed, bucket, tmp_path))
    client = seaweed.client()
    key = f"{PREFIX}p1/video_killed.mp4"
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024)
    sweeper = MediaSweeper.from_config(config)

    sweeper.sweep()  # a new upload may still be under way
    kept = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    sweeper.sweep(at=time.time() + sweeper.scratch_age + 5)

    assert [item["Key"] for item in kept] == [key]
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


async def test_refused_credentials_fail_the_task_after_its_retries_with_a_clear_error(
    start_service, seaweed, bucket, files, tmp_path
):
    media = s3_media(seaweed, bucket, tmp_path, secret_access_key="not-the-secret")
    running = await start(start_service, media, retry=RetryConfig(base_delay=0.05, max_retries=1))

    body = await audio_task(running, files)

    assert body["status"] == "failed"
    assert body["attempt"] == 2  # transient: retried once
    assert body["error"] == (
        f"Media store s3://{bucket}/{PREFIX} refused or failed the upload: SignatureDoesNotMatch: "
        "the credentials media.s3.access_key_id / secret_access_key were refused"
    )
    assert "not-the-secret" not in str(body)


async def test_an_unreachable_store_fails_the_task_transiently_and_the_api_still_answers(
    start_service, seaweed, bucket, files, tmp_path
):
    media = s3_media(seaweed, bucket, tmp_path, endpoint="http://127.0.0.1:9")
    running = await start(start_service, media, retry=RetryConfig(base_delay=0.05, max_retries=1))

    body = await audio_task(running, files)

    assert (body["status"], body["attempt"]) == ("failed", 2)
    assert body["error"].startswith(f"Media store s3://{bucket}/{PREFIX} refused or failed the upload: ")
    assert 'Could not connect to the endpoint URL: "http://127.0.0.1:9/' in body["error"]
    async with running.client.get("/api/v1/projects/noir_001/tasks") as resp:
        assert resp.status == 200
    async with running.client.get("/media/noir_001/audio_x.wav") as resp:
        assert (resp.status, (await resp.json())["error"]) == (503, "service_unavailable")


class BrokenStore(_Server):
    """An S3 endpoint that refuses every request with an S3 error of `message`."""

    def __init__(self, message: bytes) -> None:
        super().__init__()
        self.body = b"<Error><Code>InternalError</Code><Message>" + message + b"</Message></Error>"
        self.app.router.add_route("*", "/{tail:.*}", self._refuse)

    async def _refuse(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=400, body=self.body, content_type="application/xml")


async def test_a_stores_long_error_message_is_cut_short_on_one_line(tmp_path):
    source = tmp_path / "out.wav"
    source.write_bytes(b"bytes")
    async with BrokenStore(b"line one\nInjected: line two " + b"x" * 1_000_000) as broken:
        settings = S3Config(endpoint=broken.url, bucket="media", access_key_id="k", secret_access_key="s")
        store = S3Store(settings, ttl=3600)

        with pytest.raises(TransientError) as failed:
            await asyncio.to_thread(store.put, "noir_001", "audio_1.wav", source)

    assert str(failed.value).startswith(
        "Media store s3://media/ refused or failed the upload: InternalError: line one Injected: line two xxx"
    )
    assert len(str(failed.value)) < 400


def test_a_url_of_another_bucket_or_project_is_not_located(seaweed, bucket, tmp_path):
    store = S3Store(s3_media(seaweed, bucket, tmp_path).s3, ttl=3600)
    url = store.url("noir_001", "video_1.mp4")

    assert store.locate(url) == ("noir_001", "video_1.mp4")
    assert store.locate(url.replace(f"/{bucket}/", "/other-bucket/")) is None
    assert store.locate(url.replace("/noir_001/", "/noir_001/deeper/")) is None
    assert store.locate(f"https://elsewhere.example/{bucket}/{PREFIX}noir_001/video_1.mp4") is None


def test_the_s3_backend_without_boto3_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if not installed: importing it fails
    config = Config(media=MediaConfig(backend="s3", s3=S3Config(bucket="media")))

    with pytest.raises(ConfigError, match=r"pip install 'taskd\[s3\]'"):
        media_backend(config)


def test_the_s3_backend_without_credentials_stops_with_one_line(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    config = Config(media=MediaConfig(backend="s3", s3=S3Config(bucket="media")))

    with pytest.raises(ConfigError, match=r"^media.s3: cannot sign URLs \(Unable to locate credentials\)"):
        media_backend(config)


async def test_another_projects_presigned_link_as_an_input_is_refused(
    start_service, seaweed, bucket, files, tmp_path
):
    # docs/security.md "Media": a task reads no other project's media, whichever backend stores it;
    # a local link of another project is refused (tests/hostile/test_own_media_links.py), and so is a bucket's.
    running = await start(start_service, s3_media(seaweed, bucket, tmp_path))
    theirs = (await audio_task(running, files))["result"]["media_url"]

    task = await running.submit(
        "process_audio", {"tracks": [{"url": theirs}], "output_format": "wav"}, project_id="other_project"
    )
    body = await running.wait_terminal(task["task_id"], timeout=60)

    assert body["status"] == "failed"
    assert body["error"].endswith("was refused: it is a media link of another project")


async def test_another_projects_object_named_without_a_signature_is_refused(
    start_service, seaweed, bucket, files, tmp_path
):
    # A bucket that lets taskd's network read without credentials would answer it to taskd alone.
    running = await start(start_service, s3_media(seaweed, bucket, tmp_path))
    theirs = (await audio_task(running, files))["result"]["media_url"].split("?", 1)[0]

    task = await running.submit(
        "process_audio", {"tracks": [{"url": theirs}], "output_format": "wav"}, project_id="other_project"
    )
    body = await running.wait_terminal(task["task_id"], timeout=60)

    assert body["error"] == f"Track {theirs} was refused: it is a media link of another project"


async def test_another_projects_presigned_link_under_another_name_of_the_store_is_refused(
    start_service, seaweed, bucket, files, tmp_path
):
    running = await start(start_service, s3_media(seaweed, bucket, tmp_path))
    theirs = (await audio_task(running, files))["result"]["media_url"].replace("127.0.0.1", "localhost", 1)

    task = await running.submit(
        "process_audio", {"tracks": [{"url": theirs}], "output_format": "wav"}, project_id="other_project"
    )
    body = await running.wait_terminal(task["task_id"], timeout=60)

    # Its signature is masked in the error (docs/security.md "Secrets").
    assert body["error"].startswith(f"Track {theirs.split('?', 1)[0]}?")
    assert body["error"].endswith(" was refused: it is a media link of another project")


async def test_another_projects_presigned_link_with_dot_segments_is_refused(
    start_service, seaweed, bucket, files, tmp_path
):
    # The fetch sends the path with its dot segments removed (RFC 3986), which the signature
    # then matches: `<prefix>other_project/../noir_001/x` is noir_001's object.
    running = await start(start_service, s3_media(seaweed, bucket, tmp_path))
    theirs = (await audio_task(running, files))["result"]["media_url"]
    spelled = theirs.replace(f"/{PREFIX}noir_001/", f"/{PREFIX}other_project/../noir_001/", 1)

    task = await running.submit(
        "process_audio", {"tracks": [{"url": spelled}], "output_format": "wav"}, project_id="other_project"
    )
    body = await running.wait_terminal(task["task_id"], timeout=60)

    assert body["status"] == "failed"
    assert body["error"].endswith("was refused: it is a media link of another project")


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param(lambda url: url.replace("http://", "HTTP://", 1), id="upper-case scheme"),
        pytest.param(lambda url: url + "#x", id="fragment"),
        pytest.param(
            lambda url: url.replace(f"/{PREFIX}", f"/%{ord(PREFIX[0]):02X}{PREFIX[1:]}", 1), id="escaped"
        ),
        pytest.param(lambda url: url.replace(f"/{PREFIX}", f"/{PREFIX}./", 1), id="dot segment"),
        pytest.param(
            lambda url: url.replace(f"/{PREFIX}noir_001/", f"/{PREFIX}noir_001%2F", 1), id="escaped slash"
        ),
    ],
)
def test_another_projects_object_named_without_a_signature_in_another_spelling_is_refused(
    seaweed, bucket, tmp_path, spelling
):
    # Each spelling names the same object once the URL is normalised (as the fetch does) or the
    # store decodes its key.
    config = Config(data_dir=str(tmp_path / "data"), media=s3_media(seaweed, bucket, tmp_path))
    theirs = spelling(S3Store.from_config(config).url("noir_001", "audio_x.wav").split("?", 1)[0])

    with pytest.raises(TaskError, match="was refused: it is a media link of another project"):
        OwnMedia.for_task(config, "other_project").find(theirs, "Track")


async def test_another_projects_image_as_a_storyboard_image_is_refused(
    start_service, seaweed, bucket, tmp_path
):
    # The built-in renderer reads its images through the same check as process_audio's tracks.
    running = await start(start_service, s3_media(seaweed, bucket, tmp_path))
    source = tmp_path / "frame.png"
    source.write_bytes(png(320, 240))
    theirs = S3Store.from_config(running.service.config).put("noir_001", "image_x.png", source).url

    task = await running.submit(
        "generate_video",
        {"storyboard_images": [theirs], "duration": 2, "fps": 12, "resolution": "320x240"},
        project_id="other_project",
    )
    body = await running.wait_terminal(task["task_id"], timeout=60)

    assert body["status"] == "failed", body
    assert body["error"].endswith("was refused: it is a media link of another project")


async def test_another_projects_image_as_a_video_providers_reference_is_refused(
    start_service, seaweed, bucket, tmp_path
):
    source = tmp_path / "frame.png"
    source.write_bytes(png(320, 240))
    async with FakeVideoAPI(make_mp4(tmp_path / "fake.mp4")) as api:
        video = VideoProvider(protocol="openai", base_url=api.base_url, api_key="sk-video", model="sora-2")
        running = await start(
            start_service, s3_media(seaweed, bucket, tmp_path), providers=ProvidersConfig(video=video)
        )
        theirs = S3Store.from_config(running.service.config).put("noir_001", "image_x.png", source).url

        task = await running.submit(
            "generate_video",
            {"scene_description": "A rainy alley", "storyboard_images": [theirs], "duration": 2},
            project_id="other_project",
        )
        body = await running.wait_terminal(task["task_id"], timeout=60)

    assert body["status"] == "failed", body
    assert body["error"].endswith("was refused: it is a media link of another project")
    assert api.created == []


async def test_a_projects_own_presigned_link_as_an_input_is_fetched(
    start_service, seaweed, bucket, files, tmp_path
):
    running = await start(start_service, s3_media(seaweed, bucket, tmp_path))
    own = (await audio_task(running, files))["result"]["media_url"]

    task = await running.submit(
        "process_audio", {"tracks": [{"url": own}], "output_format": "wav"}, project_id="noir_001"
    )
    body = await running.wait_terminal(task["task_id"], timeout=60)

    assert body["status"] == "completed", body


async def test_a_presigned_link_tells_caches_to_ask_the_bucket_again_before_each_reuse(
    start_service, seaweed, bucket, files, tmp_path
):
    # As /media does (docs/security.md "Browsers"): without it a browser may reuse a deleted
    # object's answer, fresh by its Last-Modified date alone (heuristic freshness).
    running = await start(start_service, s3_media(seaweed, bucket, tmp_path))
    body = await audio_task(running, files)

    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.get(URL(body["result"]["media_url"], encoded=True)) as resp,
    ):
        cache_control = resp.headers.get("Cache-Control")

    assert cache_control == "private, no-cache"
