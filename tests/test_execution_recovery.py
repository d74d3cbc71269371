"""Priorities, graceful shutdown, dead workers' tasks taken back, and never running a live task twice."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import API_KEY, TERMINAL, child_env
from redis_probes import alive
from yarl import URL

from taskd import keys
from taskd.config import ExecutionConfig, GpuConfig, QueueConfig, RetryConfig, WorkerConfig
from taskd.embedded import EmbeddedValkey
from taskd.engine import reclaim
from taskd.engine.executor import Executor, Outcome
from taskd.engine.jobproc.pool import RunnerPool
from taskd.gpu.devices import SimulatedBackend
from taskd.media import publish
from taskd.media.store import media_dir
from taskd.model import TaskRecord, now
from taskd.store.records import RunningTask
from taskd.store.run_state import RunStates
from taskd.tasks.diagnostics import marker_path, runs_path

ONE_AT_A_TIME = {
    "default": QueueConfig(concurrency=1, timeout=60),
    "cpu_intensive": QueueConfig(concurrency=1, timeout=60),
    "gpu_heavy": QueueConfig(concurrency=1, timeout=60),
    "gpu_medium": QueueConfig(concurrency=1, timeout=60),
}


async def started_at(redis, task_id: str) -> float:
    return float(await redis.hget(keys.task(task_id), "started_at"))


async def test_waiting_high_priority_tasks_start_first_and_fifo_within_a_priority(start_service, redis):
    service = await start_service(queues=ONE_AT_A_TIME)
    blocker = await service.submit("sleep", {"seconds": 1, "steps": 1})
    await service.wait_for(blocker["task_id"], lambda b: b["status"] == "processing")
    submitted = []
    for name, priority in [("low", 3), ("normal-a", 2), ("high-a", 1), ("normal-b", 2), ("high-b", 1)]:
        submitted.append((name, (await service.submit("noop", {}, priority=priority))["task_id"]))

    for _, task_id in submitted:
        await service.wait_terminal(task_id)
    starts = {name: await started_at(redis, task_id) for name, task_id in submitted}
    order = sorted(starts, key=starts.__getitem__)

    assert order == ["high-a", "high-b", "normal-a", "normal-b", "low"]


async def test_low_priority_task_that_waited_past_the_aging_window_is_not_passed_over(start_service, redis):
    service = await start_service(queues=ONE_AT_A_TIME, execution=ExecutionConfig(priority_aging=0.2))
    blocker = await service.submit("sleep", {"seconds": 1.0, "steps": 1})
    await service.wait_for(blocker["task_id"], lambda b: b["status"] == "processing")
    low = await service.submit("noop", {}, priority=3)
    await asyncio.sleep(0.6)  # longer than two aging windows
    high = await service.submit("noop", {}, priority=1)

    await service.wait_terminal(high["task_id"])
    await service.wait_terminal(low["task_id"])

    assert await started_at(redis, low["task_id"]) < await started_at(redis, high["task_id"])


async def test_graceful_stop_hands_a_running_task_back_for_another_worker(start_service):
    first = await start_service()
    task = await first.submit("sleep", {"seconds": 3, "steps": 30})
    await first.wait_for(task["task_id"], lambda b: b["status"] == "processing")

    await first.service.stop(grace=0.2)
    api = await start_service(workers=False)
    handed_back = await api.status(task["task_id"])
    await start_service(http=False)
    body = await api.wait_terminal(task["task_id"])

    assert handed_back["status"] == "queued"
    assert body["status"] == "completed"
    assert body["attempt"] == 2


async def test_a_graceful_stop_hands_back_the_task_of_a_worker_whose_loop_met_a_redis_error(
    start_service, redis, monkeypatch: pytest.MonkeyPatch
):
    # arq's worker loop ends on a Redis error (here: its health record's write) and the pool starts
    # it again; the job it ran goes on, and a stop must still hand its task back.
    from redis.exceptions import ConnectionError as RedisConnectionError

    from taskd.queue.workers import TaskdWorker

    service = await start_service()
    pool = service.service._pool
    assert pool is not None
    task_id = (await service.submit("record_run", {"seconds": 60}))["task_id"]
    await wait_until_started(redis, task_id, attempt=1)
    worker = pool.workers["default"]
    heart_beat = TaskdWorker.heart_beat
    beats = 0

    async def failing_once(self: TaskdWorker) -> None:
        nonlocal beats
        beats += 1
        if beats == 1:
            raise RedisConnectionError("Connection reset by peer")
        await heart_beat(self)

    monkeypatch.setattr(TaskdWorker, "heart_beat", failing_once)
    worker.woken(None)
    async with asyncio.timeout(30):
        while beats < 2:  # the loop ended on the error and was started again
            await asyncio.sleep(0.01)

    await service.service.stop(grace=0.2)

    assert await redis.hget(keys.task(task_id), "status") == b"queued"


async def test_a_hand_back_that_outlives_its_cancelled_run_is_waited_for(start_service, redis):
    # A stop cancels a run more than once; a slow hand-back write then outlives the run, and the
    # service must wait for it before letting go of Redis (the embedded Valkey stops next).
    service = await start_service()
    task = await service.submit("sleep", {"seconds": 30, "steps": 30})
    await service.wait_for(task["task_id"], lambda b: b["status"] == "processing")
    await redis.execute_command("CLIENT", "PAUSE", "3000", "WRITE")

    await service.service._pool.stop(grace=0)  # the run is cancelled until it ends; its write waits
    assert await redis.hget(keys.task(task["task_id"]), "status") == b"processing"
    await service.service._executor.finish_hand_backs(timeout=10)

    assert await redis.hget(keys.task(task["task_id"]), "status") == b"queued"


async def test_graceful_stop_lets_short_tasks_finish(start_service):
    service = await start_service()
    task = await service.submit("sleep", {"seconds": 0.5, "steps": 2})
    await service.wait_for(task["task_id"], lambda b: b["status"] == "processing")

    await service.service.stop(grace=10)
    api = await start_service(workers=False)

    assert (await api.status(task["task_id"]))["status"] == "completed"


async def test_running_task_is_never_started_again_while_its_worker_lives(start_service, redis):
    first = await start_service()
    await start_service(http=False)
    task = await first.submit("sleep", {"seconds": 2, "steps": 20})
    await first.wait_for(task["task_id"], lambda b: b["status"] == "processing")
    # What arq does when its lock on a long job expires: the job becomes pickable again.
    job_id = (await redis.hget(keys.task(task["task_id"]), "job_id")).decode()
    await redis.delete(f"{keys.ARQ_IN_PROGRESS_PREFIX}{job_id}")
    await redis.zadd(keys.queue("default"), {job_id: 0})
    await redis.publish(keys.WAKE_CHANNEL, "default")

    body = await first.wait_terminal(task["task_id"])

    assert body["status"] == "completed"
    assert body["attempt"] == 1
    assert body["result"]["attempt"] == 1


@pytest.fixture
def lost_after_two_looks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reclaim takes back a task its live worker does not hold when two looks find it so
    (0.5 s apart here), not after the 10 s that guard a loaded machine's slow starts."""
    monkeypatch.setattr(reclaim, "LOST_AFTER", 0.0)


async def test_a_task_whose_end_a_failover_lost_runs_again_though_its_worker_lives(
    start_service, redis, lost_after_two_looks
):
    service = await start_service()
    task_id = (await service.submit("sleep", {"seconds": 0.5}))["task_id"]
    await service.wait_for(task_id, lambda b: b["status"] == "processing")
    # What a replica promoted by a failover holds: the start, not the end the worker then wrote
    # to the old primary.
    record = await redis.dump(keys.task(task_id))
    since = await redis.zscore(keys.running("default"), task_id)
    first = await service.wait_terminal(task_id)
    await redis.restore(keys.task(task_id), 0, record, replace=True)
    await redis.zadd(keys.running("default"), {task_id: since})
    await redis.sadd(keys.project_processing("proj-1"), task_id)

    again = await service.wait_for(
        task_id, lambda b: b["status"] == "completed" and b["started_at"] != first["started_at"], timeout=30
    )

    assert again["attempt"] == 2  # run again, as a dead worker's task is
    assert "the end of its run was lost" in again["last_error"]
    assert int(await redis.hget(keys.task(task_id), "deaths") or 0) == 0


async def test_a_task_its_live_worker_runs_is_not_taken_back_however_long_it_runs(
    start_service, redis, lost_after_two_looks
):
    service = await start_service()
    task_id = (await service.submit("sleep", {"seconds": 3, "steps": 3}))["task_id"]
    await service.wait_for(task_id, lambda b: b["status"] == "processing")

    body = await service.wait_terminal(task_id)

    # Six looks of the reclaim (every 0.5 s here) while it ran: none took it back.
    assert (body["status"], body["attempt"], body["last_error"]) == ("completed", 1, None)


async def wait_until_started(redis, task_id: str, attempt: int) -> None:
    started = [b"processing", str(attempt).encode()]
    async with asyncio.timeout(10):
        while await redis.hmget(keys.task(task_id), "status", "attempt") != started:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # its run begun, past the take


async def test_a_retry_that_starts_before_its_first_runs_end_returned_is_not_taken_back(
    start_service, redis, lost_after_two_looks, monkeypatch: pytest.MonkeyPatch
):
    run_claimed = Executor._run_claimed

    async def overlapping(executor: Executor, record: TaskRecord) -> bool:
        if record.attempt == 2:
            await asyncio.sleep(2)  # four looks of the reclaim while the retry runs
        ended = await run_claimed(executor, record)
        if record.attempt == 1:
            # The first run's end returns only once its retry (due at once) runs here.
            await wait_until_started(redis, record.task_id, attempt=2)
        return ended

    monkeypatch.setattr(Executor, "_run_claimed", overlapping)
    service = await start_service(retry=RetryConfig(base_delay=0))
    task_id = (await service.submit("fail", {"transient": True, "fail_times": 1}))["task_id"]

    body = await service.wait_terminal(task_id)

    assert (body["status"], body["attempt"]) == ("completed", 2)
    assert "the end of its run was lost" not in (body["last_error"] or "")


async def _requeued_as_a_lapsed_heartbeat_would(executor: Executor, record: TaskRecord) -> None:
    """Queue the task again under a new job while `record`'s run is still going in its live worker,
    as the reclaim does when that worker's heartbeat lapsed (a stalled event loop, SIGSTOP): here
    through its path for a task thought lost, which leaves the live worker's heartbeat alone."""
    lost = RunningTask(
        record.task_id, record.queue, record.priority, record.job_id or "", executor.worker_id, True
    )
    assert await executor.store.reclaim(record.task_id, record.queue, now(), 0, 3, lost=lost) == "requeued"


async def test_a_task_requeued_while_its_runs_end_is_written_runs_again_only_after_that_end(
    start_service, redis, monkeypatch: pytest.MonkeyPatch
):
    record_end = Executor._record
    second_began_before_the_first_end: list[bool] = []

    async def requeued_then_ended(executor: Executor, record: TaskRecord, outcome: Outcome) -> bool:
        if record.attempt == 1:
            # Its run is over (out of `running`) and its end not written yet: the worker's own take
            # starts the task again meanwhile.
            await _requeued_as_a_lapsed_heartbeat_would(executor, record)
            await wait_until_started(redis, record.task_id, attempt=2)
            runs = runs_path(executor.config.data_path).read_text()
            second_began_before_the_first_end.append(f"start {record.task_id} 2 " in runs)
        return await record_end(executor, record, outcome)

    monkeypatch.setattr(Executor, "_record", requeued_then_ended)
    service = await start_service()
    task_id = (await service.submit("record_run", {"seconds": 0}))["task_id"]

    body = await service.wait_terminal(task_id)
    await service.wait_idle()  # the first run's end too

    assert second_began_before_the_first_end == [False]
    assert (body["status"], body["attempt"], body["result"]["attempt"]) == ("completed", 2, 2)


async def test_a_newer_start_of_a_task_stops_its_earlier_run_in_the_same_worker_at_once(start_service, redis):
    # Heartbeats far apart: their check of the record (Executor.reconcile) is not what stops it.
    service = await start_service(
        worker=WorkerConfig(heartbeat_interval=600, heartbeat_ttl=1800, poll_delay=0.5)
    )
    executor = service.service._executor
    assert executor is not None
    task_id = (await service.submit("record_run", {"seconds": 600}))["task_id"]
    await wait_until_started(redis, task_id, attempt=1)
    runs = runs_path(service.service.config.data_path)
    while f"start {task_id} 1 " not in runs.read_text():
        await asyncio.sleep(0.01)

    await _requeued_as_a_lapsed_heartbeat_would(executor, await executor.store.get(task_id))
    async with asyncio.timeout(30):
        while f"start {task_id} 2 " not in runs.read_text():
            await asyncio.sleep(0.05)

    # Before, the newer start waited for the earlier run's own end, 600 s on.
    pid = os.getpid()
    assert runs.read_text().splitlines() == [
        f"start {task_id} 1 {pid}",
        f"stopped {task_id} 1 {pid}",
        f"start {task_id} 2 {pid}",
    ]
    assert (await service.status(task_id))["status"] == "processing"


async def test_a_run_whose_start_a_failover_lost_is_not_stopped_as_taken_over(start_service, redis):
    # The record says `queued` under the run's own job: this worker may take that job again, and
    # the run's end is then written.
    service = await start_service()
    executor = service.service._executor
    assert executor is not None
    task_id = (await service.submit("record_run", {"seconds": 600}))["task_id"]
    await wait_until_started(redis, task_id, attempt=1)
    running = executor.running[task_id]

    await redis.hset(keys.task(task_id), mapping={"status": "queued", "worker_id": ""})
    await executor.reconcile([task_id])

    assert not running.cancelled


async def test_a_take_over_found_by_several_checks_at_once_is_logged_once(
    start_service, redis, caplog: pytest.LogCaptureFixture
):
    # A stalled worker wakes with its heartbeat and its refused progress writes each checking the
    # record while the run is still registered (its stop takes the cancel grace): one stop, one line.
    service = await start_service()
    executor = service.service._executor
    assert executor is not None
    task_id = (await service.submit("record_run", {"seconds": 600}))["task_id"]
    await wait_until_started(redis, task_id, attempt=1)

    await redis.hset(keys.task(task_id), mapping={"worker_id": "worker-b", "job_id": "job-b"})
    with caplog.at_level(logging.WARNING, logger="taskd.engine"):
        await asyncio.gather(*(executor.reconcile([task_id]) for _ in range(3)))

    said = [r for r in caplog.records if "was started again since its run here" in r.getMessage()]
    assert len(said) == 1


async def test_a_take_over_heard_as_a_runs_job_process_goes_back_to_the_pool_leaves_that_process_alone(
    start_service, redis, monkeypatch: pytest.MonkeyPatch
):
    # The run's job process is back in the pool while the run is still registered; a heartbeat's
    # check of the record whose reply comes then (here: one sent from the release) finds the task
    # started again since.
    service = await start_service()
    executor = service.service._executor
    assert executor is not None
    release = RunnerPool.release
    checked: list[str] = []

    async def release_then_checked(pool: RunnerPool, runner: Any) -> None:
        await release(pool, runner)
        for task_id in [task_id for task_id in executor.running if not checked]:
            checked.append(task_id)
            await redis.hset(keys.task(task_id), mapping={"worker_id": "worker-b", "job_id": "job-b"})
            await executor.reconcile([task_id])

    monkeypatch.setattr(RunnerPool, "release", release_then_checked)
    first = (await service.submit("cpu", {"seconds": 0}))["task_id"]
    async with asyncio.timeout(60):
        while not checked:
            await asyncio.sleep(0.02)
    await service.wait_idle()
    pid = int(marker_path(service.service.config.data_path, first, "started").read_text())

    second = await service.wait_terminal((await service.submit("cpu", {"seconds": 0}))["task_id"])

    # Before, the take-over's SIGTERM went to that process, idle in the pool (or running the next
    # task by then, which ended `cancelled` with nothing written).
    assert (second["status"], second["result"]["pid"]) == ("completed", pid)


async def test_a_claimed_task_whose_start_a_failover_lost_runs_again_after_its_runs_end_is_refused(
    start_service, redis
):
    # A host with GPUs claims its jobs one by one (start.lua), and its own running job is never
    # claimed again while it runs: the run's end comes first, refused, the record being `queued`.
    service = await start_service(gpu_backend=SimulatedBackend(1), gpu=GpuConfig(slots=2))
    task_id = (await service.submit("record_run", {"seconds": 2}))["task_id"]
    await wait_until_started(redis, task_id, attempt=1)
    job_id = (await redis.hget(keys.task(task_id), "job_id")).decode()

    # As the new primary has it when the failover lost the start: the job on arq's set, unlocked.
    await redis.hset(keys.task(task_id), mapping={"status": "queued", "attempt": "0"})
    await redis.hdel(keys.task(task_id), "worker_id", "started_at")
    await redis.delete(keys.arq_in_progress(job_id))
    async with asyncio.timeout(60):
        while await redis.hget(keys.task(task_id), "status") != b"completed":
            await asyncio.sleep(0.1)
    body = await service.status(task_id)
    runs = runs_path(service.service.config.data_path).read_text().splitlines()

    # Before, the refused end dropped the job: the task stayed `queued` for ever, with no job.
    assert (body["status"], body["attempt"]) == ("completed", 1)
    assert [line.split()[0] for line in runs] == ["start", "end", "start", "end"]


async def test_a_taken_task_whose_start_a_failover_lost_runs_again_after_its_runs_end_is_refused(
    start_service, redis
):
    # A host without GPUs takes its jobs in batches (take.lua, which takes the job off arq's set).
    # Its run's end, refused (the record being `queued`), leaves the job there, and the worker's
    # next take, as the run's slot comes free (its only one: no take while the run goes on), starts
    # the task again for this same worker.
    service = await start_service(queues=ONE_AT_A_TIME)
    task_id = (await service.submit("record_run", {"seconds": 2}))["task_id"]
    await wait_until_started(redis, task_id, attempt=1)
    job_id = (await redis.hget(keys.task(task_id), "job_id")).decode()
    partition = keys.task_partition(task_id)

    # As the new primary has it when the failover lost the take: the job on arq's set, unlocked.
    await redis.hset(keys.task(task_id), mapping={"status": "queued", "attempt": "0"})
    await redis.hdel(keys.task(task_id), "worker_id", "started_at")
    await redis.zrem(keys.running("default", partition), task_id)
    await redis.zadd(keys.queue("default", partition), {job_id: int(time.time() * 1000)})
    await redis.delete(keys.arq_in_progress(job_id))
    async with asyncio.timeout(60):
        while await redis.hget(keys.task(task_id), "status") != b"completed":
            await asyncio.sleep(0.1)
    body = await service.status(task_id)
    runs = runs_path(service.service.config.data_path).read_text().splitlines()

    # Before, the take started the task again for this worker while the ended run's job was still
    # listed as running here: it was not run, and the task stayed `processing` for ever.
    assert (body["status"], body["attempt"]) == ("completed", 1)
    assert [line.split()[0] for line in runs] == ["start", "end", "start", "end"]


async def test_a_take_whose_reply_was_lost_does_not_run_again_a_task_whose_run_here_ended_meanwhile(
    start_service, redis, monkeypatch: pytest.MonkeyPatch
):
    # A take whose reply was lost is sent again asking for the tasks this worker runs (take.lua's
    # recover). Over several partitions it is one script each: the run of a task it returned can
    # end, its end written, while the take goes on to the next partition.
    from redis.exceptions import ConnectionError as RedisConnectionError

    from taskd.store.records import TaskStore

    real_take = TaskStore.take
    running: list[str] = []  # the job whose run the take is to outlive, once it runs
    returned = asyncio.Event()

    async def lost_then_outlived(store: TaskStore, *args: Any, recover: bool = False, **kwargs: Any) -> Any:
        takes = await real_take(store, *args, recover=recover, **kwargs)
        if not running or returned.is_set():
            return takes
        if not recover:
            raise RedisConnectionError("Connection reset by peer")  # after the script ran: its reply lost
        assert [t.job_id for t in takes.started] == running
        job = worker.tasks[running[0]]
        async with asyncio.timeout(30):
            while not job.done():  # the run's end written meanwhile
                await asyncio.sleep(0.01)
        returned.set()
        return takes

    monkeypatch.setattr(TaskStore, "take", lost_then_outlived)
    service = await start_service(serve_queues=["default"], worker=WorkerConfig(poll_delay=0.2))
    pool = service.service._pool
    assert pool is not None
    worker = pool.workers["default"]
    task_id = (await service.submit("record_run", {"seconds": 1}))["task_id"]
    await wait_until_started(redis, task_id, attempt=1)
    job_id = (await redis.hget(keys.task(task_id), "job_id")).decode()

    running.append(job_id)  # the worker's next poll takes, with a free slot
    async with asyncio.timeout(30):
        await returned.wait()
        while job_id in worker.tasks:  # forgotten once ended (the ended run's, or a second one's)
            await asyncio.sleep(0.05)
    runs = runs_path(service.service.config.data_path).read_text().splitlines()

    assert await redis.hmget(keys.task(task_id), "status", "attempt") == [b"completed", b"1"]
    # Not run a second time: the take returned it as this worker's, but that was the run that ended.
    assert [line.split()[0] for line in runs] == ["start", "end"]


async def test_a_start_that_waited_for_its_earlier_run_and_whose_start_a_failover_lost_runs_again(
    start_service, redis, monkeypatch: pytest.MonkeyPatch
):
    after_earlier_run = Executor._after_earlier_run
    lost: list[str] = []

    async def start_lost(executor: Executor, record: TaskRecord, *args: Any) -> bool:
        if not lost:
            # As the new primary has it when a failover lost this start while it waited for the
            # earlier run here to end: the job on arq's set, unlocked, the record `queued` under it.
            lost.append(record.job_id or "")
            partition = keys.task_partition(record.task_id)
            await redis.hset(keys.task(record.task_id), mapping={"status": "queued", "attempt": "1"})
            await redis.hdel(keys.task(record.task_id), "worker_id", "started_at")
            await redis.zrem(keys.running(record.queue, partition), record.task_id)
            await redis.zadd(keys.queue(record.queue, partition), {lost[0]: int(time.time() * 1000)})
            await redis.delete(keys.arq_in_progress(lost[0]))
        return await after_earlier_run(executor, record, *args)

    monkeypatch.setattr(Executor, "_after_earlier_run", start_lost)
    service = await start_service(
        worker=WorkerConfig(heartbeat_interval=600, heartbeat_ttl=1800, poll_delay=0.5)
    )
    executor = service.service._executor
    assert executor is not None
    task_id = (await service.submit("record_run", {"seconds": 3}))["task_id"]
    await wait_until_started(redis, task_id, attempt=1)

    await _requeued_as_a_lapsed_heartbeat_would(executor, await executor.store.get(task_id))
    async with asyncio.timeout(60):
        while await redis.hget(keys.task(task_id), "status") != b"completed":
            await asyncio.sleep(0.1)
    runs = runs_path(service.service.config.data_path).read_text().splitlines()

    # Before, the start, no longer current once the earlier run had ended, dropped its job: the
    # task stayed `queued` for ever, with no job.
    assert await redis.hmget(keys.task(task_id), "job_id", "attempt") == [lost[0].encode(), b"2"]
    assert [line.split()[0] for line in runs] == ["start", "stopped", "start", "end"]


async def test_a_gpu_task_started_again_as_its_earlier_runs_slots_are_released_runs_on_slots_of_its_own(
    start_service, redis, monkeypatch: pytest.MonkeyPatch
):
    # The release of the earlier run's slots begins late (a busy loop): the worker's poll comes
    # first and sees the task's job queued again, its earlier run over.
    release_lease = Executor._release_lease
    released: list[str] = []

    async def late(executor: Executor, task_id: str, **kwargs: Any) -> None:
        await asyncio.sleep(1)
        await release_lease(executor, task_id, **kwargs)
        released.append(task_id)

    monkeypatch.setattr(Executor, "_release_lease", late)
    service = await start_service(gpu_backend=SimulatedBackend(1), gpu=GpuConfig(slots=2))
    executor = service.service._executor
    assert executor is not None
    task_id = (await service.submit("gpu_hold", {"seconds": 600}))["task_id"]
    await wait_until_started(redis, task_id, attempt=1)

    await _requeued_as_a_lapsed_heartbeat_would(executor, await executor.store.get(task_id))
    async with asyncio.timeout(60):
        while task_id not in released or executor.running.get(task_id) is None:
            await asyncio.sleep(0.01)
    async with service.client.get("/api/v1/health") as response:
        gpus = (await response.json())["gpus"]

    # Before, the newer run took no slots (the task held some), and the earlier run's were released
    # under it: it ran on a device whose slot the next GPU task was given.
    assert [list(gpu["running"]) for gpu in gpus] == [[task_id]]


async def test_a_start_waiting_for_its_earlier_runs_end_is_handed_back_when_the_worker_stops(
    start_service, redis, monkeypatch: pytest.MonkeyPatch
):
    record_end = Executor._record

    async def requeued_then_stuck(executor: Executor, record: TaskRecord, outcome: Outcome) -> bool:
        if record.attempt == 1:
            await _requeued_as_a_lapsed_heartbeat_would(executor, record)
            await wait_until_started(redis, record.task_id, attempt=2)
            await asyncio.Event().wait()  # its end is still to be written when the worker stops
        return await record_end(executor, record, outcome)

    monkeypatch.setattr(Executor, "_record", requeued_then_stuck)
    service = await start_service()
    task_id = (await service.submit("record_run", {"seconds": 0}))["task_id"]
    await wait_until_started(redis, task_id, attempt=2)
    waiting_job = await redis.hget(keys.task(task_id), "job_id")

    await service.service.stop(grace=0.2)

    status, job_id = await redis.hmget(keys.task(task_id), "status", "job_id")
    assert status == b"queued"  # not left `processing` under a worker that is gone
    assert job_id != waiting_job  # handed back: queued under a new job


async def test_a_worker_stop_while_a_start_waits_for_its_earlier_run_in_the_handler_logs_no_error(
    start_service, redis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    # The stop hands the waiting start back at once; the earlier run, in its handler, is handed back
    # after it (here: once the waiting start is gone, as when its handler takes a moment to stop).
    hand_back = Executor._hand_back

    async def once_the_waiting_start_is_gone(executor: Executor, record: TaskRecord) -> None:
        if record.attempt == 1:

            async def gone() -> None:
                async with asyncio.timeout(10):
                    while executor.run_of(record.task_id) is not None:
                        await asyncio.sleep(0.01)

            await asyncio.shield(gone())
        await hand_back(executor, record)

    monkeypatch.setattr(Executor, "_hand_back", once_the_waiting_start_is_gone)
    service = await start_service()
    executor = service.service._executor
    assert executor is not None
    task_id = (await service.submit("record_run", {"seconds": 60}))["task_id"]
    await wait_until_started(redis, task_id, attempt=1)
    await _requeued_as_a_lapsed_heartbeat_would(executor, await executor.store.get(task_id))
    await wait_until_started(redis, task_id, attempt=2)
    waiting_job = (await redis.hget(keys.task(task_id), "job_id")).decode()
    async with asyncio.timeout(10):
        while executor.run_of(task_id) != waiting_job:
            await asyncio.sleep(0.01)

    await service.service.stop(grace=0.2)

    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    assert await redis.hget(keys.task(task_id), "status") == b"queued"


async def test_a_start_that_waited_for_its_earlier_runs_end_gets_the_whole_job_timeout_for_its_run(
    start_service, redis, monkeypatch: pytest.MonkeyPatch
):
    # arq's job timeout (a safety net past the hard limit), made short here. The earlier run ends
    # 0.8 of it after the newer start began waiting; the newer run takes 0.5 of it.
    from taskd.queue import workers

    job_timeout = 4.0
    monkeypatch.setattr(workers.WorkerPool, "_arq_timeout", lambda pool, queue: job_timeout)
    run_claimed = Executor._run_claimed

    async def requeued_then_ended_late(executor: Executor, record: TaskRecord) -> bool:
        if record.attempt == 1:  # no handler: its end comes after the newer start's wait
            await _requeued_as_a_lapsed_heartbeat_would(executor, record)
            await wait_until_started(redis, record.task_id, attempt=2)
            await asyncio.sleep(0.8 * job_timeout)
            return await executor._record(record, Outcome("completed", result={}))
        return await run_claimed(executor, record)

    monkeypatch.setattr(Executor, "_run_claimed", requeued_then_ended_late)
    service = await start_service()
    task_id = (await service.submit("record_run", {"seconds": 0.5 * job_timeout}))["task_id"]

    body = await service.wait_terminal(task_id)

    # Before, the newer run was cut 0.2 of the timeout into its handler, handed back, and run again.
    assert (body["status"], body["attempt"], body["result"]["attempt"]) == ("completed", 2, 2)


async def test_a_start_waiting_for_its_earlier_runs_end_does_not_run_when_the_task_is_cancelled_meanwhile(
    start_service, redis, monkeypatch: pytest.MonkeyPatch
):
    record_end = Executor._record
    service = await start_service()

    async def requeued_then_cancelled(executor: Executor, record: TaskRecord, outcome: Outcome) -> bool:
        if record.attempt == 1:
            await _requeued_as_a_lapsed_heartbeat_would(executor, record)
            await wait_until_started(redis, record.task_id, attempt=2)
            async with service.client.delete(f"/api/v1/tasks/{record.task_id}") as response:
                assert response.status == 200
        return await record_end(executor, record, outcome)

    monkeypatch.setattr(Executor, "_record", requeued_then_cancelled)
    task_id = (await service.submit("record_run", {"seconds": 0}))["task_id"]
    await service.wait_for(task_id, lambda b: b["status"] == "cancelled")
    await service.wait_idle()

    runs = runs_path(service.service.config.data_path).read_text().splitlines()
    assert runs == [f"start {task_id} 1 {os.getpid()}", f"end {task_id} 1 {os.getpid()}"]
    assert (await service.status(task_id))["status"] == "cancelled"


# Real processes: a worker killed with SIGKILL.


def env_for(tmp_path, **extra: str) -> dict[str, str]:
    return child_env(tmp_path / "data", **extra)


class Api:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session, self.base_url = session, base_url

    async def submit(self, task_type: str, task_data: dict) -> str:
        async with self.session.post(
            f"{self.base_url}/api/v1/tasks/submit",
            json={"project_id": "p", "task_type": task_type, "task_data": task_data},
            headers={"X-API-Key": API_KEY},
        ) as response:
            return (await response.json())["task_id"]

    async def status(self, task_id: str) -> dict:
        async with self.session.get(
            f"{self.base_url}/api/v1/tasks/{task_id}/status", headers={"X-API-Key": API_KEY}
        ) as response:
            return await response.json()

    async def wait(self, task_id: str, predicate, timeout: float = 60) -> dict:
        async with asyncio.timeout(timeout):
            while not predicate(body := await self.status(task_id)):
                await asyncio.sleep(0.1)
        return body


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as client_session:
        yield client_session


async def test_task_of_a_killed_worker_is_finished_by_another_worker(spawn_taskd, tmp_path, session):
    api = Api(session, spawn_taskd("serve", "--no-worker", env=env_for(tmp_path)).base_url)
    doomed = spawn_taskd("worker", env=env_for(tmp_path), wait_listening=False)
    task_id = await api.submit("sleep", {"seconds": 2, "steps": 4})
    await api.wait(task_id, lambda b: b["status"] == "processing")

    doomed.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    spawn_taskd("worker", env=env_for(tmp_path), wait_listening=False)
    body = await api.wait(task_id, lambda b: b["status"] in TERMINAL)

    assert body["status"] == "completed"
    assert body["attempt"] == 2
    assert time.monotonic() - killed_at < 60


async def test_task_that_kills_its_worker_every_time_fails_after_three_deaths(spawn_taskd, tmp_path, session):
    api = Api(session, spawn_taskd("serve", "--no-worker", env=env_for(tmp_path)).base_url)
    task_id = await api.submit("crash_worker", {})

    for _ in range(3):
        worker = spawn_taskd("worker", env=env_for(tmp_path), wait_listening=False)
        await asyncio.to_thread(worker.proc.wait, 60)
    body = await api.wait(task_id, lambda b: b["status"] in TERMINAL)

    assert body["status"] == "failed"
    assert body["error"].startswith("Task failed: its worker died 3 times while running it")
    assert body["attempt"] == 3


# SIGHUP: the terminal a `taskd serve` or `taskd worker` was started from closed.
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
async def test_a_stop_signal_to_a_worker_hands_its_running_task_back(spawn_taskd, tmp_path, session, sig):
    api = Api(session, spawn_taskd("serve", "--no-worker", env=env_for(tmp_path)).base_url)
    worker = spawn_taskd(
        "worker", env=env_for(tmp_path, TASKD_EXECUTION__SHUTDOWN_GRACE="0.5"), wait_listening=False
    )
    task_id = await api.submit("sleep", {"seconds": 30, "steps": 30})
    await api.wait(task_id, lambda b: b["status"] == "processing")

    assert await asyncio.to_thread(worker.stop, sig, 30) == 0
    body = await api.status(task_id)

    assert body["status"] == "queued"
    assert body["attempt"] == 1


async def test_a_stop_hands_running_jobs_back_within_their_grace_while_a_request_body_never_arrives(
    spawn_taskd, tmp_path, session
):
    # The one Redis is the API node's; the node stopped runs the API and the workers on it.
    api = Api(session, spawn_taskd("serve", "--no-worker", env=env_for(tmp_path)).base_url)
    redis_url = EmbeddedValkey.running_url(tmp_path / "data")
    assert redis_url is not None
    node = spawn_taskd(
        "serve",
        env=child_env(
            tmp_path / "node",
            TASKD_REDIS__URL=redis_url,
            TASKD_EXECUTION__SHUTDOWN_GRACE="1",
            TASKD_HTTP__BODY_TIMEOUT="3600",
        ),
    )
    task_id = await api.submit("sleep", {"seconds": 3600, "steps": 1000})
    await api.wait(task_id, lambda b: b["status"] == "processing")
    url = URL(node.base_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(
            b"POST /api/v1/tasks/submit HTTP/1.1\r\nHost: taskd\r\nX-API-Key: "
            + API_KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        await asyncio.sleep(0.5)  # the request's handler waits for the rest of the body

        node.proc.send_signal(signal.SIGTERM)

        # Before, the stop first waited for that request (aiohttp's 60 s) with the workers still taking
        # jobs, and only then gave the running ones their grace: past the units' TimeoutStopSec.
        body = await api.wait(task_id, lambda b: b["status"] == "queued", timeout=30)
        assert body["attempt"] == 1
        assert await asyncio.to_thread(node.proc.wait, 30) == 0
        async with asyncio.timeout(10):
            assert await reader.read() == b""  # cut, never answered: nothing was stored
    finally:
        writer.close()


async def test_a_stop_hands_back_a_coroutine_handler_deaf_to_its_cancel_and_exits_without_it(
    spawn_taskd, tmp_path, session
):
    modules = {"TASKD_TASKS__MODULES": "taskd.tasks.diagnostics,support_tasks"}
    api = Api(session, spawn_taskd("serve", "--no-worker", env=env_for(tmp_path, **modules)).base_url)
    worker = spawn_taskd(
        "worker",
        env=env_for(tmp_path, TASKD_EXECUTION__SHUTDOWN_GRACE="0.5", **modules),
        wait_listening=False,
    )
    task_id = await api.submit("ignore_cancels", {})
    await api.wait(task_id, lambda b: b["status"] == "processing")

    # Before, the process wrote the hand-back and then never exited: the loop's close waited for
    # the handler, which swallows every cancel.
    assert await asyncio.to_thread(worker.stop, signal.SIGTERM, 60) == 0
    body = await api.status(task_id)

    assert body["status"] == "queued"
    assert marker_path(tmp_path / "data", task_id, "cancel_swallowed").exists()


async def test_ctrl_c_pressed_again_and_again_during_a_stop_leaves_its_exit_status_0(spawn_taskd, tmp_path):
    node = spawn_taskd("serve", env=env_for(tmp_path))
    node.proc.send_signal(signal.SIGINT)

    # Before, one that came once the loop had closed (its handlers back to the defaults) or as
    # Python exited killed the process: status -2 (130 in a shell).
    async with asyncio.timeout(60):
        while node.proc.poll() is None:
            node.proc.send_signal(signal.SIGINT)
            await asyncio.sleep(0.01)

    assert node.proc.returncode == 0


async def test_a_worker_started_with_sighup_ignored_as_by_nohup_keeps_running_its_task_at_a_sighup(
    spawn_taskd, tmp_path, session
):
    api = Api(session, spawn_taskd("serve", "--no-worker", env=env_for(tmp_path)).base_url)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what nohup does before it runs the command
    try:
        worker = spawn_taskd("worker", env=env_for(tmp_path), wait_listening=False)
    finally:
        signal.signal(signal.SIGHUP, previous)
    task_id = await api.submit("sleep", {"seconds": 30, "steps": 30})
    await api.wait(task_id, lambda b: b["status"] == "processing")

    worker.proc.send_signal(signal.SIGHUP)

    # Still ignored once the worker runs: the kernel dropped the signal, nothing began to stop.
    ignored = next(
        line
        for line in Path(f"/proc/{worker.proc.pid}/status").read_text().splitlines()
        if line.startswith("SigIgn:")
    )
    assert int(ignored.split()[1], 16) & (1 << (signal.SIGHUP - 1))
    assert worker.proc.poll() is None
    assert (await api.status(task_id))["status"] == "processing"


async def test_busy_worker_does_not_hoard_jobs_an_idle_worker_can_start(start_service, redis):
    first = await start_service(queues=ONE_AT_A_TIME)
    await start_service(http=False, queues=ONE_AT_A_TIME)
    long = await first.submit("sleep", {"seconds": 2, "steps": 4})
    await first.wait_for(long["task_id"], lambda b: b["status"] == "processing")

    quick = await first.submit("noop", {})
    body = await first.wait_terminal(quick["task_id"], timeout=1.5)

    assert body["status"] == "completed"
    assert (await first.status(long["task_id"]))["status"] == "processing"
    workers = await redis.hmget(keys.task(long["task_id"]), "worker_id")
    assert workers != await redis.hmget(keys.task(quick["task_id"]), "worker_id")


async def test_a_job_taken_by_a_take_under_way_when_a_stop_began_is_handed_back(start_service, monkeypatch):
    api = await start_service(workers=False)
    task_id = (await api.submit("sleep", {"seconds": 30, "steps": 30}))["task_id"]
    took, go_on = asyncio.Event(), asyncio.Event()
    take = Executor.take

    async def take_then_pause(self, queue, *args, **kwargs):
        # The take's reply, with the job it started, still on its way when the stop begins.
        takes = await take(self, queue, *args, **kwargs)
        if takes.started:
            took.set()
            await go_on.wait()
        return takes

    monkeypatch.setattr(Executor, "take", take_then_pause)
    worker = await start_service(http=False)  # its first take finds the queued task
    await asyncio.wait_for(took.wait(), 10)

    stopping = asyncio.create_task(worker.service.stop(grace=0))
    while not worker.service._pool.unready():  # the stop has gathered the running jobs (none)
        await asyncio.sleep(0)
    go_on.set()
    await asyncio.wait_for(stopping, 30)
    body = await api.status(task_id)

    assert body["status"] == "queued"


async def _a_task_of_worker_w_without_its_heartbeat(
    service, redis, task_type: str = "sleep", task_data: dict | None = None
) -> str:
    """A task processing, as Redis says, under worker "w", whose heartbeat is missing."""
    task_id = (await service.submit(task_type, {"seconds": 1} if task_data is None else task_data))["task_id"]
    await redis.hset(keys.task(task_id), mapping={"status": "processing", "worker_id": "w"})
    await redis.zadd(keys.running("default"), {task_id: 1})
    return task_id


async def test_a_process_just_started_takes_no_missing_heartbeat_for_a_dead_worker_at_once(
    start_service, redis
):
    # A process that starts as Redis takes writes again knows nothing of the refusals before, in
    # which live workers' heartbeats expired: they beat again within their interval.
    service = await start_service(workers=False)
    task_id = await _a_task_of_worker_w_without_its_heartbeat(service, redis)
    async with asyncio.timeout(20):
        # Two looks of its reclaimer: each writes this key first.
        for _ in range(2):
            await redis.delete(keys.WRITES_TAKEN)
            while not await redis.exists(keys.WRITES_TAKEN):
                await asyncio.sleep(0.02)
    await alive(redis, "w")  # its next beat

    assert (await service.status(task_id))["status"] == "processing"


async def test_a_process_just_started_takes_a_dead_workers_task_back_after_a_heartbeat_ttl(
    start_service, redis
):
    service = await start_service(workers=False)
    task_id = await _a_task_of_worker_w_without_its_heartbeat(service, redis)

    body = await service.wait_for(task_id, lambda body: body["status"] == "queued" and body["last_error"], 30)

    assert body["last_error"] == "worker w died while running the task"


async def test_a_run_whose_worker_died_spends_none_of_the_tasks_automatic_retries(start_service, redis):
    # Its first run's worker died: the reclaim runs it again, which is not the task's failure. Its
    # later runs' transient errors still get retry.max_retries (3) retries, as any task's do.
    service = await start_service(workers=False)
    task_id = await _a_task_of_worker_w_without_its_heartbeat(
        service, redis, "long_first_run_then_transient", {}
    )
    await redis.hset(keys.task(task_id), "attempt", 1)  # the run that died with "w"
    await start_service(http=False, retry=RetryConfig(base_delay=0.05))

    body = await service.wait_terminal(task_id, 60)

    assert (body["status"], body["attempt"]) == ("failed", 5)
    assert body["error"] == "provider down (attempt 5, final True)"
    async with service.client.get("/api/v1/tasks/metrics") as response:
        assert (await response.json())["metrics"]["retried_tasks"] == 3


async def test_a_task_failed_for_its_dead_workers_leaves_no_file_its_runs_stored(start_service, redis):
    service = await start_service(workers=False, execution=ExecutionConfig(max_worker_deaths=1))
    task_id = await _a_task_of_worker_w_without_its_heartbeat(service, redis)
    project = (await service.status(task_id))["project_id"]
    # What a media task's run under "w" noted, then stored, before "w" died.
    await RunStates(redis, [redis], "w").of(task_id).note_media(project, f"audio_{task_id}.wav")
    stored = media_dir(service.service.config) / project / f"audio_{task_id}.wav"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"RIFF")

    body = await service.wait_terminal(task_id, 30)

    assert body["error"].startswith("Task failed: its worker died 1 times")
    # Before, the file stayed until media.retention (7 days).
    async with asyncio.timeout(30):
        while stored.exists():
            await asyncio.sleep(0.05)


async def test_the_reclaimer_takes_back_a_dead_workers_other_tasks_while_the_media_store_is_slow_to_delete(
    start_service, redis, monkeypatch
):
    service = await start_service(workers=False, execution=ExecutionConfig(max_worker_deaths=1))
    task_ids = [await _a_task_of_worker_w_without_its_heartbeat(service, redis) for _ in range(2)]
    for task_id in task_ids:
        project = (await service.status(task_id))["project_id"]
        await RunStates(redis, [redis], "w").of(task_id).note_media(project, f"audio_{task_id}.wav")
    # A store that takes its time to answer a delete (a bucket out of reach: boto3's timeouts, up
    # to minutes a file), until released.
    release, real = threading.Event(), publish._withdraw
    monkeypatch.setattr(publish, "_withdraw", lambda *args: (release.wait(120), real(*args)))

    try:
        # Before, the look waited for the first task's delete before it took the second back.
        async with asyncio.timeout(30):
            while [await redis.hget(keys.task(task_id), "status") for task_id in task_ids] != [b"failed"] * 2:
                await asyncio.sleep(0.05)
    finally:
        release.set()
