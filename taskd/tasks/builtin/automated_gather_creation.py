"""`automated_gather_creation`: a project brief turned into gather items per department.

Each answer of the LLM (the outline, each department's items) is kept in the task's run state
(taskd.store.run_state) as it arrives: a run cut short (its worker killed, a transient error) is
followed by one that asks only for what was not answered yet.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import orjson

from taskd.providers.llm import ChatClient, ProviderError, first_object
from taskd.tasks.spec import SoftTimeLimitExceeded, TaskContext, TaskError, TaskType
from taskd.validation import between, max_length, not_blank

if TYPE_CHECKING:
    from taskd.store.run_state import RunState

DEFAULT_DEPARTMENTS = ("story", "character", "visual", "audio")
OUTLINE_PROMPT = (
    "You plan the pre-production of a movie project. From the brief, choose the production departments "
    "that need gathered material (at most {limit}, e.g. story, character, visual, audio, production) and say "
    'what each should cover. Answer with one JSON object only: {{"departments": [{{"slug": "<lowercase '
    'word>", "focus": "<one sentence>"}}]}}'
)
ITEMS_PROMPT = (
    "You gather material for the {slug} department of a movie project. Write {count} distinct, concrete "
    "gather items grounded in the brief. Answer with one JSON object only: "
    '{{"items": [{{"content": "<the material itself, several sentences>", "summary": "<one line>", '
    '"context": "<where it fits or why it matters>"}}]}}'
)
NOTHING_IN_TIME = "Soft time limit reached before any department was gathered"
# A department's focus is asked for as one sentence; it goes into that department's prompt and the
# result, so a model that writes a megabyte there is cut here.
FOCUS_LIMIT = 500
TOO_LONG = "reply too long"
# The provider's answers that refuse the key itself, not one department's request.
KEY_REFUSED = frozenset({401, 403})
# The run state's fields (taskd.store.run_state): the outline, and each department's items.
KEPT_OUTLINE = "gather:outline"
KEPT_DEPARTMENT = "gather:department:"
Progress = Callable[[float, str], Awaitable[None]]


@attrs.frozen
class AutomatedGatherCreationInput:
    brief: str = attrs.field(
        validator=attrs.validators.and_(not_blank("Brief is required"), max_length(50_000, "Brief"))
    )
    departments: list[str] = attrs.field(factory=list, validator=max_length(12, "Departments", "items"))
    items_per_department: int = attrs.field(
        default=5, validator=between(1, 20, "Items per department must be between 1 and 20")
    )


def _slug(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    slug = "_".join(value.strip().lower().split())[:64]
    return slug or None


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_outline(text: str, limit: int = 12) -> list[tuple[str, str]]:
    """(slug, focus) per department from the outline reply; empty when unreadable."""
    found = first_object(text) or {}
    entries = found.get("departments")
    if not isinstance(entries, list):
        entries = []
    outline: dict[str, str] = {}
    for entry in entries:
        slug = _slug(entry.get("slug") if isinstance(entry, dict) else entry)
        focus = entry.get("focus") if isinstance(entry, dict) else None
        if slug and slug not in outline:
            outline[slug] = _cut(focus.strip(), FOCUS_LIMIT) if isinstance(focus, str) else ""
    return list(outline.items())[:limit]


def parse_items(text: str, limit: int) -> list[dict[str, str]]:
    """Gather items ({content, summary, context}) with non-blank content, at most `limit`."""
    found = first_object(text) or {}
    entries = found.get("items")
    return parse_items_list(entries if isinstance(entries, list) else [], limit)


def parse_items_list(entries: list[Any], limit: int) -> list[dict[str, str]]:
    """The gather items of a list of entries (a reply's, or those a run kept), at most `limit`."""
    items = []
    for entry in entries:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("content"), str)
            or not entry["content"].strip()
        ):
            continue
        item = {"content": entry["content"].strip()}
        for key in ("summary", "context"):
            item[key] = entry[key].strip() if isinstance(entry.get(key), str) else ""
        items.append(item)
    return items[:limit]


def _is_outline(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(entry, list) and len(entry) == 2 and all(isinstance(part, str) for part in entry)
        for entry in value
    )


@attrs.define
class Workflow:
    """The outline call, then one call per department; stops early before a call that would pass the deadline."""

    client: ChatClient
    data: AutomatedGatherCreationInput
    progress: Progress
    deadline: float
    # Where each answer is kept for a next run of the task, and read from; None: nothing is kept.
    state: RunState | None = None
    calls: int = 0
    tokens: int = 0
    slowest: float = 0.0

    async def ask(self, system: str, user: str) -> tuple[str, int]:
        """The reply's text and the tokens it took."""
        started = time.monotonic()
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        reply = await self.client.complete(messages, json_mode=True)
        self.calls += 1
        self.tokens += reply.total_tokens
        self.slowest = max(self.slowest, time.monotonic() - started)
        return reply.content, reply.total_tokens

    async def kept(self, name: str) -> dict[str, Any] | None:
        """What an earlier run of the task kept as `name`, counted as the call it saves."""
        kept = await self.state.get(name) if self.state is not None else None
        if not isinstance(kept, dict) or not isinstance(kept.get("tokens"), int):
            return None
        self.calls += 1
        self.tokens += kept["tokens"]
        return kept

    async def keep(self, name: str, value: dict[str, Any]) -> None:
        if self.state is not None:
            await self.state.keep(name, value)

    def out_of_time(self) -> bool:
        return time.monotonic() + self.slowest > self.deadline

    async def outline(self) -> tuple[list[tuple[str, str]], bool]:
        if self.data.departments:
            chosen = [(slug, "") for slug in dict.fromkeys(filter(None, map(_slug, self.data.departments)))]
            return chosen, False
        await self.progress(0.05, "outlining_departments")
        kept = await self.kept(KEPT_OUTLINE)
        if kept is not None and _is_outline(kept.get("departments")):
            return [(slug, focus) for slug, focus in kept["departments"]], bool(kept.get("defaulted"))
        text, tokens = await self.ask(OUTLINE_PROMPT.format(limit=12), f"Brief:\n{self.data.brief}")
        outline = parse_outline(text)
        defaulted = not outline
        if defaulted:
            outline = [(slug, "") for slug in DEFAULT_DEPARTMENTS]
        await self.keep(KEPT_OUTLINE, {"departments": outline, "defaulted": defaulted, "tokens": tokens})
        return outline, defaulted

    async def items(self, slug: str, focus: str) -> list[dict[str, str]]:
        """The department's items: kept by an earlier run, else asked for (and kept when there are some)."""
        kept = await self.kept(KEPT_DEPARTMENT + slug)
        if kept is not None and isinstance(kept.get("items"), list):
            return parse_items_list(kept["items"], self.data.items_per_department)
        prompt = f"Brief:\n{self.data.brief}" + (f"\n\nThis department covers: {focus}" if focus else "")
        text, tokens = await self.ask(
            ITEMS_PROMPT.format(slug=slug, count=self.data.items_per_department), prompt
        )
        items = parse_items(text, self.data.items_per_department)
        if items:
            await self.keep(KEPT_DEPARTMENT + slug, {"items": items, "tokens": tokens})
        return items

    async def run(self) -> dict[str, Any]:
        departments, defaulted = await self.outline()
        gathered: dict[str, list[dict[str, str]]] = {}
        failed: dict[str, str] = {}
        stopped = None
        last_error: ProviderError | None = None
        for number, (slug, focus) in enumerate(departments):
            if self.out_of_time():
                stopped = "soft time limit"
                break
            await self.progress(0.1 + 0.85 * number / len(departments), f"gathering_{slug}")
            try:
                items = await self.items(slug, focus)
            except ProviderError as exc:
                failed[slug], last_error = exc.reason, exc
                if exc.status in KEY_REFUSED:
                    # The key is refused (revoked, or of no access): every department's call would be.
                    stopped = f"the LLM provider refused the key ({exc.reason})"
                    break
                continue
            except SoftTimeLimitExceeded:
                stopped = "soft time limit"
                break
            if items:
                gathered[slug] = items
            else:
                failed[slug] = "unreadable reply"
        if not gathered and last_error is not None:
            raise last_error
        return {
            "gather_data": gathered,
            "departments": [
                {"slug": slug, "focus": focus, "item_count": len(gathered.get(slug, []))}
                for slug, focus in departments
            ],
            "complete": stopped is None and not failed,
            "stopped_early": stopped,
            "failed_departments": failed,
            "default_departments_used": defaulted,
            "metadata": {"model": self.client.model, "llm_calls": self.calls, "tokens_used": self.tokens},
        }


def fit_result(result: dict[str, Any], limit: int) -> None:
    """Drop the departments with the most text until the result is at most `limit` bytes of JSON, each
    listed in `failed_departments`: one verbose reply would otherwise fail the whole task at the result
    limit (execution.result_max_bytes), every other department's items with it."""
    gathered, failed = result["gather_data"], result["failed_departments"]
    sizes = {slug: len(orjson.dumps(found)) for slug, found in gathered.items()}
    while gathered and len(orjson.dumps(result)) > limit:
        slug = max(sizes, key=lambda name: sizes[name])
        del gathered[slug], sizes[slug]
        failed[slug] = f"{TOO_LONG}: a result may have at most {limit} bytes (execution.result_max_bytes)"
        result["complete"] = False
        for department in result["departments"]:
            if department["slug"] == slug:
                department["item_count"] = 0


def _nothing_gathered(result: dict[str, Any]) -> str:
    """Why a workflow that raised nothing still has no gather item."""
    stopped = result["stopped_early"]
    if not result["departments"]:
        return "No gather items: no department to gather for (the given slugs are blank)"
    # Checked before `stopped`: a run that gathered departments before it stopped (the soft limit, a
    # refused key) and then lost them to the result's limit did not stop "before any was gathered".
    if any(reason.startswith(TOO_LONG) for reason in result["failed_departments"].values()):
        if stopped:
            return (
                "No gather items: the departments gathered made the result too long "
                f"(execution.result_max_bytes), and the run stopped early: {stopped}"
            )
        return (
            "No gather items: every department's items made the result too long (execution.result_max_bytes)"
        )
    if stopped:
        return NOTHING_IN_TIME
    return "No gather items: the LLM's reply for every department was unreadable"


async def run(ctx: TaskContext, data: AutomatedGatherCreationInput) -> dict[str, Any]:
    """Outline departments from the brief (unless given), then ask for items per department."""
    started = time.monotonic()
    if not ctx.config.providers.llm.base_url.strip():
        raise TaskError(
            "No LLM provider configured: set providers.llm.base_url (TASKD_PROVIDERS__LLM__BASE_URL)"
        )
    # The soft limit this task runs under: the operator's tasks.soft_time_limits, else the type's.
    soft = ctx.config.tasks.soft_time_limits.get(TASK.name, TASK.soft_time_limit) or 540.0
    budget = soft - 10.0
    workflow = Workflow(
        ChatClient(ctx.config.providers.llm, ctx.http, ctx.provider_gate("llm")),
        data,
        ctx.progress,
        started + budget,
        ctx.run_state,
    )
    try:
        result = await workflow.run()
    except SoftTimeLimitExceeded:
        raise TaskError(NOTHING_IN_TIME) from None
    result["processing_time"] = round(time.monotonic() - started, 1)
    fit_result(result, ctx.config.execution.result_max_bytes)
    if not result["gather_data"]:
        # `completed` with no item at all would read as "the brief needs nothing gathered"; it means
        # the work could not be done, which is a failure (provider errors already raised above).
        raise TaskError(_nothing_gathered(result))
    await ctx.progress(1.0, "done")
    return result


TASK = TaskType(
    name="automated_gather_creation",
    input=AutomatedGatherCreationInput,
    queue="cpu_intensive",
    expected_duration=240.0,
    handler=run,
    soft_time_limit=540.0,
    hard_time_limit=600.0,
    gpu="none",
)
