"""Job processes are forked from one template per worker, which imported the task modules once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import aiohttp
import psutil
from conftest import API_KEY, TEST_TASK_MODULES, child_env, is_running, make_config

from taskd.config import ExecutionConfig
from taskd.engine.jobproc.forkserver import ForkedProcess, Template, TemplateGone
from taskd.engine.jobproc.pool import Limits, RunnerPool
from taskd.tasks.diagnostics import marker_path


async def _show(service) -> dict:
    task = await service.submit("show_what_i_got", {})
    body = await service.wait_terminal(task["task_id"])
    assert body["status"] == "completed", body
    return body["result"]


async def test_job_processes_are_forks_of_one_template_that_imported_the_task_modules(start_service):
    service = await start_service(execution=ExecutionConfig(max_tasks_per_runner=1, reclaim_interval=0.5))

    results = [await _show(service) for _ in range(3)]

    assert len({result["pid"] for result in results}) == 3  # a new job process for each task
    templates = {result["parent_pid"] for result in results}
    assert len(templates) == 1 and os.getpid() not in templates
    template = templates.pop()
    assert {result["module_imported_in"] for result in results} == {template}
    assert "taskd.engine.jobproc.template" in " ".join(psutil.Process(template).cmdline())


async def test_a_killed_template_is_replaced_and_the_next_task_runs(start_service):
    service = await start_service(execution=ExecutionConfig(max_tasks_per_runner=1, reclaim_interval=0.5))
    first = await _show(service)

    os.kill(first["parent_pid"], signal.SIGKILL)
    second = await _show(service)

    assert second["parent_pid"] != first["parent_pid"]


async def test_what_a_job_process_handler_started_in_its_session_dies_with_a_template_killed_by_sigkill(
    start_service,
):
    # The OOM killer, or a kill by hand: the job processes die of their parent-death signal, and what
    # their handlers started had no subreaper left to end it; it ran on for ever, beside the task's
    # next run. A child that made a session of its own (the other one here) is beyond this reach.
    service = await start_service()
    task = await service.submit("leave_stubborn_children", {"then": "wait"})
    marker = marker_path(service.service.config.data_path, task["task_id"], "children")
    async with asyncio.timeout(30):
        while not marker.exists():
            await asyncio.sleep(0.05)
    in_session, own_session = (psutil.Process(int(pid)) for pid in marker.read_text().split())
    template = psutil.Process(psutil.Process(in_session.ppid()).ppid())
    try:
        template.kill()
        async with asyncio.timeout(20):
            # Killed; reaped by init, or a zombie where init reaps none (some containers)
            while is_running(in_session.pid):
                await asyncio.sleep(0.05)
    finally:
        for child in (in_session, own_session):
            with contextlib.suppress(psutil.Error):
                child.kill()


async def test_a_fork_that_finds_the_template_gone_starts_a_new_one_before_its_exit_is_noticed(
    tmp_path, valkey_url, monkeypatch
):
    pool = RunnerPool(make_config(tmp_path, valkey_url))
    fork = Template.fork
    dead: list[Template] = []

    async def gone_once_dead(template: Template, device: str | None) -> ForkedProcess:
        # The first template dies as its first fork starts, as a SIGKILL would leave it: its pipe
        # broken, its exit not yet seen.
        if template is (dead or [template])[0]:
            dead[:] = [template]
            raise TemplateGone("the job-process template does not answer: [Errno 32] Broken pipe")
        return await fork(template, device)

    monkeypatch.setattr(Template, "fork", gone_once_dead)
    try:
        runner = await pool.acquire()

        assert dead  # its first fork met the dead template
        assert runner.alive  # forked from a new one
    finally:
        await pool.close()


async def test_a_template_close_cancelled_while_it_waits_leaves_the_template_killed_and_reaped(
    tmp_path, valkey_url
):
    # A worker's stop cut short (its own deadline, a test's teardown) cancelled close() in its wait:
    # the template was killed and never waited for, and the event loop could end first, its
    # transport left "still running" (a ResourceWarning at the next collection, seen in CI).
    template = Template(make_config(tmp_path, valkey_url))
    await template.start()
    proc = template._proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)  # it cannot exit at its control socket's close
    closing = asyncio.create_task(template.close())
    await asyncio.sleep(0.2)  # in its wait

    closing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await closing

    assert proc.returncode == -signal.SIGKILL


async def test_a_job_process_reads_nothing_on_its_stdin(start_service):
    service = await start_service()

    assert (await _show(service))["stdin"] == ""


async def test_a_job_process_that_dies_fails_its_task_with_its_exit_status(start_service):
    service = await start_service()
    task = await service.submit("die_by_sigkill", {})

    body = await service.wait_terminal(task["task_id"])

    assert body["status"] == "failed"
    assert body["error"] == "Job process died while running the task (exit status -9)"


async def test_the_template_and_its_job_processes_die_with_a_worker_killed_by_sigkill(spawn_taskd, tmp_path):
    serve = spawn_taskd("serve", env=child_env(tmp_path / "data"))
    async with aiohttp.ClientSession(serve.base_url, headers={"X-API-Key": API_KEY}) as session:
        body = {"project_id": "p", "task_type": "cpu", "task_data": {"seconds": 60}}
        async with session.post("/api/v1/tasks/submit", json=body) as response:
            assert response.status == 200
    # The template, and the job process it forked for the task.
    async with asyncio.timeout(30):
        while len(forked := _forked_under(serve.proc.pid)) < 2:
            await asyncio.sleep(0.05)

    serve.stop(signal.SIGKILL)
    _, alive = psutil.wait_procs(forked, timeout=10)

    assert alive == []


async def test_what_a_job_process_handler_started_dies_with_a_worker_killed_by_sigkill(spawn_taskd, tmp_path):
    # One child ignores SIGTERM, one left the job process's group: only the template, their last
    # subreaper, can still find them once the job process is gone.
    data_dir = tmp_path / "data"
    serve = spawn_taskd("serve", env=child_env(data_dir, TASKD_TASKS__MODULES=",".join(TEST_TASK_MODULES)))
    async with aiohttp.ClientSession(serve.base_url, headers={"X-API-Key": API_KEY}) as session:
        body = {"project_id": "p", "task_type": "leave_stubborn_children", "task_data": {"then": "wait"}}
        async with session.post("/api/v1/tasks/submit", json=body) as response:
            task_id = (await response.json())["task_id"]
    marker = marker_path(data_dir, task_id, "children")
    async with asyncio.timeout(30):
        while not marker.exists():
            await asyncio.sleep(0.05)
    children = [psutil.Process(int(pid)) for pid in marker.read_text().split()]

    serve.stop(signal.SIGKILL)
    _, alive = psutil.wait_procs(children, timeout=10)

    assert alive == []


async def test_a_job_process_and_its_template_that_outlive_a_killed_worker_print_no_traceback(
    spawn_taskd, tmp_path
):
    # The kernel closes a SIGKILLed worker's ends of the pipes before its template hears of its death
    # (the parent-death signal comes as the worker's teardown ends, over a second under load): a job
    # process writing progress meanwhile met a broken pipe, failed its answer the same way, and
    # printed two tracebacks into the worker's log; its template, reporting that exit, a third. The
    # template is held stopped here to open that window for certain.
    data_dir = tmp_path / "data"
    log = tmp_path / "serve.log"
    serve = spawn_taskd("serve", env=child_env(data_dir), stderr=log)
    async with aiohttp.ClientSession(serve.base_url, headers={"X-API-Key": API_KEY}) as session:
        body = {"project_id": "p", "task_type": "cpu", "task_data": {"seconds": 60}}
        async with session.post("/api/v1/tasks/submit", json=body) as response:
            task_id = (await response.json())["task_id"]
    marker = marker_path(data_dir, task_id, "started")
    async with asyncio.timeout(30):
        while not (marker.exists() and marker.read_text()):
            await asyncio.sleep(0.05)
    job_process = psutil.Process(int(marker.read_text()))
    template = psutil.Process(job_process.ppid())

    template.suspend()
    try:
        serve.stop(signal.SIGKILL)
        async with asyncio.timeout(30):  # its next progress report (every 0.2 s) finds the pipe broken
            while job_process.is_running() and job_process.status() != psutil.STATUS_ZOMBIE:
                await asyncio.sleep(0.05)
    finally:
        template.resume()
    _, alive = psutil.wait_procs([template], timeout=30)

    assert alive == []
    assert "Traceback" not in log.read_text()


def _forked_under(pid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "taskd.engine.jobproc.template" in " ".join(proc.cmdline()):
                found.append(proc)
    return found


async def test_a_task_whose_job_process_died_with_its_template_runs_again(start_service):
    # The template is taskd's own process: its death is not the task's doing (a job process that
    # dies on its own, above, is).
    service = await start_service()
    task = await service.submit("cpu", {"seconds": 3})
    await service.wait_for(task["task_id"], lambda body: body.get("current_step") == "burning")
    [template] = [proc for proc in _forked_under(os.getpid()) if proc.ppid() == os.getpid()]

    template.kill()
    body = await service.wait_terminal(task["task_id"], timeout=30)

    assert (body["status"], body["attempt"]) == ("completed", 2), body
    assert body["last_error"] == "Job process died while running the task (its job-process template exited)"


async def test_a_burst_of_progress_reports_is_handled_as_the_latest_not_one_by_one(tmp_path, valkey_url):
    pool = RunnerPool(make_config(tmp_path, valkey_url))
    handled: list[tuple[float, str | None]] = []

    async def slow_progress_write(progress: float, step: str | None) -> None:
        handled.append((progress, step))
        await asyncio.sleep(0.001)  # a Redis write: far slower than a handler reporting in a loop

    request = {
        "task_id": "t-1",
        "project_id": "p-1",
        "task_type": "progress_burst",
        "task_data": {"reports": 20_000},
        "metadata": {},
        "attempt": 1,
        "max_attempts": 4,
        "device": None,
    }
    try:
        runner = await pool.acquire()
        outcome = await runner.execute(request, Limits(None, 60, 2**31, 2), slow_progress_write)
        await pool.release(runner)
    finally:
        await pool.close()

    assert (outcome.kind, outcome.result) == ("done", {"reports": 20_000})
    assert handled[-1] == (1.0, "last")
    # Reports that came while one was being written were kept as the latest only, not queued up in
    # the worker's memory one by one (20 000 of them, with no bound).
    assert len(handled) < 2_000


async def test_a_thread_a_task_left_reports_no_progress_for_the_next_task_of_its_job_process(
    tmp_path, valkey_url
):
    # A daemon thread keeps its job process (a library's helper); one that went on reporting the
    # ended task's progress had it taken for the next task's (another project's, maybe): progress
    # frames name no task.
    pool = RunnerPool(make_config(tmp_path, valkey_url))
    handled: list[tuple[float, str | None]] = []

    async def progress_write(progress: float, step: str | None) -> None:
        handled.append((progress, step))

    def request(task_id: str, task_type: str, task_data: dict) -> dict:
        return {
            "task_id": task_id,
            "project_id": "p-1",
            "task_type": task_type,
            "task_data": task_data,
            "metadata": {},
            "attempt": 1,
            "max_attempts": 4,
            "device": None,
        }

    limits = Limits(None, 60, 2**31, 2)
    try:
        runner = await pool.acquire()
        first = await runner.execute(
            request("t-1", "report_from_a_daemon_thread_in_process", {}), limits, progress_write
        )
        await pool.release(runner)
        await asyncio.sleep(0.2)  # the thread reports on meanwhile
        handled.clear()
        runner = await pool.acquire()
        second = await runner.execute(
            request("t-2", "progress_burst", {"reports": 1}), limits, progress_write
        )
        await pool.release(runner)
    finally:
        await pool.close()

    assert (second.kind, second.result) == ("done", {"reports": 1})
    assert second.result is not None and first.result is not None and runner.pid == first.result["pid"]
    assert handled == [(1.0, "last")]
