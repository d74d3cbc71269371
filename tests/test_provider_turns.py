"""Projects take turns for an outside provider's slots and places (`providers.<name>.max_concurrency`,
`.per_minute`): while requests wait, the waiting project holding the fewest slots goes next, first
come first served within a project. Against real Valkey, as tests/test_provider_limits.py."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from conftest import RunningService
from redis.asyncio import Redis

from taskd import keys
from taskd.config import LlmProvider, ProvidersConfig
from taskd.providers.limits import GRACE, POLL, SOON, TOLD, Gate, ProviderLimits

WAITING = "waiting_for_provider:llm"


async def waits(taskd: RunningService, task: dict[str, Any]) -> bool:
    return (await taskd.status(task["task_id"])).get("current_step") == WAITING


def image_gate(limits: ProviderLimits, project: str, max_concurrency: int = 1, per_minute: int = 0) -> Gate:
    gate = limits.gate("image", max_concurrency, per_minute, project=project)
    assert gate is not None
    return gate


async def take_turn(gate: Gate, name: str, order: list[str]) -> None:
    async with gate.slot():
        order.append(name)
        await asyncio.sleep(0.05)


async def redis_ms(redis: Redis) -> int:
    """Redis's clock, in ms, as the scripts read it."""
    seconds, micros = await redis.time()
    return int(seconds * 1000 + micros // 1000)


async def in_line(redis: Redis, count: int) -> None:
    """Until `count` requests wait in line (in Redis): a loaded machine may take its time to ask."""
    async with asyncio.timeout(30):
        while await redis.zcard(keys.provider_waiters("image")) < count:
            await asyncio.sleep(0.01)


async def wait_in_line(
    limits: ProviderLimits,
    redis: Redis,
    *waiters: tuple[str, str],
    order: list[str],
    max_concurrency: int = 1,
) -> list[asyncio.Task[None]]:
    """Start a request per (project, name), each once the one before waits in line."""
    already = await redis.zcard(keys.provider_waiters("image"))
    started = []
    for project, name in waiters:
        gate = image_gate(limits, project, max_concurrency)
        started.append(asyncio.create_task(take_turn(gate, name, order)))
        await in_line(redis, already + len(started))
    return started


async def test_another_projects_single_request_gets_the_next_slot_before_a_project_with_many_waiting(
    redis: Redis,
):
    limits = ProviderLimits(redis, "w")
    order: list[str] = []
    async with image_gate(limits, "many").slot():
        waiting = await wait_in_line(
            limits, redis, *[("many", f"many-{i}") for i in range(8)], ("one", "one"), order=order
        )

    async with asyncio.timeout(10):
        await asyncio.gather(*waiting)
    assert order[0] == "one"


async def test_a_projects_waiting_requests_get_slots_first_come_first_served(redis: Redis):
    limits = ProviderLimits(redis, "w")
    order: list[str] = []
    async with image_gate(limits, "p").slot():
        waiting = await wait_in_line(limits, redis, *[("p", f"p-{i}") for i in range(5)], order=order)

    async with asyncio.timeout(10):
        await asyncio.gather(*waiting)
    assert order == [f"p-{i}" for i in range(5)]


async def test_a_project_that_holds_more_slots_waits_for_one_that_holds_fewer(redis: Redis):
    limits = ProviderLimits(redis, "w")
    order: list[str] = []
    # "many" holds both slots; "few" asks after "many"'s next request. One slot is freed: two
    # freed at once would go to both, and either may take its own first.
    async with image_gate(limits, "many", 2).slot():
        async with image_gate(limits, "many", 2).slot():
            waiting = await wait_in_line(
                limits, redis, ("many", "many"), ("few", "few"), order=order, max_concurrency=2
            )
        async with asyncio.timeout(10):
            while not order:
                await asyncio.sleep(0.01)
        assert order == ["few"]

    async with asyncio.timeout(10):
        await asyncio.gather(*waiting)


async def test_projects_take_turns_for_the_places_of_the_minute(redis: Redis):
    # Two requests were sent 55 s and 54.5 s ago (by Redis's clock): a place comes free in 5 s,
    # another half a second later; all four wait in line by then, even on a loaded machine.
    now = await redis_ms(redis)
    await redis.zadd(keys.provider_minute("image"), {"a": now - 55_000, "b": now - 54_500})
    limits = ProviderLimits(redis, "w")
    order: list[str] = []
    waiting = []
    # "many" waits first, then two more of its requests and "one"'s.
    for project, name in [("many", "many-0"), ("many", "many-1"), ("many", "many-2"), ("one", "one")]:
        waiting.append(asyncio.create_task(take_turn(image_gate(limits, project, 0, 2), name, order)))
        if name == "many-0":
            await in_line(redis, 1)
    await in_line(redis, 4)
    assert order == []

    async with asyncio.timeout(15):
        while len(order) < 2:
            await asyncio.sleep(0.02)
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)

    # The project waiting longest went first; then the other project, not "many" again.
    assert [name.split("-")[0] for name in order] == ["many", "one"]


async def test_slots_freed_together_go_to_as_many_waiters_each_taking_its_own_without_waiting_for_those_before_it(
    redis: Redis,
):
    limits = ProviderLimits(redis, "w")
    for n in range(3):
        assert await limits.acquire("image", 3, 0, f"h:{n}|holder") == (1, 0)
    for waiter in ["w:1|a", "w:2|a", "w:1|b"]:
        assert (await limits.acquire("image", 3, 0, waiter))[0] == 0
    for n in range(3):
        await limits.release("image", f"h:{n}|holder")

    # In turn: "a"'s first, "b"'s, then "a"'s second; the third asks first and takes its slot.
    assert await limits.acquire("image", 3, 0, "w:2|a") == (1, 0)
    assert await limits.acquire("image", 3, 0, "w:1|b") == (1, 0)
    assert await limits.acquire("image", 3, 0, "w:1|a") == (1, 0)


async def test_a_waiter_past_the_freed_slots_in_turn_waits_the_project_holding_fewer_going_first_at_each(
    redis: Redis,
):
    limits = ProviderLimits(redis, "w")
    assert await limits.acquire("image", 3, 0, "h:0|a") == (1, 0)
    for n in (1, 2):
        assert await limits.acquire("image", 3, 0, f"h:{n}|holder") == (1, 0)
    for waiter in ["w:1|a", "w:2|a", "w:1|b"]:
        assert (await limits.acquire("image", 3, 0, waiter))[0] == 0
    for n in (1, 2):
        await limits.release("image", f"h:{n}|holder")

    # Two slots: "b" holds none and goes first, then "a"'s first (each holding one); "a"'s second
    # would be third, though "a" began waiting first.
    assert (await limits.acquire("image", 3, 0, "w:2|a"))[0] == 0
    assert await limits.acquire("image", 3, 0, "w:1|a") == (1, 0)
    assert await limits.acquire("image", 3, 0, "w:1|b") == (1, 0)
    assert await redis.zrange(keys.provider_waiters("image"), 0, -1) == [b"w:2|a"]


async def test_places_of_the_minute_freed_together_go_to_as_many_waiters_in_turn(redis: Redis):
    # Two requests sent 59.8 s ago (by Redis's clock): both places come free in 0.2 s.
    sent = await redis_ms(redis) - 59_800
    await redis.zadd(keys.provider_minute("image"), {"a": sent, "b": sent})
    limits = ProviderLimits(redis, "w")
    for waiter in ["w:1|a", "w:2|a", "w:1|b"]:
        assert (await limits.acquire("image", 0, 2, waiter))[0] == -1
    async with asyncio.timeout(30):
        while await redis_ms(redis) <= sent + 60_000:
            await asyncio.sleep(0.01)

    # In turn: "a"'s first, "b"'s, then "a"'s second: the second takes a place before the first.
    assert (await limits.acquire("image", 0, 2, "w:2|a"))[0] == 0
    assert await limits.acquire("image", 0, 2, "w:1|b") == (1, 0)
    assert await limits.acquire("image", 0, 2, "w:1|a") == (1, 0)


# How soon a waiter is told to ask again is the script's answer, read here as it is given: how much
# of a freed slot's time goes unused follows from it (measured in docs/development.md, not here).


@pytest.mark.parametrize(
    ("ahead", "asker"),
    [
        # The first in the next project's line: told to wait the holder's lease (30 s), it would
        # ask again an ordinary pause (up to a quarter second) after the slot was freed for it.
        ([], "w:1|next"),
        # The second: next once the first has its slot; asleep, a project's requests followed each
        # other through the slots with idle gaps (40 of 50 ms through 2 slots: ~3.8 s, not ~1.5 s).
        (["w:1|next"], "w:2|next"),
        # The first in line of the project whose turn comes after: the turn passes to another
        # project at each hand-over (4 projects: 3.6 to 4.3 s, not ~1.3 s).
        (["a:1|a"], "b:1|b"),
    ],
    ids=["first-of-next-project", "second-of-next-project", "first-of-project-after"],
)
async def test_a_waiter_whose_turn_is_near_is_told_to_ask_again_sooner_than_an_ordinary_pause(
    redis: Redis, ahead: list[str], asker: str
):
    limits = ProviderLimits(redis, "w")
    assert await limits.acquire("image", 1, 0, "h:1|holder") == (1, 0)
    for waiter in ahead:
        await limits.acquire("image", 1, 0, waiter)

    refused, asks_in = await limits.acquire("image", 1, 0, asker)

    assert refused == 0
    assert asks_in <= len(ahead) * SOON + SOON < POLL[0]


async def test_a_waiter_far_from_its_turn_is_not_told_to_ask_more_often_than_an_ordinary_pause(
    redis: Redis,
):
    limits = ProviderLimits(redis, "w")
    assert await limits.acquire("image", 1, 0, "h:1|holder") == (1, 0)
    for n in range(TOLD):
        await limits.acquire("image", 1, 0, f"w:{n}|many")

    refused, asks_in = await limits.acquire("image", 1, 0, f"w:{TOLD}|many")

    assert refused == 0
    assert asks_in >= POLL[0]


async def test_the_turn_passes_from_project_to_project(redis: Redis):
    limits = ProviderLimits(redis, "w")
    order: list[str] = []
    # Every request waits before a slot frees: the first ones to reach Redis would otherwise take
    # both slots uncontested, now and then two of one project.
    async with image_gate(limits, "holder", 2).slot(), image_gate(limits, "holder", 2).slot():
        requests = [
            asyncio.create_task(take_turn(image_gate(limits, project, max_concurrency=2), project, order))
            for _ in range(10)
            for project in ("a", "b", "c", "d")
        ]
        await in_line(redis, 40)
    async with asyncio.timeout(60):
        await asyncio.gather(*requests)

    assert set(order[:4]) == {"a", "b", "c", "d"}
    assert sorted(order) == sorted(["a", "b", "c", "d"] * 10)


async def test_a_waiter_that_stopped_asking_is_dropped_from_the_line_a_grace_after_it_said_it_would_ask(
    redis: Redis,
):
    limits = ProviderLimits(redis, "w")
    assert await limits.acquire("image", 1, 0, "h:1|holder") == (1, 0)
    asked = await redis_ms(redis)

    # A request of project "gone" asks once, first in line, and its worker dies: it never asks again.
    assert (await limits.acquire("image", 1, 0, "dead:1|gone"))[0] == 0

    dropped_by = await redis.zscore(keys.provider_waiters("image"), "dead:1|gone")
    assert dropped_by is not None
    assert dropped_by <= asked + GRACE * 1000 + 1000  # its grace past Redis's now, a second of slack


async def test_a_waiter_that_stopped_asking_does_not_hold_up_the_next_turn_for_good(redis: Redis):
    limits = ProviderLimits(redis, "w")
    order: list[str] = []
    async with image_gate(limits, "holder").slot():
        assert (await limits.acquire("image", 1, 0, "dead:1|gone"))[0] == 0
        waiting = await wait_in_line(limits, redis, ("next", "next"), order=order)

    async with asyncio.timeout(GRACE + 30):
        await asyncio.gather(*waiting)
    assert order == ["next"]
    assert await redis.zrange(keys.provider_waiters("image"), 0, -1) == []


@pytest.mark.parametrize(
    ("dead", "lost"),
    [
        # No project has a turn: none would be given a slot.
        ("dead:1|a", ["turns"]),
        # The waiters are in no line: none would have a place.
        ("dead:1|a", ["lines"]),
        # A project in the turns with no line, whose only request is gone: none asks to join again.
        ("dead:1|gone", ["waiters", "lines"]),
    ],
    ids=["turns", "lines", "line-of-the-gone"],
)
async def test_the_waiting_requests_get_their_slots_when_keys_of_the_turns_are_lost(
    redis: Redis, dead: str, lost: list[str]
):
    # As an evicting Redis would lose them (taskd's own Valkey never evicts); a lost `waiters` is
    # not repaired (docs/development.md).
    limits = ProviderLimits(redis, "w")
    order: list[str] = []
    async with image_gate(limits, "holder").slot():
        assert (await limits.acquire("image", 1, 0, dead))[0] == 0
        waiting = await wait_in_line(limits, redis, ("a", "a"), ("b", "b"), order=order)
        names = {
            "waiters": [keys.provider_waiters("image")],
            "turns": [keys.provider_turns("image")],
            "lines": await redis.keys(keys.provider_lines("image") + "*"),
        }
        await redis.delete(*[name for key in lost for name in names[key]])

    async with asyncio.timeout(GRACE + 30):
        await asyncio.gather(*waiting)
    assert sorted(order) == ["a", "b"]


async def test_a_request_cancelled_while_waiting_leaves_its_line_at_once(redis: Redis):
    limits = ProviderLimits(redis, "w")
    # With only a per-minute limit no slot is held, yet the waiter must leave its line too.
    await redis.zadd(keys.provider_minute("image"), {"sent": int(time.time() * 1000)})
    waiter = asyncio.create_task(take_turn(image_gate(limits, "p", 0, 1), "p", []))
    await in_line(redis, 1)

    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)

    assert await redis.keys(keys.provider_waiters("image")) == []
    assert await redis.keys(keys.provider_turns("image")) == []
    assert await redis.keys(keys.provider_lines("image") + "*") == []


async def test_nothing_of_the_turns_is_left_once_every_waiting_request_has_had_its_slot(redis: Redis):
    limits = ProviderLimits(redis, "w")
    async with image_gate(limits, "a").slot():
        waiting = await wait_in_line(limits, redis, ("a", "a"), ("b", "b"), ("a", "a2"), order=[])
        assert await redis.zcard(keys.provider_waiters("image")) == 3

    async with asyncio.timeout(10):
        await asyncio.gather(*waiting)
    # The project is part of a holder's name: it leaves the slots with its holder.
    assert await redis.keys("*") == []


async def test_an_uncontested_request_takes_its_slot_in_one_call_and_writes_nothing_of_the_turns(
    redis: Redis,
):
    limits = ProviderLimits(redis, "w")
    gate = image_gate(limits, "p")
    async with gate.slot():  # the scripts are loaded once per Redis: not counted
        pass
    await redis.config_resetstat()

    async with gate.slot():
        stats = await redis.info("commandstats")
        written = sorted(key.decode() for key in await redis.keys("*"))

    # One round trip; in it, the commands of the script before turns (TIME, ZREMRANGEBYSCORE,
    # ZCARD, ZADD, PEXPIRE) and one ZCARD of `waiters`.
    assert stats.pop("cmdstat_evalsha")["calls"] == 1
    del stats["cmdstat_config|resetstat"]
    assert sum(stat["calls"] for stat in stats.values()) == 6
    assert written == [keys.provider_slots("image")]


async def test_tasks_of_another_project_get_a_turn_at_the_llm_before_a_project_with_many_waiting(
    start_service, fake_llm
):
    fake_llm.answering.clear()  # "many"'s first request is held until "one" waits too
    providers = ProvidersConfig(
        llm=LlmProvider(
            base_url=fake_llm.base_url, api_key="sk-test", model="m", timeout=10, max_concurrency=1
        )
    )
    taskd = await start_service(providers=providers)
    many = [
        await taskd.submit("test_prompt", {"prompt_template": f"many {i}"}, project_id="many")
        for i in range(5)
    ]
    async with asyncio.timeout(10):
        while [await waits(taskd, task) for task in many].count(True) < 4:
            await asyncio.sleep(0.02)
    one = await taskd.submit("test_prompt", {"prompt_template": "only one"}, project_id="one")
    await taskd.wait_for(one["task_id"], lambda body: body.get("current_step") == WAITING)
    fake_llm.answering.set()

    for task in [*many, one]:
        assert (await taskd.wait_terminal(task["task_id"]))["status"] == "completed"
    sent = ["only one" in json.dumps(request.json) for request in fake_llm.requests]
    # The first request was "many"'s; the next was "one"'s, not four more of "many"'s first.
    assert sent.index(True) == 1
