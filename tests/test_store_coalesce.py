"""Calls of the submit script made at once share one round trip (taskd/store/coalesce.py), each
still its own script run with its own reply or error; reads made at once too; against a real Valkey."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis_probes import counting_writes

from taskd import keys, runtasks
from taskd.runtasks import RunTasks
from taskd.store import scripts
from taskd.store.coalesce import MOST_AT_ONCE, Coalesced, Reads


def spend(coalesced: Coalesced, who: str, limit: Any = 5) -> Any:
    return coalesced(
        {"log": keys.rate_limit("submit", who)},
        {"limit": limit, "window": 60_000, "nonce": who, "cost": 1},
    )


@pytest.fixture
def coalesced(redis: Redis) -> Coalesced:
    return Coalesced(redis, scripts.load(redis, "window"))


async def test_calls_made_at_once_share_one_write_and_each_gets_its_own_reply(redis, coalesced):
    writes = counting_writes(redis)  # before the client opens its first connection
    await spend(coalesced, "warm-up")  # the script loaded into Valkey (NOSCRIPT, then loaded)
    writes[0] = 0

    replies = await asyncio.gather(*(spend(coalesced, f"caller-{n}") for n in range(20)))

    assert writes == [1]
    assert all(reply[0] == 1 and reply[1] == 4 for reply in replies)  # allowed, 4 of 5 left
    assert [await redis.zcard(keys.rate_limit("submit", f"caller-{n}")) for n in range(20)] == [1] * 20


async def test_a_call_that_fails_in_redis_leaves_the_others_their_replies(coalesced):
    good, bad, also_good = await asyncio.gather(
        spend(coalesced, "a"),
        spend(coalesced, "b", limit="many"),
        spend(coalesced, "c"),
        return_exceptions=True,
    )

    assert good[0] == 1
    assert isinstance(bad, ResponseError)
    assert also_good[0] == 1


async def test_a_script_that_redis_forgot_is_loaded_again(redis, coalesced):
    await spend(coalesced, "before")
    await redis.script_flush()

    replies = await asyncio.gather(spend(coalesced, "after-1"), spend(coalesced, "after-2"))

    assert [reply[0] for reply in replies] == [1, 1]


async def test_every_caller_gets_the_error_when_redis_cannot_be_reached():
    redis = Redis(port=1)  # nothing listens there
    coalesced = Coalesced(redis, scripts.load(redis, "window"))

    outcomes = await asyncio.gather(spend(coalesced, "x"), spend(coalesced, "y"), return_exceptions=True)
    await redis.aclose()

    assert all(isinstance(outcome, RedisConnectionError) for outcome in outcomes)


async def test_more_calls_at_once_than_one_pipeline_carries_go_in_several(redis, coalesced):
    writes = counting_writes(redis)
    # Warmed up the same way: the script loaded, and the two connections open (their handshakes
    # are writes too).
    await asyncio.gather(*(spend(coalesced, f"warm-up-{n}") for n in range(MOST_AT_ONCE + 1)))
    writes[0] = 0

    replies = await asyncio.gather(*(spend(coalesced, f"many-{n}") for n in range(MOST_AT_ONCE + 1)))

    assert writes == [2]
    assert all(reply[0] == 1 for reply in replies)


async def test_reads_made_at_once_share_one_write_and_each_gets_its_own_reply(redis):
    writes = counting_writes(redis)  # before the client opens its first connection
    for n in range(20):
        await redis.hset(f"record-{n}", mapping={"n": n})
    reads = Reads(redis)
    writes[0] = 0

    replies = await asyncio.gather(*(reads("HGETALL", f"record-{n}") for n in range(20)))

    assert writes == [1]
    assert replies == [{b"n": str(n).encode()} for n in range(20)]  # converted as redis.hgetall does


async def test_a_read_that_fails_in_redis_leaves_the_others_their_replies(redis):
    await redis.set("text", "not a hash")
    reads = Reads(redis)

    good, bad, missing = await asyncio.gather(
        reads("GET", "text"), reads("HGETALL", "text"), reads("HGETALL", "nothing"), return_exceptions=True
    )

    assert good == b"not a hash"
    assert isinstance(bad, ResponseError)
    assert missing == {}


async def test_a_send_begun_by_a_coroutine_tasks_call_outlives_the_end_of_that_tasks_run(redis):
    # The first caller's send carries the calls made beside it: were it one of the tasks its
    # handler made, the end of that run would cancel it, and the other callers would get the cancel.
    runtasks.watch(asyncio.get_running_loop())
    run, reads = RunTasks(), Reads(redis)
    await redis.set("coalesce:k", "v")

    async def call_in_a_run() -> Any:
        run.enter()
        return await reads("GET", "coalesce:k")

    in_run = asyncio.create_task(call_in_a_run())
    beside = asyncio.create_task(reads("GET", "coalesce:k"))  # made in the same turn: the same send
    await asyncio.sleep(0)
    await run.stop(timeout=5)

    async with asyncio.timeout(10):  # cut off, the send left the calls beside it unanswered
        assert await beside == b"v"
        assert await in_run == b"v"
