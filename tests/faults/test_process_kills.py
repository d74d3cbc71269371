"""SIGKILL of `taskd serve` and of one of three `taskd worker` processes loses no task and no webhook;
a worker stopped (SIGSTOP) past its heartbeat TTL stops its run of a task started again since, by it
or by another worker, once it goes on."""

from __future__ import annotations

import asyncio
import collections
import signal

import aiohttp
from faultkit import Api, Receiver, child_env, runs

from taskd.embedded import EmbeddedValkey
from taskd.tasks.diagnostics import marker_path


async def test_serve_killed_mid_run_finishes_every_task_once_after_restart(spawn_taskd, tmp_path):
    data = tmp_path / "data"
    env = child_env(data, TASKD_QUEUES__DEFAULT__CONCURRENCY="2")
    async with (
        asyncio.timeout(90),
        Receiver(fail_first={"/flaky": 2}) as receiver,
        aiohttp.ClientSession() as s,
    ):
        first = spawn_taskd("serve", env=env)
        api = Api(s, first.base_url)
        flaky = await api.submit("noop", {}, callback_url=receiver.url("/flaky"))
        await api.wait_all([flaky], lambda b: (b["webhook"] or {}).get("attempts", 0) >= 1)
        running = [
            await api.submit("record_run", {"seconds": 4}, callback_url=receiver.url()) for _ in range(2)
        ]
        await api.wait_all(running, lambda b: b["status"] == "processing")
        queued = [
            await api.submit("record_run", {"seconds": 0.05}, callback_url=receiver.url()) for _ in range(20)
        ]

        first.stop(signal.SIGKILL)
        api = Api(s, spawn_taskd("serve", env=env).base_url)
        everything = [flaky, *running, *queued]
        bodies = await api.wait_all(everything, timeout=60)
        async with asyncio.timeout(20):
            while not receiver.delivered >= {f"msg_{task_id}_completed" for task_id in everything}:
                await asyncio.sleep(0.1)
        _, metrics = await api.call("GET", "/api/v1/tasks/metrics")

    ends = collections.Counter(task_id for event, task_id, _, _ in runs(data) if event == "end")
    assert [body["status"] for body in bodies] == ["completed"] * len(everything)
    assert metrics["metrics"]["completed_tasks"] == len(
        everything
    )  # each task ended once, whatever ran twice
    assert {body["attempt"] for body in bodies if body["task_id"] in running} == {2}
    assert set(ends) == {*running, *queued}
    assert receiver.delivered == {f"msg_{task_id}_completed" for task_id in everything}
    assert receiver.ids[f"msg_{flaky}_completed"] == 3  # two failed attempts, then one after the restart


async def test_worker_killed_among_three_has_its_tasks_finished_by_the_others(spawn_taskd, tmp_path):
    data = tmp_path / "data"
    env = child_env(data, TASKD_QUEUES__DEFAULT__CONCURRENCY="2")
    async with asyncio.timeout(90), aiohttp.ClientSession() as session:
        api = Api(session, spawn_taskd("serve", "--no-worker", env=env).base_url)
        workers = [spawn_taskd("worker", env=env, wait_listening=False) for _ in range(3)]
        redis_url = EmbeddedValkey.running_url(data)
        assert redis_url is not None
        task_ids = [await api.submit("record_run", {"seconds": 1.5}) for _ in range(18)]
        await api.wait_all(task_ids[:6], lambda b: b["status"] != "queued")
        victim = workers[0]
        await asyncio.sleep(0.3)

        victim.stop(signal.SIGKILL)
        bodies = await api.wait_all(task_ids, timeout=60)

    rows = runs(data)
    # Under load the victim may also have finished a task or two before the kill: those are not its to hand back.
    by_victim = {
        event: {task_id for e, task_id, _, pid in rows if e == event and pid == victim.proc.pid}
        for event in ("start", "end")
    }
    interrupted = by_victim["start"] - by_victim["end"]
    ends = collections.Counter(task_id for event, task_id, _, _ in rows if event == "end")
    assert interrupted, "the killed worker was running tasks"
    assert [body["status"] for body in bodies] == ["completed"] * len(task_ids)
    assert all(ends[task_id] == 1 for task_id in task_ids)
    assert {body["attempt"] for body in bodies if body["task_id"] in interrupted} == {2}


async def test_a_task_requeued_while_its_stopped_worker_ran_it_runs_again_there_after_that_run_with_its_own_fields(
    spawn_taskd, tmp_path
):
    # A worker stopped (SIGSTOP: a paused VM, a stalled event loop) past its heartbeat TTL: the
    # reclaim queues its task again while that run is still going; once the worker goes on, it
    # stops that run (its end would be refused: the task is another job's now) and its own take
    # starts the task again: the record holds the second run's attempt and result. Before, the
    # worker skipped the newer start and the older run's end was written under it; then the newer
    # start waited for the whole older run.
    data = tmp_path / "data"
    env = child_env(data)
    async with asyncio.timeout(90), aiohttp.ClientSession() as session:
        api = Api(session, spawn_taskd("serve", "--no-worker", env=env).base_url)
        worker = spawn_taskd("worker", env=env, wait_listening=False)
        task_id = await api.submit("record_run", {"seconds": 10})
        await api.wait_all([task_id], lambda b: b["status"] == "processing")
        worker.proc.send_signal(signal.SIGSTOP)
        try:
            await api.wait_all([task_id], lambda b: b["status"] == "queued", timeout=30)
        finally:
            worker.proc.send_signal(signal.SIGCONT)
        [body] = await api.wait_all([task_id], timeout=60)

    assert (body["status"], body["attempt"], body["result"]["attempt"]) == ("completed", 2, 2)
    assert [(event, attempt) for event, _, attempt, _ in runs(data)] == [
        ("start", 1),
        ("stopped", 1),
        ("start", 2),
        ("end", 2),
    ]


async def test_a_stopped_workers_run_of_a_task_another_worker_started_since_is_stopped_once_it_goes_on(
    spawn_taskd, tmp_path
):
    # Nothing is published when another worker takes the task: the stalled worker learns it from
    # the record at its first heartbeat once it goes on. Before, both runs went on to their ends.
    data = tmp_path / "data"
    env = child_env(data)
    async with asyncio.timeout(120), aiohttp.ClientSession() as session:
        api = Api(session, spawn_taskd("serve", "--no-worker", env=env).base_url)
        stalled = spawn_taskd("worker", env=env, wait_listening=False)
        task_id = await api.submit("record_run", {"seconds": 600})
        await api.wait_all([task_id], lambda b: b["status"] == "processing")
        stalled.proc.send_signal(signal.SIGSTOP)
        try:
            spawn_taskd("worker", env=env, wait_listening=False)
            await api.wait_all([task_id], lambda b: (b["status"], b["attempt"]) == ("processing", 2))
        finally:
            stalled.proc.send_signal(signal.SIGCONT)
        while ("stopped", 1) not in [(event, attempt) for event, _, attempt, _ in runs(data)]:
            await asyncio.sleep(0.1)
        await api.call("DELETE", f"/api/v1/tasks/{task_id}")

    rows = [(event, attempt, pid) for event, _, attempt, pid in runs(data)]
    assert ("stopped", 1, stalled.proc.pid) in rows
    assert ("end", 1, stalled.proc.pid) not in rows


async def test_a_stopped_workers_job_process_of_a_task_another_worker_started_since_is_terminated(
    spawn_taskd, tmp_path
):
    # A task run in a job process: stopped as a cancel stops it (SIGTERM, the handler's Cancelled).
    data = tmp_path / "data"
    env = child_env(data)
    async with asyncio.timeout(120), aiohttp.ClientSession() as session:
        api = Api(session, spawn_taskd("serve", "--no-worker", env=env).base_url)
        stalled = spawn_taskd("worker", env=env, wait_listening=False)
        task_id = await api.submit("cpu", {"seconds": 120})
        await api.wait_all([task_id], lambda b: b["status"] == "processing")
        started = marker_path(data, task_id, "started")
        while not started.exists():
            await asyncio.sleep(0.1)
        older = started.read_text()
        stalled.proc.send_signal(signal.SIGSTOP)
        try:
            spawn_taskd("worker", env=env, wait_listening=False)
            await api.wait_all([task_id], lambda b: (b["status"], b["attempt"]) == ("processing", 2))
        finally:
            stalled.proc.send_signal(signal.SIGCONT)
        terminated = marker_path(data, task_id, "sigterm")
        while not terminated.exists():
            await asyncio.sleep(0.1)
        # Read before the cleanup's cancel: the newer run's job process, stopped by it in its
        # handler, writes the same marker with its own pid.
        by = terminated.read_text()
        body = await api.status(task_id)
        await api.call("DELETE", f"/api/v1/tasks/{task_id}")

    assert by == older
    assert (body["status"], body["attempt"]) == ("processing", 2)


async def test_a_killed_workers_task_on_a_queue_no_config_names_any_more_is_queued_again_and_told(
    spawn_taskd, tmp_path
):
    # `record_run` routed to queue `old`, run by a worker that is then killed; the service started
    # again names no `old` (the queue removed). Before, its reclaim looked only at the queues its
    # config names: the task stayed `processing` for ever, its worker gone.
    data = tmp_path / "data"
    old = child_env(
        data,
        TASKD_QUEUES__OLD__CONCURRENCY="1",
        TASKD_QUEUES__OLD__TIMEOUT="60",
        TASKD_TASKS__ROUTES__RECORD_RUN="old",
    )
    async with asyncio.timeout(90), aiohttp.ClientSession() as session:
        first = spawn_taskd("serve", env=old)
        task_id = await Api(session, first.base_url).submit("record_run", {"seconds": 60})
        await Api(session, first.base_url).wait_all([task_id], lambda b: b["status"] == "processing")
        first.stop(signal.SIGKILL)
        api = Api(session, spawn_taskd("serve", env=child_env(data)).base_url)

        (body,) = await api.wait_all([task_id], lambda b: b["status"] == "queued")
        _, health = await api.call("GET", "/api/v1/tasks/health")

    assert "worker" in body["last_error"]
    assert any(
        alert["metric"] == "queue_without_worker" and alert.get("queue") == "old"
        for alert in health["alerts"]
    ), health["alerts"]
