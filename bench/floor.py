"""The machine's floor under the latency rows: what one request costs here with nothing behind it.

taskd's latency rows (start, webhook, a result on the event stream) are HTTP requests and Redis
round trips between processes on one machine. What such a hop costs before any work of taskd's —
the client, the kernel, waking a process that sat idle — is measured in the same run by servers
that do nothing: a bare aiohttp application (on uvloop, as `taskd serve` runs) answering a GET
with two bytes, in a process of its own, and a fresh Valkey answering PING over loopback TCP (as
the libraries reach theirs). One client times one request after another at two paces: back to
back, as the event-stream row sends its requests (and the start-latency row its submits, each
right after a status poll), and after 10 ms idle, as the webhook row's tasks come (20 ms apart).
On a virtual machine an idle CPU is halted and waking it is dear, so the second pace can cost
several times the first; and the spread of the first (its p99 ÷ p50) is the machine's own, which
any p99 measured on it inherits.

    .venv/bin/python bench/floor.py                 # the figures, a line each
    .venv/bin/python bench/floor.py --json f.json   # and the raw figures
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import uvloop
from aiohttp import web
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import free_port, percentile, python, spawn, stop, wait_for_line

IDLE_S = 0.01  # the pause before each request of the "after idle" pace


@attrs.frozen
class Counts:
    """How many requests each pace times, after `warm_up` untimed ones."""

    back_to_back: int = 2000
    after_idle: int = 300
    warm_up: int = 100


TINY = Counts(back_to_back=40, after_idle=10, warm_up=5)


async def _serve(port: int) -> None:
    async def answer(_: web.Request) -> web.Response:
        return web.Response(body=b"ok")

    app = web.Application()
    app.router.add_get("/", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"listening on {port}", flush=True)
    await asyncio.Event().wait()


async def _timed(send: Callable[[], Awaitable[object]], counts: Counts, pause: float) -> dict[str, Any]:
    for _ in range(counts.warm_up):
        await send()
    latencies = []
    for _ in range(counts.after_idle if pause else counts.back_to_back):
        if pause:
            await asyncio.sleep(pause)
        started = time.perf_counter()
        await send()
        latencies.append((time.perf_counter() - started) * 1000)
    return {
        "requests": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


async def _paces(send: Callable[[], Awaitable[object]], counts: Counts) -> dict[str, Any]:
    return {"back_to_back": await _timed(send, counts, 0), "after_idle": await _timed(send, counts, IDLE_S)}


async def http_get(counts: Counts) -> dict[str, Any]:
    """A GET of a bare aiohttp server in a process of its own, at both paces."""
    port = free_port()
    server = spawn([python(), __file__, "--serve", str(port)], {})
    try:
        await asyncio.to_thread(wait_for_line, server, r"listening on")
        async with aiohttp.ClientSession() as session:

            async def get() -> bytes:
                async with session.get(f"http://127.0.0.1:{port}/") as response:
                    return await response.read()

            return await _paces(get, counts)
    finally:
        await asyncio.to_thread(stop, server)


async def valkey_ping(counts: Counts) -> dict[str, Any]:
    """A PING of a fresh Valkey (taskd's embedded one, over loopback TCP), at both paces."""
    from taskd.embedded import EmbeddedValkey

    with tempfile.TemporaryDirectory(prefix="taskd-floor-") as tmp:
        valkey = EmbeddedValkey(Path(tmp))
        await valkey.start()
        try:
            assert valkey.tcp_url is not None
            redis = Redis.from_url(valkey.tcp_url)
            try:
                return await _paces(redis.ping, counts)
            finally:
                await redis.aclose()
        finally:
            await valkey.stop()


async def measure(counts: Counts) -> dict[str, Any]:
    """Both servers at both paces: {"idle_s", "http_get": {pace: figures}, "valkey_ping": {...}}."""
    return {"idle_s": IDLE_S, "http_get": await http_get(counts), "valkey_ping": await valkey_ping(counts)}


def describe(floor: dict[str, Any]) -> str:
    """A line for each server: its p50 and p99 back to back, the spread between them, its p50 after idle."""
    idle_ms = floor["idle_s"] * 1000
    lines = []
    for key, what in (
        ("http_get", "a GET of a bare aiohttp server"),
        ("valkey_ping", "a PING of a fresh Valkey"),
    ):
        close, idle = floor[key]["back_to_back"], floor[key]["after_idle"]
        lines.append(
            f"- {what}: p50 {close['p50_ms']:.2f} ms, p99 {close['p99_ms']:.2f} ms back to back "
            f"(p99 {close['p99_ms'] / close['p50_ms']:.2f}x p50); p50 {idle['p50_ms']:.2f} ms after "
            f"{idle_ms:g} ms idle"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="a few dozen requests: proves it runs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the bare server
    args = parser.parse_args()
    if args.serve is not None:
        uvloop.run(_serve(args.serve))
        return 0
    # The client on asyncio's own loop, as bench/compare.py's clients are.
    floor = asyncio.run(measure(TINY if args.tiny else Counts()))
    print(describe(floor))
    if args.json:
        args.json.write_text(json.dumps(floor, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
