"""End to end through the HTTP API: a media task's result is served at its signed URL, and only there."""

from __future__ import annotations

import asyncio
import gzip
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from conftest import API_KEY
from fake_media_apis import sine_wav

from taskd.config import MediaConfig, NetworkConfig
from taskd.media import ffmpeg
from taskd.media.store import MediaStore


@pytest.fixture
async def served(start_service, tmp_path, files):
    media = MediaConfig(base_url="http://media.test", scratch_dir=str(tmp_path / "scratch"))
    running = await start_service(media=media, network=NetworkConfig(allow_private=True))  # loopback files
    task = await running.submit(
        "process_audio",
        {
            "tracks": [{"url": files.add("tone.wav", sine_wav(2.0))}],
            "output_format": "wav",
            "target_lufs": -20,
        },
        project_id="noir_001",
    )
    body = await running.wait_terminal(task["task_id"], timeout=30)
    assert body["status"] == "completed", body
    return running, body


async def get(running, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession(base_url=running.base_url) as anonymous,
        anonymous.get(path, headers=headers or {}) as resp,
    ):
        return resp.status, await resp.read()


def local(media_url: str) -> str:
    parts = urlsplit(media_url)
    return f"{parts.path}?{parts.query}"


async def test_completed_task_result_has_a_signed_absolute_media_url(served, tmp_path):
    running, body = served
    result = body["result"]

    assert result["media_url"].startswith(
        f"http://media.test/media/noir_001/audio_{body['task_id']}.wav?expires="
    )
    assert result["payload_media_id"] is None
    assert result["metadata"]["loudness_lufs"] == pytest.approx(-20, abs=1)
    status, data = await get(running, local(result["media_url"]))
    assert status == 200
    assert len(data) == result["metadata"]["file_size"]
    assert not list((tmp_path / "scratch").iterdir())


async def test_media_is_served_with_the_api_key_alone(served):
    running, body = served
    path = urlsplit(body["result"]["media_url"]).path

    assert (await get(running, path, {"X-API-Key": API_KEY}))[0] == 200
    status, data = await get(running, path)
    assert status == 401
    assert b"authentication_failed" in data


async def test_media_is_served_as_its_own_type_never_as_a_page(served):
    running, body = served

    async with (
        aiohttp.ClientSession(base_url=running.base_url) as anonymous,
        anonymous.get(local(body["result"]["media_url"])) as resp,
    ):
        assert resp.content_type == "audio/x-wav"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"


@pytest.mark.parametrize(("output_format", "expected"), [("flac", "audio/flac"), ("ogg", "audio/ogg")])
async def test_a_mix_is_served_as_its_formats_type_whatever_pythons_own_table_knows(
    start_service, tmp_path, files, output_format, expected
):
    # Python before 3.13 has no .flac or .ogg in the table aiohttp's file answers guess from: these
    # were application/octet-stream, with nosniff, so a browser's <audio> was told it is no audio.
    media = MediaConfig(base_url="http://media.test", scratch_dir=str(tmp_path / "scratch"))
    running = await start_service(media=media, network=NetworkConfig(allow_private=True))
    tracks = [{"url": files.add("tone.wav", sine_wav(1.0))}]
    task = await running.submit("process_audio", {"tracks": tracks, "output_format": output_format})
    body = await running.wait_terminal(task["task_id"], timeout=30)

    async with (
        aiohttp.ClientSession(base_url=running.base_url) as anonymous,
        anonymous.get(local(body["result"]["media_url"])) as resp,
    ):
        assert (resp.status, resp.content_type) == (200, expected)


async def test_a_compressed_media_file_is_served_as_bytes_not_as_what_it_holds(served, tmp_path):
    # A plugin's `page.svg.gz`: Python's table reads it as SVG in gzip, and it was sent as
    # image/svg+xml (aiohttp's own answer, up to e338a9b, was application/gzip).
    running, _ = served
    source = tmp_path / "page.svg.gz"
    source.write_bytes(gzip.compress(b"<svg xmlns='http://www.w3.org/2000/svg'/>"))
    stored = MediaStore.from_config(running.service.config).put("noir_001", source.name, source)

    async with (
        aiohttp.ClientSession(base_url=running.base_url) as anonymous,
        anonymous.get(local(stored.url)) as resp,
    ):
        assert (resp.status, resp.content_type) == (200, "application/octet-stream")


async def test_a_browser_asks_again_before_each_reuse_of_a_media_file(served):
    # security.md: a file deleted (purge, retention) or a link expired stops being shown at once,
    # not an hour later from the browser's cache; a shared cache keeps nothing.
    running, body = served
    url = local(body["result"]["media_url"])

    async with aiohttp.ClientSession(base_url=running.base_url) as anonymous:
        async with anonymous.get(url) as first:
            await first.read()
        async with anonymous.get(url, headers={"If-None-Match": first.headers["ETag"]}) as again:
            revalidated = again.status

    assert first.headers["Cache-Control"] == "private, no-cache"
    assert revalidated == 304  # asking again costs no body while the file is there


async def test_asking_again_for_a_deleted_media_file_is_a_404(served):
    running, body = served
    url = local(body["result"]["media_url"])
    store = MediaStore.from_config(running.service.config)
    async with aiohttp.ClientSession(base_url=running.base_url) as anonymous:
        async with anonymous.get(url) as first:
            await first.read()
        path = store.path_of("noir_001", urlsplit(url).path.rsplit("/", 1)[1])
        assert path is not None
        path.unlink()
        async with anonymous.get(url, headers={"If-None-Match": first.headers["ETag"]}) as again:
            status = again.status

    assert status == 404


async def test_a_media_file_deleted_while_its_answer_is_made_is_the_documented_404(served, monkeypatch):
    running, body = served
    url = local(body["result"]["media_url"])
    looked_up = MediaStore.path_of

    class GoneAfterTheLook(type(Path())):  # type: ignore[misc]
        """The file is deleted (its task purged) just after the handler saw it there."""

        def is_file(self) -> bool:
            there = super().is_file()
            self.unlink()
            return there

    def path_of(store: MediaStore, project_id: str, filename: str) -> Path | None:
        path = looked_up(store, project_id, filename)
        return None if path is None else GoneAfterTheLook(path)

    monkeypatch.setattr(MediaStore, "path_of", path_of)
    async with aiohttp.ClientSession(base_url=running.base_url) as anonymous, anonymous.get(url) as resp:
        status, content_type, data = resp.status, resp.content_type, await resp.json()

    assert (status, content_type) == (404, "application/json")
    assert data == {
        "error": "not_found",
        "message": f"Media 'noir_001/{urlsplit(url).path.rsplit('/', 1)[1]}' not found",
    }


async def test_tampered_and_expired_signatures_are_refused(served):
    running, body = served
    url = local(body["result"]["media_url"])
    store = MediaStore.from_config(running.service.config)
    filename = urlsplit(url).path.rsplit("/", 1)[1]

    status, data = await get(running, url[:-4] + "0000")
    assert (status, b"signature is invalid" in data) == (403, True)
    expired = store.url("noir_001", filename, now=time.time() - store.ttl - 5)
    status, data = await get(running, local(expired))
    assert (status, b"Media link has expired" in data) == (403, True)


async def test_unknown_or_unsafe_media_paths_are_404(served):
    running, _ = served
    headers = {"X-API-Key": API_KEY}

    assert (await get(running, "/media/noir_001/nothing.wav", headers))[0] == 404
    assert (await get(running, "/media/noir_001/..%2Fmedia_secret", headers))[0] == 404


async def test_stored_media_is_real_audio(served):
    running, body = served
    store = MediaStore.from_config(running.service.config)
    path = store.root / urlsplit(body["result"]["media_url"]).path.removeprefix("/media/")

    info = await ffmpeg.probe(path)
    assert info.duration == pytest.approx(2.0, abs=0.1)


async def test_status_and_listing_sign_the_url_again_on_every_read(served):
    running, body = served
    stored = body["result"]["media_url"]
    await asyncio.sleep(1.1)  # expiries are whole seconds

    fresh = (await running.status(body["task_id"]))["result"]["media_url"]
    async with running.client.get("/api/v1/projects/noir_001/tasks") as resp:
        listed = (await resp.json())["tasks"][0]["result"]["media_url"]

    for url in (fresh, listed):
        assert urlsplit(url).path == urlsplit(stored).path
        assert parse_qs(urlsplit(url).query)["expires"] > parse_qs(urlsplit(stored).query)["expires"]
        assert (await get(running, local(url)))[0] == 200


async def test_a_project_id_with_two_dots_in_a_row_stores_and_serves_its_media(
    start_service, tmp_path, files
):
    # "take..2" is a valid project id at submit; its media must be as storable as any other's.
    media = MediaConfig(scratch_dir=str(tmp_path / "scratch"))
    running = await start_service(media=media, network=NetworkConfig(allow_private=True))
    task = await running.submit(
        "process_audio",
        {
            "tracks": [{"url": files.add("tone.wav", sine_wav(1.0))}],
            "output_format": "wav",
            "normalize": False,
        },
        project_id="take..2",
    )

    body = await running.wait_terminal(task["task_id"], timeout=30)

    assert body["status"] == "completed", body
    status, _ = await get(running, local(body["result"]["media_url"]))
    assert status == 200


async def _restarted_with_secret(start_service, tmp_path, **secrets: str):
    """Another node on the same store and data dir, with these media secrets (a rotation's next step)."""
    media = MediaConfig(base_url="http://media.test", scratch_dir=str(tmp_path / "scratch"), **secrets)
    return await start_service(media=media, workers=False)


async def test_after_a_rotation_a_link_signed_with_the_previous_secret_is_still_served(
    served, start_service, tmp_path
):
    _, body = served
    kept = (tmp_path / "data" / "media_secret").read_text().strip()
    rotated = await _restarted_with_secret(start_service, tmp_path, secret="n" * 64, previous_secret=kept)

    status, _ = await get(rotated, local(body["result"]["media_url"]))

    assert status == 200


async def test_once_the_previous_secret_is_cleared_its_links_are_refused(served, start_service, tmp_path):
    _, body = served
    rotated = await _restarted_with_secret(start_service, tmp_path, secret="n" * 64)

    status, answer = await get(rotated, local(body["result"]["media_url"]))

    assert status == 403
    assert b"Media link signature is invalid" in answer


def test_links_are_signed_with_the_current_secret_never_the_previous(tmp_path):
    store = MediaStore(tmp_path, "http://media.test", b"n" * 64, 3600, previous=b"o" * 64)
    old = MediaStore(tmp_path, "http://media.test", b"o" * 64, 3600)

    sig = parse_qs(urlsplit(store.url("p1", "a.wav", now=1000.0)).query)["sig"][0]

    assert sig == store.signature("p1", "a.wav", 1000 + 3600)
    assert old.check("p1", "a.wav", str(1000 + 3600), sig, now=1000.0) == "Media link signature is invalid"


@pytest.fixture
async def kept_file(start_service, tmp_path):
    """A running taskd with one file in project noir_001's store (as a task's run leaves it), its
    path and its name; the service's own client sends the key."""
    running = await start_service(media=MediaConfig(scratch_dir=str(tmp_path / "scratch")), workers=False)
    source = tmp_path / "first.wav"
    source.write_bytes(b"first run's bytes " * 64)
    store = MediaStore.from_config(running.service.config)
    stored = await asyncio.to_thread(store.put, "noir_001", "audio_x.wav", source)
    assert stored.path is not None
    return running, stored.path, "/media/noir_001/audio_x.wav"


async def test_a_resumed_download_of_a_file_replaced_since_gets_the_whole_new_file(kept_file, tmp_path):
    # A browser resumes with `If-Range: <the ETag it has>`: when the file was stored again since (a
    # task's run again), a part of the new file would be spliced onto the old one's start.
    running, path, url = kept_file
    async with running.client.get(url) as first:
        etag = first.headers["ETag"]
        await first.read()
    replacement = tmp_path / "second.wav"
    replacement.write_bytes(b"another run's bytes, longer " * 64)
    MediaStore.from_config(running.service.config).put("noir_001", path.name, replacement)

    async with running.client.get(url, headers={"Range": "bytes=100-", "If-Range": etag}) as resumed:
        status, data = resumed.status, await resumed.read()

    assert (status, data) == (200, replacement.read_bytes())


async def test_a_resumed_download_of_an_unchanged_file_gets_the_part_asked(kept_file):
    running, path, url = kept_file
    async with running.client.get(url) as first:
        etag, last_modified = first.headers["ETag"], first.headers["Last-Modified"]
        await first.read()

    for validator in (etag, last_modified):
        async with running.client.get(url, headers={"Range": "bytes=100-", "If-Range": validator}) as resumed:
            assert (resumed.status, await resumed.read()) == (206, path.read_bytes()[100:])


# `byte\u017f` (a long s, which Unicode folds to `s`) is not the unit `bytes`.
@pytest.mark.parametrize(
    "asked", ["bytes=0-1,5-6", "bytes=0-,0-", "items=0-3", "bytes=\u00ff", "byte\u017f=0-3"]
)
async def test_a_range_of_several_parts_or_another_unit_gets_the_whole_file(kept_file, asked):
    # RFC 9110 section 14.2: ignored (another unit: must be), never a 416 "none of it is in the file".
    running, path, url = kept_file

    async with running.client.get(url, headers={"Range": asked}) as resp:
        status, data = resp.status, await resp.read()

    assert (status, data) == (200, path.read_bytes())


async def test_a_range_past_the_end_of_the_file_is_a_416(kept_file):
    running, path, url = kept_file

    async with running.client.get(url, headers={"Range": f"bytes={path.stat().st_size}-"}) as resp:
        assert resp.status == 416


async def test_a_range_field_named_in_lower_case_is_ignored_as_well(kept_file):
    # Field names are case-insensitive (HTTP/2 proxies send them in lower case).
    running, path, url = kept_file

    async with running.client.get(url, headers={"range": "bytes=0-1,5-6"}) as resp:
        assert (resp.status, await resp.read()) == (200, path.read_bytes())


async def test_a_range_unit_in_capitals_gets_the_part_asked(kept_file):
    # Range units are case-insensitive (RFC 9110, section 14.1). aiohttp below 3.14.4 (the floor is
    # 3.14.0) reads only `bytes=` in lower case, and answered this a 416; `make floors` runs this test.
    running, path, url = kept_file

    async with running.client.get(url, headers={"Range": "BYTES=2-5"}) as resp:
        assert (resp.status, await resp.read()) == (206, path.read_bytes()[2:6])


async def test_a_range_on_head_is_ignored(kept_file):
    # RFC 9110 section 14.2: GET is the only method with ranges; a server must ignore one on any other.
    running, path, url = kept_file

    async with running.client.head(url, headers={"Range": "bytes=0-3"}) as resp:
        answer = (resp.status, resp.headers.get("Content-Length"), resp.headers.get("Content-Range"))

    assert answer == (200, str(path.stat().st_size), None)
