"""`taskd workers|queues|purge|retry-failed|config` as child processes against a real taskd's Redis."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import sys
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import attrs
import pytest
from conftest import API_KEY, TEST_TASK_MODULES

from taskd import keys
from taskd.cli import main
from taskd.cli_admin import parse_since
from taskd.config import Config, NetworkConfig, QueueConfig, RetryConfig


@attrs.frozen
class Run:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


async def operator_cli(
    *args: str, redis_url: str, stdin: str = "", reader_gone: bool = False, **env: str
) -> Run:
    """Run `python -m taskd *args` on the test's Redis, with the test task types, without blocking the loop.

    `reader_gone`: its stdout is a pipe whose read end is closed, as `| head` leaves it.
    """
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    full_env.update(
        TASKD_DATA_DIR="/nonexistent",
        TASKD_REDIS__URL=redis_url,
        TASKD_TASKS__MODULES=",".join(TEST_TASK_MODULES),
    )
    full_env.update(env)
    stdout: int = asyncio.subprocess.PIPE
    if reader_gone:
        read_end, stdout = os.pipe()
        os.close(read_end)
        # Block-buffered, as an operator's shell leaves it: output short of the buffer is written at
        # the end, not by the print (PYTHONUNBUFFERED, set on some machines, hid that case).
        full_env.pop("PYTHONUNBUFFERED", None)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "taskd",
            *args,
            env=full_env,
            stdin=asyncio.subprocess.PIPE,
            stdout=stdout,
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        if reader_gone:
            os.close(stdout)
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 30)
    return Run(proc.returncode, (out or b"").decode(), err.decode())


def _one_default_slot() -> dict[str, QueueConfig]:
    return {**Config().queues, "default": QueueConfig(concurrency=1, timeout=120)}


# ---- workers ----


async def test_workers_lists_the_live_worker_with_the_task_it_runs(taskd, valkey_url):
    task = await taskd.submit("sleep", {"seconds": 30, "steps": 30})
    await taskd.wait_for(task["task_id"], lambda body: body["status"] == "processing")

    run = await operator_cli("workers", "--json", redis_url=valkey_url)

    assert run.code == 0, run.err
    (worker,) = run.json()["workers"]
    assert (worker["pid"], worker["worker_id"]) == (os.getpid(), taskd.service.worker_id)
    assert "default" in worker["queues"]
    assert [running["task_id"] for running in worker["tasks"]] == [task["task_id"]]
    assert worker["last_heartbeat_age"] < 3


async def test_workers_prints_host_pid_and_last_heartbeat(taskd, valkey_url):
    run = await operator_cli("workers", redis_url=valkey_url)

    assert run.code == 0, run.err
    header, row = run.out.splitlines()[:2]
    assert header.split()[:4] == ["HOST", "PID", "QUEUES", "RUNNING"]
    assert str(os.getpid()) in row.split() and row.rstrip().endswith(taskd.service.worker_id)
    assert " ago" in row


async def test_workers_shows_a_heartbeats_control_characters_written_out(valkey_url, redis):
    planted = "evil\x1b]0;pwned\x07\r\nFORGED ROW"
    beat = {"worker_id": planted, "host": planted, "pid": 1, "queues": ["default"], "started_at": 0}
    await redis.set(keys.worker(planted), json.dumps(beat), px=60_000)
    await redis.zadd(keys.WORKERS, {planted: datetime.now(UTC).timestamp() * 1000})

    run = await operator_cli("workers", redis_url=valkey_url)

    assert run.code == 0, run.err
    assert not any(char in run.out for char in "\x1b\x07\r")
    assert len(run.out.splitlines()) == 2  # the header and one row
    assert "evil\\x1b]0;pwned\\x07\\x0d\\x0aFORGED ROW" in run.out


async def test_workers_json_writes_out_what_json_leaves_for_a_terminal(valkey_url, redis):
    planted = "evil\x9b2J\u202eFORGED\u2028ROW"
    beat = {"worker_id": planted, "host": planted, "pid": 1, "queues": ["default"], "started_at": 0}
    await redis.set(keys.worker(planted), json.dumps(beat), px=60_000)
    await redis.zadd(keys.WORKERS, {planted: datetime.now(UTC).timestamp() * 1000})

    run = await operator_cli("workers", "--json", redis_url=valkey_url)

    assert run.code == 0, run.err
    assert not any(char in run.out for char in "\x9b\u202e\u2028")
    assert run.json()["workers"][0]["host"] == planted


# ---- queues ----


async def test_queues_reports_the_oldest_waiting_task_whatever_its_priority(start_service, valkey_url):
    taskd = await start_service(workers=False)
    low = await taskd.submit("noop", {}, priority=3)
    await asyncio.sleep(1.1)  # the record's created_at has whole seconds
    await taskd.submit("noop", {}, priority=1)  # first in line, but queued after the other

    run = await operator_cli("queues", "--json", redis_url=valkey_url)

    assert run.code == 0, run.err
    default = next(queue for queue in run.json()["queues"] if queue["queue"] == "default")
    assert (default["waiting"], default["running"]) == (2, 0)
    assert default["oldest_waiting_since"] == low["created_at"]
    assert default["oldest_waiting_seconds"] >= 1


async def _in_back_off(start_service) -> tuple[str, str]:
    """A task on `default` waiting for its retry (a back-off of up to a day): its id and its job."""
    taskd = await start_service(retry=RetryConfig(base_delay=86_400, max_delay=86_400))
    task_id = (await taskd.submit("fail", {"transient": True}))["task_id"]
    body = await taskd.wait_for(task_id, lambda body: body.get("next_retry_at") is not None)
    assert body["status"] == "queued"
    await taskd.service.stop(grace=1)  # nothing takes it once its back-off has ended
    return task_id, body["task_id"]


async def test_queues_counts_a_task_waiting_for_its_retry_as_waiting_but_not_as_waited(
    start_service, valkey_url
):
    # Its job's score is when its back-off ends, with no priority head start: read as one, the task
    # was queued minutes after its back-off, in the future (oldest_waiting_seconds below 0).
    await _in_back_off(start_service)

    run = await operator_cli("queues", "--json", redis_url=valkey_url)

    default = next(queue for queue in run.json()["queues"] if queue["queue"] == "default")
    assert (default["waiting"], default["oldest_waiting_since"], default["oldest_waiting_seconds"]) == (
        1,
        None,
        None,
    )


async def test_queues_reports_a_retry_as_waiting_since_its_back_off_ended(start_service, valkey_url, redis):
    task_id, _ = await _in_back_off(start_service)
    job = (await redis.hget(keys.task(task_id), "job_id")).decode()
    # As if it failed a minute ago, and its back-off ended 5 s ago.
    now_ms = datetime.now(UTC).timestamp() * 1000
    await redis.hset(keys.task(task_id), "enqueued_ms", int(now_ms - 60_000))
    await redis.zadd(keys.waiting("default"), {job: now_ms - 5_000})

    run = await operator_cli("queues", "--json", redis_url=valkey_url)

    default = next(queue for queue in run.json()["queues"] if queue["queue"] == "default")
    # Not since it failed (60 s), nor 5 s plus the priority's head start (300 s) in the future; the
    # run of the command adds a little.
    assert 5 <= default["oldest_waiting_seconds"] < 55


async def test_queues_counts_running_tasks(start_service, valkey_url):
    taskd = await start_service(queues=_one_default_slot())
    running = await taskd.submit("sleep", {"seconds": 30, "steps": 30})
    await taskd.submit("sleep", {"seconds": 30, "steps": 30})
    await taskd.wait_for(running["task_id"], lambda body: body["status"] == "processing")

    run = await operator_cli("queues", redis_url=valkey_url)

    assert run.code == 0, run.err
    rows = {line.split()[0]: line.split()[1:] for line in run.out.splitlines()[1:]}
    assert rows["default"][:3] == ["1", "1", "1"]
    assert rows["gpu_heavy"] == ["0", "0", "1", "-"]


async def test_queues_says_which_queue_with_waiting_tasks_no_live_worker_serves(start_service, valkey_url):
    taskd = await start_service(serve_queues=["cpu_intensive"])
    await taskd.submit("noop", {})  # a task of queue default

    run = await operator_cli("queues", redis_url=valkey_url)

    assert run.code == 0, run.err
    rows = {line.split()[0]: line.split()[1:] for line in run.out.splitlines()[1:]}
    assert rows["default"][:3] == ["1", "0", "0"]
    assert rows["cpu_intensive"][2] == "1"
    assert "no live worker serves default: tasks waiting there do not start" in run.err


# ---- purge ----


async def test_purge_cancels_nothing_unless_confirmed(start_service, valkey_url):
    taskd = await start_service(workers=False)
    task = await taskd.submit("noop", {})

    run = await operator_cli("purge", "default", redis_url=valkey_url, stdin="n\n")

    assert run.code == 1
    assert "Cancel the 1 queued task(s) of queue default?" in run.err
    assert (await taskd.status(task["task_id"]))["status"] == "queued"


async def test_purge_cancels_the_queued_tasks_with_an_error_and_sends_their_webhooks(
    start_service, valkey_url, receiver
):
    taskd = await start_service(workers=False, network=NetworkConfig(allow_private=True))
    tasks = [await taskd.submit("noop", {}, callback_url=receiver.url()) for _ in range(2)]
    other = await taskd.submit("cpu", {"seconds": 1})  # cpu_intensive: not this queue

    run = await operator_cli("purge", "default", redis_url=valkey_url, stdin="yes\n")

    assert run.code == 0, run.err
    assert sorted(run.out.split()) == sorted(task["task_id"] for task in tasks)
    for task in tasks:
        status = await taskd.status(task["task_id"])
        assert (status["status"], status["error"]) == (
            "cancelled",
            "Purged from queue 'default' by an operator (taskd purge)",
        )
    assert (await taskd.status(other["task_id"]))["status"] == "queued"
    async with asyncio.timeout(10):
        while len(receiver.received) < 2:
            await asyncio.sleep(0.05)
    # The document's cancelled webhook, which has no error field: the status says why.
    assert sorted(
        (hook.json["task_id"], hook.json["status"], hook.json["previous_state"]) for hook in receiver.received
    ) == sorted((task["task_id"], "cancelled", "queued") for task in tasks)


async def test_purge_leaves_a_running_task_alone(start_service, valkey_url):
    taskd = await start_service(queues=_one_default_slot())
    running = await taskd.submit("sleep", {"seconds": 30, "steps": 30})
    waiting = await taskd.submit("sleep", {"seconds": 30, "steps": 30})
    await taskd.wait_for(running["task_id"], lambda body: body["status"] == "processing")

    run = await operator_cli("purge", "default", "--yes", redis_url=valkey_url)

    assert run.code == 0, run.err
    assert run.out.split() == [waiting["task_id"]]
    assert (await taskd.status(running["task_id"]))["status"] == "processing"


async def test_purge_of_an_unknown_queue_exits_2_naming_the_known_ones(valkey_url):
    run = await operator_cli("purge", "nope", "--yes", redis_url=valkey_url)

    assert run.code == 2
    assert run.err.strip() == (
        "taskd: unknown queue 'nope'; known: cpu_intensive, default, gpu_heavy, gpu_medium"
    )


# ---- retry-failed ----


async def test_retry_failed_retries_each_failed_task_of_the_project_once(taskd, valkey_url):
    failed = [await taskd.submit("fail", {}, project_id="films") for _ in range(2)]
    elsewhere = await taskd.submit("fail", {}, project_id="ads")
    for task in [*failed, elsewhere]:
        await taskd.wait_terminal(task["task_id"])

    first = await operator_cli("retry-failed", "--project", "films", redis_url=valkey_url)
    retried = dict(line.split(" -> ") for line in first.out.splitlines())
    for new in retried.values():
        await taskd.wait_terminal(new)  # they fail too: new failures of the project
    again = await operator_cli("retry-failed", "--project", "films", "--json", redis_url=valkey_url)

    assert first.code == 0, first.err
    assert set(retried) == {task["task_id"] for task in failed}
    for original, new in retried.items():
        assert (await taskd.status(new))["retry_of"] == original
    replays = {item["task_id"]: item for item in again.json()["tasks"]}
    assert {task_id: replays[task_id]["new_task_id"] for task_id in retried} == retried
    assert all(replays[task_id]["replayed"] for task_id in retried)
    assert first.err.splitlines()[-1] == "project films: 2 retried, 0 retried before, 0 refused"
    assert again.err.splitlines()[-1] == "project films: 2 retried, 2 retried before, 0 refused"


async def test_retry_failed_leaves_a_task_retried_already_through_the_api_alone(taskd, valkey_url):
    failed = await taskd.submit("fail", {}, project_id="films")
    await taskd.wait_terminal(failed["task_id"])
    async with taskd.client.post(f"/api/v1/tasks/{failed['task_id']}/retry") as response:
        retry = (await response.json())["new_task_id"]
    await taskd.wait_terminal(retry)  # it fails too: a failure of the project's own

    run = await operator_cli("retry-failed", "--project", "films", "--json", redis_url=valkey_url)

    assert run.code == 0, run.err
    outcomes = {item["task_id"]: item for item in run.json()["tasks"]}
    # Before, the command retried the first failure again, beside the tenant's retry: its work ran
    # twice more. Now it names the retry it has, and retries the latest failure of the chain alone.
    assert (outcomes[failed["task_id"]]["new_task_id"], outcomes[failed["task_id"]]["replayed"]) == (
        retry,
        True,
    )
    assert outcomes[retry]["replayed"] is False
    async with taskd.client.get("/api/v1/projects/films/tasks") as response:
        assert (await response.json())["pagination"]["total"] == 3
    assert run.err.splitlines()[-1] == "project films: 1 retried, 1 retried before, 0 refused"


async def test_retry_failed_names_the_api_retry_of_a_task_whose_stored_data_a_submit_now_refuses(
    taskd, valkey_url, redis
):
    failed = await taskd.submit("fail", {}, project_id="films")
    await taskd.wait_terminal(failed["task_id"])
    async with taskd.client.post(f"/api/v1/tasks/{failed['task_id']}/retry") as response:
        retry = (await response.json())["new_task_id"]
    await taskd.wait_terminal(retry)
    # Stored by a version whose checks were laxer: an xn-- host that does not decode.
    await redis.hset(keys.task(failed["task_id"]), "callback_url", "https://xn--zz.example/hook")

    run = await operator_cli("retry-failed", "--project", "films", "--json", redis_url=valkey_url)

    # It was retried already: that is its answer, as for any task retried through the API, not a
    # refusal that tells the operator to submit it again.
    outcome = next(item for item in run.json()["tasks"] if item["task_id"] == failed["task_id"])
    assert (outcome["new_task_id"], outcome["replayed"], outcome["refused"]) == (retry, True, None)
    assert run.code == 0, run.err


async def test_retry_failed_says_a_task_type_its_own_config_does_not_install_is_why_it_refused(
    taskd, valkey_url
):
    failed = await taskd.submit("fail", {}, project_id="films")  # of taskd.tasks.diagnostics
    await taskd.wait_terminal(failed["task_id"])

    run = await operator_cli(
        "retry-failed", "--project", "films", redis_url=valkey_url, TASKD_TASKS__MODULES="support_tasks"
    )

    assert run.code == 1
    assert run.err.splitlines() == [
        f"{failed['task_id']}: not retried: task type 'fail' is not installed by this command's config "
        "(tasks.modules); run it with the config of the taskd that runs these tasks",
        "project films: 0 retried, 0 retried before, 1 refused",
    ]


async def test_retry_failed_writes_out_the_control_characters_of_a_refusal_that_quotes_redis(
    taskd, valkey_url, redis
):
    failed = await taskd.submit("fail", {}, project_id="films")
    await taskd.wait_terminal(failed["task_id"])
    await redis.hset(keys.task(failed["task_id"]), "task_type", "fail\ntaskd: forged\x1b[2J")

    run = await operator_cli("retry-failed", "--project", "films", redis_url=valkey_url)

    assert run.code == 1
    assert "\x1b" not in run.err
    assert not any(line.startswith("taskd: forged") for line in run.err.splitlines()), run.err


async def test_retry_failed_names_the_fields_of_a_task_stored_with_data_a_submit_now_refuses(
    taskd, valkey_url, redis
):
    failed = await taskd.submit("fail", {}, project_id="films")
    await taskd.wait_terminal(failed["task_id"])
    await redis.hset(keys.task(failed["task_id"]), "task_data", json.dumps({"fail_times": "7"}))

    run = await operator_cli("retry-failed", "--project", "films", redis_url=valkey_url)

    assert run.code == 1
    assert run.err.splitlines()[0] == (
        f"{failed['task_id']}: not retried: The task as stored no longer passes a submit's checks; "
        "submit it corrected (task_data.fail_times: Must be an integer)"
    )


async def test_retry_failed_since_a_time_skips_older_failures(taskd, valkey_url):
    older = await taskd.submit("fail", {}, project_id="films")
    await taskd.wait_terminal(older["task_id"])
    await asyncio.sleep(1.1)  # completed_at is kept to the millisecond, but keep the two well apart
    cutoff = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    newer = await taskd.submit("fail", {}, project_id="films")
    await taskd.wait_terminal(newer["task_id"])

    run = await operator_cli("retry-failed", "--project", "films", "--since", cutoff, redis_url=valkey_url)

    assert run.code == 0, run.err
    assert [line.split(" -> ")[0] for line in run.out.splitlines()] == [newer["task_id"]]


async def test_retry_failed_since_a_duration_counts_back_from_redis_clock_not_the_hosts(
    taskd, valkey_url, tmp_path
):
    failed = await taskd.submit("fail", {}, project_id="films")
    await taskd.wait_terminal(failed["task_id"])
    # The CLI on a host whose clock is 10 minutes ahead: 5 minutes back on it is still to come.
    site = tmp_path / "ahead"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import time\n_wall = time.time\ntime.time = lambda: _wall() + 600\n"
    )

    run = await operator_cli(
        "retry-failed",
        "--project",
        "films",
        "--since",
        "5m",
        redis_url=valkey_url,
        PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    )

    assert run.code == 0, run.err
    assert [line.split(" -> ")[0] for line in run.out.splitlines()] == [failed["task_id"]]


def test_since_reads_durations_and_times_with_a_zone():
    now = 1_800_000_000.0

    assert parse_since("90s", now) == now - 90
    assert parse_since("2h", now) == now - 7200
    assert parse_since("1.5d", now) == now - 1.5 * 86400
    assert parse_since("2027-01-15T08:00:00Z", now) == datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("since", ["yesterday", "2027-01-15T08:00:00"])
def test_a_since_that_is_not_a_duration_or_a_zoned_time_exits_2(since, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["retry-failed", "--project", "films", "--since", since])

    assert exited.value.code == 2
    assert "--since" in capsys.readouterr().err


# ---- Redis down or refusing ----


async def test_an_operator_command_exits_3_in_one_line_when_redis_is_down():
    run = await operator_cli("queues", redis_url="redis://127.0.0.1:1/0")

    assert run.code == 3
    assert run.err.startswith("taskd: Redis at redis://127.0.0.1:1/0: ConnectionError:")
    assert len(run.err.strip().splitlines()) == 1


async def test_an_operator_command_on_a_rediss_url_to_a_server_without_tls_asks_whether_it_speaks_tls():
    # Like a plain Redis, the server takes the connection and never answers the TLS hello.
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        url = f"rediss://127.0.0.1:{plain.getsockname()[1]}/0"
        run = await operator_cli("queues", redis_url=url)

    assert run.code == 3
    assert run.err.startswith(f"taskd: Redis at {url}: TimeoutError:")
    assert run.err.strip().endswith("; is the server speaking TLS? (rediss:// connects with TLS)")


async def test_a_wrong_redis_password_exits_3_in_one_line_without_the_password(valkey_url):
    parts = urlsplit(valkey_url)
    wrong = parts._replace(netloc=f":not-the-password-42@{parts.hostname}:{parts.port}").geturl()

    run = await operator_cli("workers", redis_url=wrong)

    assert run.code == 3
    assert len(run.err.strip().splitlines()) == 1
    assert "not-the-password-42" not in run.err and "********" in run.err


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:1/0?password=pw-SECRET-2",
        "redis+sentinel://127.0.0.1:1/mymaster?sentinel_password=pw-SECRET-2",
    ],
)
async def test_an_operator_command_on_a_down_redis_masks_a_password_given_as_a_query_option(url):
    run = await operator_cli("queues", redis_url=url)

    assert run.code == 3
    assert "pw-SECRET-2" not in run.err and "password=********" in run.err


async def test_an_operator_command_whose_reader_went_away_ends_quietly_with_the_sigpipe_status(valkey_url):
    run = await operator_cli("queues", redis_url=valkey_url, reader_gone=True)

    assert (run.code, run.err) == (141, "")


# ---- config ----


def test_config_show_prints_the_effective_config_with_secrets_masked(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TASKD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TASKD_HTTP__PORT", "8123")
    monkeypatch.setenv("TASKD_AUTH__API_KEYS", API_KEY)
    monkeypatch.setenv("TASKD_REDIS__URL", "redis://:redis-secret-99@10.0.0.5:6379/0")
    monkeypatch.setenv("TASKD_PROVIDERS__LLM__API_KEY", "sk-provider-secret")
    monkeypatch.setenv("TASKD_MEDIA__S3__ACCESS_KEY_ID", "AKIA-S3-ID-7731")
    monkeypatch.setenv("TASKD_MEDIA__S3__SECRET_ACCESS_KEY", "s3-secret-7731")

    code = main(["config", "show"])

    out = capsys.readouterr().out
    config = json.loads(out)
    assert code == 0
    assert config["http"]["port"] == 8123
    assert config["auth"]["api_keys"] == ["********"]
    assert config["redis"]["url"] == "redis://:********@10.0.0.5:6379/0"
    assert config["providers"]["llm"]["api_key"] == "********"
    for secret in (API_KEY, "redis-secret-99", "sk-provider-secret", "AKIA-S3-ID-7731", "s3-secret-7731"):
        assert secret not in out


def test_config_show_prints_the_route_of_a_task_type_named_like_a_secret(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TASKD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TASKD_TASKS__ROUTES__REFRESH_TOKEN", "gpu_heavy")

    code = main(["config", "show"])

    config = json.loads(capsys.readouterr().out)
    assert code == 0
    assert config["tasks"]["routes"] == {"refresh_token": "gpu_heavy"}


async def test_config_show_whose_reader_went_away_ends_quietly_with_the_sigpipe_status(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `| head` does once it has its lines
    # Without PYTHONUNBUFFERED: stdout block-buffered, as an operator's shell leaves it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_") and k != "PYTHONUNBUFFERED"}
    env.update(TASKD_DATA_DIR=str(tmp_path))
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "taskd",
            "config",
            "show",
            env=env,
            cwd=tmp_path,  # no ./taskd.toml
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), 30)

    # Only the note of where the config came from, which goes to stderr before the JSON.
    assert (proc.returncode, err.decode()) == (
        141,
        "config: no file: defaults, with the TASKD_* environment\n",
    )


async def test_config_check_started_without_a_stdout_ends_as_with_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    env.update(TASKD_DATA_DIR=str(tmp_path))
    # `taskd config check >&-`: fd 1 closed, so Python's sys.stdout is None and print writes nothing.
    proc = await asyncio.create_subprocess_exec(
        "sh",
        "-c",
        'exec "$@" >&-',
        "sh",
        sys.executable,
        "-m",
        "taskd",
        "config",
        "check",
        env=env,
        cwd=tmp_path,  # no ./taskd.toml
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)

    assert (proc.returncode, err.decode()) == (0, "")


def test_config_show_masks_credentials_in_url_query_strings(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TASKD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(
        "TASKD_PROVIDERS__LLM__BASE_URL", "https://llm.example/v1?api-version=2024&api-key=sk-query-1"
    )
    monkeypatch.setenv("TASKD_WEBHOOKS__PROXY", "http://u:proxy-pass-1@proxy:3128/?token=tok-query-2")

    code = main(["config", "show"])

    out = capsys.readouterr().out
    config = json.loads(out)
    assert code == 0
    assert (
        config["providers"]["llm"]["base_url"] == "https://llm.example/v1?api-version=2024&api-key=********"
    )
    assert config["webhooks"]["proxy"] == "http://u:********@proxy:3128/?token=********"
    assert "sk-query-1" not in out and "tok-query-2" not in out


def test_config_check_exits_0_for_a_valid_config(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TASKD_DATA_DIR", str(tmp_path))
    (tmp_path / "taskd.toml").write_text("[http]\nport = 8123\n")

    code = main(["--config", str(tmp_path / "taskd.toml"), "config", "check"])

    assert code == 0
    assert capsys.readouterr().out.strip().startswith(f"config OK: {tmp_path / 'taskd.toml'}")


def test_config_check_warns_of_webhook_caps_that_a_lowered_max_concurrency_left_idle(
    monkeypatch, capsys, tmp_path
):
    monkeypatch.setenv("TASKD_DATA_DIR", str(tmp_path))
    (tmp_path / "taskd.toml").write_text("[webhooks]\nmax_concurrency = 16\nmax_per_receiver = 8\n")

    code = main(["--config", str(tmp_path / "taskd.toml"), "config", "check"])

    assert code == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "warning: webhooks.max_per_tenant (48) is not below webhooks.max_concurrency (16): one API "
        "key's tasks can hold every place; set it lower to keep some for the others"
    )


def test_config_check_warns_of_a_tenant_key_whose_webhooks_share_the_global_secret(
    monkeypatch, capsys, tmp_path
):
    monkeypatch.setenv("TASKD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(
        "TASKD_AUTH__KEYS",
        json.dumps(
            [{"key": "tenant-a-key-4f1e2d3c", "projects": ["films", "ads"]}, {"key": "admin-key-9a8b7c6d"}]
        ),
    )

    code = main(["config", "check"])

    assert code == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "warning: auth.keys[0] (projects films, ads) has no webhook_secret: its tasks' webhooks are "
        "signed with the global webhooks.secret, as those of every key without one of its own, so "
        "each such key's receiver verifies the others' webhooks and whoever holds that secret can "
        "forge them; give each tenant's key its own"
    )


TENANT_SECRET = "whsec_" + base64.b64encode(b"tenant-secret-of-32-bytes-0123456"[:32]).decode()


def config_check_warnings(monkeypatch, capsys, tmp_path, keys: list[dict[str, Any]], **env: str) -> list[str]:
    """The warning lines of `taskd config check` with these auth.keys (and TASKD_* `env`)."""
    monkeypatch.setenv("TASKD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TASKD_AUTH__KEYS", json.dumps(keys))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["config", "check"]) == 0
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: ")]


def test_config_check_warns_of_a_tenant_key_whose_webhook_secret_is_the_global_one(
    monkeypatch, capsys, tmp_path
):
    keys = [{"key": "tenant-a-key-4f1e2d3c", "projects": ["films"], "webhook_secret": TENANT_SECRET}]

    warnings = config_check_warnings(
        monkeypatch, capsys, tmp_path, keys, TASKD_WEBHOOKS__SECRET=TENANT_SECRET
    )

    assert [line.split(":")[1].strip() for line in warnings] == [
        "auth.keys[0] (projects films) has a webhook secret that is also webhooks.secret or previous_secret"
    ]


def test_config_check_warns_of_tenant_keys_of_other_projects_sharing_a_webhook_secret(
    monkeypatch, capsys, tmp_path
):
    keys = [
        {"key": "tenant-a-key-4f1e2d3c", "projects": ["films"], "webhook_secret": TENANT_SECRET},
        {
            "key": "tenant-b-key-9a8b7c6d",
            "projects": ["ads"],
            "previous_webhook_secret": TENANT_SECRET,
            "webhook_secret": "whsec_" + base64.b64encode(b"b" * 32).decode(),
        },
    ]

    warnings = config_check_warnings(monkeypatch, capsys, tmp_path, keys)

    assert [line.split(":")[1].strip() for line in warnings] == [
        "auth.keys[0] and auth.keys[1] have a webhook secret in common but not their projects"
    ]


def test_config_check_warns_of_a_tenant_key_sharing_its_webhook_secret_with_a_key_of_every_project(
    monkeypatch, capsys, tmp_path
):
    keys = [
        {"key": "admin-key-9a8b7c6d", "webhook_secret": TENANT_SECRET},
        {"key": "tenant-a-key-4f1e2d3c", "projects": ["films"], "webhook_secret": TENANT_SECRET},
    ]

    warnings = config_check_warnings(monkeypatch, capsys, tmp_path, keys)

    # Before, a key without `projects` was left out of the comparison: the tenant verified and
    # could forge the webhooks of every task that key submitted, in every project, unwarned.
    assert [line.split(":")[1].strip() for line in warnings] == [
        "auth.keys[0] and auth.keys[1] have a webhook secret in common but not their projects"
    ]


def test_config_check_is_quiet_about_keys_of_every_project_sharing_a_webhook_secret(
    monkeypatch, capsys, tmp_path
):
    keys = [
        {"key": "admin-old-key-4f1e2d3c", "webhook_secret": TENANT_SECRET},
        {"key": "admin-new-key-9a8b7c6d", "webhook_secret": TENANT_SECRET},
    ]

    assert config_check_warnings(monkeypatch, capsys, tmp_path, keys) == []


def test_config_check_is_quiet_about_a_rotated_tenant_key_that_kept_its_webhook_secret(
    monkeypatch, capsys, tmp_path
):
    keys = [
        {"key": "tenant-a-old-key-4f1e2d3c", "projects": ["films", "ads"], "webhook_secret": TENANT_SECRET},
        {"key": "tenant-a-new-key-9a8b7c6d", "projects": ["ads", "films"], "webhook_secret": TENANT_SECRET},
    ]

    assert config_check_warnings(monkeypatch, capsys, tmp_path, keys) == []


def test_config_may_follow_the_command(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TASKD_DATA_DIR", str(tmp_path))
    (tmp_path / "taskd.toml").write_text("[http]\nport = 8123\n")

    code = main(["config", "show", "--config", str(tmp_path / "taskd.toml")])

    assert code == 0
    assert json.loads(capsys.readouterr().out)["http"]["port"] == 8123


def test_config_after_the_command_wins_over_config_before_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TASKD_DATA_DIR", str(tmp_path))
    (tmp_path / "before.toml").write_text("[http]\nport = 8123\n")
    (tmp_path / "after.toml").write_text("[http]\nport = 8124\n")

    main(
        [
            "--config",
            str(tmp_path / "before.toml"),
            "config",
            "show",
            "--config",
            str(tmp_path / "after.toml"),
        ]
    )

    assert json.loads(capsys.readouterr().out)["http"]["port"] == 8124


def test_serve_with_a_missing_config_after_the_command_names_the_file(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)

    code = main(["serve", "--config", "missing.toml", "--log-level", "error"])

    assert code == 2
    assert capsys.readouterr().err.strip() == "taskd: config file missing.toml does not exist"


def test_config_check_exits_2_naming_the_bad_key(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TASKD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TASKD_HTTP__PORT", "eighty")

    code = main(["config", "check"])

    assert code == 2
    assert capsys.readouterr().err.strip() == "taskd: config key http.port: expected an integer, got 'eighty'"


def test_config_check_exits_2_for_a_queue_the_task_types_need_but_the_config_lacks(
    monkeypatch, capsys, tmp_path
):
    monkeypatch.setenv("TASKD_DATA_DIR", str(tmp_path))
    (tmp_path / "taskd.toml").write_text('[tasks.routes]\ngenerate_video = "video_farm"\n')

    code = main(["--config", str(tmp_path / "taskd.toml"), "config", "check"])

    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "taskd: queues video_farm are used by task types but not configured"
    )


@pytest.mark.parametrize(
    ("toml", "key", "name"),
    [
        ('[tasks.routes]\ngenerate_vide = "gpu_heavy"\n', "tasks.routes", "'generate_vide'"),
        ("[tasks.soft_time_limits]\nnoop = 5.0\n", "tasks.soft_time_limits", "'noop'"),
        ("[tasks.hard_time_limits]\nnoop = 5.0\n", "tasks.hard_time_limits", "'noop'"),
        ('[gpu.task_needs]\ngenerate_imag = "slot"\n', "gpu.task_needs", "'generate_imag'"),
        ("[gpu.task_slots]\ngenerate_imag = 2\n", "gpu.task_slots", "'generate_imag'"),
    ],
)
def test_config_check_exits_2_for_a_task_type_no_installed_module_has(
    monkeypatch, capsys, tmp_path, toml, key, name
):
    monkeypatch.setenv("TASKD_DATA_DIR", str(tmp_path))
    (tmp_path / "taskd.toml").write_text(toml)

    code = main(["--config", str(tmp_path / "taskd.toml"), "config", "check"])

    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(f"taskd: config key {key}: no installed task type is called {name} (installed: ")
    assert "\n" not in err


def test_config_check_exits_2_for_gpu_slots_of_a_queue_no_one_configured(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TASKD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TASKD_GPU__QUEUE_SLOTS__GPU_HEAVVY", "1")

    code = main(["config", "check"])

    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "taskd: config key gpu.queue_slots: no queue is called 'gpu_heavvy' "
        "(configured: cpu_intensive, default, gpu_heavy, gpu_medium)"
    )


def test_config_check_accepts_a_time_limit_of_a_type_from_tasks_modules(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TASKD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TASKD_TASKS__MODULES", ",".join(TEST_TASK_MODULES))
    monkeypatch.setenv("TASKD_TASKS__HARD_TIME_LIMITS__NOOP", "5")

    assert main(["config", "check"]) == 0


@pytest.mark.parametrize(
    ("module", "source", "problem"),
    [
        ("no.such.module", None, "could not be imported: ModuleNotFoundError: No module named 'no'"),
        (
            "raises_at_import",
            'raise RuntimeError("no GPU driver")\n',
            "could not be imported: RuntimeError: no GPU driver",
        ),
        ("exports_nothing", "X = 1\n", "must export TASK (a TaskType) or TASKS (a list of them)"),
    ],
)
def test_config_check_exits_2_in_one_line_for_a_task_module_that_gives_no_types(
    monkeypatch, capsys, tmp_path, module, source, problem
):
    if source is not None:
        (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TASKD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TASKD_TASKS__MODULES", module)

    code = main(["config", "check"])

    assert code == 2
    assert capsys.readouterr().err.strip() == f"taskd: config key tasks.modules: {module} {problem}"


def test_config_check_exits_2_for_a_redis_url_with_a_port_that_is_not_a_number(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TASKD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TASKD_REDIS__URL", "redis://:pw-SECRET-1@127.0.0.1:notaport/0")

    code = main(["config", "check"])

    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "taskd: config key redis: 'url' has a port that is not a number from 0 to 65535"
    )


async def test_an_operator_command_exits_2_in_one_line_when_redis_py_refuses_the_url():
    run = await operator_cli("queues", redis_url="redis://:pw-SECRET-1@127.0.0.1:1/0?max_connections=-1")

    assert run.code == 2
    assert run.err.strip().splitlines() == [
        'taskd: redis.url redis://:********@127.0.0.1:1/0?max_connections=-1: "max_connections" must be a positive integer'
    ]
