"""taskd's Redis clients pack commands with hiredis (taskd.redis_conn), byte for byte as redis-py's
own packer does, against a real Valkey."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import DataError
from redis_probes import EVERY_KIND_OF_URL

from taskd.redis_conn import HiredisPacking, connect

# What taskd sends: text (non-ASCII too), bytes, ints of any size, floats, an empty value.
VALUES = ("plain", "ünïcødé ✓", b"\x00\xffraw", 0, -7, 2**70, 1.5, 1e-300, 1733200000.123456, "")


@pytest.fixture
async def client(valkey_url: str) -> AsyncIterator[Redis]:
    redis = connect(valkey_url, socket_timeout=5)
    yield redis
    await redis.aclose()


@pytest.mark.parametrize("url", EVERY_KIND_OF_URL)
def test_every_kind_of_connection_taskd_opens_packs_with_hiredis(url):
    connection = connect(url).connection_pool.make_connection()

    assert isinstance(connection, HiredisPacking)


def test_a_command_is_packed_to_the_bytes_redis_py_packs():
    ours = connect("redis://127.0.0.1:1/0").connection_pool.make_connection()

    for command in (("RPUSH", "list", *VALUES), ("CONFIG GET", "maxmemory"), (b"CLIENT LIST",)):
        assert b"".join(ours.pack_command(*command)) == b"".join(Connection().pack_command(*command))


async def test_values_reach_redis_as_sent(client):
    await client.rpush("list", *VALUES)

    stored = await client.lrange("list", 0, -1)

    assert stored == [value if isinstance(value, bytes) else str(value).encode() for value in VALUES]


async def test_a_command_of_several_words_is_split_as_redis_py_splits_it(client):
    assert "maxmemory" in await client.execute_command("CONFIG GET", "maxmemory")


@pytest.mark.parametrize("value", [None, True])
async def test_a_value_redis_cannot_take_is_a_data_error(client, value):
    with pytest.raises(DataError):
        await client.set("key", value)
