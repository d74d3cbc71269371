"""Hostile bytes in headers, query strings, paths and the data dir: a clear 4xx or a one-line start-up error.

Never a 500, never a traceback in the log, never an open door.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, urlsplit

import aiohttp
import pytest
from conftest import API_KEY, child_env

from taskd.http.keytable import KeyTable
from taskd.media.store import MediaStore

MEDIA_PATH = "/media/noir_001/audio_0123.wav"
SIGNATURE = "0" * 64


async def raw_get(base_url: str, path: bytes, headers: dict[bytes, bytes]) -> tuple[int, bytes]:
    """GET with the path and header bytes exactly as given (no client would send them): status, body."""
    address = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    lines = [b"GET " + path + b" HTTP/1.1", b"Host: taskd", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers.items()]
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
    async with asyncio.timeout(15):
        raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def problems_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log lines at ERROR or with a traceback."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/api/v1/tasks/metrics", "Invalid or missing API key"),
        (MEDIA_PATH, "Invalid or missing API key or media signature"),
    ],
)
async def test_an_api_key_that_is_not_utf8_gets_401_in_the_documented_shape(taskd, caplog, path, message):
    status, body = await raw_get(taskd.base_url, path.encode(), {b"X-API-Key": b"\xff\xfe-not-utf8"})

    assert (status, json.loads(body)) == (401, {"error": "authentication_failed", "message": message})
    assert problems_logged(caplog) == []


@pytest.mark.parametrize(
    "expires",
    ["9" * 5000, "\u0663\u0664\u0665\u0666\u0667\u0668\u0669\u0660\u0661\u0662", "\uff11\uff12\uff13"],
    ids=["5000 digits", "arabic-indic digits", "fullwidth digits"],
)
async def test_a_media_expiry_that_is_not_a_short_run_of_ascii_digits_is_403(taskd, caplog, expires):
    query = f"?expires={quote(expires)}&sig={SIGNATURE}"

    async with aiohttp.ClientSession(taskd.base_url) as anonymous, anonymous.get(MEDIA_PATH + query) as r:
        status, body = r.status, await r.json()

    assert (status, body) == (403, {"error": "forbidden", "message": "Media link is missing a valid expiry"})
    assert problems_logged(caplog) == []


async def test_a_media_range_ignored_beside_a_header_that_is_not_utf8_sends_the_whole_file(
    taskd, caplog, tmp_path
):
    # The whole file is sent for a Range of several parts: the request is copied without it, and
    # the copy's other headers once raised on bytes that were not UTF-8 (a dropped connection and
    # an ERROR traceback).
    source = tmp_path / "first.wav"
    source.write_bytes(b"a stored file's bytes " * 64)
    MediaStore.from_config(taskd.service.config).put("noir_001", "audio_0123.wav", source)
    headers = {b"X-API-Key": API_KEY.encode(), b"range": b"bytes=0-1,5-6", b"X-Note": b"\xff\xfe"}

    status, body = await raw_get(taskd.base_url, MEDIA_PATH.encode(), headers)

    assert (status, body) == (200, source.read_bytes())
    assert problems_logged(caplog) == []


async def test_a_last_event_id_in_another_scripts_digits_is_a_400(taskd, caplog):
    arabic_id = "\u0661\u0667\u0660\u0660-\u0660".encode()

    status, body = await raw_get(
        taskd.base_url,
        b"/api/v1/projects/proj-1/events",
        {b"X-API-Key": taskd.client.headers["X-API-Key"].encode(), b"Last-Event-ID": arabic_id},
    )

    assert status == 400
    assert json.loads(body)["error"] == "validation_error" and "Last-Event-ID" in json.loads(body)["details"]
    assert problems_logged(caplog) == []


@pytest.mark.parametrize("route", ["/api/v1/projects/proj-1/events", "/api/v1/tasks/{task_id}/events"])
@pytest.mark.parametrize("last", [b"18446744073709551615-18446744073709551615", b"18446744073709551616-0"])
async def test_a_last_event_id_no_stream_can_follow_is_a_400(taskd, caplog, route, last):
    task = await taskd.submit("noop", {})

    status, body = await raw_get(
        taskd.base_url,
        route.format(task_id=task["task_id"]).encode(),
        {b"X-API-Key": taskd.client.headers["X-API-Key"].encode(), b"Last-Event-ID": last},
    )

    assert status == 400
    assert json.loads(body)["error"] == "validation_error" and "Last-Event-ID" in json.loads(body)["details"]
    assert problems_logged(caplog) == []


async def test_a_request_line_that_is_not_http_is_a_400_logged_without_a_traceback(taskd, caplog):
    status, _ = await raw_get(taskd.base_url, b"/api/v1/tasks/\xff\xfe/status", {})

    assert status == 400
    assert problems_logged(caplog) == []


@pytest.mark.parametrize("route", ["tasks", "events"])
async def test_a_project_id_that_no_task_can_have_is_404(taskd, route):
    timeout = aiohttp.ClientTimeout(total=15)

    async with taskd.client.get(f"/api/v1/projects/..%2Fp1/{route}", timeout=timeout) as response:
        status, body = response.status, await response.json()

    assert status == 404
    assert body["error"] == "not_found"


@pytest.mark.parametrize("project_id", ["p1\n", "p1\r\n", "p1\x00"])
async def test_a_project_id_with_a_trailing_control_character_is_refused_at_submit(taskd, project_id):
    body = {"project_id": project_id, "task_type": "noop", "task_data": {}}

    async with taskd.client.post("/api/v1/tasks/submit", json=body) as response:
        status, answer = response.status, await response.json()

    assert status == 400
    assert answer["error"] == "validation_error"
    assert "project_id" in answer["details"]


def test_an_empty_key_never_matches_even_an_empty_configured_key():
    assert not KeyTable.of([""]).find("")[0]


def start_up_error(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[int, list[str]]:
    """Run `taskd serve` that must refuse to start: its exit status and the lines it wrote to stderr."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")} | env
    done = subprocess.run(
        [sys.executable, "-m", "taskd", *args, "serve"],
        env=full_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.returncode, done.stderr.strip().splitlines()


@pytest.mark.parametrize("content", [b"", b"\n", b"3f9a1c5e7b2d4f60"], ids=["empty", "newline", "truncated"])
def test_an_empty_or_truncated_media_secret_file_stops_start_up_with_one_line(tmp_path, valkey_url, content):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "media_secret").write_bytes(content)

    status, stderr = start_up_error(tmp_path, child_env(data_dir, TASKD_REDIS__URL=valkey_url))

    assert status == 2
    assert len(stderr) == 1 and str(data_dir / "media_secret") in stderr[0], stderr


@pytest.mark.parametrize(
    ("toml", "env"),
    [('api_keys = [""]', {}), ('api_keys = ["   "]', {}), ("", {"TASKD_AUTH__API_KEYS": " , "})],
    ids=["empty in the file", "blank in the file", "only commas in the environment"],
)
def test_an_empty_api_key_in_the_config_stops_start_up_with_one_line(tmp_path, valkey_url, toml, env):
    config = tmp_path / "taskd.toml"
    config.write_text(f"[auth]\n{toml}\n")
    environment = child_env(tmp_path / "data", TASKD_REDIS__URL=valkey_url)
    del environment["TASKD_AUTH__API_KEYS"]  # the keys come from the case
    environment.update(env)

    status, stderr = start_up_error(tmp_path, environment, "--config", str(config))

    assert status == 2
    assert len(stderr) == 1 and "auth.api_keys" in stderr[0], stderr


def test_a_truncated_kept_api_key_file_stops_start_up_with_one_line(tmp_path, valkey_url):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "api_key").write_text("abc\n")
    environment = child_env(data_dir, TASKD_REDIS__URL=valkey_url)
    del environment["TASKD_AUTH__API_KEYS"]  # taskd uses the key it keeps

    status, stderr = start_up_error(tmp_path, environment)

    assert status == 2
    assert len(stderr) == 1 and str(data_dir / "api_key") in stderr[0], stderr
