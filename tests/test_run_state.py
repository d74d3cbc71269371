"""A task's run state (taskd.store.run_state): what one run keeps for the next run of the same task,
kept only while its worker runs it, bounded, living as long as its record and gone at its end."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from taskd import keys
from taskd.store import run_state as run_states


async def test_a_kept_value_is_read_back_by_the_next_run(run_state):
    assert await run_state().keep("video_job", {"id": "job_1"})

    next_run = run_state()
    assert await next_run.get("video_job") == {"id": "job_1"}
    assert await next_run.get("nothing") is None


@pytest.mark.parametrize("partitions", [1, 3])
def test_the_state_is_in_the_slot_of_the_task_record(partitions):
    keys.configure_partitions(partitions)
    for project in ("noir", "western", "musical"):
        task_id = keys.new_task_id(project)
        assert key_slot(keys.run_state(task_id).encode()) == key_slot(keys.task(task_id).encode())
        assert keys.run_state(task_id).startswith(keys.partition_prefix(keys.task_partition(task_id)))


async def test_the_state_expires_with_the_task_record(redis, run_state):
    state = run_state()
    await state.keep("video_job", {"id": "job_1"})

    record = await redis.pttl(keys.task(state.task_id))
    assert 590_000 < await redis.pttl(keys.run_state(state.task_id)) <= record


async def test_the_record_of_a_task_with_a_run_state_says_so(redis, run_state):
    state = run_state()
    assert await redis.hget(keys.task(state.task_id), "run_state") is None

    await state.keep("video_job", {"id": "job_1"})

    assert await redis.hget(keys.task(state.task_id), "run_state") == b"1"


async def test_nothing_is_kept_for_a_task_that_ended(redis, run_state):
    state = run_state()
    await redis.hset(keys.task(state.task_id), "status", "cancelled")

    assert not await state.keep("video_job", {"id": "job_1"})
    assert await redis.exists(keys.run_state(state.task_id)) == 0


async def test_nothing_is_kept_by_a_worker_that_no_longer_runs_the_task(redis, run_state):
    state = run_state()
    await redis.hset(keys.task(state.task_id), "worker_id", "worker-b")

    assert not await state.keep("video_job", {"id": "job_1"})
    assert await redis.exists(keys.run_state(state.task_id)) == 0


async def test_a_value_past_the_limit_is_not_kept_and_the_others_stay(run_state, monkeypatch, caplog):
    monkeypatch.setattr(run_states, "MAX_BYTES", 1000)
    state = run_state()
    assert await state.keep("gather:department:story", ["x" * 400])

    assert not await state.keep("gather:department:audio", ["x" * 700])
    # Written again, a field counts once.
    assert await state.keep("gather:department:story", ["y" * 500])

    assert await state.get("gather:department:story") == ["y" * 500]
    assert await state.get("gather:department:audio") is None
    assert "holds at most 1000 bytes" in caplog.text


async def test_an_unreadable_value_reads_as_none(redis, run_state):
    state = run_state()
    await redis.hset(keys.run_state(state.task_id), "video_job", b"\xff not json")

    assert await state.get("video_job") is None


async def test_the_run_state_of_a_task_is_deleted_when_the_task_ends(taskd, fake_llm, redis):
    fake_llm.reply('{"items": [{"content": "A harbour at dawn"}]}')
    fake_llm.hang(60)  # the second department's answer does not come
    task = await taskd.submit(
        "automated_gather_creation", {"brief": "Noir.", "departments": ["story", "audio"]}
    )
    task_id = task["task_id"]
    # The first department's answer is kept before the second is asked for.
    await taskd.wait_for(task_id, lambda _: len(fake_llm.requests) == 2)
    assert await redis.hkeys(keys.run_state(task_id)) == [b"gather:department:story"]

    async with taskd.client.delete(f"/api/v1/tasks/{task_id}") as response:
        assert response.status == 200

    assert (await taskd.status(task_id))["status"] == "cancelled"
    assert await redis.exists(keys.run_state(task_id)) == 0
    assert await redis.hget(keys.task(task_id), "run_state") is None
