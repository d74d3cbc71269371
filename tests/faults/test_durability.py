"""The embedded Valkey's fsync policy is the configured one: everysec by default, always on request."""

from __future__ import annotations

from redis.asyncio import Redis

from taskd.config import load_config
from taskd.embedded import EmbeddedValkey


async def fsync_policy(url: str) -> str:
    async with Redis.from_url(url) as client:
        return (await client.config_get("appendfsync"))["appendfsync"]


async def test_embedded_valkey_fsyncs_its_append_only_file_every_second_by_default(tmp_path):
    config = load_config(None, environ={})

    async with EmbeddedValkey(tmp_path, appendfsync=config.redis.embedded_appendfsync) as valkey:
        assert await fsync_policy(valkey.url) == "everysec"


async def test_embedded_appendfsync_always_is_passed_to_the_server(tmp_path):
    config = load_config(None, environ={"TASKD_REDIS__EMBEDDED_APPENDFSYNC": "always"})

    async with EmbeddedValkey(tmp_path, appendfsync=config.redis.embedded_appendfsync) as valkey:
        assert await fsync_policy(valkey.url) == "always"
