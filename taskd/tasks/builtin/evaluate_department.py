"""The `evaluate_department` task: an LLM rates a production department's gathered content 0-100."""

from __future__ import annotations

import math
import time
from typing import Any

import attrs

from taskd.providers.llm import ChatClient, ChatReply, ProviderError, first_object
from taskd.tasks.spec import TaskContext, TaskError, TaskType
from taskd.validation import between, max_length, not_blank

GATHER_LIMIT = 500
EXCERPT_LIMIT = 120
NO_VERDICT = "Evaluation could not be made"
SYSTEM_PROMPT = (
    "You evaluate the readiness of one department of a movie production. "
    "Judge the gathered content for quality, completeness and consistency with earlier departments. "
    "Answer with one JSON object only, no other text, of this shape: "
    '{"rating": <integer 0-100>, "summary": "<2-4 sentences>", "issues": ["<specific problem>", ...], '
    '"suggestions": ["<actionable improvement>", ...], "confidence": <number 0-1>}'
)


@attrs.define
class GatherItem:
    """One piece of gathered content for the department."""

    content: str = attrs.field(validator=not_blank("Content must not be blank"))
    summary: str | None = None
    context: str | None = None


@attrs.define
class PreviousEvaluation:
    """An earlier evaluation, given to the LLM as context."""

    department: str
    rating: float | None = None
    summary: str | None = None


@attrs.define
class EvaluateDepartmentInput:
    """`task_data` of an `evaluate_department` task."""

    department_slug: str = attrs.field(
        validator=[not_blank("Department slug must not be blank"), max_length(64, "Department slug")]
    )
    department_number: int = attrs.field(
        validator=between(1, 12, "Department number must be between 1 and 12")
    )
    gather_data: list[GatherItem] = attrs.field(
        validator=max_length(GATHER_LIMIT, "Gather data", unit="items")
    )
    previous_evaluations: list[PreviousEvaluation] = attrs.Factory(list)
    threshold: int = attrs.field(default=80, validator=between(0, 100, "Threshold must be between 0 and 100"))


@attrs.frozen
class Verdict:
    """The LLM's judgement, already cleaned up."""

    rating: int
    summary: str
    issues: list[str]
    suggestions: list[str]
    confidence: float


def _result(data: EvaluateDepartmentInput, started: float, **fields: Any) -> dict[str, Any]:
    rating = fields["rating"]
    return {
        "department": data.department_slug,
        "rating": rating,
        "evaluation_result": "pass" if rating >= data.threshold else "fail",
        "evaluation_summary": fields["summary"],
        "issues": fields["issues"],
        "suggestions": fields["suggestions"],
        "iteration_count": 1 + sum(p.department == data.department_slug for p in data.previous_evaluations),
        "processing_time": round(time.monotonic() - started, 1),
        "metadata": {
            "model": fields.get("model"),
            "tokens_used": fields.get("tokens_used", 0),
            "confidence_score": fields.get("confidence", 0.0),
        },
    }


def insufficient_data(data: EvaluateDepartmentInput, started: float) -> dict[str, Any]:
    """The API document's result for an evaluation without gather data."""
    result = _result(
        data,
        started,
        rating=0,
        summary="Insufficient data provided for evaluation",
        issues=["No gather data provided"],
        suggestions=["Gather content for department"],
    )
    # The document says "fail" here whatever the threshold, even 0.
    result["evaluation_result"] = "fail"
    return result


def build_messages(data: EvaluateDepartmentInput) -> list[dict[str, str]]:
    """The system and user messages asking for a verdict on this department."""
    lines = [
        f"Department: {data.department_slug} (department {data.department_number} of 12)",
        f"Passing threshold: {data.threshold}/100",
        "",
        f"Gathered content ({len(data.gather_data)} items):",
    ]
    for number, item in enumerate(data.gather_data, 1):
        lines.append(f"--- Item {number} ---")
        if item.summary:
            lines.append(f"Summary: {item.summary}")
        if item.context:
            lines.append(f"Context: {item.context}")
        lines.append(f"Content: {item.content}")
    if data.previous_evaluations:
        lines += ["", "Previous evaluations:"]
        for prev in data.previous_evaluations:
            rating = "unrated" if prev.rating is None else f"{prev.rating:g}/100"
            lines.append(f"- {prev.department}: {rating}" + (f" - {prev.summary}" if prev.summary else ""))
    lines += ["", f"Evaluate the {data.department_slug} department and answer with the JSON object."]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n".join(lines)}]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip().rstrip("%")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer of 309 digits or more
        return None
    return number if math.isfinite(number) else None


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [text for text in (str(item).strip() for item in items if item is not None) if text]


def parse_verdict(text: str) -> Verdict | None:
    """Read the LLM's JSON verdict tolerantly; None when there is no usable rating."""
    found = first_object(text)
    if found is None:
        return None
    rating = _number(found.get("rating"))
    if rating is None:
        return None
    confidence = _number(found.get("confidence"))
    summary = found.get("summary")
    return Verdict(
        rating=round(min(100.0, max(0.0, rating))),
        summary=summary.strip() if isinstance(summary, str) else "",
        issues=_strings(found.get("issues")),
        suggestions=_strings(found.get("suggestions")),
        confidence=0.0 if confidence is None else min(1.0, max(0.0, confidence)),
    )


async def run(ctx: TaskContext, data: EvaluateDepartmentInput) -> dict[str, Any]:
    """Ask the LLM for a verdict on the department; fail when no verdict could be had.

    A result is only ever the LLM's own rating (or the document's "insufficient data" answer for
    empty `gather_data`): a caller acts on `evaluation_result`, so a rating made up because the
    provider was down or answered nonsense would pass or fail a department on no evidence.
    """
    started = time.monotonic()
    await ctx.progress(0.1, "preparing_evaluation")
    if not data.gather_data:
        await ctx.progress(1.0, "done")
        return insufficient_data(data, started)
    messages = build_messages(data)
    await ctx.progress(0.2, "calling_llm")
    client = ChatClient(ctx.config.providers.llm, ctx.http, ctx.provider_gate("llm"))
    try:
        reply: ChatReply = await client.complete(messages, json_mode=True)
    except ProviderError as exc:
        # Still transient or not as the provider's answer was: a provider that may recover gets
        # the task's automatic retries, then the task fails with this error.
        raise ProviderError(
            f"{NO_VERDICT}: {exc.message}", exc.transient, exc.status, timeout=exc.timeout
        ) from exc
    await ctx.progress(0.9, "parsing_verdict")
    verdict = parse_verdict(reply.content)
    if verdict is None:
        raise TaskError(
            f"{NO_VERDICT}: the LLM's answer has no rating from 0 to 100 ({_excerpt(reply.content)})"
        )
    await ctx.progress(1.0, "done")
    return _result(
        data,
        started,
        rating=verdict.rating,
        summary=verdict.summary,
        issues=verdict.issues,
        suggestions=verdict.suggestions,
        model=reply.model,
        tokens_used=reply.total_tokens,
        confidence=verdict.confidence,
    )


def _excerpt(text: str) -> str:
    """The start of an unusable answer, for the error: enough to see what the model did instead."""
    flat = " ".join(text.split())
    if not flat:
        return "it was empty"
    return "it began: " + (flat if len(flat) <= EXCERPT_LIMIT else flat[: EXCERPT_LIMIT - 1] + "…")


TASK = TaskType(
    name="evaluate_department",
    input=EvaluateDepartmentInput,
    queue="cpu_intensive",
    expected_duration=90.0,
    handler=run,
    soft_time_limit=270.0,
    hard_time_limit=300.0,
    gpu="none",
)
