"""Secrets travel less: job processes, ffmpeg and espeak-ng see none, logs and task errors print none,
and the generated API key is shown once, on the terminal, when it is made.

The tests run a real `taskd serve` whose environment and config hold every kind of secret taskd knows
(API keys, a scoped key, a Redis URL with its password, provider keys, the media and webhook secrets)
and some it does not (OPENAI_API_KEY, HF_TOKEN, AWS_SECRET_ACCESS_KEY), then look for them wherever a
child, a caller or a log reader could see them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import cattrs
import imageio_ffmpeg
import orjson
import psutil
import pytest
from conftest import TERMINAL
from examples import TASK_DATA
from fake_openai import FakeOpenAI

from taskd.childenv import child_environment, job_config
from taskd.config import (
    AuthConfig,
    Config,
    GpuConfig,
    LlmProvider,
    MediaConfig,
    ProvidersConfig,
    RedisConfig,
    ScopedKey,
    TasksConfig,
    VideoProvider,
    WebhooksConfig,
)
from taskd.embedded import EmbeddedValkey
from taskd.logs import secrets_of, url_password
from taskd.providers.http import error_detail

ADMIN_KEY = "secrets-suite-admin-key-8d1e4b"
SCOPED_KEY = "secrets-suite-tenant-key-71f0"
MEDIA_SECRET = "secrets-suite-media-secret-c4e8a2"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"secrets-suite-webhook-key-01").decode()
PROVIDER_KEYS = {
    "LLM": "sk-secrets-suite-llm-5a7c",
    "IMAGE": "sk-secrets-suite-image-9e2f",
    "SPEECH": "sk-secrets-suite-speech-3b6d",
}
# Secrets of other programs that happen to be in taskd's environment.
FOREIGN = {
    "OPENAI_API_KEY": "sk-foreign-openai-0d9b",
    "HF_TOKEN": "hf_foreign-token-6c3a",
    "AWS_SECRET_ACCESS_KEY": "aws-foreign-secret-2e8f",
}


def _base_env(data_dir: Path, **extra: str) -> dict[str, str]:
    # PYTHONPATH (set by conftest) lets the job processes import support_tasks.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    env.update(
        TASKD_DATA_DIR=str(data_dir),
        TASKD_HTTP__PORT="0",
        TASKD_TASKS__MODULES="taskd.tasks.diagnostics,support_tasks",
        TASKD_LIMITS__SUBMIT_PER_MINUTE="0",
        TASKD_LIMITS__STATUS_PER_MINUTE="0",
        TASKD_RETRY__MAX_RETRIES="0",
        **extra,
    )
    return env


def _start(
    args: list[str], env: dict[str, str], cwd: Path, log_path: Path
) -> tuple[subprocess.Popen[str], str]:
    """`python -m taskd --log-format json <args>`, logging to `log_path`; it and what it printed up to `listening`."""
    with log_path.open("a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskd", "--log-format", "json", "--log-level", "DEBUG", *args],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    assert proc.stdout is not None
    printed = []
    while line := proc.stdout.readline():
        printed.append(line)
        if "listening on" in line:
            return proc, "".join(printed)
    proc.wait(10)
    raise AssertionError(f"taskd did not start: {log_path.read_text()}")


def _stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, wait for the exit; the rest of what it printed."""
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout is not None
    # Read through the text stream, not communicate(): communicate reads the pipe underneath and
    # would miss lines that readline() in _start already pulled into the stream's buffer.
    rest = proc.stdout.read()
    proc.stdout.close()
    proc.wait(30)
    return rest


def _spy(path: Path, dumps: Path, real: str) -> Path:
    """An executable at `path` that writes its environment to a new file in `dumps`, then runs `real`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dumps.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nenv > "{dumps}/{path.name}.$$.env"\nexec "{real}" "$@"\n')
    path.chmod(0o755)
    return path


def _leaks(text: str, secrets: dict[str, str]) -> list[str]:
    """The names of the secrets that appear in `text`."""
    return sorted(name for name, value in secrets.items() if value in text)


@attrs.frozen
class Served:
    """A running `taskd serve` with every secret set: where it listens, its log, the secrets it holds."""

    base_url: str
    log_path: Path
    secrets: dict[str, str]

    async def run(self, task_type: str, task_data: dict[str, Any]) -> dict[str, Any]:
        """Submit a task with the admin key and wait for its end; its status body."""
        headers = {"X-API-Key": ADMIN_KEY}
        body = {"project_id": "tenant-a", "task_type": task_type, "task_data": task_data}
        async with aiohttp.ClientSession(self.base_url, headers=headers) as http:
            async with http.post("/api/v1/tasks/submit", json=body) as response:
                accepted = await response.json()
                assert response.status == 200, accepted
            async with asyncio.timeout(60):
                while True:
                    async with http.get(f"/api/v1/tasks/{accepted['task_id']}/status") as response:
                        status = await response.json()
                    if status["status"] in TERMINAL:
                        return status
                    await asyncio.sleep(0.05)

    def log(self) -> str:
        """Everything it logged so far."""
        return self.log_path.read_text("utf-8", "replace")


@pytest.fixture
async def serve_with_secrets(
    tmp_path: Path, valkey_url: str, fake_llm: FakeOpenAI
) -> AsyncIterator[Callable[..., Served]]:
    """Starts `taskd serve` with every secret set (`extra` environment on top, replacing any of it); stopped at the end."""
    started: list[subprocess.Popen[str]] = []
    password = url_password(valkey_url)
    assert password
    secrets = {
        "admin key": ADMIN_KEY,
        "scoped key": SCOPED_KEY,
        "redis password": password,
        "media secret": MEDIA_SECRET,
        "webhook secret": WEBHOOK_SECRET,
        "webhook key": WEBHOOK_SECRET.removeprefix("whsec_"),
        **{f"{name.lower()} provider key": key for name, key in PROVIDER_KEYS.items()},
        **FOREIGN,
    }

    def start(**extra: str) -> Served:
        settings = {
            "TASKD_REDIS__URL": valkey_url,
            "TASKD_AUTH__API_KEYS": ADMIN_KEY,
            "TASKD_AUTH__KEYS": json.dumps([{"key": SCOPED_KEY, "projects": ["tenant-a"]}]),
            "TASKD_MEDIA__SECRET": MEDIA_SECRET,
            "TASKD_WEBHOOKS__SECRET": WEBHOOK_SECRET,
            "TASKD_WEBHOOKS__ALLOW_PRIVATE": "true",
            "TASKD_PROVIDERS__LLM__BASE_URL": fake_llm.base_url,
            "TASKD_PROVIDERS__LLM__MODEL": "test-model",
            **{f"TASKD_PROVIDERS__{name}__API_KEY": key for name, key in PROVIDER_KEYS.items()},
            **FOREIGN,
        }
        # `extra` may replace any of these (another provider URL, a key left blank).
        env = _base_env(tmp_path / "data", **{**settings, **extra})
        log_path = tmp_path / "taskd.log"
        proc, printed = _start(["serve"], env, tmp_path, log_path)
        started.append(proc)
        match = re.search(r"listening on (http://\S+)", printed)
        assert match
        return Served(match.group(1), log_path, secrets)

    yield start
    for proc in started:
        if proc.poll() is None:
            _stop(proc)


# What a child is given, unit by unit


def test_the_child_environment_keeps_only_allowed_names_without_credentials():
    environ = {
        "PATH": "/usr/bin",
        "LC_ALL": "C.UTF-8",
        "CUDA_VISIBLE_DEVICES": "1",
        "HOME": "/home/taskd",
        "TASKD_AUTH__API_KEYS": ADMIN_KEY,
        "TASKD_DATA_DIR": "/var/lib/taskd",
        "OPENAI_API_KEY": FOREIGN["OPENAI_API_KEY"],
        "CUDA_LICENSE_TOKEN": "cuda-token-1",
        "HTTPS_PROXY": "http://user:proxy-pass-1@proxy:3128",
        "NO_PROXY": "localhost",
        "NOTIFY_SOCKET": "/run/systemd/notify",
    }

    env = child_environment(environ=environ)

    assert env == {
        "PATH": "/usr/bin",
        "LC_ALL": "C.UTF-8",
        "CUDA_VISIBLE_DEVICES": "1",
        "NO_PROXY": "localhost",
        "XDG_CACHE_HOME": "/home/taskd/.cache",
    }


def test_the_child_environment_takes_a_home_and_extra_variables():
    env = child_environment(
        home=Path("/srv/scratch/home"), extra={"CUDA_VISIBLE_DEVICES": "0"}, environ={"HOME": "/home/taskd"}
    )

    assert env == {
        "HOME": "/srv/scratch/home",
        "XDG_CACHE_HOME": "/home/taskd/.cache",  # model and font caches stay shared
        "CUDA_VISIBLE_DEVICES": "0",
    }


def test_a_job_config_has_every_secret_field_blank_and_no_url_password():
    config = Config(
        data_dir="/var/lib/taskd",
        auth=AuthConfig(api_keys=[ADMIN_KEY], keys=[ScopedKey(SCOPED_KEY, ["tenant-a"])]),
        redis=RedisConfig(url="redis://:redis-pass-1@db:6379/0"),
        providers=ProvidersConfig(llm=LlmProvider(base_url="https://llm.example/v1", api_key="sk-llm-1")),
        media=MediaConfig(secret=MEDIA_SECRET),
        webhooks=WebhooksConfig(
            secret=WEBHOOK_SECRET, previous_secret=WEBHOOK_SECRET, proxy="http://u:proxy-pass-1@proxy:3128"
        ),
    )

    lean = job_config(config)

    text = json.dumps(cattrs.unstructure(lean))
    for secret in (
        ADMIN_KEY,
        SCOPED_KEY,
        "redis-pass-1",
        "sk-llm-1",
        MEDIA_SECRET,
        WEBHOOK_SECRET,
        "proxy-pass-1",
    ):
        assert secret not in text
    assert (lean.data_dir, lean.providers.llm.base_url) == ("/var/lib/taskd", "https://llm.example/v1")


def test_a_job_config_drops_a_url_that_carries_a_credential_in_its_query():
    llm = LlmProvider(base_url="https://llm.example/v1?api-key=sk-query-1")
    config = Config(providers=ProvidersConfig(llm=llm))

    assert job_config(config).providers.llm.base_url == ""


def test_a_job_config_blanks_the_secrets_of_a_table_of_the_operators_own_names():
    extra = {"openai_api_key": "sk-extra-1", "nested": {"password": "pw-extra-2"}, "steps": 30}
    video = VideoProvider(
        protocol="replicate", base_url="https://api.example", model="o/m", extra_input=extra
    )
    config = Config(providers=ProvidersConfig(video=video))

    lean = job_config(config).providers.video.extra_input

    assert lean == {"openai_api_key": "", "nested": {"password": ""}, "steps": 30}


def test_a_job_config_has_a_video_provider_whose_base_url_held_its_key_unset():
    video = VideoProvider(
        protocol="openai", base_url="https://video.example/v1?api-key=sk-query-3", model="m"
    )
    config = Config(providers=ProvidersConfig(video=video))

    lean = job_config(config)

    assert lean.providers.video == VideoProvider()


def test_a_job_config_keeps_the_per_type_settings_of_a_type_named_like_a_secret():
    # A plugin's type may be called refresh_token: its route is a queue, not a secret, and a blank
    # one failed the table's validation, so that no job process could start for any type.
    config = Config(
        tasks=TasksConfig(routes={"refresh_token": "cpu_intensive"}),
        gpu=GpuConfig(task_needs={"sign_key": "slot"}),
    )

    lean = job_config(config)

    assert lean.tasks.routes == {"refresh_token": "cpu_intensive"}
    assert lean.gpu.task_needs == {"sign_key": "slot"}


def test_a_proxy_with_a_token_in_its_query_stays_out_of_the_child_environment():
    env = child_environment(
        environ={"HTTPS_PROXY": "http://proxy:3128/?token=tok-query-2", "LANG": "C.UTF-8"}
    )

    assert "HTTPS_PROXY" not in env and env["LANG"] == "C.UTF-8"


def test_scoped_keys_and_the_key_part_of_webhook_secrets_are_masked_in_logs():
    config = Config(
        auth=AuthConfig(keys=[ScopedKey(SCOPED_KEY, ["tenant-a"])]),
        webhooks=WebhooksConfig(previous_secret=WEBHOOK_SECRET),
    )

    found = set(secrets_of(config))

    assert {SCOPED_KEY, WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_")} <= found
    assert "tenant-a" not in found  # project ids are not secrets


# Job processes


async def test_a_job_process_environment_holds_no_secret(serve_with_secrets):
    served = serve_with_secrets()

    done = await served.run("show_what_i_got", {})

    assert done["status"] == "completed", done
    environ = done["result"]["environ"]
    assert _leaks(json.dumps(environ), served.secrets) == []
    assert [name for name in environ if name.startswith("TASKD_")] == []
    assert environ["PYTHONPATH"] == os.environ["PYTHONPATH"]  # what a job process does need stays


async def test_a_job_process_is_sent_the_config_without_its_secrets(serve_with_secrets, tmp_path):
    served = serve_with_secrets()

    done = await served.run("show_what_i_got", {})

    assert done["status"] == "completed", done
    config = done["result"]["config"]
    assert _leaks(json.dumps(config), served.secrets) == []
    assert config["auth"] == {"api_keys": [], "keys": []}
    assert config["redis"]["url"] == ""
    assert config["data_dir"] == str(tmp_path / "data")  # what it does use arrives


async def test_a_job_process_runs_where_a_cms_is_configured_with_the_key_it_is_not_sent(serve_with_secrets):
    # The CMS's base_url is valid only with its api_key (or email and password): blanked alone, the
    # config failed its own validation and no job process could start.
    served = serve_with_secrets(
        TASKD_PAYLOAD__BASE_URL="https://cms.example", TASKD_PAYLOAD__API_KEY="secrets-suite-cms-key-5d1"
    )

    done = await served.run("show_what_i_got", {})

    assert done["status"] == "completed", done
    assert "secrets-suite-cms-key-5d1" not in json.dumps(done["result"]["config"])


async def test_a_job_process_home_is_not_the_users_home(serve_with_secrets):
    served = serve_with_secrets()

    done = await served.run("show_what_i_got", {})

    home = done["result"]["environ"]["HOME"]
    assert home != os.environ.get("HOME")
    assert list(Path(home).iterdir()) == []  # no ~/.netrc, ~/.aws or ~/.config to find


# Tool children


async def test_ffmpeg_children_get_no_secret(serve_with_secrets, tmp_path):
    dumps = tmp_path / "dumps"
    spy = _spy(tmp_path / "bin" / "ffmpeg-spy", dumps, imageio_ffmpeg.get_ffmpeg_exe())
    served = serve_with_secrets(IMAGEIO_FFMPEG_EXE=str(spy))
    title_card = {"scene_description": "Rain on the alley", "duration": 1, "fps": 5, "resolution": "160x120"}

    done = await served.run("generate_video", title_card)

    assert done["status"] == "completed", done
    seen = [path.read_text() for path in dumps.iterdir()]
    assert seen, "ffmpeg never ran"
    for environ in seen:
        assert _leaks(environ, served.secrets) == []
        assert "TASKD_" not in environ


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)"
)
async def test_espeak_children_get_no_secret(serve_with_secrets, tmp_path):
    dumps = tmp_path / "dumps"
    real = shutil.which("espeak-ng")
    assert real is not None
    spy = _spy(tmp_path / "bin" / "espeak-ng", dumps, real)
    served = serve_with_secrets(PATH=f"{spy.parent}{os.pathsep}{os.environ['PATH']}")

    done = await served.run("generate_character_voice", {"text": "Rain again.", "output_format": "wav"})

    assert done["status"] == "completed", done
    seen = [path.read_text() for path in dumps.glob("espeak-ng.*.env")]
    assert seen, "espeak-ng never ran"
    for environ in seen:
        assert _leaks(environ, served.secrets) == []
        assert "TASKD_" not in environ


# Logs and task errors


async def test_a_provider_error_quoting_secrets_reaches_neither_the_task_nor_the_log(
    serve_with_secrets, fake_llm
):
    served = serve_with_secrets()
    # Kept short: the provider's message is cut at 300 characters, and a cut secret is no longer one.
    quoted = f"Bearer {PROVIDER_KEYS['LLM']} for key {ADMIN_KEY}, {SCOPED_KEY}, redis {served.secrets['redis password']}"
    fake_llm.fail(401, f"Incorrect API key provided: {quoted}")

    failed = await served.run("test_prompt", TASK_DATA["test_prompt"])

    assert failed["status"] == "failed", failed
    assert "Incorrect API key provided" in failed["error"]  # the provider's reason still reaches the caller
    assert _leaks(json.dumps(failed), served.secrets) == []
    assert _leaks(served.log(), served.secrets) == []


async def test_a_provider_error_quoting_the_basic_credentials_of_its_url_reaches_neither_the_task_nor_the_log(
    serve_with_secrets, fake_llm
):
    # The provider's credentials in its base URL: aiohttp sends them as `Authorization: Basic
    # base64(user:password)`, which a provider (or a gateway before it) may quote in an error.
    password = "llm-url-password-4d2a"
    basic = base64.b64encode(f"llm-user:{password}".encode()).decode()
    served = serve_with_secrets(
        TASKD_PROVIDERS__LLM__BASE_URL=fake_llm.base_url.replace("://", f"://llm-user:{password}@"),
        TASKD_PROVIDERS__LLM__API_KEY="",
    )
    fake_llm.fail(401, f"Invalid credentials in Authorization: Basic {basic}")

    failed = await served.run("test_prompt", TASK_DATA["test_prompt"])

    assert failed["status"] == "failed", failed
    assert "Invalid credentials" in failed["error"]
    secrets = {**served.secrets, "url password": password, "basic credentials": basic}
    assert _leaks(json.dumps(failed), secrets) == []
    assert _leaks(served.log(), secrets) == []


async def test_a_provider_error_quoting_the_decoded_password_of_its_url_reaches_neither_the_task_nor_the_log(
    serve_with_secrets, fake_llm
):
    # A password with `@` or `:` is percent-encoded in the URL; the provider gets it decoded (in the
    # Basic credentials) and quotes it so.
    password = "llm-p@ss:4d2a"
    encoded = "llm-p%40ss%3A4d2a"
    served = serve_with_secrets(
        TASKD_PROVIDERS__LLM__BASE_URL=fake_llm.base_url.replace("://", f"://llm-user:{encoded}@"),
        TASKD_PROVIDERS__LLM__API_KEY="",
    )
    fake_llm.fail(401, f"Invalid credentials: wrong password {password} for llm-user")

    failed = await served.run("test_prompt", TASK_DATA["test_prompt"])

    assert failed["status"] == "failed", failed
    assert "Invalid credentials" in failed["error"]
    secrets = {**served.secrets, "url password": password}
    assert _leaks(json.dumps(failed), secrets) == []
    assert _leaks(served.log(), secrets) == []


# The generated API key


def _serve_once(data_dir: Path, root: Path, *options: str) -> tuple[str, str]:
    """Start and stop a `taskd serve --no-worker` without a configured key; what it printed and logged."""
    log_path = root / f"serve-{len(list(root.glob('serve-*.log')))}.log"
    proc, head = _start(["serve", "--no-worker", *options], _base_env(data_dir), root, log_path)
    return head + _stop(proc), log_path.read_text()


def _serve_once_on_a_terminal(data_dir: Path, root: Path) -> tuple[str, str]:
    """`_serve_once` with stdout on a pseudo-terminal, as when started from a shell."""
    log_path = root / "serve-terminal.log"
    primary, secondary = pty.openpty()
    args = [sys.executable, "-m", "taskd", "--log-format", "json", "serve", "--no-worker"]
    with log_path.open("a") as log:
        proc = subprocess.Popen(args, env=_base_env(data_dir), cwd=root, stdout=secondary, stderr=log)
    os.close(secondary)
    printed = b""
    try:
        # The key's line comes after the one saying where it listens; then it is stopped, and the
        # terminal read to its end (EIO once the last writer closed it).
        while not re.search(rb"API key[^\n]*\n", printed):
            assert select.select([primary], [], [], 60)[0], f"taskd did not start: {log_path.read_text()}"
            printed += os.read(primary, 4096)
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(OSError):
            while chunk := os.read(primary, 4096):
                printed += chunk
        proc.wait(30)
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()
    return printed.decode(), log_path.read_text()


def test_the_generated_key_is_printed_once_on_the_terminal_when_made(tmp_path):
    printed, logged = _serve_once_on_a_terminal(tmp_path / "data", tmp_path)

    key = (tmp_path / "data" / "api_key").read_text().strip()
    assert printed.count(key) == 1
    assert key not in logged


def test_a_new_key_is_not_printed_when_stdout_is_not_a_terminal(tmp_path):
    # Under systemd stdout is the journal; in a container, its log.
    printed, logged = _serve_once(tmp_path / "data", tmp_path)

    key = (tmp_path / "data" / "api_key").read_text().strip()
    assert (
        f"API key (made by taskd, not printed: stdout is not a terminal): in {tmp_path / 'data' / 'api_key'}"
        in printed
    )
    assert key not in printed and key not in logged


def test_print_key_prints_a_new_key_once_where_stdout_is_not_a_terminal(tmp_path):
    # `make run` asks for it: its first start shows the key even when its output is piped.
    printed, logged = _serve_once(tmp_path / "data", tmp_path, "--print-key")

    key = (tmp_path / "data" / "api_key").read_text().strip()
    assert f"API key (made by taskd, kept in {tmp_path / 'data' / 'api_key'}): {key}" in printed
    assert printed.count(key) == 1
    assert key not in logged


def test_a_later_start_names_the_key_file_without_printing_the_key(tmp_path):
    _serve_once(tmp_path / "data", tmp_path)
    key = (tmp_path / "data" / "api_key").read_text().strip()

    printed, logged = _serve_once(tmp_path / "data", tmp_path)

    assert f"API key: in {tmp_path / 'data' / 'api_key'}" in printed
    assert key not in printed
    assert key not in logged


async def test_the_embedded_valkey_is_started_without_taskds_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKD_AUTH__API_KEYS", ADMIN_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", FOREIGN["OPENAI_API_KEY"])

    async with EmbeddedValkey(tmp_path) as valkey:
        assert valkey.pid is not None
        seen = psutil.Process(valkey.pid).environ()

    assert not [name for name in seen if name.startswith("TASKD_")]
    assert _leaks(json.dumps(seen), {"admin key": ADMIN_KEY, **FOREIGN}) == []


def test_a_secret_at_the_cut_of_a_long_provider_message_is_masked_whole():
    # The secret straddles the 300-character cut: masked first, no prefix of it survives.
    message = "x" * 290 + " " + PROVIDER_KEYS["LLM"]

    detail = error_detail(orjson.dumps({"error": {"message": message}}), PROVIDER_KEYS["LLM"])

    assert PROVIDER_KEYS["LLM"][:8] not in detail
