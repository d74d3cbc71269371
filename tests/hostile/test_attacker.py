"""An attacker holding an API key, against a real `taskd serve`: crafted files, URLs, headers and paths.

Every attack must end in a clear error in the documented shape (a 4xx body with `error` and `message`,
or a task that ends `failed` with an `error` saying why), never a 5xx; reach nothing on the internal
network; write nothing outside the task's scratch and media dirs; and show no secret in any response,
log line or webhook.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import pytest
from attacker_kit import (
    INTERNAL_HOST,
    PUBLIC_HOST,
    Recorder,
    Secrets,
    Taskd,
    serving,
    small_png,
    start_taskd,
    stop_taskd,
    tree_state,
    wait_terminal,
)
from media_files import long_silent_flac, png_bomb, tagged_flac
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SECRETS = Secrets()
# The folders of the data dir that taskd itself writes while it works: the embedded Valkey's files,
# stored media and task scratch.
WRITABLE = ("valkey", "media", "scratch")


@attrs.frozen
class World:
    """The service under attack and the peers around it."""

    taskd: Taskd
    public: Recorder
    internal: Recorder
    sentinel: Path
    admin: httpx.Client  # the unscoped key
    tenant: httpx.Client  # the key scoped to project tenant-a


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("attacker")
    with serving(PUBLIC_HOST) as public, serving(INTERNAL_HOST) as internal:
        taskd = start_taskd(root, SECRETS, public)
        try:
            with taskd.client(SECRETS.api_key) as admin, taskd.client(SECRETS.scoped_key) as tenant:
                yield World(taskd, public, internal, root / "pwned", admin, tenant)
        finally:
            stop_taskd(taskd)


@pytest.fixture
def unchanged(world: World) -> Iterator[None]:
    """After the test: nothing reached the internal server, nothing was written outside scratch and media."""
    hits = world.internal.hits()
    before = tree_state(world.taskd.data_dir, WRITABLE)
    yield
    assert world.internal.hits() == hits, world.internal.requests[hits:]
    assert tree_state(world.taskd.data_dir, WRITABLE) == before
    assert not world.sentinel.exists()


def assert_clean(text: str) -> None:
    """No secret, and nothing an internal service said, in `text`."""
    for secret in SECRETS.values():
        assert secret not in text
    assert "INTERNAL-ONLY" not in text
    assert "application/x-internal-secret" not in text


def assert_documented_4xx(response: httpx.Response) -> dict[str, Any]:
    """A 4xx with the API document's error body, and nothing secret in it."""
    assert 400 <= response.status_code < 500, response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["message"], str) and body["message"]
    assert_clean(response.text)
    return body


def run_task(
    client: httpx.Client, task_type: str, task_data: dict[str, Any], **fields: Any
) -> dict[str, Any]:
    """Submit (it must be accepted) and wait for the end; the final status body, checked for secrets."""
    body = {
        "project_id": fields.pop("project_id", "tenant-a"),
        "task_type": task_type,
        "task_data": task_data,
    }
    response = client.post("/api/v1/tasks/submit", json={**body, **fields})
    assert response.status_code == 200, response.text
    final = wait_terminal(client, response.json()["task_id"])
    assert_clean(orjson.dumps(final).decode())
    return final


def failed_with(final: dict[str, Any], *words: str) -> None:
    """The task failed and its error says why."""
    assert final["status"] == "failed", final
    error = final["error"].lower()
    assert all(word in error for word in words), final["error"]


# ---- crafted media files ---------------------------------------------------------------------------

INJECTIONS = {
    "loudnorm-json": '{"input_i" : "-23:measured_TP=0,ametadata=mode=print:file={sentinel}", "input_tp" : "0", '
    '"input_lra" : "0", "input_thresh" : "-30", "target_offset" : "0"}',
    "filter-syntax": "[0:a]ametadata=mode=print:file={sentinel}[x];",
    "shell": "$(touch {sentinel}); `touch {sentinel}` | touch {sentinel}",
    "format-string": "%{e:1} %n %s %x {0.__class__}",
}


@pytest.mark.parametrize("tag", INJECTIONS, ids=list(INJECTIONS))
def test_a_media_file_whose_tags_hold_filter_syntax_is_mixed_as_sound_and_nothing_else(
    world, unchanged, tmp_path, tag
):
    title = INJECTIONS[tag].replace("{sentinel}", str(world.sentinel))
    url = world.public.add(
        f"tagged-{tag}.flac", tagged_flac(tmp_path, seconds=1.0, title=title, comment=title)
    )

    final = run_task(world.tenant, "process_audio", {"tracks": [{"url": url}], "normalize": True})

    assert final["status"] == "completed", final
    assert final["result"]["metadata"]["duration"] == pytest.approx(1.0, abs=0.1)


def test_a_scene_description_with_drawtext_expressions_is_drawn_as_text(world, unchanged):
    description = "%{e:1+1} %{metadata:title} %{localtime} %{pts} \\ ' : ; [x] ,"

    final = run_task(
        world.tenant,
        "generate_video",
        {"scene_description": description, "duration": 1, "fps": 5, "resolution": "160x120"},
    )

    assert final["status"] == "completed", final


def test_a_png_decompression_bomb_fails_the_task_before_it_is_decoded(world, unchanged):
    url = world.public.add("bomb.png", png_bomb(20000, 20000))

    final = run_task(
        world.tenant,
        "generate_video",
        {"storyboard_images": [url], "duration": 1, "fps": 5, "resolution": "160x120"},
    )

    failed_with(final, "pixel")


def test_ten_hours_of_silence_fail_the_task_before_they_are_decoded(world, unchanged, tmp_path):
    url = world.public.add("long.flac", long_silent_flac(tmp_path, 10))

    final = run_task(world.tenant, "process_audio", {"tracks": [{"url": url}]})

    failed_with(final, "longer than")


def test_a_truncated_png_fails_the_task_with_a_clear_error(world, unchanged):
    url = world.public.add("truncated.png", small_png()[:60])

    final = run_task(
        world.tenant,
        "generate_video",
        {"storyboard_images": [url], "duration": 1, "fps": 5, "resolution": "160x120"},
    )

    assert final["status"] == "failed", final
    assert final["error"]


def test_a_web_page_named_like_an_image_is_refused_as_not_an_image(world, unchanged):
    url = world.public.add("page.png", b"<html><script>alert(1)</script></html>")

    final = run_task(
        world.tenant,
        "generate_video",
        {"storyboard_images": [url], "duration": 1, "fps": 5, "resolution": "160x120"},
    )

    failed_with(final, "not a supported image")


# ---- URLs aimed inside -----------------------------------------------------------------------------


def internal_urls(port: int) -> dict[str, str]:
    """Ways to write the internal server's address (all loopback: nothing else is ever sent traffic)."""
    return {
        "ipv4": f"http://127.0.0.1:{port}/latest/meta-data/",
        "short-ipv4": f"http://127.1:{port}/",
        "hex-ipv4": f"http://0x7f000001:{port}/",
        "decimal-ipv4": f"http://2130706433:{port}/",
        "name": f"http://localhost:{port}/",
        "ipv4-mapped-ipv6": f"http://[::ffff:127.0.0.1]:{port}/",
        "userinfo-trick": f"http://{PUBLIC_HOST}@127.0.0.1:{port}/",
    }


INTERNAL_FORMS = list(internal_urls(0))


@pytest.mark.parametrize("form", INTERNAL_FORMS)
def test_a_task_input_aimed_at_the_internal_network_is_refused_unfetched(world, unchanged, form):
    url = internal_urls(world.internal.server_address[1])[form]

    final = run_task(
        world.tenant,
        "generate_video",
        {"storyboard_images": [url], "duration": 1, "fps": 5, "resolution": "160x120"},
    )

    failed_with(final, "refused")


def test_a_redirect_from_a_public_server_to_the_internal_network_is_refused(world, unchanged):
    target = f"http://127.0.0.1:{world.internal.server_address[1]}/latest/meta-data/"
    url = f"{world.public.base_url}/redirect?to={target}"

    final = run_task(world.tenant, "process_audio", {"tracks": [{"url": url}]})

    failed_with(final, "refused")


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "gopher://127.0.0.1:70/_x", "ftp://127.0.0.1/x", "data:,hello", "//127.0.0.1/x"],
)
def test_a_task_input_with_a_non_http_scheme_is_a_validation_error(world, unchanged, url):
    response = world.tenant.post(
        "/api/v1/tasks/submit",
        json={
            "project_id": "tenant-a",
            "task_type": "process_audio",
            "task_data": {"tracks": [{"url": url}]},
        },
    )

    assert assert_documented_4xx(response)["error"] == "validation_error"


@pytest.mark.parametrize("form", INTERNAL_FORMS)
def test_a_callback_url_aimed_at_the_internal_network_is_a_validation_error(world, unchanged, form):
    url = internal_urls(world.internal.server_address[1])[form]

    response = world.tenant.post(
        "/api/v1/tasks/submit",
        json={"project_id": "tenant-a", "task_type": "noop", "task_data": {}, "callback_url": url},
    )

    assert assert_documented_4xx(response)["error"] == "validation_error"


# ---- headers and paths -----------------------------------------------------------------------------


def raw_request(taskd: Taskd, head: bytes) -> tuple[int, bytes]:
    """Send a hand-written request (bytes no client library would send); the status and body."""
    host, port = httpx.URL(taskd.base_url).host, httpx.URL(taskd.base_url).port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("key", [b"\xff\xfe\xfd", b"caf\xc3\xa9", b"\x00null"])
def test_an_api_key_that_is_not_ascii_is_refused_with_401(world, unchanged, key):
    head = (
        b"GET /api/v1/projects/tenant-a/tasks HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: " + key
    )
    status, body = raw_request(world.taskd, head + b"\r\n\r\n")

    assert status in (400, 401), body
    assert_clean(body.decode("utf-8", "replace"))


PATHS = [
    "/media/tenant-a/..%2f..%2fapi_key",
    "/media/tenant-a/%2e%2e%2fmedia_secret",
    "/media/..%2fdata/api_key",
    "/media/tenant-a/.hidden",
    "/media/tenant-b%2f..%2ftenant-a/x.mp4",
    "/api/v1/projects/tenant-b%2f..%2ftenant-a/tasks",
    "/api/v1/projects/..%2ftenant-b/tasks",
    "/api/v1/tasks/..%2f..%2fmetrics/status",
    "/media/tenant-a/x.mp4?expires=" + "9" * 5000 + "&sig=00",
    "/media/tenant-a/x.mp4?expires=\u0663\u0664\u0665&sig=00",
]


@pytest.mark.parametrize("path", PATHS)
def test_a_path_trick_gets_a_documented_4xx_and_no_file(world, unchanged, path):
    response = world.tenant.get(path)

    assert_documented_4xx(response)


def test_a_scoped_key_cannot_read_another_projects_media(world, unchanged):
    final = run_task(
        world.admin,
        "generate_video",
        {"scene_description": "other tenant", "duration": 1, "fps": 5, "resolution": "160x120"},
        project_id="tenant-b",
    )
    path = "/media/" + final["result"]["media_url"].split("/media/", 1)[1].split("?")[0]

    response = world.tenant.get(path)

    assert response.status_code == 404
    assert_documented_4xx(response)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/dashboard/overview",
        "/api/v1/health",
        "/api/v1/tasks/health",
        "/api/v1/tasks/metrics",
        "/metrics",
    ],
)
def test_a_scoped_key_sees_nothing_of_another_project_on_global_views(world, unchanged, path):
    other = run_task(world.admin, "noop", {}, project_id="tenant-b-secret-project")

    response = world.tenant.get(path)

    assert response.status_code < 500
    assert "tenant-b-secret-project" not in response.text
    assert other["task_id"] not in response.text


# ---- what leaves the service -----------------------------------------------------------------------


def delivered_to(world: World, task_id: str) -> list[tuple[dict[str, str], bytes]]:
    return [
        (headers, body)
        for method, _, headers, body in list(world.public.requests)
        if method == "POST" and task_id.encode() in body
    ]


def wait_delivered(world: World, task_id: str) -> tuple[dict[str, str], bytes]:
    import time

    deadline = time.monotonic() + 30
    while not (found := delivered_to(world, task_id)):
        assert time.monotonic() < deadline, "webhook never arrived"
        time.sleep(0.05)
    return found[0]


def lower_keys(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


@pytest.mark.parametrize(
    ("client", "secret", "other"),
    [
        ("tenant", SECRETS.tenant_webhook_secret, SECRETS.webhook_secret),
        ("admin", SECRETS.webhook_secret, SECRETS.tenant_webhook_secret),
    ],
    ids=["tenant-key", "admin-key"],
)
def test_a_webhook_verifies_with_its_keys_secret_only_and_carries_no_secret(
    world, unchanged, client, secret, other
):
    callback = f"{world.public.base_url}/hook"
    final = run_task(getattr(world, client), "noop", {}, callback_url=callback)

    headers, body = wait_delivered(world, final["task_id"])

    Webhook(secret).verify(body, lower_keys(headers))
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, lower_keys(headers))
    assert_clean(body.decode())


def test_the_log_holds_no_secret_after_every_attack(world):
    # Runs last in this module: by then every attack above has been logged.
    assert_clean(world.taskd.log())
