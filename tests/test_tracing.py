"""Tracing with OpenTelemetry: one trace from the HTTP submit on an API node, through the run on a
separate worker process and its provider call, to the webhook POST and the receiver's `traceparent`."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from conftest import API_KEY, TERMINAL, child_env
from examples import TASK_DATA
from otlp_collector import OtlpCollector, ReceivedSpan
from test_webhooks_connections import answering, scripted

from taskd import keys, logs, tracing
from taskd.config import WebhooksConfig


@pytest.fixture
async def collector():
    async with OtlpCollector() as server:
        yield server


def _traced_env(data_dir: Path, collector: OtlpCollector, service: str, **extra: str) -> dict[str, str]:
    return child_env(
        data_dir,
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_SERVICE_NAME=service,
        # Export within a tenth of a second rather than the default five.
        OTEL_BSP_SCHEDULE_DELAY="100",
        TASKD_NETWORK__ALLOW_PRIVATE="true",
        **extra,
    )


async def _submit_and_wait(base_url: str, body: dict[str, object]) -> dict[str, object]:
    headers = {"X-API-Key": API_KEY}
    async with aiohttp.ClientSession(base_url, headers=headers) as session:
        async with session.post("/api/v1/tasks/submit", json=body) as response:
            assert response.status == 200, await response.text()
            task_id = (await response.json())["task_id"]
        async with asyncio.timeout(30):
            while True:
                async with session.get(f"/api/v1/tasks/{task_id}/status") as response:
                    status = await response.json()
                if status["status"] in TERMINAL:
                    return status
                await asyncio.sleep(0.05)


def _one(spans: list[ReceivedSpan], **match: object) -> ReceivedSpan:
    found = [span for span in spans if all(getattr(span, name) == value for name, value in match.items())]
    assert len(found) == 1, (match, spans)
    return found[0]


def _traceparent_ids(header: str) -> tuple[str, str]:
    version, trace_id, span_id, _flags = header.split("-")
    assert version == "00"
    return trace_id, span_id


async def test_submit_run_provider_call_and_webhook_form_one_trace_across_processes(
    spawn_taskd, tmp_path, collector, fake_llm, receiver
):
    data_dir = tmp_path / "data"
    api = spawn_taskd("serve", "--no-worker", env=_traced_env(data_dir, collector, "taskd-api"))
    spawn_taskd(
        "worker",
        env=_traced_env(
            data_dir, collector, "taskd-worker", TASKD_PROVIDERS__LLM__BASE_URL=fake_llm.base_url
        ),
        wait_listening=False,
    )
    assert api.base_url is not None

    status = await _submit_and_wait(
        api.base_url,
        {
            "project_id": "traced",
            "task_type": "test_prompt",
            "task_data": TASK_DATA["test_prompt"],
            # A receiver's token in the query: it must not be copied into the trace.
            "callback_url": receiver.url("/hook?token=receiver-secret"),
        },
    )
    [webhook] = await receiver.wait_for(1)
    await collector.wait_for(
        lambda spans: (
            {"run test_prompt", "webhook completed"} <= {span.name for span in spans}
            and sum(span.kind == "client" for span in spans) >= 2
        )
    )

    spans = collector.spans
    submit = _one(spans, name="POST /api/v1/tasks/submit")
    run = _one(spans, name="run test_prompt")
    provider_call = _one(spans, kind="client", parent_span_id=run.span_id)
    delivery = _one(spans, name="webhook completed")
    post = _one(spans, kind="client", parent_span_id=delivery.span_id)
    assert status["status"] == "completed"
    assert (submit.service, submit.kind, submit.parent_span_id) == ("taskd-api", "server", "")
    assert (run.service, run.kind, run.trace_id, run.parent_span_id) == (
        "taskd-worker",
        "consumer",
        submit.trace_id,
        submit.span_id,
    )
    assert run.attributes == {
        tracing.TASK_ID: status["task_id"],
        tracing.TASK_TYPE: "test_prompt",
        tracing.PROJECT_ID: "traced",
        tracing.QUEUE: "default",
        tracing.ATTEMPT: 1,
        tracing.OUTCOME: "completed",
    }
    assert provider_call.trace_id == submit.trace_id
    assert provider_call.attributes["http.url"] == f"{fake_llm.base_url}/chat/completions"
    assert _traceparent_ids(fake_llm.requests[-1].headers["traceparent"]) == (
        submit.trace_id,
        provider_call.span_id,
    )
    assert (delivery.trace_id, delivery.parent_span_id) == (submit.trace_id, submit.span_id)
    assert _traceparent_ids(webhook.headers["traceparent"]) == (submit.trace_id, post.span_id)
    assert post.attributes["http.url"] == receiver.url("/hook")
    assert not any("receiver-secret" in str(span.attributes) for span in spans)


async def test_a_task_submitted_with_tracing_off_keeps_no_trace_context(taskd, redis):
    submitted = await taskd.submit("test_prompt", TASK_DATA["test_prompt"])

    stored = await redis.hgetall(keys.task(submitted["task_id"]))

    assert b"task_id" in stored
    assert b"trace_context" not in stored


async def test_with_tracing_off_no_opentelemetry_module_is_imported(
    spawn_taskd, tmp_path, fake_llm, receiver
):
    # A package named opentelemetry ahead of the installed one, which fails when imported: a task
    # submitted, run and reported by webhook proves that nothing on that path imports it.
    shadow = tmp_path / "shadow"
    (shadow / "opentelemetry").mkdir(parents=True)
    (shadow / "opentelemetry" / "__init__.py").write_text(
        "raise ImportError('opentelemetry imported while tracing is off')\n"
    )
    pythonpath = os.pathsep.join([str(shadow), os.environ["PYTHONPATH"]])
    node = spawn_taskd(
        "serve",
        env=child_env(
            tmp_path / "data",
            PYTHONPATH=pythonpath,
            TASKD_NETWORK__ALLOW_PRIVATE="true",
            TASKD_PROVIDERS__LLM__BASE_URL=fake_llm.base_url,
        ),
    )
    assert node.base_url is not None

    status = await _submit_and_wait(
        node.base_url,
        {
            "project_id": "untraced",
            "task_type": "test_prompt",
            "task_data": TASK_DATA["test_prompt"],
            "callback_url": receiver.url(),
        },
    )
    [webhook] = await receiver.wait_for(1)

    assert status["status"] == "completed"
    assert "traceparent" not in webhook.headers


def test_an_exporter_taskd_does_not_ship_stops_start_up_with_one_line(tmp_path):
    env = {**os.environ, **child_env(tmp_path / "data"), "OTEL_TRACES_EXPORTER": "zipkin"}

    result = subprocess.run(
        [sys.executable, "-m", "taskd", "serve"], env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "taskd: OTEL_TRACES_EXPORTER='zipkin': taskd exports traces with one of otlp, console"
    ]


def test_an_attribute_length_limit_that_is_not_a_number_stops_start_up_with_one_line(tmp_path):
    env = {
        **os.environ,
        **child_env(tmp_path / "data"),
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "32k",
    }

    result = subprocess.run(
        [sys.executable, "-m", "taskd", "serve"], env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "taskd: OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT must be a non-negative integer but got 32k"
    ]


async def _submit_span_with_headers(
    spawn_taskd, tmp_path: Path, collector: OtlpCollector, headers: dict[str, str]
) -> tuple[int, ReceivedSpan]:
    api = spawn_taskd("serve", "--no-worker", env=_traced_env(tmp_path / "data", collector, "taskd-api"))
    body = {"project_id": "traced", "task_type": "test_prompt", "task_data": TASK_DATA["test_prompt"]}
    async with (
        aiohttp.ClientSession(api.base_url, headers={"X-API-Key": API_KEY, **headers}) as session,
        session.post("/api/v1/tasks/submit", json=body) as response,
    ):
        status = response.status
    await collector.wait_for(lambda spans: any(span.kind == "server" for span in spans))
    return status, _one(collector.spans, name="POST /api/v1/tasks/submit")


async def test_the_callers_traceparent_makes_the_submit_span_its_child(spawn_taskd, tmp_path, collector):
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"

    status, submit = await _submit_span_with_headers(
        spawn_taskd, tmp_path, collector, {"traceparent": f"00-{caller_trace}-{caller_span}-01"}
    )

    assert status == 200
    assert (submit.trace_id, submit.parent_span_id) == (caller_trace, caller_span)


async def test_a_malformed_traceparent_from_the_caller_starts_a_new_trace(spawn_taskd, tmp_path, collector):
    status, submit = await _submit_span_with_headers(
        spawn_taskd,
        tmp_path,
        collector,
        {"traceparent": "00-not-a-trace-01", "tracestate": "x" * 4000},
    )

    assert status == 200
    assert submit.parent_span_id == ""
    assert len(submit.trace_id) == 32 and submit.trace_id != "0" * 32


async def _headers_sent_on(
    spawn_taskd,
    tmp_path: Path,
    collector: OtlpCollector,
    fake_llm,
    receiver,
    headers: dict[str, str],
    **env: str,
) -> tuple[dict[str, str], dict[str, str]]:
    """The headers of the provider call and of the webhook of a task submitted with `headers`."""
    node = spawn_taskd(
        "serve",
        env=_traced_env(
            tmp_path / "data", collector, "taskd", TASKD_PROVIDERS__LLM__BASE_URL=fake_llm.base_url, **env
        ),
    )
    body = {
        "project_id": "traced",
        "task_type": "test_prompt",
        "task_data": TASK_DATA["test_prompt"],
        "callback_url": receiver.url("/hook"),
    }
    async with (
        aiohttp.ClientSession(node.base_url, headers={"X-API-Key": API_KEY, **headers}) as session,
        session.post("/api/v1/tasks/submit", json=body) as response,
    ):
        assert response.status == 200, await response.text()
    [webhook] = await receiver.wait_for(1)
    return dict(fake_llm.requests[-1].headers), dict(webhook.headers)


@pytest.mark.parametrize(
    ("sampler", "ratio"),
    [
        # A ratio of 0 samples nothing; the trace id is the lowest, which a ratio sampler keeps first.
        ("parentbased_traceidratio", "0"),
        # The ratio keeps the trace ids whose low 64 bits are under 18: the caller's one, and (almost)
        # no random id the submit's decision is drawn on. Decided again on the trace id, the run and
        # the webhook were kept under a submit that was not.
        ("traceidratio", "1e-18"),
    ],
)
async def test_a_callers_sampled_flag_does_not_force_a_trace_the_sampler_drops(
    spawn_taskd, tmp_path, collector, fake_llm, receiver, sampler, ratio
):
    caller_trace = "00000000000000000000000000000001"

    provider_call, webhook = await _headers_sent_on(
        spawn_taskd,
        tmp_path,
        collector,
        fake_llm,
        receiver,
        {"traceparent": f"00-{caller_trace}-00f067aa0ba902b7-01"},
        OTEL_TRACES_SAMPLER=sampler,
        OTEL_TRACES_SAMPLER_ARG=ratio,
    )

    assert provider_call["traceparent"].startswith(f"00-{caller_trace}-")
    assert provider_call["traceparent"].endswith("-00")
    assert webhook["traceparent"].endswith("-00")


async def test_a_callers_unsampled_flag_does_not_hide_the_tasks_trace(
    spawn_taskd, tmp_path, collector, fake_llm, receiver
):
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"

    provider_call, webhook = await _headers_sent_on(
        spawn_taskd,
        tmp_path,
        collector,
        fake_llm,
        receiver,
        {"traceparent": f"00-{caller_trace}-00f067aa0ba902b7-00"},
    )
    await collector.wait_for(lambda spans: "run test_prompt" in {span.name for span in spans})

    assert provider_call["traceparent"].endswith("-01")
    assert webhook["traceparent"].endswith("-01")
    assert _one(collector.spans, name="run test_prompt").trace_id == caller_trace


async def test_the_callers_tracestate_and_baggage_reach_neither_providers_nor_webhooks(
    spawn_taskd, tmp_path, collector, fake_llm, receiver
):
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"

    provider_call, webhook = await _headers_sent_on(
        spawn_taskd,
        tmp_path,
        collector,
        fake_llm,
        receiver,
        {
            "traceparent": f"00-{caller_trace}-00f067aa0ba902b7-01",
            "tracestate": "dd=s:2;o:tenant-a,congo=t61rcWkgMzE",
            "baggage": "tenant.secret=hunter2",
        },
    )

    assert provider_call["traceparent"].startswith(f"00-{caller_trace}-")
    assert webhook["traceparent"].startswith(f"00-{caller_trace}-")
    assert {"tracestate", "baggage"}.isdisjoint(name.lower() for name in [*provider_call, *webhook])


async def test_a_tracestate_stored_with_a_task_before_the_upgrade_is_not_sent_on(
    monkeypatch, collector, start_service, redis, fake_llm, receiver
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
    monkeypatch.setattr(tracing, "_provider", None)  # this process's own, put back after the test
    tracing.setup()
    webhooks = WebhooksConfig(allow_private=True)
    api = await start_service(workers=False, llm_url=fake_llm.base_url, webhooks=webhooks)
    submitted = await api.submit("test_prompt", TASK_DATA["test_prompt"], callback_url=receiver.url("/hook"))
    # As taskd up to 94145fd stored it: the submit's context with the caller's `tracestate`.
    stored = orjson.loads(await redis.hget(keys.task(submitted["task_id"]), "trace_context"))
    old = {**stored, "tracestate": "dd=s:2;o:tenant-a,congo=t61rcWkgMzE"}
    await redis.hset(keys.task(submitted["task_id"]), "trace_context", orjson.dumps(old))

    await start_service(http=False, llm_url=fake_llm.base_url, webhooks=webhooks)
    [webhook] = await receiver.wait_for(1)

    provider_call = fake_llm.requests[-1].headers
    assert provider_call["traceparent"].split("-")[1] == stored["traceparent"].split("-")[1]
    assert "tracestate" not in provider_call
    assert "tracestate" not in webhook.headers


async def test_a_callers_malformed_tracestate_and_baggage_write_nothing_to_the_log(
    spawn_taskd, tmp_path, collector
):
    # Before any key is checked: one request of anyone's made a warning line of each member.
    log = tmp_path / "taskd.log"
    node = spawn_taskd(
        "serve", "--no-worker", env=_traced_env(tmp_path / "data", collector, "taskd"), stderr=log
    )
    headers = {
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate": "forged log line",
        "baggage": ",".join(["forged log line"] * 180),
    }

    async with (
        aiohttp.ClientSession(node.base_url) as session,
        session.get("/livez", headers=headers) as response,
    ):
        assert response.status == 200
    await collector.wait_for(lambda spans: any(span.kind == "server" for span in spans))
    node.stop()

    assert "forged" not in log.read_text()


async def test_the_run_span_of_a_gpu_task_names_its_device(spawn_taskd, tmp_path, collector):
    node = spawn_taskd(
        "serve",
        env=_traced_env(tmp_path / "data", collector, "taskd", TASKD_GPU__SIMULATE="1"),
    )
    assert node.base_url is not None

    status = await _submit_and_wait(
        node.base_url, {"project_id": "traced", "task_type": "gpu_hold", "task_data": {"seconds": 0}}
    )
    await collector.wait_for(lambda spans: any(span.name == "run gpu_hold" for span in spans))

    run = _one(collector.spans, name="run gpu_hold")
    assert status["status"] == "completed"
    assert (run.attributes[tracing.QUEUE], run.attributes[tracing.DEVICE]) == ("gpu_medium", "0")
    assert run.attributes[tracing.DEVICE] == str(status["result"]["device"])


async def test_a_failed_run_span_carries_its_error_masked_as_the_logs_mask_it(
    spawn_taskd, tmp_path, collector
):
    node = spawn_taskd("serve", env=_traced_env(tmp_path / "data", collector, "taskd"))
    assert node.base_url is not None
    # What a download's error names: a caller's presigned URL, with a password in it too.
    url = "https://reader:url-pass-1@bucket.example/a.wav?X-Amz-Credential=cred-2&X-Amz-Signature=sig-3"

    status = await _submit_and_wait(
        node.base_url,
        {"project_id": "traced", "task_type": "fail", "task_data": {"message": f"Track {url} is not audio"}},
    )
    await collector.wait_for(lambda spans: any(span.name == "run fail" for span in spans))

    run = _one(collector.spans, name="run fail")
    masked = (
        "Track https://reader:***@bucket.example/a.wav?X-Amz-Credential=***&X-Amz-Signature=*** is not audio"
    )
    assert (status["status"], status["error"]) == ("failed", masked)
    assert run.status_message == masked


@contextlib.contextmanager
def _unanswered_listener() -> Iterator[socket.socket]:
    """A listener that accepts no connection: its one-place queue is filled, later SYNs go unanswered."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(listener.getsockname())
            yield listener
        finally:
            for filler in fillers:
                filler.close()


async def test_an_error_recorded_on_a_client_span_has_the_urls_credentials_masked(monkeypatch, collector):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
    monkeypatch.setattr(tracing, "_provider", None)  # this process's own, put back after the test
    tracing.setup()

    # aiohttp's ConnectionTimeoutError names the whole URL, query included.
    with _unanswered_listener() as listener:
        port = listener.getsockname()[1]
        async with aiohttp.ClientSession(trace_configs=tracing.client_trace_configs()) as session:
            with pytest.raises(aiohttp.ConnectionTimeoutError, match="token=receiver-secret"):
                await session.post(
                    f"http://127.0.0.1:{port}/hook?token=receiver-secret",
                    timeout=aiohttp.ClientTimeout(sock_connect=0.2),
                )
    await asyncio.to_thread(tracing.flush)

    [post] = collector.spans
    [(name, exception)] = post.events
    assert (name, post.attributes["http.url"]) == ("exception", f"http://127.0.0.1:{port}/hook")
    assert (
        exception["exception.message"] == f"Connection timeout to host http://127.0.0.1:{port}/hook?token=***"
    )
    assert "receiver-secret" not in str(exception)


async def test_an_error_recorded_on_a_client_span_is_cut_to_the_attribute_limit(monkeypatch, collector):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
    monkeypatch.setattr(tracing, "_provider", None)  # this process's own, put back after the test
    tracing.setup()

    # aiohttp's error for an answer that is not HTTP quotes what it read: here ~100 kB of it.
    async with (
        scripted(answering(b"\x1bgarbage " * 10_000)) as receiver,
        aiohttp.ClientSession(trace_configs=tracing.client_trace_configs()) as session,
    ):
        with pytest.raises(aiohttp.ClientResponseError):
            await session.post(str(receiver.url()), data=b"{}")
    await asyncio.to_thread(tracing.flush)

    [post] = collector.spans
    [(name, exception)] = post.events
    assert name == "exception"
    assert len(str(exception["exception.message"])) == tracing.ATTRIBUTE_MAX_CHARS


async def test_with_tracing_on_a_webhook_connect_may_take_as_long_as_webhooks_timeout(
    monkeypatch, collector, start_service, fake_llm
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
    monkeypatch.setattr(tracing, "_provider", None)  # this process's own, put back after the test
    tracing.setup()  # with tracing on, webhooks go out on aiohttp's client
    # aiohttp's default connect deadline, 30 s, made 0.2 s so that the test need not wait past it.
    monkeypatch.setattr(aiohttp.client, "DEFAULT_TIMEOUT", aiohttp.ClientTimeout(total=300, sock_connect=0.2))
    service = await start_service(
        llm_url=fake_llm.base_url, webhooks=WebhooksConfig(allow_private=True, timeout=10)
    )
    received: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(request.headers["webhook-id"])
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    with _unanswered_listener() as listener:
        try:
            port = listener.getsockname()[1]
            submitted = await service.submit(
                "test_prompt", TASK_DATA["test_prompt"], callback_url=f"http://127.0.0.1:{port}/hook"
            )
            # The POST's SYN goes unanswered; the kernel sends it again a second later (TCP's first
            # retransmission), when a receiver serving the port takes it: a connect of about 1 s.
            await asyncio.sleep(0.5)
            await web.SockSite(runner, listener).start()
            status = await service.wait_for(
                submitted["task_id"], lambda body: bool(body["webhook"] and body["webhook"]["attempts"]), 15
            )
        finally:
            await runner.cleanup()

    assert received == [f"msg_{submitted['task_id']}_completed"]
    assert status["webhook"]["attempts"] == 1 and status["webhook"]["delivered_at"] is not None


def test_a_collector_header_the_sdk_cannot_parse_is_logged_with_its_key_masked(monkeypatch):
    stream = io.StringIO()
    handler = logs.make_handler("json", stream)
    sdk_log = logging.getLogger("opentelemetry.util.re")  # where the SDK says a header is malformed
    sdk_log.addHandler(handler)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    # A backslash is not allowed in a header's value: the SDK drops the header and logs it.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=vendor-key-7f3e\\0")
    monkeypatch.setattr(tracing, "_provider", None)  # this process's own, put back after the test
    try:
        tracing.setup()
    finally:
        sdk_log.removeHandler(handler)

    [line] = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert line["message"].startswith("Header format invalid!")
    assert "vendor-key-7f3e" not in line["message"]
