"""A small OpenAI-compatible Chat Completions client over aiohttp."""

from __future__ import annotations

from typing import Any

import aiohttp
import attrs
import orjson

from taskd.config import LlmProvider
from taskd.jobs.spec import TaskError

NO_PROVIDER = "No LLM provider configured: set providers.llm.base_url (TASKD_PROVIDERS__LLM__BASE_URL)"
_DETAIL_LIMIT = 200


class ProviderError(Exception):
    """The LLM provider failed; `transient` says whether trying again later may help."""

    def __init__(self, message: str, transient: bool, status: int | None = None, *, timeout: bool = False):
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.status = status
        self.timeout = timeout

    @property
    def reason(self) -> str:
        """A short, secret-free cause: `timeout`, `HTTP 503`, `connection failed` or `malformed reply`."""
        if self.timeout:
            return "timeout"
        if self.status is not None:
            return f"HTTP {self.status}"
        return "connection failed" if self.transient else "malformed reply"


@attrs.frozen
class ChatReply:
    """The assistant's answer and the provider's token accounting."""

    content: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatClient:
    """Calls `POST {base_url}/chat/completions` of an OpenAI-compatible provider."""

    def __init__(self, provider: LlmProvider, session: aiohttp.ClientSession) -> None:
        self._provider = provider
        self._session = session

    @property
    def model(self) -> str:
        """The model name sent with every request."""
        return self._provider.model

    async def complete(self, messages: list[dict[str, Any]], *, json_mode: bool = False) -> ChatReply:
        """Send `messages` and return the first choice; raise ProviderError on any provider failure."""
        base_url = self._provider.base_url.strip().rstrip("/")
        if not base_url:
            raise TaskError(NO_PROVIDER)
        body: dict[str, Any] = {"model": self._provider.model, "messages": messages}
        if json_mode:
            body["response_format"] = {"type": "json_object"}
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._provider.api_key:
            headers["Authorization"] = f"Bearer {self._provider.api_key}"
        timeout = aiohttp.ClientTimeout(total=self._provider.timeout)
        try:
            async with self._session.post(
                f"{base_url}/chat/completions", data=orjson.dumps(body), headers=headers, timeout=timeout
            ) as resp:
                status = resp.status
                raw = await resp.read()
        except TimeoutError:
            # Checked before ClientError: aiohttp's timeout errors are both.
            raise ProviderError(
                f"LLM provider did not answer within {self._provider.timeout:g}s", True, timeout=True
            ) from None
        except aiohttp.ClientError as exc:
            raise ProviderError(
                f"LLM provider unreachable: {self._redact(f'{type(exc).__name__}: {exc}')}", True
            ) from None
        if status >= 400:
            raise self._http_error(status, raw)
        return self._parse(raw)

    def _http_error(self, status: int, raw: bytes) -> ProviderError:
        transient = status == 429 or status >= 500
        detail = self._redact(_error_detail(raw))
        message = f"LLM provider returned HTTP {status}" + (f": {detail}" if detail else "")
        return ProviderError(message, transient, status)

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

    def _redact(self, text: str) -> str:
        key = self._provider.api_key
        return text.replace(key, "***") if key else text


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _error_detail(raw: bytes) -> str:
    """The provider's own error message (OpenAI shape `{"error": {"message": ...}}`), shortened."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace").strip()
    else:
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            text = str(error.get("message") or "")
        elif isinstance(error, str):
            text = error
        else:
            text = ""
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 1] + "…"
