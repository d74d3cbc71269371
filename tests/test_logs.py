"""Logs: JSON lines (or text on a TTY) carrying the task's ids, and no secret in any line."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import attrs
import childproc
import orjson
import pytest
from conftest import API_KEY, TERMINAL
from examples import TASK_DATA
from fake_openai import FakeOpenAI

from taskd import logs
from taskd.config import (
    Config,
    GpuConfig,
    LlmProvider,
    ProvidersConfig,
    RedisConfig,
    TasksConfig,
    VideoProvider,
    WebhooksConfig,
)


@pytest.fixture
def captured() -> tuple[logging.Logger, io.StringIO]:
    """A logger whose lines go, as JSON, to a string buffer."""
    stream = io.StringIO()
    logger = logging.getLogger(f"test.logs.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(logs.make_handler("json", stream))
    return logger, stream


def lines(stream: io.StringIO) -> list[dict]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_has_time_level_logger_message_and_extra_fields(captured):
    logger, stream = captured

    logger.warning("Webhook request failed", extra={"callback_url": "https://example.com/hook", "attempt": 2})

    (line,) = lines(stream)
    assert line["level"] == "WARNING" and line["logger"] == logger.name
    assert line["message"] == "Webhook request failed"
    assert line["callback_url"] == "https://example.com/hook" and line["attempt"] == 2
    assert line["ts"].endswith("Z")


def test_lines_inside_a_task_context_carry_the_task_ids(captured):
    logger, stream = captured

    with logs.task_context("t-1", "proj-1", "generate_video"):
        logger.info("rendering")
    logger.info("idle")

    inside, outside = lines(stream)
    assert {k: inside[k] for k in ("task_id", "project_id", "task_type")} == {
        "task_id": "t-1",
        "project_id": "proj-1",
        "task_type": "generate_video",
    }
    assert "task_id" not in outside


async def test_the_task_context_reaches_coroutines_started_inside_it(captured):
    logger, stream = captured

    async def handler() -> None:
        await asyncio.sleep(0)
        logger.info("inside the handler")

    with logs.task_context("t-2", "proj-2", "test_prompt"):
        job = asyncio.create_task(handler())
    await job

    assert lines(stream)[0]["task_id"] == "t-2"


def test_exceptions_are_one_json_line_with_the_traceback(captured):
    logger, stream = captured

    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("handler crashed")

    (line,) = lines(stream)
    assert "ValueError: boom" in line["exc_info"]


def test_text_lines_put_extra_fields_after_the_message():
    stream = io.StringIO()
    record = logging.LogRecord(
        "taskd.webhooks", logging.INFO, __file__, 1, "Webhook sent successfully", None, None
    )
    record.status_code = 200
    record.task_id = "abc123"

    text = logs.make_handler("text", stream).format(record)

    assert text.endswith(" INFO taskd.webhooks: Webhook sent successfully status_code=200 task_id=abc123")


def test_text_lines_show_a_callers_control_characters_escaped_and_stay_one_line():
    stream = io.StringIO()
    hostile = "boom\r\x1b[2J\n2026-01-01T00:00:00.000Z INFO taskd: all is well\x00"
    record = logging.LogRecord(
        "taskd.engine", logging.WARNING, __file__, 1, "task %s failed: %s", ("t1", hostile), None
    )
    record.error = hostile

    text = logs.make_handler("text", stream).format(record)

    assert "\n" not in text and not any(char in text for char in "\r\x1b\x00")
    escaped = "boom\\x0d\\x1b[2J\\x0a2026-01-01T00:00:00.000Z INFO taskd: all is well\\x00"
    assert text.endswith(f"task t1 failed: {escaped} error={escaped}")


def test_text_lines_write_out_what_would_reorder_or_hide_the_fields_after_a_callers_text():
    stream = io.StringIO()
    hostile = "boom\u202e\u2066\u200b\u2028"
    record = logging.LogRecord(
        "taskd.engine", logging.WARNING, __file__, 1, "task failed: %s", (hostile,), None
    )

    text = logs.make_handler("text", stream).format(record)

    assert text.endswith("task failed: boom\\u202e\\u2066\\u200b\\u2028")


def test_text_lines_write_out_the_arabic_letter_mark_and_the_characters_that_spell_hidden_text():
    stream = io.StringIO()
    hostile = "ok\u061c1.2\U000e0069\U000e0067\ufff9note\ufffb"
    record = logging.LogRecord(
        "taskd.engine", logging.WARNING, __file__, 1, "task failed: %s", (hostile,), None
    )

    text = logs.make_handler("text", stream).format(record)

    assert text.endswith("task failed: ok\\u061c1.2\\U000e0069\\U000e0067\\ufff9note\\ufffb")


def test_json_lines_write_out_a_callers_line_separators_and_c1_controls_and_stay_one_line(captured):
    logger, stream = captured
    hostile = 'boom\u2028{"level": "INFO"}\x85\u2029\x9b2J\u202e\u061c\U000e0041'

    logger.warning("task failed: %s", hostile, extra={"error": hostile})

    text = stream.getvalue()
    assert len(text.splitlines()) == 1
    assert not any(char in text for char in "\u2028\x85\u2029\x9b\u202e\u061c\U000e0041")
    (line,) = lines(stream)
    assert line["message"] == f"task failed: {hostile}" and line["error"] == hostile


def test_a_json_line_with_a_lone_surrogate_is_written_with_it_escaped_and_its_secrets_masked(monkeypatch):
    # A file name that is not UTF-8, as os.listdir gives it; orjson refuses the str, and logging's
    # report of the failure printed the message as it was, secret included. Formatted here rather
    # than logged: pytest's own capture of such a record cannot cross to pytest-xdist's controller.
    redactor = logs.Redactor()
    redactor.add("surrogate-suite-secret-41c")
    monkeypatch.setattr(logs, "REDACTOR", redactor)
    arguments = ("/media/bad\udcff.mp4", "surrogate-suite-secret-41c")
    record = logging.LogRecord(
        "taskd.media", logging.WARNING, __file__, 1, "cannot remove %s (%s)", arguments, None
    )

    line = orjson.loads(logs.JsonFormatter().format(record))

    assert line["message"] == "cannot remove /media/bad\\udcff.mp4 (***)"


def test_auto_is_text_on_a_terminal_and_json_elsewhere():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert logs.resolve_format("auto", Terminal()) == "text"
    assert logs.resolve_format("auto", io.StringIO()) == "json"
    assert logs.resolve_format("text", io.StringIO()) == "text"


def test_redaction_masks_secrets_url_passwords_and_bearer_tokens():
    redactor = logs.Redactor()
    redactor.add("sk-live-0123456789", "", "abc")

    text = redactor.redact(
        "key sk-live-0123456789 url redis://:s3cretpass@10.0.0.5:6379/0 "
        "proxy http://user:pw12345@proxy:3128 header Authorization: Bearer eyJhbGciOi.x.y"
    )

    assert text == (
        "key *** url redis://:***@10.0.0.5:6379/0 proxy http://user:***@proxy:3128 header Authorization: Bearer ***"
    )


def test_redaction_masks_the_credential_query_values_of_any_url_in_the_text():
    # A caller's presigned input, named by a task's error and the line that logs it.
    text = logs.Redactor().redact(
        "Track https://bucket.s3.example/a.wav?X-Amz-Credential=AKIA%2F20261205&X-Amz-Signature=9f3c"
        "&x-id=GetObject is not a supported audio file; url='http://[::1]:8080/hook?token=t0k3n'"
    )

    assert text == (
        "Track https://bucket.s3.example/a.wav?X-Amz-Credential=***&X-Amz-Signature=***"
        "&x-id=GetObject is not a supported audio file; url='http://[::1]:8080/hook?token=***'"
    )


def test_redaction_reads_a_megabyte_of_url_like_text_in_linear_time():
    # A caller's task error is masked before it is cut short; each "a://" could start a URL.
    started = time.monotonic()

    text = logs.Redactor().redact("a://" * 250_000 + "?token=t0k3n")

    assert text.endswith("a://?token=***")
    assert time.monotonic() - started < 2


def test_at_debug_no_line_carries_the_signature_of_a_url_that_botocore_presigns():
    # A child process: the test's own logging stays as it is.
    script = (
        "import logging, boto3, botocore.config\n"
        "from taskd import logs\n"
        "logs.configure('json', 'DEBUG')\n"
        "logging.getLogger('taskd').debug('debug is on')\n"
        "client = boto3.client('s3', endpoint_url='http://127.0.0.1:9', region_name='us-east-1',\n"
        "    aws_access_key_id='AKIATEST', aws_secret_access_key='secret-key-1',\n"
        "    config=botocore.config.Config(signature_version='s3v4'))\n"
        "print(client.generate_presigned_url('get_object', Params={'Bucket': 'b', 'Key': 'p1/x.png'}))\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )

    signature = parse_qs(urlsplit(result.stdout.strip()).query)["X-Amz-Signature"][0]
    assert "debug is on" in result.stderr
    assert signature not in result.stderr


def test_every_secret_in_the_config_is_found():
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef").decode()
    config = attrs.evolve(
        Config(),
        redis=RedisConfig(url="redis://:redis-pass-1@db:6379/0"),
        providers=ProvidersConfig(llm=LlmProvider(api_key="sk-provider-1")),
        webhooks=WebhooksConfig(secret=secret),
    )
    config = attrs.evolve(config, auth=attrs.evolve(config.auth, api_keys=["key-one-1", "key-two-2"]))

    found = set(logs.secrets_of(config))

    assert {"redis-pass-1", "sk-provider-1", secret, "key-one-1", "key-two-2"} <= found


def test_a_credential_in_a_url_query_of_the_config_is_found():
    base_url = "https://llm.example/v1?api-version=2024&api-key=sk-query-1&X-Amz-Signature=sig%2Fquery-2"
    config = attrs.evolve(Config(), providers=ProvidersConfig(llm=LlmProvider(base_url=base_url)))

    found = set(logs.secrets_of(config))

    assert {"sk-query-1", "sig%2Fquery-2", "sig/query-2"} <= found
    assert "2024" not in found  # api-version names no credential


def test_a_value_under_a_table_key_named_like_a_secret_is_found():
    video = VideoProvider(extra_input={"api_key": "replicate-extra-1", "aspect_ratio": "16:9"})
    config = attrs.evolve(Config(), providers=ProvidersConfig(video=video))

    found = set(logs.secrets_of(config))

    assert "replicate-extra-1" in found and "16:9" not in found


def test_the_settings_of_a_task_type_named_like_a_secret_are_not_found():
    # A plugin's type may be called refresh_token: its queue masked would be *** in every line.
    config = attrs.evolve(
        Config(),
        tasks=TasksConfig(routes={"refresh_token": "gpu_heavy"}),
        gpu=GpuConfig(task_needs={"sign_key": "device"}),
    )

    found = set(logs.secrets_of(config))

    assert "gpu_heavy" not in found and "device" not in found


async def _run_task(session: aiohttp.ClientSession, base_url: str, key: str, body: dict) -> dict:
    headers = {"X-API-Key": key}
    async with session.post(f"{base_url}/api/v1/tasks/submit", json=body, headers=headers) as response:
        accepted = await response.json()
        assert response.status == 200, accepted
    async with asyncio.timeout(20):
        while True:
            async with session.get(
                f"{base_url}/api/v1/tasks/{accepted['task_id']}/status", headers=headers
            ) as r:
                status = await r.json()
            if status["status"] in TERMINAL:
                return status
            await asyncio.sleep(0.05)


async def _serve_and_exercise(
    tmp_path: Path, env: dict[str, str], fake_llm: FakeOpenAI, key: str
) -> tuple[str, list]:
    stderr = tmp_path / "stderr.log"
    proc = childproc.start(["--log-format", "json", "--log-level", "DEBUG", "serve"], env, tmp_path, stderr)
    try:
        base_url = childproc.wait_listening(proc)
        async with aiohttp.ClientSession() as session:
            done = await _run_task(
                session,
                base_url,
                key,
                {"project_id": "logs", "task_type": "test_prompt", "task_data": TASK_DATA["test_prompt"]},
            )
            fake_llm.fail(401, f"Incorrect API key provided: {env['TASKD_PROVIDERS__LLM__API_KEY']}")
            failed = await _run_task(
                session,
                base_url,
                key,
                {
                    "project_id": "logs",
                    "task_type": "test_prompt",
                    "task_data": TASK_DATA["test_prompt"],
                    "callback_url": "http://127.0.0.1:9/hook",
                },
            )
            async with session.get(f"{base_url}/api/v1/health", headers={"X-API-Key": key + "-wrong"}) as r:
                assert r.status == 401
            await asyncio.sleep(0.5)  # let the webhook attempt be logged
    finally:
        childproc.stop(proc)
    assert done["status"] == "completed" and failed["status"] == "failed"
    return stderr.read_text(), [done, failed]


async def test_no_secret_appears_in_any_log_line(tmp_path, fake_llm, valkey_url):
    secrets = {
        "api key": "api-key-never-logged-4f1c",
        "provider key": "sk-provider-never-logged-93ab",
        "webhook secret": "whsec_" + base64.b64encode(b"never-logged-webhook-key").decode(),
        "redis password": valkey_url.split("://:", 1)[1].split("@", 1)[0],
    }
    env = childproc.taskd_env(
        tmp_path / "data",
        TASKD_REDIS__URL=valkey_url,
        TASKD_AUTH__API_KEYS=secrets["api key"],
        TASKD_PROVIDERS__LLM__BASE_URL=fake_llm.base_url,
        TASKD_PROVIDERS__LLM__API_KEY=secrets["provider key"],
        TASKD_PROVIDERS__LLM__MODEL="test-model",
        TASKD_WEBHOOKS__SECRET=secrets["webhook secret"],
        TASKD_WEBHOOKS__ALLOW_PRIVATE="true",
        TASKD_RETRY__MAX_RETRIES="0",
    )

    output, _ = await _serve_and_exercise(tmp_path, env, fake_llm, secrets["api key"])

    assert "Incorrect API key provided: ***" in output  # the provider's error was logged, masked
    for what, secret in secrets.items():
        assert secret not in output, f"the {what} appears in the log"


async def test_a_served_taskd_logs_json_lines_carrying_the_task_ids(tmp_path, fake_llm, valkey_url):
    env = childproc.taskd_env(
        tmp_path / "data",
        TASKD_REDIS__URL=valkey_url,
        TASKD_AUTH__API_KEYS=API_KEY,
        TASKD_PROVIDERS__LLM__BASE_URL=fake_llm.base_url,
        TASKD_PROVIDERS__LLM__API_KEY="sk-test",
        TASKD_WEBHOOKS__ALLOW_PRIVATE="true",
        TASKD_RETRY__MAX_RETRIES="0",
    )

    output, (done, _) = await _serve_and_exercise(tmp_path, env, fake_llm, API_KEY)

    parsed = [orjson.loads(line) for line in output.splitlines() if line.strip()]
    submitted = [
        line for line in parsed if line["message"] == "task submitted" and line["task_id"] == done["task_id"]
    ]
    assert submitted and submitted[0]["project_id"] == "logs" and submitted[0]["task_type"] == "test_prompt"


async def test_every_line_that_names_a_task_carries_its_ids(tmp_path, fake_llm, valkey_url):
    env = childproc.taskd_env(
        tmp_path / "data",
        TASKD_REDIS__URL=valkey_url,
        TASKD_AUTH__API_KEYS=API_KEY,
        TASKD_PROVIDERS__LLM__BASE_URL=fake_llm.base_url,
        TASKD_PROVIDERS__LLM__API_KEY="sk-test",
        TASKD_WEBHOOKS__ALLOW_PRIVATE="true",
        TASKD_RETRY__MAX_RETRIES="0",
    )

    output, tasks = await _serve_and_exercise(tmp_path, env, fake_llm, API_KEY)

    parsed = [orjson.loads(line) for line in output.splitlines() if line.strip()]
    for task in tasks:
        # arq's own lines are logged before taskd's job function runs; only taskd's are checked.
        about = [
            line
            for line in parsed
            if task["task_id"] in line["message"] and line["logger"].startswith("taskd")
        ]
        assert about, f"nothing logged about {task['task_id']}"
        for line in about:
            assert (line.get("task_id"), line.get("project_id"), line.get("task_type")) == (
                task["task_id"],
                "logs",
                "test_prompt",
            ), line
