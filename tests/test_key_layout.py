"""The keys of versions before the hash tag (`taskd:…`) are renamed once, at the first start."""

from __future__ import annotations

from taskd import keys
from taskd.store import layout


async def test_keys_of_the_untagged_layout_are_renamed_with_their_expiry(redis):
    await redis.hset("taskd:task:t1", mapping={"status": "queued", "task_id": "t1"})
    await redis.expire("taskd:task:t1", 500)
    await redis.hset("taskd:metrics", "completed_tasks", 7)

    renamed = await layout.upgrade(redis)

    assert renamed == 2
    assert await redis.hget(keys.task("t1"), "status") == b"queued"
    assert 0 < await redis.ttl(keys.task("t1")) <= 500
    assert await redis.hget(keys.METRICS, "completed_tasks") == b"7"
    assert await redis.keys("taskd:*") == []


async def test_a_name_already_taken_under_the_tag_keeps_both_keys(redis):
    await redis.hset("taskd:metrics", "completed_tasks", 7)
    await redis.hset(keys.METRICS, "completed_tasks", 1)

    assert await layout.upgrade(redis) == 0
    assert await redis.hget(keys.METRICS, "completed_tasks") == b"1"
    assert await redis.hget("taskd:metrics", "completed_tasks") == b"7"


async def test_after_the_first_upgrade_a_start_reads_only_the_marker(redis):
    await layout.upgrade(redis)
    await redis.set("taskd:task:late", "written by a process of the older version")

    assert await layout.upgrade(redis) == 0
    assert await redis.exists("taskd:task:late") == 1


async def test_a_service_started_on_data_of_the_untagged_layout_serves_its_tasks(start_service, redis):
    api_only = await start_service(workers=False)
    task = await api_only.submit("noop", {})
    await api_only.service.stop(grace=1)
    await redis.delete(keys.LAYOUT)
    for name in await redis.keys(keys.PREFIX + "*"):
        await redis.rename(name, b"taskd:" + name.removeprefix(keys.PREFIX.encode()))

    restarted = await start_service(workers=True)
    body = await restarted.wait_terminal(task["task_id"])

    assert body["status"] == "completed"
