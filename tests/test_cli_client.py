"""`taskd submit|status|wait|cancel|retry|tasks|health` as child processes against a real server."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import sys
from pathlib import Path

import attrs
import psutil
import pytest
from aiohttp import web
from conftest import API_KEY
from fake_taskd import Handler, fake_taskd

from taskd.cli_client import ProgressView
from taskd.client import TaskEvent, TaskStatus
from taskd.config import AuthConfig, ExecutionConfig, RetryConfig, load_config


@attrs.frozen
class Run:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


async def taskd_cli(*args: str, url: str | None = None, key: str | None = API_KEY, **env: str) -> Run:
    """Run `python -m taskd *args` without blocking the event loop the server runs in."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    full_env.update(TASKD_DATA_DIR=env.pop("data_dir", "/nonexistent"), **env)
    if url:
        full_env["TASKD_URL"] = url
    if key:
        full_env["TASKD_API_KEY"] = key
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "taskd",
        *args,
        env=full_env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return Run(proc.returncode, out.decode(), err.decode())


async def test_ctrl_c_in_submit_wait_json_names_the_task_that_goes_on(taskd):
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "taskd", "submit", "--project", "films", "--type", "sleep"),
        *("--data", '{"seconds": 60}', "--wait", "--json"),
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("TASKD_")},
            **{"TASKD_URL": taskd.base_url, "TASKD_API_KEY": API_KEY, "TASKD_DATA_DIR": "/nonexistent"},
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    # Following once it holds two connections to taskd: the submit's, kept alive, and the stream's.
    port = int(taskd.base_url.rsplit(":", 1)[1])
    child = psutil.Process(proc.pid)
    connections = getattr(child, "net_connections", None) or child.connections  # psutil < 6 (floors)
    async with asyncio.timeout(30):
        while sum(bool(c.raddr) and c.raddr.port == port for c in connections()) < 2:
            await asyncio.sleep(0.05)

    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)

    assert (proc.returncode, out) == (130, b"")
    [line] = err.decode().splitlines()
    task_id = line.rsplit(" ", 1)[1]
    assert line == f"taskd: interrupted; the tasks go on (`taskd cancel ID` stops one): {task_id}"
    assert (await taskd.status(task_id))["status"] in ("queued", "processing")


_CTRL_C_WHILE_LOADING = """
import sys

class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "taskd.client":
            raise KeyboardInterrupt

sys.meta_path.insert(0, CtrlC())
from taskd.cli import main
sys.exit(main(["status", "t1", "--url", "http://127.0.0.1:1", "--api-key", "k"]))
"""


async def test_ctrl_c_while_a_client_command_loads_the_client_ends_it_with_130_and_no_traceback():
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CTRL_C_WHILE_LOADING,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)

    assert (proc.returncode, out, err) == (130, b"", b"")


async def test_submit_prints_the_task_id_and_exits_0(taskd):
    run = await taskd_cli(
        "submit", "--project", "films", "--type", "noop", "--data", "{}", url=taskd.base_url
    )

    assert run.code == 0, run.err
    status = await taskd.status(run.out.strip())
    assert status["project_id"] == "films"


async def test_submit_notes_the_queue_position_and_the_estimate_in_whole_seconds(taskd):
    run = await taskd_cli(
        "submit", "--project", "films", "--type", "noop", "--data", "{}", url=taskd.base_url
    )  # fmt: skip

    assert run.code == 0, run.err
    assert re.fullmatch(r"queued: position \d+, estimated \d+ s\n", run.err)


async def test_submit_json_prints_the_apis_answer(taskd):
    run = await taskd_cli(
        "submit", "--project", "films", "--type", "noop", "--data", "{}", "--priority", "1", "--json",
        url=taskd.base_url,
    )  # fmt: skip

    assert run.code == 0, run.err
    assert set(run.json()) == {
        "task_id",
        "status",
        "project_id",
        "estimated_duration",
        "queue_position",
        "created_at",
    }


async def test_submit_reads_task_data_from_a_file_and_waits_for_the_result(taskd, tmp_path: Path):
    (tmp_path / "data.json").write_text('{"seconds": 0.3, "steps": 3}')

    run = await taskd_cli(
        "submit", "--project", "films", "--type", "sleep", "--data", f"@{tmp_path / 'data.json'}", "--wait",
        url=taskd.base_url,
    )  # fmt: skip

    assert run.code == 0, run.err
    assert json.loads(run.out.split("\n", 1)[1]) == {"slept": 0.3, "attempt": 1}
    assert "processing 100% step_3_of_3" in run.err.splitlines()


async def test_wait_prints_a_result_of_the_largest_size_the_server_keeps(taskd):
    # Its `completed` event is one SSE line over 1 MiB long (execution.result_max_bytes of JSON).
    characters = ExecutionConfig().result_max_bytes - len('{"filler":""}')
    task = await taskd.submit("big_result", {"characters": characters})

    run = await taskd_cli("wait", task["task_id"], url=taskd.base_url)

    assert run.code == 0, run.err[-2000:]
    assert json.loads(run.out) == {"filler": "x" * characters}


async def test_wait_exits_1_with_the_error_when_the_task_failed(taskd):
    task = await taskd.submit("fail", {"message": "no good"})

    run = await taskd_cli("wait", task["task_id"], url=taskd.base_url)

    assert run.code == 1
    assert f"task {task['task_id']} failed: no good" in run.err


async def test_wait_exits_1_when_the_task_is_cancelled(taskd):
    task = await taskd.submit("sleep", {"seconds": 30, "steps": 30})
    waiting = asyncio.create_task(taskd_cli("wait", task["task_id"], "--json", url=taskd.base_url))
    await taskd.wait_for(task["task_id"], lambda body: body["progress"] > 0)

    await taskd.client.delete(f"/api/v1/tasks/{task['task_id']}")

    run = await waiting
    assert run.code == 1
    assert run.json()["status"] == "cancelled"


async def test_wait_on_a_task_its_failed_dependency_cancelled_exits_1_saying_why(taskd):
    # One batch: a dependent submitted on its own could come after the failure, and be refused.
    steps = [
        {"project_id": "films", "task_type": "fail", "task_data": {"message": "no good"}},
        {"project_id": "films", "task_type": "noop", "task_data": {}, "depends_on": ["@0"]},
    ]
    async with taskd.client.post("/api/v1/tasks/batch", json={"tasks": steps}) as response:
        first, then = [task["task_id"] for task in (await response.json())["tasks"]]

    run = await taskd_cli("wait", then, url=taskd.base_url)

    assert run.code == 1
    assert f"task {then} was cancelled (it was queued): Dependency '{first}' failed" in run.err


async def test_wait_with_a_timeout_exits_4(taskd):
    task = await taskd.submit("sleep", {"seconds": 30, "steps": 1})

    run = await taskd_cli("wait", task["task_id"], "--timeout", "0.5", url=taskd.base_url)

    assert run.code == 4


async def test_wait_whose_timeout_runs_out_after_the_task_ended_prints_its_result_and_exits_0(taskd):
    task = await taskd.submit("noop", {})
    await taskd.wait_terminal(task["task_id"])

    run = await taskd_cli("wait", task["task_id"], "--timeout", "0", url=taskd.base_url)

    assert run.code == 0, run.err
    assert run.json()["ok"] is True


async def test_wait_whose_timeout_runs_out_on_a_server_that_stopped_answering_exits_4_at_once():
    release = asyncio.Event()

    async def hang(_: web.Request) -> web.Response:
        await release.wait()  # the stream and the status read alike: a hung server or proxy
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/api/v1/tasks/{task_id}/events", hang)
    app.router.add_get("/api/v1/tasks/{task_id}/status", hang)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        # taskd_cli gives up after 30 s: the read after the timeout must not take the client's 60 s.
        run = await taskd_cli("wait", "t1", "--timeout", "1", url=f"http://{host}:{port}")
    finally:
        release.set()
        await runner.cleanup()

    assert run.code == 4, run.err
    assert run.err == "taskd: task t1 did not end within 1.0 s\n"


async def test_status_json_is_the_status_body(taskd):
    task = await taskd.submit("noop", {})
    body = await taskd.wait_terminal(task["task_id"])

    run = await taskd_cli("status", task["task_id"], "--json", url=taskd.base_url)

    assert run.code == 0
    assert run.json() == body


async def test_status_of_an_unknown_task_exits_3_with_the_error_body(taskd):
    run = await taskd_cli("status", "nope", "--json", url=taskd.base_url)

    assert run.code == 3
    assert run.json() == {
        "status": 404,
        "error": "task_not_found",
        "message": "Task with ID 'nope' not found",
    }


async def test_json_on_an_api_error_prints_the_error_body_alone(taskd):
    run = await taskd_cli(
        "submit", "--project", "films", "--type", "generate_video", "--data", '{"duration": 99}', "--json",
        url=taskd.base_url,
    )  # fmt: skip

    assert run.code == 3
    assert run.json()["details"] == {"task_data.duration": "Duration must be between 1 and 30 seconds"}
    assert run.err == ""


async def test_an_invalid_submission_exits_3_and_names_the_bad_fields(taskd):
    run = await taskd_cli(
        "submit", "--project", "films", "--type", "generate_video", "--data", '{"duration": 99}',
        url=taskd.base_url,
    )  # fmt: skip

    assert run.code == 3
    assert "task_data.duration: Duration must be between 1 and 30 seconds" in run.err


async def test_data_that_is_not_json_exits_2(taskd):
    run = await taskd_cli(
        "submit", "--project", "films", "--type", "noop", "--data", "{oops", url=taskd.base_url
    )

    assert run.code == 2
    assert "--data is not valid JSON" in run.err


@pytest.mark.parametrize("option", ["--data", "--metadata"])
async def test_a_data_file_that_is_not_utf8_exits_2_with_one_line(taskd, tmp_path: Path, option):
    (tmp_path / "bad.json").write_bytes(b'{"a": "\xff"}')

    options = {"--data": "{}", option: f"@{tmp_path / 'bad.json'}"}

    run = await taskd_cli(
        "submit",
        "--project",
        "films",
        "--type",
        "noop",
        *(x for pair in options.items() for x in pair),
        url=taskd.base_url,
    )

    assert run.code == 2
    [line] = run.err.splitlines()
    assert line.startswith(f"taskd: {tmp_path / 'bad.json'} is not valid JSON")


async def test_status_and_wait_print_a_tasks_control_characters_escaped_never_raw(taskd):
    hostile = "boom\rstatus:         completed\x00\x1b[2J\x1b]0;owned\x07\nINFO forged\u202eline"
    task = await taskd.submit("fail", {"message": hostile})
    await taskd.wait_terminal(task["task_id"])

    status = await taskd_cli("status", task["task_id"], url=taskd.base_url)
    wait = await taskd_cli("wait", task["task_id"], url=taskd.base_url)

    for shown in (status.out, wait.err):
        assert not any(char in shown for char in "\r\x00\x1b\x07\u202e")
        assert (
            "boom\\x0dstatus:         completed\\x00\\x1b[2J\\x1b]0;owned\\x07\\x0aINFO forged\\u202eline"
            in shown
        )


async def test_cancel_then_retry_prints_the_new_task_id(start_service):
    taskd = await start_service(workers=False)
    task = await taskd.submit("noop", {})

    cancelled = await taskd_cli("cancel", task["task_id"], url=taskd.base_url)
    retried = await taskd_cli("retry", task["task_id"], url=taskd.base_url)

    assert (cancelled.code, cancelled.out.strip()) == (
        0,
        f"{task['task_id']}: Task was queued and has been revoked",
    )
    assert retried.code == 0
    assert (await taskd.status(retried.out.strip()))["retry_of"] == task["task_id"]


async def test_output_whose_reader_went_away_ends_quietly_with_the_sigpipe_status(taskd):
    await taskd.submit("noop", {}, project_id="films")
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `| head` does once it has its lines
    # Without PYTHONUNBUFFERED: stdout block-buffered, as a caller's shell leaves it, so the short
    # output is written at the end rather than by the print.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_") and k != "PYTHONUNBUFFERED"}
    env.update(TASKD_DATA_DIR="/nonexistent", TASKD_URL=taskd.base_url, TASKD_API_KEY=API_KEY)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "taskd",
            "tasks",
            "films",
            "--json",
            env=env,
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), 30)

    assert (proc.returncode, err.decode()) == (141, "")


async def test_tasks_lists_a_project_as_a_table_and_as_json(taskd):
    task = await taskd.submit("noop", {}, project_id="films")
    await taskd.wait_terminal(task["task_id"])

    table = await taskd_cli("tasks", "films", "--status", "completed", url=taskd.base_url)
    as_json = await taskd_cli("tasks", "films", "--json", url=taskd.base_url)

    assert table.code == 0
    assert table.out.splitlines()[0].split() == ["TASK", "ID", "TYPE", "STATUS", "PROGRESS", "CREATED"]
    assert table.out.splitlines()[1].split()[:4] == [task["task_id"], "noop", "completed", "100%"]
    assert as_json.json()["pagination"]["total"] == 1


async def test_health_exits_0_when_healthy_and_prints_both_bodies_as_json(taskd):
    run = await taskd_cli("health", "--json", url=taskd.base_url)

    assert run.code == 0, run.err
    assert run.json()["health"]["status"] == "healthy"
    assert run.json()["queue_health"]["alerts"] == []


async def test_health_exits_1_when_no_worker_is_alive(start_service):
    taskd = await start_service(workers=False)

    run = await taskd_cli("health", url=taskd.base_url)

    assert run.code == 1
    assert run.out.startswith("service:  degraded")


async def test_health_exits_1_and_says_why_while_redis_refuses_writes(taskd, redis):
    await redis.config_set("maxmemory", 1)  # noeviction: every write answers OOM
    try:
        run = await taskd_cli("health", url=taskd.base_url)
    finally:
        await redis.config_set("maxmemory", 0)

    assert run.code == 1
    assert run.out.startswith("service:  degraded")
    assert "redis:    Redis refuses writes (Redis: it is full" in run.out


async def test_the_key_is_read_from_the_data_dir_when_none_is_given(start_service, tmp_path: Path):
    taskd = await start_service(workers=False, auth=AuthConfig(api_keys=[]))  # taskd makes and keeps a key

    run = await taskd_cli("health", "--json", url=taskd.base_url, key=None, data_dir=str(tmp_path / "data"))

    assert run.code == 1, run.err  # answered (degraded: no worker), so the key was accepted
    assert run.json()["health"]["status"] == "degraded"


async def test_no_key_anywhere_exits_2(tmp_path: Path):
    run = await taskd_cli("status", "x", url="http://127.0.0.1:1", key=None, data_dir=str(tmp_path))

    assert run.code == 2
    assert "no API key" in run.err


async def test_an_unreachable_server_exits_3():
    run = await taskd_cli("status", "x", url="http://127.0.0.1:1")

    assert run.code == 3
    assert "cannot reach taskd at http://127.0.0.1:1" in run.err


async def test_a_wrong_key_exits_3_with_one_line_and_no_traceback(taskd):
    run = await taskd_cli("status", "x", url=taskd.base_url, key="not-the-key-0123456789")

    assert run.code == 3
    assert run.err.splitlines() == ["taskd: 401 authentication_failed: Invalid or missing API key"]


def event(progress: float, step: str | None, status: TaskStatus = TaskStatus.PROCESSING) -> TaskEvent:
    return TaskEvent("1-0", "progress", "t", "p", status, progress, step)


def test_on_a_terminal_the_progress_bar_is_redrawn_in_place():
    out = io.StringIO()
    view = ProgressView(out, tty=True)

    view(event(0.5, "step_1_of_2"))
    view(event(1.0, "step_2_of_2"))
    view.finish()

    frames = out.getvalue().split("\r")
    assert frames[1].endswith("[" + "#" * 15 + "-" * 15 + "]  50% processing step_1_of_2")
    assert frames[2].endswith("[" + "#" * 30 + "] 100% processing step_2_of_2\n")


def test_without_a_terminal_each_change_is_one_plain_line():
    out = io.StringIO()
    view = ProgressView(out, tty=False)

    view(event(0.5, "step_1_of_2"))
    view(event(0.5, "step_1_of_2"))
    view(event(1.0, None, TaskStatus.COMPLETED))

    assert out.getvalue() == "processing  50% step_1_of_2\ncompleted 100%\n"


def test_the_client_variables_are_not_config_keys():
    config = load_config(environ={"TASKD_URL": "http://10.0.0.5:8001", "TASKD_API_KEY": "k"})

    assert config.http.port == 8001


async def test_submit_after_with_a_ref_feeds_the_first_steps_result_into_the_second(taskd):
    first = await taskd_cli(
        "submit", "--project", "films", "--type", "append", "--data", '{"text": "rain"}', url=taskd.base_url
    )

    second = await taskd_cli(
        "submit", "--project", "films", "--type", "append", "--data", '{"suffix": "?"}',
        "--after", first.out.strip(), "--ref", f"text={first.out.strip()}#/text", "--wait",
        url=taskd.base_url,
    )  # fmt: skip

    assert second.code == 0, second.err
    assert json.loads(second.out.split("\n", 1)[1]) == {"text": "rain!?", "length": 6}


async def test_submit_ref_to_a_task_not_in_after_exits_2_with_one_line(taskd):
    run = await taskd_cli(
        "submit", "--project", "films", "--type", "append", "--data", "{}", "--ref", "text=abc#/text",
        url=taskd.base_url,
    )  # fmt: skip

    assert run.code == 2
    assert run.err.splitlines() == ["taskd: --ref text=abc#/text: abc is not one of --after"]


async def test_submit_delay_shows_scheduled_for_in_the_status(taskd):
    submitted = await taskd_cli(
        "submit", "--project", "films", "--type", "noop", "--data", "{}", "--delay", "600", url=taskd.base_url
    )

    status = await taskd_cli("status", submitted.out.strip(), url=taskd.base_url)

    assert submitted.code == 0, submitted.err
    assert [line.split()[0] for line in status.out.splitlines() if "scheduled_for" in line] == [
        "scheduled_for:"
    ]


async def test_status_of_a_task_waiting_for_its_retry_shows_when_it_runs_next(start_service):
    api = await start_service(retry=RetryConfig(base_delay=600))
    task_id = (await api.submit("fail", {"transient": True}))["task_id"]
    waiting = await api.wait_for(task_id, lambda body: body["next_retry_at"] is not None)

    status = await taskd_cli("status", task_id, url=api.base_url)

    assert f"next_retry_at:   {waiting['next_retry_at']}" in status.out.splitlines()


CHAIN = """
[[task]]
name = "first"
project = "films"
type = "append"
data = {text = "rain"}

[[task]]
name = "second"
project = "films"
type = "append"
after = ["first"]
data = {text = {ref = "first#/text"}, suffix = "?"}

[[task]]
project = "films"
type = "append"
after = ["second"]
data = {text = {ref = "second#/text"}}
"""


async def test_run_submits_a_pipeline_file_prints_the_ids_and_follows_the_chain_to_its_end(
    taskd, tmp_path: Path
):
    (tmp_path / "pipeline.toml").write_text(CHAIN)

    run = await taskd_cli("run", str(tmp_path / "pipeline.toml"), url=taskd.base_url)

    assert run.code == 0, run.err
    ids = run.out.split()
    assert len(ids) == 3
    assert (await taskd.status(ids[2]))["result"] == {"text": "rain!?!", "length": 7}


async def test_run_reads_a_pipeline_file_an_editor_began_with_a_byte_order_mark(taskd, tmp_path: Path):
    (tmp_path / "pipeline.toml").write_bytes(b"\xef\xbb\xbf" + CHAIN.encode())

    run = await taskd_cli("run", str(tmp_path / "pipeline.toml"), url=taskd.base_url)

    assert run.code == 0, run.err
    assert len(run.out.split()) == 3


async def test_run_a_pipeline_whose_ref_names_an_unknown_step_exits_2_with_one_line(taskd, tmp_path: Path):
    (tmp_path / "pipeline.toml").write_text(CHAIN.replace("second#/text", "voice#/text"))

    run = await taskd_cli("run", str(tmp_path / "pipeline.toml"), url=taskd.base_url)

    assert run.code == 2
    assert run.err.splitlines() == [
        f"taskd: {tmp_path / 'pipeline.toml'}: task 2: 'voice' is not an earlier task"
    ]


async def test_run_a_pipeline_whose_ref_names_a_step_whose_name_holds_a_hash_reads_that_step(
    taskd, tmp_path: Path
):
    (tmp_path / "pipeline.toml").write_text(CHAIN.replace('"first', '"scene#1'))

    run = await taskd_cli("run", str(tmp_path / "pipeline.toml"), url=taskd.base_url)

    assert run.code == 0, run.err
    assert (await taskd.status(run.out.split()[2]))["result"] == {"text": "rain!?!", "length": 7}


async def test_run_a_pipeline_whose_ref_names_a_later_step_whose_name_holds_a_hash_exits_2_naming_it_whole(
    tmp_path: Path,
):
    (tmp_path / "pipeline.toml").write_text(
        CHAIN.replace('{ref = "first#/text"}', '{ref = "scene#2#/text"}').replace(
            '[[task]]\nproject = "films"', '[[task]]\nname = "scene#2"\nproject = "films"'
        )
    )

    run = await taskd_cli("run", str(tmp_path / "pipeline.toml"), url="http://127.0.0.1:1")

    assert run.code == 2
    assert run.err.splitlines() == [
        f"taskd: {tmp_path / 'pipeline.toml'}: task 1: 'scene#2' is not an earlier task"
    ]


async def test_run_a_pipeline_whose_ref_two_earlier_names_could_read_exits_2_naming_both(tmp_path: Path):
    # "second" is named "first#/text": "first#/text#/text" is task 0's "/text#/text" or its "/text".
    (tmp_path / "pipeline.toml").write_text(
        CHAIN.replace('name = "second"', 'name = "first#/text"')
        .replace('after = ["second"]', 'after = ["first#/text"]')
        .replace('{ref = "second#/text"}', '{ref = "first#/text#/text"}')
    )

    run = await taskd_cli("run", str(tmp_path / "pipeline.toml"), url="http://127.0.0.1:1")

    assert run.code == 2
    assert run.err.splitlines() == [
        f"taskd: {tmp_path / 'pipeline.toml'}: task 2: ref 'first#/text#/text' could read task 'first' "
        "or task 'first#/text': rename one"
    ]


async def test_run_a_pipeline_whose_unnamed_task_has_an_earlier_tasks_name_as_index_exits_2_saying_so(
    tmp_path: Path,
):
    (tmp_path / "pipeline.toml").write_text(
        CHAIN.replace('name = "first"', 'name = "1"', 1).replace('name = "second"\n', "")
    )

    run = await taskd_cli("run", str(tmp_path / "pipeline.toml"), url="http://127.0.0.1:1")

    assert run.code == 2
    assert run.err.splitlines() == [
        f"taskd: {tmp_path / 'pipeline.toml'}: task 1: it has no name, and its index '1' is task 0's name"
    ]


async def test_run_a_pipeline_whose_after_names_an_index_of_thousands_of_digits_exits_2_with_one_line(
    tmp_path: Path,
):
    # More digits than int() reads (4,300): the index was converted to compare, a traceback.
    huge = "1" * 5000
    (tmp_path / "pipeline.toml").write_text(CHAIN.replace('after = ["first"]', f'after = ["{huge}"]'))

    run = await taskd_cli("run", str(tmp_path / "pipeline.toml"), url="http://127.0.0.1:1")

    assert run.code == 2
    assert run.err.splitlines() == [
        f"taskd: {tmp_path / 'pipeline.toml'}: task 1: '{huge}' is not an earlier task"
    ]


async def test_run_reads_an_index_written_with_leading_zeros_as_that_index_at_any_step(taskd, tmp_path: Path):
    # "00" was step 0 at a step of two digits, and "not an earlier task" at one of one digit.
    (tmp_path / "pipeline.toml").write_text(
        CHAIN.replace('after = ["first"]', 'after = ["00"]').replace('"first#/text"', '"00#/text"')
    )

    run = await taskd_cli("run", str(tmp_path / "pipeline.toml"), url=taskd.base_url)

    assert run.code == 0, run.err
    assert (await taskd.status(run.out.split()[2]))["result"] == {"text": "rain!?!", "length": 7}


@pytest.mark.parametrize("step", ["²", "\u0661"])
async def test_run_a_pipeline_whose_after_names_a_step_in_other_digits_exits_2_with_one_line(
    tmp_path: Path, step
):
    (tmp_path / "pipeline.toml").write_text(CHAIN.replace('after = ["first"]', f'after = ["{step}"]'))

    run = await taskd_cli("run", str(tmp_path / "pipeline.toml"), url="http://127.0.0.1:1")

    assert run.code == 2
    assert run.err.splitlines() == [
        f"taskd: {tmp_path / 'pipeline.toml'}: task 1: '{step}' is not an earlier task"
    ]


async def test_run_a_pipeline_task_with_a_key_run_does_not_read_exits_2_with_one_line(tmp_path: Path):
    # The API's name for `after`: dropped in silence, the step would start without its dependency.
    (tmp_path / "pipeline.toml").write_text(CHAIN.replace('after = ["first"]', 'depends_on = ["first"]'))

    run = await taskd_cli("run", str(tmp_path / "pipeline.toml"), url="http://127.0.0.1:1")

    assert run.code == 2
    assert run.err.splitlines() == [
        f"taskd: {tmp_path / 'pipeline.toml'}: task 1: unknown key 'depends_on' "
        "(a task has name, project, type, data, after, priority, callback)"
    ]


async def test_run_a_pipeline_file_that_is_not_utf8_exits_2_with_one_line(taskd, tmp_path: Path):
    (tmp_path / "pipeline.toml").write_bytes(b'[[task]]\nproject = "\xff"\ntype = "noop"\n')

    run = await taskd_cli("run", str(tmp_path / "pipeline.toml"), url=taskd.base_url)

    assert run.code == 2
    [line] = run.err.splitlines()
    assert line.startswith(f"taskd: {tmp_path / 'pipeline.toml'} is not valid TOML")


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
async def test_run_a_pipeline_whose_data_holds_what_json_cannot_exits_2(taskd, tmp_path: Path, value):
    (tmp_path / "pipeline.toml").write_text(
        f'[[task]]\nproject = "films"\ntype = "noop"\ndata = {{x = {value}}}\n'
    )

    run = await taskd_cli("run", str(tmp_path / "pipeline.toml"), url=taskd.base_url)

    assert run.code == 2
    assert run.err.splitlines() == [
        f"taskd: {tmp_path / 'pipeline.toml'}: task 0: data holds {float(value)}, which JSON cannot carry"
    ]


async def test_run_a_pipeline_file_nested_deeper_than_tomllib_goes_exits_2_with_one_line(tmp_path: Path):
    (tmp_path / "pipeline.toml").write_text(
        f'[[task]]\nproject = "films"\ntype = "noop"\ndata = {{x = {"[" * 3000}{"]" * 3000}}}\n'
    )

    # Refused before anything is sent: no server is needed to tell.
    run = await taskd_cli("run", str(tmp_path / "pipeline.toml"), url="http://127.0.0.1:1")

    assert run.code == 2
    assert run.err.splitlines() == [
        f"taskd: {tmp_path / 'pipeline.toml'} is not valid TOML: nested too deeply"
    ]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("[" * 300 + "]" * 300, "Recursion limit reached"),
        ("99999999999999999999", "Integer exceeds 64-bit range"),
    ],
)
async def test_run_a_pipeline_whose_data_json_cannot_encode_exits_2_with_one_line(
    tmp_path: Path, value, problem
):
    (tmp_path / "pipeline.toml").write_text(
        f'[[task]]\nproject = "films"\ntype = "noop"\ndata = {{x = {value}}}\n'
    )

    run = await taskd_cli("run", str(tmp_path / "pipeline.toml"), url="http://127.0.0.1:1")

    assert run.code == 2
    assert run.err.splitlines() == [
        f"taskd: {tmp_path / 'pipeline.toml'}: task 0 cannot be sent as JSON: {problem}"
    ]


async def test_submit_data_nested_deeper_than_json_encoding_goes_exits_2_with_one_line():
    data = '{"x": ' + "[" * 300 + "]" * 300 + "}"

    run = await taskd_cli(
        "submit", "--project", "films", "--type", "noop", "--data", data, url="http://127.0.0.1:1"
    )

    assert run.code == 2
    assert run.err.splitlines() == ["taskd: --data cannot be sent as JSON: Recursion limit reached"]


async def test_the_pipeline_file_of_the_docs_is_one_batch_the_server_accepts(start_service, tmp_path: Path):
    taskd = await start_service(workers=False)
    docs = (Path(__file__).parent.parent / "docs" / "api.md").read_text()
    example = docs.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "scene.toml").write_text(example.replace("\n  ", "\n"))

    run = await taskd_cli("run", str(tmp_path / "scene.toml"), "--no-wait", url=taskd.base_url)

    assert run.code == 0, run.err
    ids = run.out.split()
    assert (await taskd.status(ids[3]))["waiting_for"] == [ids[2]]


async def test_run_writes_out_the_line_breaks_of_a_step_name_on_stderr(start_service, tmp_path: Path):
    taskd = await start_service(workers=False)
    # TOML's "\n" in a name: printed as it is, it began a line of its own, passing for taskd's.
    (tmp_path / "pipeline.toml").write_text(CHAIN.replace('"first', '"first\\ntaskd: forged'))

    run = await taskd_cli("run", str(tmp_path / "pipeline.toml"), "--no-wait", url=taskd.base_url)

    assert run.code == 0, run.err
    ids = run.out.split()
    assert run.err.splitlines() == [
        f"first\\x0ataskd: forged: {ids[0]}",
        f"second: {ids[1]}",
        f"2: {ids[2]}",
    ]


async def test_run_exits_1_when_a_step_fails_and_names_the_cancelled_rest(taskd, tmp_path: Path):
    failing_first = CHAIN.replace(
        'type = "append"\ndata = {text = "rain"}', 'type = "fail"\ndata = {message = "no rain"}'
    )
    (tmp_path / "pipeline.toml").write_text(failing_first)

    run = await taskd_cli("run", str(tmp_path / "pipeline.toml"), url=taskd.base_url)

    assert run.code == 1
    first, second, _ = run.out.split()
    assert f"task {first} failed: no rain" in run.err
    assert f"task {second} was cancelled (it was queued)" in run.err


async def test_run_whose_timeout_runs_out_names_the_tasks_that_go_on_even_with_json(taskd, tmp_path: Path):
    # A step that outlasts the pipeline's --timeout, and one waiting for it.
    (tmp_path / "pipeline.toml").write_text(
        CHAIN.replace('type = "append"\ndata = {text = "rain"}', 'type = "sleep"\ndata = {seconds = 30}')
    )

    run = await taskd_cli(
        "run", str(tmp_path / "pipeline.toml"), "--json", "--timeout", "1", url=taskd.base_url
    )

    assert run.code == 4
    assert run.out == ""
    ids = run.err.splitlines()[-1].split(": ")[-1].split()
    assert run.err.splitlines() == [
        f"taskd: task {ids[0]} did not end within 1.0 s",
        f"taskd: --timeout 1 s ran out; the tasks go on (`taskd cancel ID` stops one): {' '.join(ids)}",
    ]
    async with taskd.client.get("/api/v1/projects/films/tasks") as response:
        stored = [task["task_id"] for task in (await response.json())["tasks"]]
    assert sorted(ids) == sorted(stored)  # every task of the pipeline, none of which has ended


async def test_run_whose_timeout_runs_out_names_the_timeout_with_every_digit_given(taskd, tmp_path: Path):
    (tmp_path / "pipeline.toml").write_text(
        CHAIN.replace('type = "append"\ndata = {text = "rain"}', 'type = "sleep"\ndata = {seconds = 30}')
    )

    run = await taskd_cli(
        "run", str(tmp_path / "pipeline.toml"), "--json", "--timeout", "1.0000001", url=taskd.base_url
    )

    assert run.code == 4
    # Not "--timeout 1 s": six significant digits, as `:g` wrote it.
    assert run.err.splitlines()[-1].startswith("taskd: --timeout 1.0000001 s ran out; the tasks go on")


async def test_a_password_in_the_url_is_not_repeated_when_taskd_cannot_be_reached():
    run = await taskd_cli("tasks", "films", url="http://someone:URL-SECRET-5e1f@127.0.0.1:1")

    assert run.code != 0
    assert "URL-SECRET-5e1f" not in run.err + run.out
    assert "someone:***@127.0.0.1:1" in run.err


@pytest.mark.parametrize(
    ("url", "key", "named"),
    [
        ("http://127.0.0.1:notaport", API_KEY, "taskd: $TASKD_URL: not a valid URL"),
        ("ftp://127.0.0.1:1", API_KEY, "taskd: $TASKD_URL: expected http(s)://host[:port]"),
        ("http://127.0.0.1:1", "k\r\nX: 1", "taskd: $TASKD_API_KEY: it holds a line break"),
    ],
)
async def test_a_malformed_url_or_key_in_the_environment_is_a_usage_error_naming_its_variable(
    url, key, named
):
    # The variables, as taskd_cli passes them: up to d42cb17 the error said "--url:" (and
    # "--api-key:") though no option was given.
    run = await taskd_cli("tasks", "films", url=url, key=key)

    assert run.code == 2
    [line] = run.err.splitlines()
    assert line.startswith(named)


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--url", "ftp://127.0.0.1:1", "taskd: --url: expected http(s)://host[:port]"),
        ("--api-key", "k\r\nX: 1", "taskd: --api-key: it holds a line break"),
    ],
)
async def test_a_malformed_url_or_key_option_is_a_usage_error_naming_the_option(option, value, named):
    run = await taskd_cli("tasks", "films", option, value, url="http://127.0.0.1:1")

    assert run.code == 2
    [line] = run.err.splitlines()
    assert line.startswith(named)


# Against a server that is not taskd (a proxy, a wrong URL, a compromised host).

HOSTILE = "t\x1b]0;owned\x07\x1b[2J\r\nforged\u202e"
SHOWN_RAW = "\x1b\x07\r\u202e"


def answering(body: object, status: int = 200) -> Handler:
    async def answer(_: web.Request) -> web.Response:
        return web.json_response(body, status=status)

    return answer


async def test_text_output_writes_out_the_control_characters_of_what_a_server_sent():
    summary = {"task_id": HOSTILE, "project_id": "p", "task_type": HOSTILE, "status": "queued"}
    routes = {
        "/api/v1/projects/p/tasks": answering(
            {"tasks": [summary], "pagination": {"page": 1, "limit": 20, "total": 1, "total_pages": 1}}
        ),
        "/api/v1/tasks/submit": answering({"task_id": HOSTILE, "status": "queued", "project_id": "p"}),
        "/api/v1/tasks/t1/retry": answering(
            {"new_task_id": HOSTILE, "original_task_id": "t1", "status": "queued", "message": "ok"}
        ),
        "/api/v1/tasks/t1": answering({"task_id": HOSTILE, "status": "cancelled", "message": "ok"}),
        "/api/v1/health": answering(
            {
                "status": HOSTILE,
                "redis_status": HOSTILE,
                "worker_count": 1,
                "queue_sizes": {HOSTILE: 1},
                "system_load": {"gpu_utilization": [HOSTILE]},
                "uptime": 1,
            }
        ),
        "/api/v1/tasks/health": answering(
            {
                "status": "healthy",
                "metrics": {},
                "alerts": [{"severity": HOSTILE, "message": HOSTILE, "metric": "m", "value": 1}],
            }
        ),
    }
    async with fake_taskd(routes) as url:
        runs = [
            await taskd_cli("tasks", "p", url=url),
            await taskd_cli("submit", "--project", "p", "--type", "x", "--data", "{}", url=url),
            await taskd_cli("retry", "t1", url=url),
            await taskd_cli("cancel", "t1", url=url),
            await taskd_cli("health", url=url),
        ]

    for run in runs:
        assert "Traceback" not in run.err
        assert "\\x1b]0;owned\\x07" in run.out
        assert not any(char in run.out + run.err for char in SHOWN_RAW)


# What JSON leaves as it is inside a string: DEL, C1 controls (U+009B is the one-byte CSI), a bidi
# override, the line and paragraph separators.
JSON_LEAVES = "\x7f\x85\x9b\u202e\u2028\u2029"


async def test_json_output_writes_out_what_json_leaves_for_a_terminal_and_parses_the_same():
    result = {"response": f"ok{JSON_LEAVES}[2Jforged", f"key{JSON_LEAVES}": [JSON_LEAVES]}
    webhook = {"url": "https://hooks.example/x", "last_error": f"refused{JSON_LEAVES}"}
    task = {"task_id": "t1", "project_id": "p", "status": "completed", "result": result, "webhook": webhook}
    async with fake_taskd({"/api/v1/tasks/t1/status": answering(task)}) as url:
        runs = {
            "status": await taskd_cli("status", "t1", url=url),
            "status --json": await taskd_cli("status", "t1", "--json", url=url),
            "wait": await taskd_cli("wait", "t1", url=url),
        }

    for name, run in runs.items():
        assert run.code == 0, run.err
        assert not any(char in run.out for char in JSON_LEAVES), name
    assert runs["wait"].json() == result
    assert runs["status --json"].json()["result"] == result
    assert '"ok\\u007f\\u0085\\u009b\\u202e\\u2028\\u2029[2Jforged"' in runs["status"].out


async def test_what_the_server_sends_is_noted_on_stderr_as_one_line_each():
    retried = {
        "new_task_id": "t2",
        "original_task_id": "t1",
        "status": "queued",
        "message": "ok\ntaskd: forged",
    }
    submitted = {"task_id": "t1\ntaskd: forged", "status": "queued", "project_id": "p"}
    running = {"task_id": "t1", "project_id": "p", "status": "processing"}
    routes = {
        "/api/v1/tasks/t1/retry": answering(retried),
        "/api/v1/tasks/submit": answering(submitted),
        "/api/v1/tasks/{task_id}/status": answering(running),
        "/api/v1/tasks/{task_id}/events": answering({"error": "not_found", "message": "no"}, status=404),
    }
    async with fake_taskd(routes) as url:
        runs = [
            await taskd_cli("retry", "t1", url=url),
            await taskd_cli(
                "submit", "--project", "p", "--type", "x", "--data", "{}", "--wait", "--timeout", "0", url=url
            ),
        ]

    for run in runs:
        assert not any(line.startswith("taskd: forged") for line in run.err.splitlines()), run.err


async def test_status_reads_a_progress_sent_as_a_string_as_its_number():
    task = {"task_id": "t1", "project_id": "p", "status": "processing", "progress": "0.5"}
    async with fake_taskd({"/api/v1/tasks/t1/status": answering(task)}) as url:
        run = await taskd_cli("status", "t1", url=url)

    assert run.code == 0, run.err
    assert "progress:        50%" in run.out


async def test_error_details_that_are_not_an_object_exit_3_in_one_line():
    refused = answering({"error": "validation_error", "message": "bad", "details": ["x"]}, status=400)
    async with fake_taskd({"/api/v1/tasks/t1/status": refused}) as url:
        run = await taskd_cli("status", "t1", url=url)

    assert run.code == 3
    assert run.err.splitlines() == ["taskd: 400 validation_error: bad"]


@pytest.mark.parametrize("progress", [1e9, -5.0, float("inf"), float("nan")])
def test_the_progress_bar_stays_its_width_whatever_progress_the_server_sent(progress):
    out = io.StringIO()
    view = ProgressView(out, tty=True)

    view(event(progress, "step"))

    assert len(out.getvalue()) < 80


async def test_a_proxys_html_error_page_is_one_line_exit_3():
    async def bad_gateway(_: web.Request) -> web.Response:
        page = "<html>\r\n<head><title>502 Bad Gateway</title></head>\nstatus: completed\n</html>"
        return web.Response(text=page, status=502, content_type="text/html")

    async with fake_taskd({"/api/v1/tasks/t1/status": bad_gateway}) as url:
        run = await taskd_cli("status", "t1", url=url)

    assert run.code == 3
    [line] = run.err.splitlines()
    assert line.startswith("taskd: 502 http_error: <html>\\x0d\\x0a<head><title>502 Bad Gateway")


async def test_an_idempotency_key_holding_a_line_break_is_a_usage_error_in_one_line():
    run = await taskd_cli(
        "submit",
        "--project",
        "p",
        "--type",
        "noop",
        "--data",
        "{}",
        "--idempotency-key",
        "a\r\nX-Injected: 1",
        url="http://127.0.0.1:1",
    )

    assert run.code == 2
    assert run.err.splitlines() == [
        "taskd: --idempotency-key: it holds a line break or another control character"
    ]


async def test_submit_data_with_an_integer_past_64_bits_exits_2_naming_it():
    # orjson read it as 1.8446744073709552e+19, and the CLI sent that float.
    data = '{"seed": 18446744073709551616}'

    run = await taskd_cli(
        "submit", "--project", "films", "--type", "noop", "--data", data, url="http://127.0.0.1:1"
    )

    assert run.code == 2
    assert run.err.splitlines() == [
        "taskd: --data: 18446744073709551616 is an integer outside -9223372036854775808 to "
        "18446744073709551615, which taskd cannot keep exactly: send it as a string"
    ]
