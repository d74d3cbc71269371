"""automated_gather_creation against the fake OpenAI server: its output is evaluate_department's gather_data."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from fake_media_apis import make_ctx
from fake_openai import FakeOpenAI

from taskd.config import Config, LlmProvider, ProvidersConfig
from taskd.providers.llm import ChatClient, ProviderError
from taskd.tasks.builtin import automated_gather_creation as gather
from taskd.tasks.builtin import evaluate_department
from taskd.tasks.builtin.automated_gather_creation import AutomatedGatherCreationInput, Workflow
from taskd.tasks.registry import default_registry


def items(slug: str, count: int) -> str:
    body = [
        {"content": f"{slug} material {i}", "summary": f"{slug} {i}", "context": "noir"} for i in range(count)
    ]
    return "Here you go:\n```json\n" + orjson.dumps({"items": body}).decode() + "\n```"


@pytest.fixture
async def llm() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


def config(llm: FakeOpenAI) -> Config:
    return Config(
        providers=ProvidersConfig(llm=LlmProvider(base_url=llm.base_url, model="test-model", timeout=5))
    )


async def test_brief_becomes_gather_data_that_evaluate_department_accepts(llm, http):
    llm.reply(
        orjson.dumps({"departments": [{"slug": "Story", "focus": "plot"}, {"slug": "character"}]}).decode()
    )
    llm.reply(items("story", 3))
    llm.reply(items("character", 3))
    ctx, sink = make_ctx(http, config(llm))

    result = await gather.run(
        ctx, AutomatedGatherCreationInput("A noir detective series.", items_per_department=3)
    )

    assert list(result["gather_data"]) == ["story", "character"]
    assert result["gather_data"]["story"][0] == {
        "content": "story material 0",
        "summary": "story 0",
        "context": "noir",
    }
    registry = default_registry()
    for slug, gathered in result["gather_data"].items():
        task_data = {"department_slug": slug, "department_number": 1, "gather_data": gathered}
        parsed = registry.parse_input(evaluate_department.TASK, task_data)
        assert len(parsed.gather_data) == 3
    assert result["complete"] is True and result["metadata"]["llm_calls"] == 3
    assert "plot" in llm.requests[1].json["messages"][1]["content"]
    steps = [step for _, step in sink.calls]
    assert steps == ["outlining_departments", "gathering_story", "gathering_character", "done"]


async def test_given_departments_skip_the_outline_and_cap_items(llm, http):
    llm.reply(items("story", 5))
    ctx, _ = make_ctx(http, config(llm))

    result = await gather.run(
        ctx, AutomatedGatherCreationInput("brief", departments=["story"], items_per_department=2)
    )

    assert len(result["gather_data"]["story"]) == 2
    assert len(llm.requests) == 1


async def test_a_failed_department_is_reported_and_the_rest_kept(llm, http):
    llm.fail(503)
    llm.reply(items("audio", 1))
    ctx, _ = make_ctx(http, config(llm))

    result = await gather.run(ctx, AutomatedGatherCreationInput("brief", departments=["story", "audio"]))

    assert list(result["gather_data"]) == ["audio"]
    assert result["failed_departments"] == {"story": "HTTP 503"}
    assert result["complete"] is False


async def test_all_departments_failing_raises_the_provider_error(llm, http):
    llm.fail(401)
    ctx, _ = make_ctx(http, config(llm))

    with pytest.raises(ProviderError):
        await gather.run(ctx, AutomatedGatherCreationInput("brief", departments=["story"]))


async def test_workflow_stops_cleanly_before_the_deadline(llm, http):
    llm.reply(items("story", 1))
    client = ChatClient(config(llm).providers.llm, http)

    async def progress(_: float, __: str) -> None:
        pass

    workflow = Workflow(
        client, AutomatedGatherCreationInput("b", departments=["story", "audio"]), progress, 0.0
    )
    workflow.slowest = 0.0
    result = await workflow.run()

    assert result["stopped_early"] == "soft time limit"
    assert result["gather_data"] == {} and len(llm.requests) == 0


async def test_unreadable_outline_falls_back_to_default_departments(llm, http):
    llm.reply("no json here")
    for slug in gather.DEFAULT_DEPARTMENTS:  # a run with no item at all fails (issue 15)
        llm.reply(items(slug, 1))
    ctx, _ = make_ctx(http, config(llm))

    result = await gather.run(ctx, AutomatedGatherCreationInput("brief", items_per_department=1))

    assert result["default_departments_used"] is True
    assert [d["slug"] for d in result["departments"]] == list(gather.DEFAULT_DEPARTMENTS)


def long_items(count: int, characters: int) -> str:
    body = [{"content": "x" * characters, "summary": "s", "context": "c"} for _ in range(count)]
    return orjson.dumps({"items": body}).decode()


async def test_a_department_too_long_for_the_result_is_dropped_and_the_rest_kept(llm, http):
    # 900 kB of story and 300 kB of audio: together over the 1 MiB a result may have.
    llm.reply(long_items(15, 60_000))
    llm.reply(long_items(15, 20_000))
    llm.reply(items("sets", 2))
    ctx, _ = make_ctx(http, config(llm))

    result = await gather.run(
        ctx,
        AutomatedGatherCreationInput(
            "brief", departments=["story", "audio", "sets"], items_per_department=15
        ),
    )

    assert list(result["gather_data"]) == ["audio", "sets"]
    assert result["failed_departments"]["story"].startswith("reply too long")
    assert result["complete"] is False
    assert len(orjson.dumps(result)) <= ctx.config.execution.result_max_bytes


async def test_a_long_department_focus_is_cut(llm, http):
    llm.reply(orjson.dumps({"departments": [{"slug": "story", "focus": "f" * 100_000}]}).decode())
    llm.reply(items("story", 1))
    ctx, _ = make_ctx(http, config(llm))

    result = await gather.run(ctx, AutomatedGatherCreationInput("brief"))

    assert len(result["departments"][0]["focus"]) == gather.FOCUS_LIMIT
    assert len(llm.requests[1].json["messages"][1]["content"]) < 1000


async def test_the_answers_of_a_run_cut_short_are_not_asked_for_again(llm, http, run_state):
    llm.reply(orjson.dumps({"departments": [{"slug": "story", "focus": "plot"}, {"slug": "audio"}]}).decode())
    llm.reply(items("story", 2))
    llm.hang(60)  # the audio department's answer never comes to the first run
    data = AutomatedGatherCreationInput("A noir detective series.", items_per_department=2)
    first, _ = make_ctx(http, config(llm))
    first.run_state = run_state()
    cut_short = asyncio.create_task(gather.run(first, data))
    async with asyncio.timeout(10):
        while len(llm.requests) < 3:
            await asyncio.sleep(0.01)
    cut_short.cancel()

    llm.reply(items("audio", 2))
    second, _ = make_ctx(http, config(llm))
    second.run_state = run_state()
    result = await gather.run(second, data)

    assert len(llm.requests) == 4
    assert "audio department" in llm.requests[3].json["messages"][0]["content"]
    assert result["gather_data"]["story"][0]["content"] == "story material 0"
    assert [d["slug"] for d in result["departments"]] == ["story", "audio"]
    assert result["complete"] is True and result["metadata"]["llm_calls"] == 3
