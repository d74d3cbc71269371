"""Limits on the outside providers (`providers.<name>.max_concurrency`, `.per_minute`), shared in
Redis by every taskd process: against the fake provider servers, with real taskd services."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
from fake_media_apis import FakeImagesAPI, FakeSpeechAPI
from redis.asyncio import Redis

from taskd import keys
from taskd.config import Config, ImageProvider, LlmProvider, ProvidersConfig, QueueConfig, SpeechProvider
from taskd.providers.images import ImagesClient
from taskd.providers.limits import Gate, ProviderLimits
from taskd.providers.speech import SpeechClient

WAITING = "waiting_for_provider:llm"


def llm(base_url: str, **limits: int) -> ProvidersConfig:
    return ProvidersConfig(
        llm=LlmProvider(base_url=base_url, api_key="sk-test", model="m", timeout=10, **limits)
    )


async def test_two_services_never_send_the_provider_more_than_its_max_concurrency_at_once(
    start_service, fake_llm, redis
):
    fake_llm.delay = 0.3  # each answer takes a while, so that requests would overlap
    # Four tasks at once per service: eight tasks need both services.
    queues = {**Config().queues, "default": QueueConfig(concurrency=4, timeout=120)}
    services = [
        await start_service(providers=llm(fake_llm.base_url, max_concurrency=2), queues=queues)
        for _ in range(2)
    ]

    submitted = [await services[i % 2].submit("test_prompt", {"prompt_template": f"n{i}"}) for i in range(8)]
    ended = [await services[0].wait_terminal(body["task_id"], timeout=30) for body in submitted]

    assert [body["status"] for body in ended] == ["completed"] * 8
    assert fake_llm.max_in_flight == 2
    ran_on = {await redis.hget(keys.task(body["task_id"]), "worker_id") for body in submitted}
    assert ran_on == {service.service.worker_id.encode() for service in services}


async def test_a_task_waiting_for_a_provider_slot_is_processing_and_says_so(start_service, fake_llm):
    fake_llm.delay = 1.5
    taskd = await start_service(providers=llm(fake_llm.base_url, max_concurrency=1))
    first = await taskd.submit("test_prompt", {"prompt_template": "first"})
    await taskd.wait_for(first["task_id"], lambda _: fake_llm.in_flight == 1)

    second = await taskd.submit("test_prompt", {"prompt_template": "second"})
    waiting = await taskd.wait_for(second["task_id"], lambda body: body.get("current_step") == WAITING)

    assert waiting["status"] == "processing"
    ended = await taskd.wait_terminal(second["task_id"])
    assert (ended["status"], ended["current_step"]) == ("completed", "done")
    assert fake_llm.max_in_flight == 1


async def test_a_request_over_the_per_minute_limit_waits_for_the_window_instead_of_failing(
    start_service, fake_llm, redis
):
    # Two requests were sent 58.5 s ago (by Redis's clock): the window has room again in 1.5 s.
    seconds, micros = await redis.time()
    sent = seconds * 1000 + micros // 1000 - 58_500
    await redis.zadd(keys.provider_minute("llm"), {f"{sent}:a": sent, f"{sent}:b": sent + 1})
    full_until = time.monotonic() + 1.5
    taskd = await start_service(providers=llm(fake_llm.base_url, per_minute=2))

    task = await taskd.submit("test_prompt", {"prompt_template": "third this minute"})
    waiting = await taskd.wait_for(task["task_id"], lambda body: body.get("current_step") == WAITING)
    ended = await taskd.wait_terminal(task["task_id"])

    assert waiting["status"] == "processing"
    assert ended["status"] == "completed"
    assert [request.at >= full_until - 0.1 for request in fake_llm.requests] == [True]


DOOMED_WORKER = """
import asyncio, sys
from fake_media_apis import FakeImagesAPI, FakeSpeechAPI
from redis.asyncio import Redis
from taskd.providers.images import ImagesClient
from taskd.providers.limits import Gate, ProviderLimits
from taskd.providers.speech import SpeechClient

async def main():
    gate = ProviderLimits(Redis.from_url(sys.argv[1]), "doomed", lease=1.0).gate("image", 1, 0, project="p")
    async with gate.slot():
        print("held", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_slot_held_by_a_worker_that_died_comes_back_after_its_lease(valkey_url, redis):
    with subprocess.Popen(
        [sys.executable, "-c", DOOMED_WORKER, valkey_url], stdout=subprocess.PIPE, text=True
    ) as doomed:
        try:
            assert await asyncio.to_thread(doomed.stdout.readline) == "held\n"  # type: ignore[union-attr]
        finally:
            doomed.kill()
    died = time.monotonic()
    gate = ProviderLimits(redis, "alive", lease=1.0).gate("image", 1, 0, project="p")
    assert gate is not None

    async with asyncio.timeout(5):
        async with gate.slot():
            waited = time.monotonic() - died
            holders = await redis.zrange(keys.provider_slots("image"), 0, -1)

    # The dead worker's renewals kept its slot until it died; one lease later it was free.
    assert 0.3 < waited < 2.5
    assert [holder.decode().split(":")[0] for holder in holders] == ["alive"]


async def test_a_slot_is_given_back_when_its_request_ends(redis):
    gate = ProviderLimits(redis, "w").gate("speech", 1, 0, project="p")
    assert gate is not None

    async with gate.slot():
        assert await redis.zcard(keys.provider_slots("speech")) == 1

    assert await redis.zcard(keys.provider_slots("speech")) == 0


async def test_a_task_cancelled_while_waiting_for_a_slot_leaves_no_slot_held(redis):
    gate = ProviderLimits(redis, "w").gate("speech", 1, 0, project="p")
    assert gate is not None

    async def take_a_slot() -> None:
        async with gate.slot():
            pass

    async with gate.slot():
        waiter = asyncio.create_task(take_a_slot())
        await asyncio.sleep(0.3)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    assert await redis.zcard(keys.provider_slots("speech")) == 0


async def test_the_image_and_speech_clients_send_nothing_while_their_provider_has_no_free_slot(
    redis, http, tmp_path
):
    limits = ProviderLimits(redis, "w")
    async with FakeImagesAPI() as images, FakeSpeechAPI() as speech:
        image = ImagesClient(
            ImageProvider(base_url=images.base_url), http, limits.gate("image", 1, 0, project="p")
        )
        voice = SpeechClient(
            SpeechProvider(base_url=speech.base_url), http, limits.gate("speech", 1, 0, project="p")
        )
        image_slot, speech_slot = (
            limits.gate("image", 1, 0, project="p"),
            limits.gate("speech", 1, 0, project="p"),
        )
        assert image_slot is not None and speech_slot is not None
        async with image_slot.slot(), speech_slot.slot():
            calls = asyncio.gather(
                image.generate("a lighthouse", "1024x1024", "standard", max_image_bytes=2**20),
                voice.speak("hello", None, 1.0, None, tmp_path / "voice", max_bytes=2**20),
            )
            await asyncio.sleep(0.5)
            assert (images.requests, speech.requests) == ([], [])
        await calls

    assert (len(images.requests), len(speech.requests)) == (1, 1)


def test_a_provider_without_limits_gets_no_gate_and_asks_nothing_of_redis():
    # Port 1 has no server: a gate that asked Redis anything would fail.
    limits = ProviderLimits(Redis(port=1), "w")

    assert limits.gate("llm", 0, 0, project="p") is None


async def test_a_task_cancelled_while_it_gives_its_provider_slot_back_still_gives_it_back(
    start_service, fake_llm, redis, monkeypatch
):
    # Cancelled there, the handler ends at once and the give-back goes on (shielded); the end of
    # the run then cancelled it, one of the run's tasks: the slot stayed taken for its lease (30 s).
    giving_back, go_on = asyncio.Event(), asyncio.Event()
    give_back = Gate._give_back

    async def held_give_back(gate: Gate, holder: str) -> None:
        giving_back.set()
        await go_on.wait()
        await give_back(gate, holder)

    monkeypatch.setattr(Gate, "_give_back", held_give_back)
    taskd = await start_service(providers=llm(fake_llm.base_url, max_concurrency=1))
    task = await taskd.submit("test_prompt", {"prompt_template": "cancelled as it ends"})
    async with asyncio.timeout(30):
        await giving_back.wait()

    async with taskd.client.delete(f"/api/v1/tasks/{task['task_id']}") as response:
        assert response.status == 200
    await taskd.wait_idle()
    go_on.set()

    async with asyncio.timeout(10):
        while await redis.zcard(keys.provider_slots("llm")):
            await asyncio.sleep(0.05)
