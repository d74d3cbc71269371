"""A small OpenAI-compatible Images API client (`POST {base_url}/images/generations`) over aiohttp."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import attrs
import orjson

from taskd.config import ImageProvider
from taskd.errors import TaskError
from taskd.providers.http import JSON_REPLY_LIMIT, ProviderClient, post_json

# The longest revised_prompt kept: gpt-image-1's own limit on a prompt. A longer one is cut.
MAX_REVISED_PROMPT_CHARS = 32_000
NO_PROVIDER = "No image provider configured: set providers.image.base_url (TASKD_PROVIDERS__IMAGE__BASE_URL)"


@attrs.frozen
class GeneratedImage:
    """The provider's image: its bytes, or a URL to fetch them from."""

    data: bytes | None
    url: str | None
    revised_prompt: str | None


def quality_for(model: str, quality: str) -> str | None:
    """The API's quality value: dall-e-3 knows standard/hd, dall-e-2 none, newer models low/medium/high/auto."""
    name = model.lower()
    if name.startswith("dall-e-2"):
        return None
    if name.startswith("dall-e-3"):
        return "hd" if quality in ("high", "hd") else "standard"
    return {"standard": "medium", "hd": "high"}.get(quality, quality)


class ImagesClient(ProviderClient[ImageProvider]):
    """Calls the Images API of `[providers.image]`."""

    async def generate(self, prompt: str, size: str, quality: str, *, max_image_bytes: int) -> GeneratedImage:
        """One image for `prompt`; TransientError for timeouts, 429 and 5xx, TaskError otherwise.

        The reply is read up to what an image of `max_image_bytes` takes as base64, and the JSON
        around it: a provider cannot fill the worker's memory.
        """
        base_url = self._provider.base_url.strip().rstrip("/")
        if not base_url:
            raise TaskError(NO_PROVIDER)
        body: dict[str, Any] = {"model": self._provider.model, "prompt": prompt, "n": 1, "size": size}
        mapped = quality_for(self._provider.model, quality)
        if mapped:
            body["quality"] = mapped
        raw = await post_json(
            self._session,
            f"{base_url}/images/generations",
            body,
            api_key=self._provider.api_key,
            timeout=self._provider.timeout,
            gate=self._gate,
            name="Image provider",
            max_bytes=JSON_REPLY_LIMIT + max_image_bytes * 4 // 3,
        )
        return _parse(raw)


def _parse(raw: bytes) -> GeneratedImage:
    try:
        item = orjson.loads(raw)["data"][0]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        raise TaskError("Image provider sent a malformed reply") from None
    revised = item.get("revised_prompt") if isinstance(item.get("revised_prompt"), str) else None
    if revised is not None and len(revised) > MAX_REVISED_PROMPT_CHARS:
        # It goes into the task's result, which a provider's megabytes would take past
        # execution.result_max_bytes and so fail a task whose image is already stored.
        revised = revised[: MAX_REVISED_PROMPT_CHARS - 1] + "…"
    if isinstance(item.get("b64_json"), str):
        try:
            return GeneratedImage(base64.b64decode(item["b64_json"], validate=True), None, revised)
        except (binascii.Error, ValueError):
            raise TaskError("Image provider sent invalid base64 image data") from None
    if isinstance(item.get("url"), str):
        return GeneratedImage(None, item["url"], revised)
    raise TaskError("Image provider reply has neither b64_json nor url")
