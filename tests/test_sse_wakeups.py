"""The event hub never loses a wake-up: a stream a client starts watching joins the blocking XREAD at
once, whenever the subscribe happens relative to the read in flight (issue 19: one wait in fifty sat
out a whole check interval).

Each test makes a lost wake-up cost far more than the time it allows: the XREAD blocks for a minute
(BLOCK_MS) and a failed reader waits half a minute before it reads again, so a wait that ends
within the test's few seconds is one that was woken."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import orjson
from redis.asyncio import Redis
from sse import read_events

from taskd.backoff import Backoff
from taskd.http import events as events_module
from taskd.http.events import EventHub, Subscription

WOKEN_WITHIN = 5.0  # seconds; a lost wake-up costs BLOCK_MS (60 s here) or a reconnect delay (30 s)


class SlowReconnect(Backoff):
    """A reader that fails waits 30 s before it reads again, so a failure shows as a stall."""

    @classmethod
    def reconnect(cls) -> Backoff:
        return cls(30.0, 30.0)


def entry(status: str) -> dict[str, bytes]:
    return {"event": orjson.dumps({"type": "status", "status": status})}


async def woken(subscription: Subscription) -> list[str]:
    """The statuses pushed to `subscription`, once it is woken."""
    async with asyncio.timeout(WOKEN_WITHIN):
        await subscription.wakeup.wait()
    return [event.status for event in subscription.take()]


async def read_blocked(redis: Redis) -> bool:
    """True while some client of the server is blocked in a command (the hub's XREAD)."""
    clients = (await redis.execute_command("CLIENT", "LIST")).decode().splitlines()
    # Flag b: blocked (a client on the unix socket also has U).
    flags = [
        field.removeprefix("flags=")
        for line in clients
        for field in line.split()
        if field.startswith("flags=")
    ]
    return any("b" in flag for flag in flags)


async def read_not_blocked(redis: Redis) -> bool:
    return not await read_blocked(redis)


async def until(predicate: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(WOKEN_WITHIN):
        while not await predicate():
            await asyncio.sleep(0.01)


async def test_a_stream_watched_while_the_read_is_on_its_way_to_redis_is_read_at_once(redis, monkeypatch):
    monkeypatch.setattr(events_module, "BLOCK_MS", 60_000)
    hub = EventHub(redis)
    late: list[Subscription] = []

    class SubscribeBeforeTheRead(Redis):
        """The hub's reader connection; a client subscribes between the reader choosing the streams
        of its first XREAD and that XREAD reaching Redis, the window where a wake-up can be lost."""

        async def xread(self, *args, **kwargs):
            if not late:
                late.append(hub.subscribe("test:late", "0-0"))
                # Whatever the hub sends to wake the read reaches Redis before the read does.
                await asyncio.sleep(0.2)
            return await super().xread(*args, **kwargs)

    monkeypatch.setattr(events_module, "Redis", SubscribeBeforeTheRead)
    hub.subscribe("test:first", "0-0")
    try:
        await until(lambda: read_blocked(redis))
        await redis.xadd("test:late", entry("completed"))

        assert await woken(late[0]) == ["completed"]
    finally:
        await hub.close()


async def test_a_stream_left_while_the_read_was_woken_for_it_does_not_stall_the_next(redis, monkeypatch):
    monkeypatch.setattr(events_module, "BLOCK_MS", 60_000)
    monkeypatch.setattr(events_module, "Backoff", SlowReconnect)
    hub = EventHub(redis)
    try:
        a = hub.subscribe("test:a", "0-0")
        await until(lambda: read_blocked(redis))
        hub.unsubscribe(a)
        # Woken for b, which is gone again (its task had already ended) when the read comes back.
        hub.unsubscribe(hub.subscribe("test:b", "0-0"))
        await until(lambda: read_not_blocked(redis))

        c = hub.subscribe("test:c", "0-0")
        await redis.xadd("test:c", entry("queued"))

        assert await woken(c) == ["queued"]
    finally:
        await hub.close()


async def test_what_the_hub_writes_to_wake_its_read_expires_and_goes_when_it_closes(redis, monkeypatch):
    monkeypatch.setattr(events_module, "BLOCK_MS", 60_000)
    hub = EventHub(redis)
    hub.subscribe("test:a", "0-0")
    await until(lambda: read_blocked(redis))
    b = hub.subscribe("test:b", "0-0")
    await redis.xadd("test:b", entry("queued"))
    assert await woken(b) == ["queued"]
    own = [key for key in await redis.keys("*") if key != b"test:b"]

    assert all(0 < ttl <= events_module.WAKE_TTL_MS for ttl in [await redis.pttl(key) for key in own])
    await hub.close()
    assert await redis.keys("*") == [b"test:b"]


async def test_sequential_waits_over_http_are_each_woken_at_once(taskd, monkeypatch):
    """Submit, then follow the task's events to its end, fifty times in a row, as issue 19's
    benchmark did (there one wait in fifty stalled; the two tests above force those stalls)."""
    monkeypatch.setattr(events_module, "BLOCK_MS", 60_000)
    monkeypatch.setattr(events_module, "Backoff", SlowReconnect)
    slowest = 0.0
    for _ in range(50):
        started = time.monotonic()
        task = await taskd.submit("noop", {})
        async with (
            asyncio.timeout(WOKEN_WITHIN),
            taskd.client.get(f"/api/v1/tasks/{task['task_id']}/events") as response,
        ):
            seen = await read_events(response)
        assert seen[-1].data["status"] == "completed"
        slowest = max(slowest, time.monotonic() - started)

    assert slowest < WOKEN_WITHIN
