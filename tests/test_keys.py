"""taskd's Redis key names: all under the hash tag `{taskd}`, one cluster slot (docs/cluster.md)."""

from __future__ import annotations

import uuid

from redis.crc import key_slot

from taskd import keys
from taskd.config import WebhooksConfig


def test_task_keys_are_namespaced_under_the_hash_tag():
    assert keys.task("abc") == "{taskd}:task:abc"
    assert keys.project("p1") == "{taskd}:project:p1"
    assert keys.queue("gpu_heavy") == "{taskd}:queue:gpu_heavy"


def test_a_new_task_id_is_a_random_version_4_uuid_in_its_canonical_form():
    ids = [keys.new_task_id("p1") for _ in range(2000)]

    assert len(set(ids)) == len(ids)
    for task_id in ids:
        parsed = uuid.UUID(task_id)
        assert str(parsed) == task_id
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    # Every digit but the version's is drawn: each position takes many values.
    varied = [len({task_id[n] for task_id in ids}) for n in range(36) if n not in (8, 13, 14, 18, 23)]
    assert min(varied) >= 4


def test_arq_lock_keys_are_in_the_slot_of_the_task_keys():
    slots = {key_slot(name.encode()) for name in (keys.arq_in_progress("t.1"), keys.METRICS)}

    assert slots == {key_slot(keys.task("t").encode())}


def test_an_idempotency_key_is_kept_per_api_key_under_a_hash_of_fixed_length():
    long = keys.idempotency("kid1", "k" * 255)

    assert long.startswith("{taskd}:idempotency:kid1:")
    assert len(long) == len(keys.idempotency("kid1", "k"))
    assert keys.idempotency("kid2", "k") != keys.idempotency("kid1", "k")


async def test_a_task_run_with_a_webhook_and_a_rate_limit_writes_only_keys_under_the_tag(
    start_service, redis, receiver
):
    service = await start_service(webhooks=WebhooksConfig(allow_private=True))
    task = await service.submit("noop", {}, callback_url=receiver.url())
    await service.wait_terminal(task["task_id"])
    await receiver.wait_for(1)

    names = await redis.keys("*")

    # Not one of arq's own arq:job:… or arq:in-progress:… keys: they would be in other slots.
    assert names
    assert [name for name in names if not name.startswith(b"{taskd}:")] == []
