"""`Idempotency-Key` on submit and retry: a resend gets the first answer and creates nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from conftest import API_KEY
from redis.asyncio import Redis

from taskd import keys
from taskd.config import AuthConfig, LimitsConfig, MediaConfig, WebhooksConfig
from taskd.store import TaskStore

OTHER_KEY = "other-key-9876543210"
BODY = {"project_id": "films", "task_type": "generate_video", "task_data": {"duration": 7}}


async def post(
    client: aiohttp.ClientSession, path: str, body: Any = None, **headers: str
) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    async with client.post(path, json=body, headers=headers) as response:
        return response.status, await response.json(), response.headers


async def submit(client: aiohttp.ClientSession, key: str, body: Any = BODY):
    return await post(client, "/api/v1/tasks/submit", body, **{"Idempotency-Key": key})


async def stored_tasks(redis: Redis, project_id: str = "films") -> int:
    return int(await redis.zcard(keys.project(project_id)))


async def test_the_same_key_and_body_return_the_first_answer_and_create_nothing(start_service, redis):
    api_only = await start_service(workers=False)
    first_status, first, first_headers = await submit(api_only.client, "scene-1")

    status, again, headers = await submit(api_only.client, "scene-1")

    assert (first_status, status) == (200, 200)
    assert again == first
    assert headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first_headers
    assert await stored_tasks(redis) == 1


async def test_the_body_is_compared_as_json_not_as_bytes(start_service):
    api_only = await start_service(workers=False)
    _, first, _ = await submit(api_only.client, "scene-1")
    reordered = {"task_data": {"duration": 7}, "task_type": "generate_video", "project_id": "films"}

    status, again, _ = await submit(api_only.client, "scene-1", reordered)

    assert status == 200 and again["task_id"] == first["task_id"]


async def test_the_same_key_with_another_body_is_422_and_stores_nothing(start_service, redis):
    api_only = await start_service(workers=False)
    await submit(api_only.client, "scene-1")

    status, body, _ = await submit(api_only.client, "scene-1", {**BODY, "priority": 1})

    assert status == 422
    assert body["error"] == "idempotency_key_reused"
    assert body["message"]
    assert await stored_tasks(redis) == 1


async def test_a_resend_writing_a_whole_number_with_a_fraction_is_another_body_422(start_service, redis):
    # 2.0 is the priority 2, but the task_data and metadata of a task come back as they were sent
    # (24.0 as 24.0): the body is compared as JSON text, its numbers as written.
    api_only = await start_service(workers=False)
    await submit(api_only.client, "scene-1", {**BODY, "priority": 2})

    status, body, _ = await submit(api_only.client, "scene-1", {**BODY, "priority": 2.0})

    assert status == 422
    assert body["error"] == "idempotency_key_reused"
    assert await stored_tasks(redis) == 1


async def test_twenty_identical_requests_racing_make_one_task(start_service, redis):
    api_only = await start_service(workers=False)

    answers = await asyncio.gather(*(submit(api_only.client, "race") for _ in range(20)))

    assert {status for status, _, _ in answers} == {200}
    assert len({body["task_id"] for _, body, _ in answers}) == 1
    assert sum("Idempotent-Replayed" in headers for _, _, headers in answers) == 19
    assert await stored_tasks(redis) == 1


async def test_another_api_keys_requests_with_the_same_key_do_not_collide(start_service, redis):
    api_only = await start_service(workers=False, auth=AuthConfig(api_keys=[API_KEY, OTHER_KEY]))
    _, mine, _ = await submit(api_only.client, "scene-1")

    async with aiohttp.ClientSession(api_only.base_url, headers={"X-API-Key": OTHER_KEY}) as other:
        status, theirs, headers = await submit(other, "scene-1")

    assert status == 200 and theirs["task_id"] != mine["task_id"]
    assert "Idempotent-Replayed" not in headers
    assert await stored_tasks(redis) == 2


async def test_a_key_over_255_characters_is_400_and_stores_nothing(start_service, redis):
    api_only = await start_service(workers=False)

    status, body, _ = await submit(api_only.client, "k" * 256)

    assert status == 400
    assert body["error"] == "validation_error"
    assert set(body["details"]) == {"Idempotency-Key"}
    assert await stored_tasks(redis) == 0


async def test_a_key_sent_twice_is_400_and_stores_nothing(start_service, redis):
    api_only = await start_service(workers=False)

    async with api_only.client.post(
        "/api/v1/tasks/submit", json=BODY, headers=[("Idempotency-Key", "a1"), ("Idempotency-Key", "b2")]
    ) as response:
        status, body = response.status, await response.json()

    assert (status, body) == (
        400,
        {
            "error": "validation_error",
            "message": "Invalid Idempotency-Key header",
            "details": {"Idempotency-Key": "Idempotency-Key must be sent once, not 2 times"},
        },
    )
    assert await stored_tasks(redis) == 0


async def test_a_key_of_255_characters_is_accepted(start_service):
    api_only = await start_service(workers=False)

    status, _, _ = await submit(api_only.client, "k" * 255)

    assert status == 200


async def test_a_submit_without_the_header_creates_a_task_each_time(start_service, redis):
    api_only = await start_service(workers=False)

    for _ in range(2):
        await post(api_only.client, "/api/v1/tasks/submit", BODY)

    assert await stored_tasks(redis) == 2


async def test_a_submit_refused_for_a_full_project_does_not_keep_the_key(start_service, redis):
    api_only = await start_service(workers=False, limits=LimitsConfig(queued_per_project=1))
    _, waiting, _ = await post(api_only.client, "/api/v1/tasks/submit", BODY)
    refused, _, _ = await submit(api_only.client, "scene-1")
    await api_only.client.delete(f"/api/v1/tasks/{waiting['task_id']}")

    status, body, headers = await submit(api_only.client, "scene-1")

    assert (refused, status) == (429, 200)
    assert "Idempotent-Replayed" not in headers
    assert body["task_id"] != waiting["task_id"]


async def retry(client: aiohttp.ClientSession, task_id: str, key: str):
    return await post(client, f"/api/v1/tasks/{task_id}/retry", **{"Idempotency-Key": key})


async def test_a_retry_with_a_key_is_idempotent(start_service, redis):
    api_only = await start_service(workers=False)
    _, task, _ = await submit(api_only.client, "scene-1")
    await api_only.client.delete(f"/api/v1/tasks/{task['task_id']}")

    first_status, first, _ = await retry(api_only.client, task["task_id"], "retry-1")
    status, again, headers = await retry(api_only.client, task["task_id"], "retry-1")

    assert (first_status, status) == (200, 200)
    assert again == first
    assert headers["Idempotent-Replayed"] == "true"
    assert await stored_tasks(redis) == 2


async def test_a_submits_key_sent_on_a_retry_is_422(start_service):
    api_only = await start_service(workers=False)
    _, task, _ = await submit(api_only.client, "scene-1")
    await api_only.client.delete(f"/api/v1/tasks/{task['task_id']}")

    status, body, _ = await retry(api_only.client, task["task_id"], "scene-1")

    assert status == 422 and body["error"] == "idempotency_key_reused"


async def test_a_body_too_deep_to_fingerprint_is_a_400_naming_it_and_stores_nothing(start_service, redis):
    api_only = await start_service(workers=False)
    # An ignored top-level field past the 253 levels orjson writes back: it was a 500 and a traceback.
    deep: list[Any] = []
    for _ in range(299):
        deep = [deep]

    status, body, _ = await submit(api_only.client, "scene-1", {**BODY, "extra": deep})

    assert status == 400
    assert body["details"] == {
        "body": "Request body must be nested at most 253 levels deep when sent with an Idempotency-Key"
    }
    assert await stored_tasks(redis) == 0


async def test_a_replay_with_prefer_wait_of_a_task_whose_record_expired_gets_the_first_answer(
    start_service, redis
):
    api_only = await start_service(workers=False)
    _, first, _ = await submit(api_only.client, "scene-1")
    # As its expiry does: a record kept less than the key's 24 h (storage.task_ttl, keep_for).
    await redis.delete(keys.task(first["task_id"]))

    status, again, headers = await post(
        api_only.client, "/api/v1/tasks/submit", BODY, **{"Idempotency-Key": "scene-1", "Prefer": "wait=1"}
    )

    assert status == 200
    assert again == first
    assert headers["Idempotent-Replayed"] == "true"
    assert "Preference-Applied" not in headers


# More than any disk has free: every media task is refused with a 503.
NEARLY_FULL = MediaConfig(min_free_bytes=2**62)
IMAGE = {"project_id": "films", "task_type": "generate_image", "task_data": {"prompt": "a rain-soaked alley"}}


async def test_a_replay_of_a_stored_media_task_is_not_refused_while_the_media_disk_is_nearly_full(
    start_service, redis
):
    with_room = await start_service(workers=False)
    nearly_full = await start_service(workers=False, media=NEARLY_FULL)
    _, first, _ = await submit(with_room.client, "scene-1", IMAGE)

    status, again, headers = await submit(nearly_full.client, "scene-1", IMAGE)

    assert status == 200
    assert again == first
    assert headers["Idempotent-Replayed"] == "true"
    assert await stored_tasks(redis) == 1


async def test_a_replay_of_a_stored_batch_is_not_refused_while_the_media_disk_is_nearly_full(
    start_service, redis
):
    with_room = await start_service(workers=False)
    nearly_full = await start_service(workers=False, media=NEARLY_FULL)
    batch = {"tasks": [IMAGE, BODY]}
    _, first, _ = await post(with_room.client, "/api/v1/tasks/batch", batch, **{"Idempotency-Key": "scenes"})

    status, again, headers = await post(
        nearly_full.client, "/api/v1/tasks/batch", batch, **{"Idempotency-Key": "scenes"}
    )

    assert status == 200
    assert again == first
    assert headers["Idempotent-Replayed"] == "true"
    assert await stored_tasks(redis) == 2


async def test_a_replay_is_not_refused_for_a_callback_url_the_guard_refuses_now(start_service, redis):
    # The first request's callback passed the guard (here by allow_private; a name that resolved
    # then); the resend's check refuses it (a lookup that fails now), yet the task is stored.
    accepted = await start_service(workers=False, webhooks=WebhooksConfig(allow_private=True))
    guarded = await start_service(workers=False)
    body = {**BODY, "callback_url": "http://127.0.0.1:9/hook"}
    _, first, _ = await submit(accepted.client, "scene-1", body)

    status, again, headers = await submit(guarded.client, "scene-1", body)

    assert status == 200
    assert again == first
    assert headers["Idempotent-Replayed"] == "true"
    assert await stored_tasks(redis) == 1


async def test_a_replayed_batch_is_not_refused_for_a_callback_url_the_guard_refuses_now(start_service, redis):
    accepted = await start_service(workers=False, webhooks=WebhooksConfig(allow_private=True))
    guarded = await start_service(workers=False)
    batch = {"tasks": [BODY, {**BODY, "callback_url": "http://127.0.0.1:9/hook"}]}
    _, first, _ = await post(accepted.client, "/api/v1/tasks/batch", batch, **{"Idempotency-Key": "scenes"})

    status, again, headers = await post(
        guarded.client, "/api/v1/tasks/batch", batch, **{"Idempotency-Key": "scenes"}
    )

    assert status == 200
    assert again == first
    assert headers["Idempotent-Replayed"] == "true"
    assert await stored_tasks(redis) == 2


async def test_a_new_key_is_still_refused_for_a_callback_url_the_guard_refuses(start_service, redis):
    guarded = await start_service(workers=False)

    status, body, _ = await submit(
        guarded.client, "scene-1", {**BODY, "callback_url": "http://127.0.0.1:9/hook"}
    )

    assert status == 400
    assert "callback_url" in body["details"]
    assert await stored_tasks(redis) == 0


async def test_a_replay_of_a_stored_batch_is_not_refused_by_a_lower_limit_on_the_node_it_reaches(
    start_service, redis
):
    # The batch was stored by a node allowing 3 waiting tasks a project; its resend reaches one that
    # allows 2 (a limit lowered since, or a node configured apart): the batch stands, so the resend
    # gets it, not a 400 telling the caller to send the tasks again in smaller batches.
    roomy = await start_service(workers=False, limits=LimitsConfig(queued_per_project=3))
    lowered = await start_service(workers=False, limits=LimitsConfig(queued_per_project=2))
    batch = {"tasks": [BODY] * 3}
    _, first, _ = await post(roomy.client, "/api/v1/tasks/batch", batch, **{"Idempotency-Key": "scenes"})

    status, again, headers = await post(
        lowered.client, "/api/v1/tasks/batch", batch, **{"Idempotency-Key": "scenes"}
    )

    assert status == 200, again
    assert again == first
    assert headers["Idempotent-Replayed"] == "true"
    assert await stored_tasks(redis) == 3


def forgetting_the_key_first(monkeypatch, redis: Redis, method: str) -> None:
    """TaskStore.<method> made to drop the request's Idempotency-Key just before its script: as the
    key's 24 h run out between a check of the moment and the script."""
    store = getattr(TaskStore, method)

    async def expired_meanwhile(self, *args: Any, **kwargs: Any) -> Any:
        idempotency = kwargs.get("idempotency") or args[2 if method == "create_batch" else 3]
        await redis.delete(idempotency.key)
        return await store(self, *args, **kwargs)

    monkeypatch.setattr(TaskStore, method, expired_meanwhile)


async def test_a_callback_url_the_guard_refuses_is_refused_when_the_key_expires_before_the_script(
    start_service, redis, monkeypatch
):
    # A key seen once lets a request past the guard only to be answered by its first request; a new
    # body under it, sent as the key runs out, must not be stored with an address the guard refused.
    guarded = await start_service(workers=False)
    await submit(guarded.client, "scene-1")
    forgetting_the_key_first(monkeypatch, redis, "create")

    status, body, _ = await submit(
        guarded.client, "scene-1", {**BODY, "callback_url": "http://127.0.0.1:9/hook"}
    )

    assert status == 400, body
    assert "callback_url" in body["details"]
    assert await stored_tasks(redis) == 1


async def test_a_media_batch_is_refused_while_the_disk_is_nearly_full_when_the_key_expires_before_the_script(
    start_service, redis, monkeypatch
):
    with_room = await start_service(workers=False)
    nearly_full = await start_service(workers=False, media=NEARLY_FULL)
    batch = {"tasks": [IMAGE, BODY]}
    await post(with_room.client, "/api/v1/tasks/batch", batch, **{"Idempotency-Key": "scenes"})
    forgetting_the_key_first(monkeypatch, redis, "create_batch")

    status, body, headers = await post(
        nearly_full.client, "/api/v1/tasks/batch", batch, **{"Idempotency-Key": "scenes"}
    )

    assert status == 503, body
    assert body["message"].startswith("Media storage is nearly full")
    assert "Retry-After" in headers
    assert await stored_tasks(redis) == 2
