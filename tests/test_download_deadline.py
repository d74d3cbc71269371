"""A fetch of a caller's URL is bounded by `media.download_timeout`, not by aiohttp's own defaults.

aiohttp's default deadlines (30 s to connect, 300 s in all) are too long to wait for in a test, so
the first test shrinks the default, which a session made without a timeout of its own takes up, to
0.2 s: a response 0.6 s late is then past aiohttp's default but within the configured 5 s.
"""

from __future__ import annotations

import aiohttp
import aiohttp.client
import pytest
from fake_media_apis import make_ctx, png

from taskd.config import Config, MediaConfig, NetworkConfig
from taskd.media import download


def media_config(tmp_path, download_timeout: float) -> Config:
    # The fake file server is on loopback.
    return Config(
        data_dir=str(tmp_path / "data"),
        media=MediaConfig(download_timeout=download_timeout),
        network=NetworkConfig(allow_private=True),
    )


@pytest.mark.parametrize("trusted", [False, True], ids=["guarded hop", "trusted hop"])
async def test_a_download_slower_than_aiohttps_default_deadline_but_within_the_configured_one_arrives(
    tmp_path, files, monkeypatch, trusted
):
    monkeypatch.setattr(aiohttp.client, "DEFAULT_TIMEOUT", aiohttp.ClientTimeout(total=0.2))
    files.add("late.png", png())
    files.slow_seconds = 0.6
    config = media_config(tmp_path, download_timeout=5)
    async with aiohttp.ClientSession() as http:  # a provider's session: aiohttp's default deadline
        ctx, _ = make_ctx(http, config)

        fetched = await download.fetch(
            ctx.inputs,
            f"{files.url}/slow/late.png",
            tmp_path / "input",
            kind="image",
            limits=download.Limits.from_config(config.media),
            trusted=[files.url] if trusted else [],
        )

    assert fetched.read_bytes() == png()


async def test_a_task_modules_own_get_through_ctx_inputs_gives_up_at_the_configured_deadline(
    tmp_path, files, http
):
    files.add("late.png", png())
    files.slow_seconds = 2
    ctx, _ = make_ctx(http, media_config(tmp_path, download_timeout=0.3))

    # The file comes whole after 2 s: without the deadline the read succeeds, however late.
    with pytest.raises(TimeoutError):
        async with ctx.inputs.get(f"{files.url}/slow/late.png") as response:
            await response.read()
