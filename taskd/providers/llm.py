"""A small OpenAI-compatible Chat Completions client over aiohttp."""

from __future__ import annotations

import json
from typing import Any

import attrs
import orjson

from taskd.config import LlmProvider
from taskd.errors import TaskError
from taskd.providers.http import ProviderClient, ProviderError, post_json

__all__ = ["NO_PROVIDER", "ChatClient", "ChatReply", "ProviderError", "first_object"]

# A try may read to the end of the reply (and its error counts the lines up to where it failed):
# trying every `{` of a reply made of them took minutes of the worker's loop for a megabyte.
# A model's object comes after a little prose, so its first `{` or one of the next few starts it.
OBJECT_TRIES = 32
# ... and only the reply's first MiB is read: a reply may be 16 MiB (JSON_REPLY_LIMIT), and 32 tries
# each reading on to its end held the worker's loop for seconds. An answer's object is far smaller.
OBJECT_SCAN = 1024 * 1024

NO_PROVIDER = "No LLM provider configured: set providers.llm.base_url (TASKD_PROVIDERS__LLM__BASE_URL)"


@attrs.frozen
class ChatReply:
    """The assistant's answer and the provider's token accounting."""

    content: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatClient(ProviderClient[LlmProvider]):
    """Calls `POST {base_url}/chat/completions` of an OpenAI-compatible provider."""

    async def complete(self, messages: list[dict[str, Any]], *, json_mode: bool = False) -> ChatReply:
        """Send `messages` and return the first choice; raise ProviderError on any provider failure."""
        base_url = self._provider.base_url.strip().rstrip("/")
        if not base_url:
            raise TaskError(NO_PROVIDER)
        body: dict[str, Any] = {"model": self._provider.model, "messages": messages}
        if json_mode:
            body["response_format"] = {"type": "json_object"}
        raw = await post_json(
            self._session,
            f"{base_url}/chat/completions",
            body,
            api_key=self._provider.api_key,
            timeout=self._provider.timeout,
            gate=self._gate,
            name="LLM provider",
        )
        return self._parse(raw)

    def _parse(self, raw: bytes) -> ChatReply:
        try:
            data = orjson.loads(raw)
            content = data["choices"][0]["message"]["content"]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            raise ProviderError("LLM provider sent a malformed reply", False) from None
        if not isinstance(content, str):
            raise ProviderError("LLM provider reply has no text content", False)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        prompt_tokens = _count(usage.get("prompt_tokens"))
        completion_tokens = _count(usage.get("completion_tokens"))
        total = _count(usage.get("total_tokens")) or prompt_tokens + completion_tokens
        model = data.get("model")
        return ChatReply(
            content=content,
            model=model if isinstance(model, str) and model else self._provider.model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=total,
        )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def first_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in a model's reply (models wrap them in prose or code fences), looked
    for at the first OBJECT_TRIES `{` of the reply's first OBJECT_SCAN characters."""
    decoder = json.JSONDecoder()
    text = text[:OBJECT_SCAN]
    start = text.find("{")
    for _ in range(OBJECT_TRIES):
        if start == -1:
            break
        try:
            found, _ = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's stack
            found = None
        if isinstance(found, dict):
            return found
        start = text.find("{", start + 1)
    return None
