"""A task reads taskd's own media links from the store: its own project's only, signed, inside the store.

The config is a default user's: media links at taskd's own loopback address, `network.allow_private`
off, so a link that were fetched over HTTP instead would be refused by the SSRF guard.
"""

from __future__ import annotations

import time
from pathlib import Path

import attrs
import pytest
from aiohttp import web
from fake_media_apis import png, sine_wav
from yarl import URL

from taskd.config import Config, HttpConfig, MediaConfig, NetworkConfig
from taskd.logs import MASK, mask_url
from taskd.media import download
from taskd.media.own import OwnMedia
from taskd.media.store import SECRET_FILE, MediaStore
from taskd.net.guarded import GuardedClient, RedirectRefused
from taskd.tasks.spec import TaskError

BASE = "http://127.0.0.1:8001"
IMAGE = png(32, 24, (10, 120, 200))


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(data_dir=str(tmp_path / "data"), http=HttpConfig(host="127.0.0.1", port=8001))


def stored(config: Config, project_id: str, tmp_path: Path, body: bytes = IMAGE) -> str:
    """A file put in the store as a task's output would be; its signed media_url."""
    source = tmp_path / f"{project_id}.png"
    source.write_bytes(body)
    return MediaStore.from_config(config).put(project_id, f"image_{project_id}.png", source).url


async def fetch_as(config: Config, http, project_id: str, url: str, tmp_path: Path) -> Path:
    """`url` fetched as an image input of a task of `project_id`."""
    return await download.fetch(
        GuardedClient.from_config(config, http),
        url,
        tmp_path / "input",
        kind="image",
        limits=download.Limits.from_config(config.media),
        what="Image",
        own=OwnMedia.for_task(config, project_id),
    )


async def test_a_signed_link_of_the_tasks_own_project_is_read_from_the_store(config, http, tmp_path):
    url = stored(config, "tour", tmp_path)
    assert url.startswith(f"{BASE}/media/tour/")

    path = await fetch_as(config, http, "tour", url, tmp_path)

    assert (path.suffix, path.read_bytes()) == (".png", IMAGE)


async def test_a_forged_signature_is_refused(config, http, tmp_path):
    url = stored(config, "tour", tmp_path)
    forged = url[: url.index("sig=") + 4] + "0" * 64

    with pytest.raises(TaskError, match="was refused: media link signature is invalid"):
        await fetch_as(config, http, "tour", forged, tmp_path)


async def test_a_link_without_its_signature_is_refused(config, http, tmp_path):
    url = stored(config, "tour", tmp_path).split("?")[0]

    with pytest.raises(TaskError, match="was refused: the media link has no signature"):
        await fetch_as(config, http, "tour", url, tmp_path)


async def test_an_expired_link_is_refused(config, http, tmp_path):
    stored(config, "tour", tmp_path)
    store = MediaStore.from_config(config)
    url = store.url("tour", "image_tour.png", now=time.time() - 2 * store.ttl)

    with pytest.raises(TaskError, match="was refused: media link has expired"):
        await fetch_as(config, http, "tour", url, tmp_path)


async def test_a_validly_signed_link_of_another_project_is_refused(config, http, tmp_path):
    url = stored(config, "someone_else", tmp_path)

    with pytest.raises(TaskError, match="was refused: it is a media link of another project"):
        await fetch_as(config, http, "tour", url, tmp_path)


@pytest.mark.parametrize(
    ("path", "filename"),
    [
        ("/media/tour/..%2f" + SECRET_FILE, "..%2f" + SECRET_FILE),  # an escaped "/" stays a name
        ("/media/tour/%2e%2e/" + SECRET_FILE, SECRET_FILE),  # dot segments, even escaped
        ("/media/tour/../someone_else/image_someone_else.png", "image_someone_else.png"),
        ("/media/tour/sub/image_tour.png", "image_tour.png"),
        ("/media//tour/image_tour.png", "image_tour.png"),
        ("/media/tour/.image_tour.png.partial", ".image_tour.png.partial"),
    ],
)
async def test_a_link_that_leaves_the_projects_folder_is_refused_even_when_signed(
    config, http, tmp_path, path, filename
):
    stored(config, "tour", tmp_path)
    stored(config, "someone_else", tmp_path)
    store = MediaStore.from_config(config)
    expires = int(time.time()) + 60
    # Signed with the real secret over the hostile name: only the path checks stand in the way.
    url = f"{BASE}{path}?expires={expires}&sig={store.signature('tour', filename, expires)}"

    with pytest.raises(TaskError, match=r"was refused: it is (not a valid|a) media link"):
        await fetch_as(config, http, "tour", url, tmp_path)


async def test_a_link_planted_in_the_store_is_not_followed(config, http, tmp_path):
    stored(config, "tour", tmp_path)
    store = MediaStore.from_config(config)
    (store.root / "tour" / "planted.png").symlink_to(tmp_path / "data" / SECRET_FILE)

    with pytest.raises(TaskError, match="was not found in the media store"):
        await fetch_as(config, http, "tour", store.url("tour", "planted.png"), tmp_path)


async def test_a_store_file_larger_than_the_download_limit_is_refused(config, http, tmp_path):
    url = stored(config, "tour", tmp_path, IMAGE + b"\0" * 2048)
    small = attrs.evolve(config, media=attrs.evolve(config.media, max_download_bytes=1024))

    with pytest.raises(TaskError, match="is larger than the 1024 byte limit"):
        await fetch_as(small, http, "tour", url, tmp_path)


async def test_a_store_file_of_the_wrong_kind_is_refused(config, http, tmp_path):
    url = stored(config, "tour", tmp_path, b"RIFF\0\0\0\0WAVEfmt ")

    with pytest.raises(TaskError, match="is not a supported image file"):
        await fetch_as(config, http, "tour", url, tmp_path)


async def test_a_link_at_another_address_not_signed_by_this_store_goes_through_the_ssrf_guard(
    config, http, tmp_path
):
    url = stored(config, "tour", tmp_path).replace(":8001/", ":8002/")
    url = url[: url.index("sig=") + 4] + "0" * 64

    with pytest.raises(TaskError, match=r"127\.0\.0\.1 is not a public address"):
        await fetch_as(config, http, "tour", url, tmp_path)


@pytest.mark.parametrize(
    "alias",
    ["http://127.0.0.1.:8001", "http://taskd.internal.test", "https://cdn.example.test/proxied"],
)
async def test_another_projects_link_under_another_name_of_taskd_is_refused(config, http, tmp_path, alias):
    # The media route would serve it for its good signature, whatever name reached taskd.
    url = stored(config, "someone_else", tmp_path).replace(BASE, alias)

    with pytest.raises(TaskError, match="was refused: it is a media link of another project"):
        await fetch_as(config, http, "tour", url, tmp_path)


async def test_the_tasks_own_link_under_another_name_of_taskd_is_read_from_the_store(config, http, tmp_path):
    url = stored(config, "tour", tmp_path).replace(BASE, "http://taskd.internal.test")

    path = await fetch_as(config, http, "tour", url, tmp_path)

    assert path.read_bytes() == IMAGE


def test_a_redirect_to_a_link_signed_by_this_store_under_another_name_is_not_followed(config, tmp_path):
    url = stored(config, "someone_else", tmp_path).replace(BASE, "http://taskd.internal.test")

    with pytest.raises(RedirectRefused, match="redirects to a media link of this taskd"):
        OwnMedia.for_task(config, "tour").refuse_redirect(URL(url))


async def test_a_redirect_to_another_projects_media_link_is_not_followed(http, tmp_path):
    # One server plays taskd's media address (it serves the store's files, as the media route
    # would) and a caller's redirector; the guard lets the fetch reach it (allow_private).
    where: dict[str, str] = {}

    async def media(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(Path(where["store"]) / request.match_info["tail"])

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(where["theirs"])

    app = web.Application()
    app.router.add_get("/media/{tail:.+}", media)
    app.router.add_get("/to", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    config = Config(
        data_dir=str(tmp_path / "data"),
        media=MediaConfig(base_url=base),
        network=NetworkConfig(allow_private=True),
    )
    where["theirs"] = stored(config, "someone_else", tmp_path)
    where["store"] = str(MediaStore.from_config(config).root)
    try:
        with pytest.raises(TaskError, match="redirects to a media link of this taskd; give the link itself"):
            await fetch_as(config, http, "tour", f"{base}/to", tmp_path)
    finally:
        await runner.cleanup()


async def test_a_task_given_another_projects_media_url_fails_naming_it(start_service, tmp_path):
    running = await start_service(media=MediaConfig(base_url="http://media.test"))
    source = tmp_path / "voice.wav"
    source.write_bytes(sine_wav(1.0))
    theirs = MediaStore.from_config(running.service.config).put("studio_a", "voice_x.wav", source).url

    task = await running.submit("process_audio", {"tracks": [{"url": theirs}]}, project_id="studio_b")
    body = await running.wait_terminal(task["task_id"], timeout=30)

    # Named with its signature masked, as every URL's credentials in an error (and its log line) are.
    assert (body["status"], body["error"]) == (
        "failed",
        f"Track {mask_url(theirs, MASK)} was refused: it is a media link of another project",
    )
    assert mask_url(theirs, MASK).endswith("&sig=***")
