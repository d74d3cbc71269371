"""`redis.url = "unix:///path/to/valkey.sock"`: taskd talks to a Valkey over its unix socket."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskd.embedded import valkey_server_binary
from taskd.redis_conn import connect


@pytest.fixture
def valkey_socket(tmp_path: Path) -> Iterator[Path]:
    socket = tmp_path / "valkey.sock"
    server = subprocess.Popen(
        [
            str(valkey_server_binary()),
            "--port",
            "0",
            "--unixsocket",
            str(socket),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield socket
    finally:
        server.terminate()
        server.wait(timeout=10)


async def test_a_unix_socket_url_connects_and_runs_commands(valkey_socket):
    redis = connect(f"unix://{valkey_socket}", socket_timeout=5)
    try:
        async with asyncio.timeout(10):
            while not valkey_socket.exists():
                await asyncio.sleep(0.01)
            await redis.set("k", "v")
            assert await redis.get("k") == b"v"
    finally:
        await redis.aclose()
