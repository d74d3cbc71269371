"""The LLM-backed handlers (`test_prompt`, `evaluate_department`, `automated_gather_creation`)
against a real fake OpenAI server."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import cattrs
import orjson
import pytest
from fake_media_apis import BROKEN_STATUS_LINE, NotHttpAPI, OversizedAPI, RedirectingAPI
from fake_openai import FakeOpenAI

from taskd.config import Config, LlmProvider, ProvidersConfig
from taskd.logs import SHORT_MESSAGE_CHARS
from taskd.providers.http import JSON_REPLY_LIMIT
from taskd.providers.llm import OBJECT_SCAN, OBJECT_TRIES, ChatClient, ProviderError
from taskd.tasks.builtin import automated_gather_creation as gather_task
from taskd.tasks.builtin import evaluate_department
from taskd.tasks.builtin import test_prompt as prompt_task
from taskd.tasks.builtin.automated_gather_creation import AutomatedGatherCreationInput
from taskd.tasks.builtin.evaluate_department import EvaluateDepartmentInput, GatherItem
from taskd.tasks.builtin.evaluate_department import PreviousEvaluation as Prev
from taskd.tasks.builtin.test_prompt import TestPromptInput
from taskd.tasks.spec import TaskContext, TaskError
from taskd.validation import FieldErrors, structure_checked

VERDICT = {
    "rating": 85,
    "summary": "Solid story.",
    "issues": ["Thin act three"],
    "suggestions": ["Extend climax"],
    "confidence": 0.9,
}


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


class Progress:
    """Records every progress report a handler makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str | None]] = []

    async def __call__(self, fraction: float, step: str | None) -> None:
        self.calls.append((fraction, step))


def make_ctx(http: aiohttp.ClientSession, base_url: str, timeout: float = 2) -> tuple[TaskContext, Progress]:
    provider = LlmProvider(base_url=base_url, api_key="sk-test", model="test-model", timeout=timeout)
    sink = Progress()
    ctx = TaskContext(
        task_id="t1",
        project_id="p1",
        attempt=1,
        max_attempts=1,
        config=Config(providers=ProvidersConfig(llm=provider)),
        http=http,
        metadata={},
        sink=sink,
    )
    return ctx, sink


def evaluation(**changes: Any) -> EvaluateDepartmentInput:
    fields: dict[str, Any] = {
        "department_slug": "story",
        "department_number": 1,
        "gather_data": [GatherItem("A detective arrives in a coastal town.", "Premise", "Mystery thriller")],
        "previous_evaluations": [Prev("concept", 85, "Strong concept")],
        "threshold": 80,
    }
    fields.update(changes)
    return EvaluateDepartmentInput(**fields)


# test_prompt


async def test_prompt_placeholders_rendered_and_sent(server: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    data = TestPromptInput(
        "Create a character based on: {{ concept }} in a {{genre}}",
        test_parameters={"concept": "mysterious librarian", "genre": "thriller"},
    )
    result = await prompt_task.run(ctx, data)
    expected = "Create a character based on: mysterious librarian in a thriller"
    assert result["rendered_prompt"] == expected
    assert server.requests[0].json["messages"] == [{"role": "user", "content": expected}]
    assert server.requests[0].json["model"] == "test-model"
    assert "response_format" not in server.requests[0].json
    assert result["response"] == expected  # the fake echoes


async def test_prompt_unknown_placeholder_kept_and_listed(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    data = TestPromptInput("{{concept}} / {{ mood }} / {{mood}}", test_parameters={"concept": "x"})
    result = await prompt_task.run(ctx, data)
    assert result["rendered_prompt"] == "x / {{ mood }} / {{mood}}"
    assert result["missing_parameters"] == ["mood"]


async def test_prompt_non_string_parameters_rendered(server: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    parameters = {"n": 3, "tags": ["a"], "meta": {"k": 1}}
    data = TestPromptInput("{{n}} {{tags}} {{meta}}", test_parameters=parameters)
    result = await prompt_task.run(ctx, data)
    assert result["rendered_prompt"] == '3 ["a"] {"k":1}'


def test_prompt_result_estimate_is_the_rendered_prompts_bytes_as_json() -> None:
    # Escapes (quotes, a newline, a control character) and multi-byte text take more bytes than characters.
    parameters = {"a": 'say "hi"\n\x01', "b": "é😀" * 3, "n": 3, "tags": ["x"]}
    template = "{{a}} {{ b }}{{b}} {{n}} {{tags}} {{missing}} ünïcode"
    data = TestPromptInput(template, test_parameters=parameters)

    rendered, _ = prompt_task.render(template, parameters)

    assert prompt_task.result_estimate(data) == len(orjson.dumps(rendered)) - 2


def test_prompt_result_estimate_with_a_parameter_known_only_when_it_runs_is_the_rendered_limit() -> None:
    # A $ref's value, None at submit: it may fill the rendered prompt up to its limit.
    data = TestPromptInput("{{early}} {{later}}", test_parameters={"early": "x", "later": None})

    assert prompt_task.result_estimate(data) == prompt_task.RENDERED_LIMIT


async def test_prompt_bearer_header_sent(server: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    await prompt_task.run(ctx, TestPromptInput("hi"))
    assert server.requests[0].headers["Authorization"] == "Bearer sk-test"
    assert server.requests[0].path == "/v1/chat/completions"


async def test_prompt_over_the_result_limit_fails_before_the_llm_is_asked(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    execution = attrs.evolve(ctx.config.execution, result_max_bytes=2048)
    ctx = attrs.evolve(ctx, config=attrs.evolve(ctx.config, execution=execution))
    data = TestPromptInput("Describe {{ scene }}", test_parameters={"scene": "a harbour " * 300})
    with pytest.raises(TaskError) as caught:
        await prompt_task.run(ctx, data)
    assert str(caught.value) == (
        "The rendered prompt is 3011 bytes as JSON: the result repeats it, and a result may "
        "have at most 2048 bytes (execution.result_max_bytes)"
    )
    assert server.requests == []


async def test_prompt_result_carries_ids_model_and_usage(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    server.reply("A librarian named Ada.", model="gpt-fake-1", usage=(12, 5))
    data = TestPromptInput("hi", prompt_id="p1", agent_type="character_creator", test_result_id="r1")
    result = await prompt_task.run(ctx, data)
    assert result["response"] == "A librarian named Ada."
    assert result["model"] == "gpt-fake-1"
    assert result["usage"] == {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    ids = (result["prompt_id"], result["agent_type"], result["test_result_id"])
    assert ids == ("p1", "character_creator", "r1")
    assert isinstance(result["processing_time"], float)


async def test_prompt_401_raises_non_transient_provider_error(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    server.fail(401, "Incorrect API key provided: sk-test")
    with pytest.raises(ProviderError) as caught:
        await prompt_task.run(ctx, TestPromptInput("hi"))
    assert (caught.value.transient, caught.value.status) == (False, 401)
    assert "sk-test" not in str(caught.value)


async def test_prompt_error_carries_the_message_of_a_vllm_error_body(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    # vLLM's OpenAI-compatible server (before its errors took OpenAI's shape) puts the message at the top.
    ctx, _ = make_ctx(http, server.base_url)
    body = {
        "object": "error",
        "message": "The model `gpt-x` does not exist.",
        "type": "NotFoundError",
        "code": 404,
    }
    server.raw(orjson.dumps(body), status=404)
    with pytest.raises(ProviderError) as caught:
        await prompt_task.run(ctx, TestPromptInput("hi"))
    assert str(caught.value) == "LLM provider returned HTTP 404: The model `gpt-x` does not exist."


async def test_prompt_error_carries_the_invalid_fields_of_a_fastapi_validation_error(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    # A server built on FastAPI answers a request it cannot validate with its own 422 shape.
    ctx, _ = make_ctx(http, server.base_url)
    body = {
        "detail": [
            {"type": "missing", "loc": ["body", "model"], "msg": "Field required", "input": {"a": "b"}},
            {"type": "less_than_equal", "loc": ["body", "temperature"], "msg": "Input should be <= 2"},
        ]
    }
    server.raw(orjson.dumps(body), status=422)
    with pytest.raises(ProviderError) as caught:
        await prompt_task.run(ctx, TestPromptInput("hi"))
    assert str(caught.value) == (
        "LLM provider returned HTTP 422: body.model: Field required; body.temperature: Input should be <= 2"
    )


async def test_prompt_error_carries_the_top_level_message_when_its_error_object_has_none(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    server.raw(orjson.dumps({"error": {"code": 404}, "message": "No such model: gpt-x"}), status=404)
    with pytest.raises(ProviderError) as caught:
        await prompt_task.run(ctx, TestPromptInput("hi"))
    assert str(caught.value) == "LLM provider returned HTTP 404: No such model: gpt-x"


async def test_prompt_503_raises_transient_provider_error(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    server.fail(503)
    with pytest.raises(ProviderError) as caught:
        await prompt_task.run(ctx, TestPromptInput("hi"))
    assert (caught.value.transient, caught.value.status) == (True, 503)


async def test_prompt_429_raises_transient_provider_error(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    server.fail(429)
    with pytest.raises(ProviderError) as caught:
        await prompt_task.run(ctx, TestPromptInput("hi"))
    assert caught.value.transient


async def test_prompt_progress_is_monotone_and_finishes(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, sink = make_ctx(http, server.base_url)
    await prompt_task.run(ctx, TestPromptInput("hi"))
    fractions = [fraction for fraction, _ in sink.calls]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert [step for _, step in sink.calls][:2] == ["rendering_prompt", "calling_llm"]


# ChatClient


async def test_client_timeout_is_transient(server: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    server.hang(5)
    client = ChatClient(LlmProvider(base_url=server.base_url, timeout=0.2), http)
    with pytest.raises(ProviderError) as caught:
        await client.complete([{"role": "user", "content": "hi"}])
    assert caught.value.transient and caught.value.timeout


async def test_client_malformed_reply_is_not_transient(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    server.raw("<html>not json</html>", content_type="text/html")
    client = ChatClient(LlmProvider(base_url=server.base_url + "/"), http)
    with pytest.raises(ProviderError) as caught:
        await client.complete([{"role": "user", "content": "hi"}])
    assert not caught.value.transient and caught.value.status is None


async def test_client_reply_over_the_size_limit_fails_without_being_read_in_full(
    http: aiohttp.ClientSession,
) -> None:
    async with OversizedAPI(b'{"choices": [{"message": {"content": "', 2 * JSON_REPLY_LIMIT) as api:
        client = ChatClient(LlmProvider(base_url=f"{api.url}/v1"), http)
        with pytest.raises(ProviderError) as caught:
            await client.complete([{"role": "user", "content": "hi"}])
    assert str(caught.value) == f"LLM provider sent a reply larger than {JSON_REPLY_LIMIT} bytes"
    assert not caught.value.transient
    assert api.sent < 2 * JSON_REPLY_LIMIT


async def test_client_does_not_follow_a_redirect_of_the_provider(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    # Where the provider points is not the operator's choice: it could be any internal address.
    async with RedirectingAPI(f"{server.base_url}/chat/completions") as provider:
        client = ChatClient(LlmProvider(base_url=f"{provider.url}/v1", api_key="sk-test"), http)
        with pytest.raises(ProviderError) as caught:
            await client.complete([{"role": "user", "content": "hi"}])
    assert (
        str(caught.value) == "LLM provider returned HTTP 307 (taskd does not follow a provider's redirects)"
    )
    assert not caught.value.transient
    assert server.requests == []


async def test_client_connection_refused_is_transient(http: aiohttp.ClientSession) -> None:
    fake = FakeOpenAI()
    await fake.start()
    base_url = fake.base_url
    await fake.stop()
    with pytest.raises(ProviderError) as caught:
        await ChatClient(LlmProvider(base_url=base_url), http).complete([{"role": "user", "content": "hi"}])
    assert caught.value.transient and caught.value.status is None


async def test_client_error_of_a_reply_that_is_not_http_is_one_short_line(
    http: aiohttp.ClientSession,
) -> None:
    # aiohttp's parser error quotes the bytes it could not read: a provider's status line of kilobytes
    # that ends up in the task's error, where another service's message is one line of at most 300.
    async with NotHttpAPI(BROKEN_STATUS_LINE) as api:
        client = ChatClient(LlmProvider(base_url=f"{api.url}/v1"), http)
        with pytest.raises(ProviderError) as caught:
            await client.complete([{"role": "user", "content": "hi"}])
    message = str(caught.value)
    assert message.startswith("LLM provider unreachable: ClientResponseError")
    assert len(message) <= len("LLM provider unreachable: ") + SHORT_MESSAGE_CHARS
    assert "\n" not in message
    assert caught.value.transient


async def test_client_without_api_key_sends_no_authorization(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    client = ChatClient(LlmProvider(base_url=server.base_url), http)
    await client.complete([{"role": "user", "content": "hi"}])
    assert "Authorization" not in server.requests[0].headers


async def test_client_without_base_url_raises_task_error(http: aiohttp.ClientSession) -> None:
    with pytest.raises(TaskError, match="No LLM provider configured"):
        await ChatClient(LlmProvider(), http).complete([{"role": "user", "content": "hi"}])


# evaluate_department


async def test_evaluate_passes_at_threshold(server: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    server.reply(orjson.dumps({**VERDICT, "rating": 80}).decode(), usage=(1000, 500))
    result = await evaluate_department.run(ctx, evaluation(threshold=80))
    assert result["rating"] == 80
    assert result["evaluation_result"] == "pass"
    assert result["evaluation_summary"] == "Solid story."
    assert result["issues"] == ["Thin act three"]
    assert result["suggestions"] == ["Extend climax"]
    assert result["metadata"] == {"model": "test-model", "tokens_used": 1500, "confidence_score": 0.9}
    assert result["department"] == "story"


async def test_evaluate_fails_below_threshold(server: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    server.reply(orjson.dumps({**VERDICT, "rating": 79}).decode())
    result = await evaluate_department.run(ctx, evaluation(threshold=80))
    assert (result["rating"], result["evaluation_result"]) == (79, "fail")


async def test_evaluate_asks_for_json_with_department_content(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    server.reply(orjson.dumps(VERDICT).decode())
    await evaluate_department.run(ctx, evaluation())
    body = server.requests[0].json
    assert body["response_format"] == {"type": "json_object"}
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    user = body["messages"][1]["content"]
    for expected in ("story", "department 1", "coastal", "Premise", "Mystery thriller", "concept: 85/100"):
        assert expected in user


async def test_evaluate_verdict_in_prose_is_extracted_and_clamped(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    server.reply(
        'Here you go:\n```json\n{"rating": "130", "summary": "Great", "issues": "one", '
        '"suggestions": [1, "", null], "confidence": 7}\n```'
    )
    result = await evaluate_department.run(ctx, evaluation())
    assert result["rating"] == 100
    assert result["issues"] == ["one"]
    assert result["suggestions"] == ["1"]
    assert result["metadata"]["confidence_score"] == 1.0


async def test_evaluate_empty_gather_data_returns_insufficient_data_without_llm(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    result = await evaluate_department.run(ctx, evaluation(gather_data=[], previous_evaluations=[]))
    assert server.requests == []
    processing_time = result.pop("processing_time")
    assert isinstance(processing_time, float)
    assert result == {
        "department": "story",
        "rating": 0,
        "evaluation_result": "fail",
        "evaluation_summary": "Insufficient data provided for evaluation",
        "issues": ["No gather data provided"],
        "suggestions": ["Gather content for department"],
        "iteration_count": 1,
        "metadata": {"model": None, "tokens_used": 0, "confidence_score": 0.0},
    }


# An evaluation that could not be made fails the task: the document's "AI service failure"
# result (rating 50, which passes any threshold up to 50) was a verdict nobody gave. make_ctx is
# the task's last attempt, so these are the outcomes once the automatic retries are used up.


async def test_evaluate_fails_when_the_provider_answers_500_on_the_last_attempt(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    server.fail(500, "upstream exploded")
    with pytest.raises(ProviderError) as caught:
        await evaluate_department.run(ctx, evaluation(threshold=50))
    assert str(caught.value) == (
        "Evaluation could not be made: LLM provider returned HTTP 500: upstream exploded"
    )
    # Still transient: on an earlier attempt the executor retries it.
    assert (caught.value.transient, caught.value.status) == (True, 500)


async def test_evaluate_fails_when_the_provider_times_out(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url, timeout=0.2)
    server.hang(5)
    with pytest.raises(ProviderError) as caught:
        await evaluate_department.run(ctx, evaluation())
    assert str(caught.value) == "Evaluation could not be made: LLM provider did not answer within 0.2s"
    assert caught.value.transient and caught.value.timeout


async def test_evaluate_fails_without_retry_when_the_provider_answers_401(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    server.fail(401, "Incorrect API key provided: sk-test")
    with pytest.raises(ProviderError) as caught:
        await evaluate_department.run(ctx, evaluation())
    assert str(caught.value).startswith("Evaluation could not be made: LLM provider returned HTTP 401")
    assert "sk-test" not in str(caught.value)
    assert not caught.value.transient


async def test_evaluate_fails_when_the_answer_is_not_json(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    server.reply("I think the department is fine.")
    with pytest.raises(TaskError) as caught:
        await evaluate_department.run(ctx, evaluation())
    assert str(caught.value) == (
        "Evaluation could not be made: the LLM's answer has no rating from 0 to 100 "
        "(it began: I think the department is fine.)"
    )
    assert not caught.value.transient


async def test_evaluate_fails_as_without_a_rating_when_the_answer_nests_deeper_than_python_reads(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    server.reply('{"rating": 90, "issues": ' + "[" * 100_000)
    with pytest.raises(TaskError) as caught:
        await evaluate_department.run(ctx, evaluation())
    assert str(caught.value).startswith(
        "Evaluation could not be made: the LLM's answer has no rating from 0 to 100 (it began: {"
    )
    assert not caught.value.transient


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of the text each try to read a JSON object from a model's answer was given."""
    sizes: list[int] = []
    raw_decode = json.JSONDecoder.raw_decode

    def counted(self: json.JSONDecoder, text: str, start: int = 0) -> tuple[Any, int]:
        sizes.append(len(text))
        return raw_decode(self, text, start)

    monkeypatch.setattr(json.JSONDecoder, "raw_decode", counted)
    return sizes


async def test_evaluate_gives_up_quickly_on_an_answer_of_many_unreadable_braces(
    server: FakeOpenAI, http: aiohttp.ClientSession, decodes: list[int]
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    server.reply("{x" * 250_000 + orjson.dumps(VERDICT).decode())
    with pytest.raises(TaskError, match="the LLM's answer has no rating from 0 to 100"):
        await evaluate_department.run(ctx, evaluation())
    # Trying each of the 250 000 braces took about 20 s on one core.
    assert len(decodes) == OBJECT_TRIES


async def test_evaluate_gives_up_quickly_on_a_long_answer_of_unclosed_objects(
    server: FakeOpenAI, http: aiohttp.ClientSession, decodes: list[int]
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    # 16 MB: 32 objects, each open to the end, so every try would read on to the end.
    server.reply(('{"a": [' + "1," * 250_000) * 32)
    with pytest.raises(TaskError, match="the LLM's answer has no rating from 0 to 100"):
        await evaluate_department.run(ctx, evaluation())
    # Reading all of it each time took 6.5 s on one core.
    assert decodes and max(decodes) <= OBJECT_SCAN


async def test_evaluate_finds_the_verdict_after_a_few_braces_of_prose(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    server.reply("Template: {rating}, {summary}. My verdict: " + orjson.dumps(VERDICT).decode())
    result = await evaluate_department.run(ctx, evaluation())
    assert result["rating"] == 85


async def test_evaluate_fails_when_the_json_answer_has_no_rating(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    server.reply(orjson.dumps({**VERDICT, "rating": "excellent"}).decode())
    with pytest.raises(TaskError, match="the LLM's answer has no rating from 0 to 100"):
        await evaluate_department.run(ctx, evaluation())


async def test_evaluate_fails_as_without_a_rating_when_the_rating_is_an_integer_too_large_for_a_float(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    server.reply('{"rating": 1' + "0" * 400 + "}")
    with pytest.raises(TaskError, match="the LLM's answer has no rating from 0 to 100"):
        await evaluate_department.run(ctx, evaluation())


async def test_evaluate_takes_a_confidence_too_large_for_a_float_as_none_given(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    server.reply('{"rating": 85, "confidence": 1' + "0" * 400 + "}")
    result = await evaluate_department.run(ctx, evaluation())
    assert result["rating"] == 85
    assert result["metadata"]["confidence_score"] == 0.0


async def test_evaluate_fails_when_the_provider_reply_is_not_a_completion(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    server.raw("<html>gateway page</html>", content_type="text/html")
    with pytest.raises(ProviderError) as caught:
        await evaluate_department.run(ctx, evaluation())
    assert str(caught.value) == "Evaluation could not be made: LLM provider sent a malformed reply"


async def test_evaluate_reports_no_progress_past_the_failed_call(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, sink = make_ctx(http, server.base_url)
    server.fail(503)
    with pytest.raises(ProviderError):
        await evaluate_department.run(ctx, evaluation())
    assert [step for _, step in sink.calls] == ["preparing_evaluation", "calling_llm"]


async def test_evaluate_without_provider_raises_task_error(http: aiohttp.ClientSession) -> None:
    ctx, _ = make_ctx(http, "")
    with pytest.raises(TaskError, match="No LLM provider configured"):
        await evaluate_department.run(ctx, evaluation())


async def test_evaluate_iteration_count_counts_previous_evaluations_of_same_department(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    server.reply(orjson.dumps(VERDICT).decode())
    previous = [Prev("story", 60), Prev("concept", 85), Prev("story")]
    result = await evaluate_department.run(ctx, evaluation(previous_evaluations=previous))
    assert result["iteration_count"] == 3


async def test_evaluate_progress_is_monotone(server: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    ctx, sink = make_ctx(http, server.base_url)
    server.reply(orjson.dumps(VERDICT).decode())
    await evaluate_department.run(ctx, evaluation())
    fractions = [fraction for fraction, _ in sink.calls]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    steps = [step for _, step in sink.calls]
    assert steps[:3] == ["preparing_evaluation", "calling_llm", "parsing_verdict"]


# automated_gather_creation


async def test_gather_fails_when_every_departments_reply_is_unreadable(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    server.reply("Sorry, I cannot help with that.")
    server.reply('{"items": [{"content": "   "}]}')
    data = AutomatedGatherCreationInput("A noir brief", departments=["story", "audio"])
    with pytest.raises(TaskError) as caught:
        await gather_task.run(ctx, data)
    assert str(caught.value) == "No gather items: the LLM's reply for every department was unreadable"


async def test_gather_stops_before_a_call_that_would_pass_the_configured_soft_limit(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    # 10 s of the soft limit are kept for the end: 2 s of calls, and each takes 1.5 s.
    tasks = attrs.evolve(ctx.config.tasks, soft_time_limits={"automated_gather_creation": 12.0})
    ctx = attrs.evolve(ctx, config=attrs.evolve(ctx.config, tasks=tasks))
    server.delay = 1.5
    for _ in range(3):
        server.reply('{"items": [{"content": "A harbour at dawn"}]}')
    data = AutomatedGatherCreationInput("A noir brief", departments=["story", "audio", "sets"])
    result = await gather_task.run(ctx, data)
    assert (result["stopped_early"], list(result["gather_data"])) == ("soft time limit", ["story"])


async def test_gather_asks_for_no_other_department_once_the_provider_refuses_the_key(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    # A revoked key fails every call alike: each department asked in turn was a request sent in vain.
    ctx, _ = make_ctx(http, server.base_url)
    for _ in range(3):
        server.fail(401, "Incorrect API key provided")
    data = AutomatedGatherCreationInput("A noir brief", departments=["story", "audio", "sets"])
    with pytest.raises(ProviderError) as caught:
        await gather_task.run(ctx, data)
    assert str(caught.value) == "LLM provider returned HTTP 401: Incorrect API key provided"
    assert not caught.value.transient
    assert len(server.requests) == 1


async def test_gather_keeps_what_it_gathered_before_the_provider_refused_the_key(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    server.reply('{"items": [{"content": "A harbour at dawn"}]}')
    server.fail(403, "Key revoked")
    data = AutomatedGatherCreationInput("A noir brief", departments=["story", "audio", "sets"])
    result = await gather_task.run(ctx, data)
    assert list(result["gather_data"]) == ["story"]
    assert result["failed_departments"] == {"audio": "HTTP 403"}
    assert result["stopped_early"] == "the LLM provider refused the key (HTTP 403)"
    assert len(server.requests) == 2


async def test_gather_that_lost_what_it_gathered_before_the_key_was_refused_says_so(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    # The one department gathered is too long for the result; the next is refused: nothing is left,
    # and the soft time limit had nothing to do with it.
    ctx, _ = make_ctx(http, server.base_url)
    execution = attrs.evolve(ctx.config.execution, result_max_bytes=2048)
    ctx = attrs.evolve(ctx, config=attrs.evolve(ctx.config, execution=execution))
    server.reply(orjson.dumps({"items": [{"content": "A harbour at dawn " * 200}]}).decode())
    server.fail(401, "Incorrect API key provided")
    data = AutomatedGatherCreationInput("A noir brief", departments=["story", "audio", "sets"])
    with pytest.raises(TaskError) as caught:
        await gather_task.run(ctx, data)
    assert str(caught.value) == (
        "No gather items: the departments gathered made the result too long "
        "(execution.result_max_bytes), and the run stopped early: the LLM provider refused the key (HTTP 401)"
    )


async def test_gather_fails_when_no_department_slug_is_usable(
    server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    ctx, _ = make_ctx(http, server.base_url)
    data = AutomatedGatherCreationInput("A noir brief", departments=["  ", ""])
    with pytest.raises(TaskError, match="no department to gather for"):
        await gather_task.run(ctx, data)
    assert server.requests == []


# input validation


def structure(data: dict[str, Any]) -> EvaluateDepartmentInput:
    converter = cattrs.Converter(forbid_extra_keys=False)
    return structure_checked(converter, data, EvaluateDepartmentInput, prefix="task_data")


def test_evaluate_input_reports_bad_department_number_and_missing_gather_data() -> None:
    with pytest.raises(FieldErrors) as caught:
        structure({"department_slug": "story", "department_number": "first"})
    assert set(caught.value.details) == {"task_data.department_number", "task_data.gather_data"}
    assert caught.value.details["task_data.gather_data"] == "This field is required"


def test_evaluate_input_reports_department_number_out_of_range() -> None:
    # Range validators run only once the data has the right shape, so gather_data is present here.
    with pytest.raises(FieldErrors) as caught:
        structure({"department_slug": "story", "department_number": 13, "gather_data": []})
    message = "Department number must be between 1 and 12"
    assert caught.value.details == {"task_data.department_number": message}


def test_evaluate_input_reports_threshold_and_blank_gather_content() -> None:
    with pytest.raises(FieldErrors) as caught:
        structure(
            {
                "department_slug": "story",
                "department_number": 2,
                "threshold": 101,
                "gather_data": [{"content": "  "}],
            }
        )
    assert caught.value.details == {
        "task_data.threshold": "Threshold must be between 0 and 100",
        "task_data.gather_data[0].content": "Content must not be blank",
    }


def test_evaluate_input_accepts_the_documented_example() -> None:
    data = structure(
        {
            "department_slug": "story",
            "department_number": 1,
            "threshold": 80,
            "gather_data": [
                {
                    "content": "A young detective...",
                    "summary": "Main story premise",
                    "context": "Mystery thriller genre",
                }
            ],
            "previous_evaluations": [{"department": "concept", "rating": 85, "summary": "Strong"}],
        }
    )
    assert data.gather_data[0].summary == "Main story premise"
    assert data.previous_evaluations[0].rating == 85


def test_prompt_input_refuses_placeholders_that_render_past_the_limit() -> None:
    converter = cattrs.Converter(forbid_extra_keys=False)
    # 20 000 placeholders of a 50 000-character value: a gigabyte had it been rendered.
    data = {"prompt_template": "{{a}}" * 20_000, "test_parameters": {"a": "x" * 50_000}}
    tracemalloc.start()
    try:
        with pytest.raises(FieldErrors) as caught:
            structure_checked(converter, data, TestPromptInput, prefix="task_data")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.details == {
        "task_data.test_parameters": "The rendered prompt must have at most 1000000 characters "
        "(prompt_template with its placeholders filled from test_parameters)"
    }
    assert peak < 16 * 1024 * 1024  # measured, not rendered


def test_prompt_input_accepts_a_rendered_prompt_at_the_limit() -> None:
    converter = cattrs.Converter(forbid_extra_keys=False)
    data = {"prompt_template": "{{ a }}{{b}}!", "test_parameters": {"a": "x" * 999_000, "b": ["y" * 995]}}
    parsed = structure_checked(converter, data, TestPromptInput, prefix="task_data")
    assert len(prompt_task.render(parsed.prompt_template, parsed.test_parameters)[0]) == 1_000_000


def test_prompt_input_requires_non_blank_template() -> None:
    converter = cattrs.Converter(forbid_extra_keys=False)
    with pytest.raises(FieldErrors) as caught:
        structure_checked(converter, {"prompt_template": " "}, TestPromptInput, prefix="task_data")
    assert caught.value.details == {"task_data.prompt_template": "Prompt template must not be blank"}
