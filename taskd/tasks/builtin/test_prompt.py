"""The `test_prompt` task: render a prompt template and return the LLM's answer to it."""

from __future__ import annotations

import re
import time
from typing import Any

import attrs
import orjson

from taskd.providers.llm import ChatClient
from taskd.tasks.spec import TaskContext, TaskError, TaskType
from taskd.validation import max_length, not_blank

PROMPT_LIMIT = 100_000
# The prompt as sent: a placeholder may repeat a large parameter (a 100 000-character template of
# `{{a}}` with a 50 KB `a` would render a gigabyte), so the rendered length is bounded too.
RENDERED_LIMIT = 1_000_000
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}")


def rendered_length(template: str, parameters: dict[str, Any]) -> int:
    """The length `render` would give, without building the text."""
    texts: dict[str, int] = {}
    length = len(template)
    for match in _PLACEHOLDER.finditer(template):
        name = match.group(1)
        if name in parameters:
            if name not in texts:
                texts[name] = len(_as_text(parameters[name]))
            length += texts[name] - len(match.group(0))
    return length


def _renders_within_limit(instance: Any, _: attrs.Attribute[Any], parameters: dict[str, Any]) -> None:
    # Checked on the whole input only (the template is needed); None: the field checked alone.
    if instance is None or not isinstance(instance.prompt_template, str):
        return
    if rendered_length(instance.prompt_template, parameters) > RENDERED_LIMIT:
        raise ValueError(
            f"The rendered prompt must have at most {RENDERED_LIMIT} characters "
            "(prompt_template with its placeholders filled from test_parameters)"
        )


@attrs.define
class TestPromptInput:
    """`task_data` of a `test_prompt` task."""

    __test__ = False  # not a pytest test class, despite the name

    prompt_template: str = attrs.field(
        validator=[
            not_blank("Prompt template must not be blank"),
            max_length(PROMPT_LIMIT, "Prompt template"),
        ]
    )
    prompt_id: str | None = None
    agent_type: str | None = None
    test_parameters: dict[str, Any] = attrs.field(
        factory=dict,
        validator=_renders_within_limit,
        metadata={
            "description": f"prompt_template with its placeholders filled from these may have at most "
            f"{RENDERED_LIMIT} characters"
        },
    )
    test_result_id: str | None = None


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def _json_bytes(text: str) -> int:
    # As the result stores it: orjson's UTF-8, its escapes included, less the quotes.
    return len(orjson.dumps(text)) - 2


def _holds_none(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_holds_none(item) for item in value.values())
    if isinstance(value, list):
        return any(_holds_none(item) for item in value)
    return value is None


def result_estimate(data: TestPromptInput) -> int:
    """The bytes the result's `rendered_prompt` will hold as JSON, without building the text.

    A caller decides it (a 4 KiB input may render ~1,000,000 characters), so a submit reserves it
    of its project's storage budget (taskd.tasks.spec.TaskType.result_estimate). A parameter that
    is or holds None (a $ref, filled in only when the task runs: `{"a": [{"$ref": …}]}` too) may
    fill the rest of RENDERED_LIMIT: the estimate is then that limit. The LLM's `response` is not
    counted: its length is the provider's, bounded by execution.result_max_bytes alone.
    """
    parameters = data.test_parameters
    size = _json_bytes(data.prompt_template)
    texts: dict[str, int] = {}
    for match in _PLACEHOLDER.finditer(data.prompt_template):
        name = match.group(1)
        if name in parameters:
            if _holds_none(parameters[name]):
                return RENDERED_LIMIT
            if name not in texts:
                texts[name] = _json_bytes(_as_text(parameters[name]))
            size += texts[name] - _json_bytes(match.group(0))
    return size


def render(template: str, parameters: dict[str, Any]) -> tuple[str, list[str]]:
    """Fill `{{name}}` placeholders; unknown ones stay as written and are returned, each once."""
    missing: list[str] = []

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in parameters:
            return _as_text(parameters[name])
        if name not in missing:
            missing.append(name)
        return match.group(0)

    return _PLACEHOLDER.sub(fill, template), missing


async def run(ctx: TaskContext, data: TestPromptInput) -> dict[str, Any]:
    """Render the template, send it as one user message, and report the answer with token usage."""
    started = time.monotonic()
    await ctx.progress(0.1, "rendering_prompt")
    prompt, missing = render(data.prompt_template, data.test_parameters)
    # The result carries the prompt: one over the result limit would be a paid call whose answer
    # the task could never store.
    size, limit = len(orjson.dumps(prompt)), ctx.config.execution.result_max_bytes
    if size > limit:
        raise TaskError(
            f"The rendered prompt is {size} bytes as JSON: the result repeats it, and a result may "
            f"have at most {limit} bytes (execution.result_max_bytes)"
        )
    await ctx.progress(0.3, "calling_llm")
    client = ChatClient(ctx.config.providers.llm, ctx.http, ctx.provider_gate("llm"))
    reply = await client.complete([{"role": "user", "content": prompt}])
    await ctx.progress(1.0, "done")
    return {
        "prompt_id": data.prompt_id,
        "test_result_id": data.test_result_id,
        "agent_type": data.agent_type,
        "rendered_prompt": prompt,
        "response": reply.content,
        "missing_parameters": missing,
        "model": reply.model,
        "usage": {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.total_tokens,
        },
        "processing_time": round(time.monotonic() - started, 3),
    }


TASK = TaskType(
    name="test_prompt",
    input=TestPromptInput,
    queue="default",
    expected_duration=10.0,
    handler=run,
    gpu="none",
    result_estimate=result_estimate,
)
