"""Before each command, taskd's Redis pools check the connection they hand out for data nobody asked
for from what it has buffered, without a turn of the event loop (taskd.redis_conn.BufferedReadyCheck),
against a real Valkey."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis_probes import EVERY_KIND_OF_URL

from taskd.redis_conn import BufferedReadyCheck, connect


@pytest.fixture
async def client(valkey_url: str) -> AsyncIterator[Redis]:
    redis = connect(valkey_url, socket_timeout=5)
    yield redis
    await redis.aclose()


async def _taken(client: Redis) -> Any:
    """A connection from the client's pool, as a command takes one."""
    # redis-py 5.0 requires a command name here; 5.3 deprecates passing one.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return await client.connection_pool.get_connection("PING")


async def _settle() -> None:
    # Long enough for the event loop to read what Valkey sent into the connection's buffer.
    await asyncio.sleep(0.1)


@pytest.mark.parametrize("url", EVERY_KIND_OF_URL)
def test_every_kind_of_connection_taskd_opens_checks_what_it_has_buffered(url):
    connection = connect(url).connection_pool.make_connection()

    assert isinstance(connection, BufferedReadyCheck)


async def test_a_clean_connection_is_found_clean_without_waiting_for_the_event_loop(client):
    await client.ping()
    connection = await _taken(client)
    try:
        check = connection.can_read_destructive()
        # A coroutine that finishes at its first step never handed control back to the event loop.
        with pytest.raises(StopIteration) as finished:
            check.send(None)
    finally:
        await client.connection_pool.release(connection)

    assert finished.value.value is False


async def test_a_reply_left_behind_on_a_connection_is_not_taken_for_the_next_commands(client):
    await client.set("left", "behind")
    connection = await _taken(client)
    await connection.send_command("GET", "left")  # its reply is never read: an interrupted command
    await client.connection_pool.release(connection)
    await _settle()

    assert await client.get("other") is None


async def test_a_connection_the_server_closed_is_replaced_before_a_command_is_sent_on_it(client, redis):
    connection = await _taken(client)
    await connection.send_command("CLIENT ID")
    connection_id = await connection.read_response()
    await client.connection_pool.release(connection)
    await redis.client_kill_filter(_id=connection_id)
    await _settle()

    assert await client.echo("still here") == b"still here"
