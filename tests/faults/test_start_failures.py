"""`taskd serve` whose start-up cannot finish: one line on stderr and a documented exit status
(docs/production.md, "Exit statuses of taskd serve and taskd worker"), never a traceback or a hang."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

import pytest
from conftest import child_env
from faultkit import ValkeyServer, free_port, serving

from taskd.config import RedisConfig

PASSWORD = "s3cret-redis-pw"


def _start_serve(tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    """`taskd serve` started, its output piped: for a test that acts while it starts."""
    return subprocess.Popen(
        [sys.executable, "-m", "taskd", "serve"],
        env={**_base_env(tmp_path), **env},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def _serve(tmp_path: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """`taskd serve` run to its end; what it wrote and its exit status."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "taskd", "serve"],
        env={**_base_env(tmp_path), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _base_env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", **child_env(tmp_path / "data"), "TASKD_LOGGING__FORMAT": "json"}


def _last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


async def test_an_unreachable_redis_is_waited_for_then_named_in_one_line_with_exit_status_3(tmp_path):
    port = free_port()
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"

    done = await _serve(tmp_path, TASKD_REDIS__URL=url, TASKD_REDIS__START_WAIT="1.5")

    assert done.returncode == 3
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr
    assert _last_line(done.stderr).startswith(
        f"taskd: Redis at redis://:********@127.0.0.1:{port}/0: ConnectionError:"
    )
    assert "does not answer" in done.stderr  # a warning per try while it waited
    assert "listening" not in done.stdout


async def test_a_server_that_never_answers_is_given_up_on_after_the_start_wait_even_with_no_socket_timeout(
    tmp_path,
):
    # Listening, never reading: the kernel completes the connection, PING gets no answer.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        started = time.monotonic()
        done = await _serve(
            tmp_path,
            timeout=30,
            TASKD_REDIS__URL=f"redis://127.0.0.1:{port}/0",
            TASKD_REDIS__START_WAIT="1.5",
            TASKD_REDIS__SOCKET_TIMEOUT="0",  # no bound on a command: the start wait alone ends it
        )

    assert done.returncode == 3
    assert time.monotonic() - started < 20
    assert _last_line(done.stderr).startswith(f"taskd: Redis at redis://127.0.0.1:{port}/0: TimeoutError:")


async def test_a_rediss_url_to_a_redis_without_tls_ends_start_up_asking_whether_it_speaks_tls(tmp_path):
    # A plain Valkey reads the TLS hello as the start of a command and waits for the rest: a timeout.
    server = await ValkeyServer(tmp_path / "valkey").start()
    try:
        url = f"rediss://127.0.0.1:{server.port}/0"
        done = await _serve(tmp_path, TASKD_REDIS__URL=url, TASKD_REDIS__START_WAIT="1.5")
    finally:
        server.stop()

    assert done.returncode == 3
    last = _last_line(done.stderr)
    assert last.startswith(f"taskd: Redis at {url}: TimeoutError:")
    assert last.endswith("; is the server speaking TLS? (rediss:// connects with TLS)")


async def test_a_redis_that_comes_up_within_the_start_wait_is_served(tmp_path):
    server = ValkeyServer(tmp_path / "valkey")
    proc = _start_serve(tmp_path, TASKD_REDIS__URL=server.url, TASKD_REDIS__START_WAIT="30")
    try:
        assert proc.stderr is not None and proc.stdout is not None
        # Once it waits (its first warning), not after a fixed pause: under load the import alone
        # can take longer, and the server would be up before its first try.
        waiting = await asyncio.wait_for(asyncio.to_thread(proc.stderr.readline), 30)
        assert "does not answer" in waiting
        await server.start()
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        assert "listening on http://" in line
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        server.stop()
    assert proc.returncode == 0
    assert "Traceback" not in stderr


async def test_a_stdout_whose_reader_went_away_leaves_serve_serving_and_stopping_as_asked(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `taskd serve | head -1` leaves it once head has gone
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskd", "serve"],
            env=_base_env(tmp_path),
            cwd=tmp_path,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(write_end)
    try:
        assert proc.stderr is not None
        said = await asyncio.wait_for(
            asyncio.to_thread(_line_holding, proc.stderr, "stdout cannot be written"), 60
        )
        url = re.search(r"taskd listening on (http://[\d.]+:\d+)", said)
        assert url is not None, said
        with urllib.request.urlopen(f"{url.group(1)}/livez", timeout=10) as answer:
            assert answer.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 0
    assert "Traceback" not in stderr and "shutting down" in stderr


def _line_holding(stream: IO[str], text: str) -> str:
    """The first line of `stream` that holds `text` ("" if the stream ends first)."""
    for line in stream:
        if text in line:
            return line
    return ""


async def test_a_wrong_redis_password_stops_start_up_at_once_with_exit_status_3(tmp_path):
    server = await ValkeyServer(tmp_path / "valkey", password=PASSWORD).start()
    try:
        url = f"redis://:wrong-{PASSWORD}@127.0.0.1:{server.port}/0"
        started = time.monotonic()
        done = await _serve(tmp_path, TASKD_REDIS__URL=url, TASKD_REDIS__START_WAIT="60")
    finally:
        server.stop()

    assert done.returncode == 3
    assert time.monotonic() - started < 30  # no waiting for a password to become right
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr
    assert _last_line(done.stderr).startswith(
        f"taskd: Redis at redis://:********@127.0.0.1:{server.port}/0: AuthenticationError:"
    )


async def test_a_redis_user_refused_a_command_taskd_needs_stops_start_up_naming_it(tmp_path):
    # An ACL user that may read but not write: start-up's first write is refused.
    reader = f"user reader on >{PASSWORD} ~* &* +@read +ping +hello +client +info"
    server = await ValkeyServer(tmp_path / "valkey", None, reader, password=PASSWORD).start()
    try:
        done = await _serve(tmp_path, TASKD_REDIS__URL=f"redis://reader:{PASSWORD}@127.0.0.1:{server.port}/0")
    finally:
        server.stop()

    assert done.returncode == 3
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr
    last = _last_line(done.stderr)
    assert last.startswith(
        f"taskd: Redis at redis://reader:********@127.0.0.1:{server.port}/0: NoPermissionError:"
    )
    assert "no permissions to run" in last


@pytest.mark.parametrize(
    ("server_config", "named"),
    [
        # Valkey's default for a new ACL user: no pub/sub channels.
        (
            f"user taskd on >{PASSWORD} ~* +@all",
            "EVALSHA of a script that publishes on {taskd}:start_check: ",
        ),
        (f"user taskd on >{PASSWORD} ~* &* +@all -evalsha", "EVALSHA of a script that publishes on"),
        (f"user taskd on >{PASSWORD} ~* &* +@all -script", "SCRIPT LOAD: "),
        (
            'rename-command EVALSHA ""',
            "EVALSHA of a script that publishes on {taskd}:start_check: unknown command",
        ),
        ('rename-command SCRIPT "script-renamed"', "SCRIPT LOAD: unknown command"),
    ],
)
async def test_a_redis_that_lacks_or_refuses_scripts_or_channels_stops_start_up_naming_them(
    tmp_path, server_config, named
):
    server = await ValkeyServer(tmp_path / "valkey", None, server_config, password=PASSWORD).start()
    user = "taskd" if server_config.startswith("user") else ""
    try:
        done = await _serve(tmp_path, TASKD_REDIS__URL=f"redis://{user}:{PASSWORD}@127.0.0.1:{server.port}/0")
    finally:
        server.stop()

    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    last = _last_line(done.stderr)
    assert last.startswith(
        f"taskd: Redis at redis://{user}:********@127.0.0.1:{server.port}/0: CommandsRefused: "
    )
    assert named in last
    assert last.endswith("give taskd's ACL user ~* &* +@all (docs/production.md, When start-up fails)")


async def test_sigterm_while_waiting_for_redis_stops_at_once_with_exit_status_0(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    proc = _start_serve(tmp_path, TASKD_REDIS__URL=url, TASKD_REDIS__START_WAIT="60")
    try:
        assert proc.stderr is not None
        # Once it waits (its first warning), not while Python is still importing.
        line = await asyncio.wait_for(asyncio.to_thread(proc.stderr.readline), 30)
        assert "does not answer" in line
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 0
    assert time.monotonic() - started < 10
    assert "Traceback" not in stderr and "listening" not in stdout


async def test_an_http_port_in_use_stops_start_up_with_one_line_and_exit_status_4(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        done = await _serve(tmp_path, TASKD_HTTP__PORT=str(port))

    assert done.returncode == 4
    assert "Traceback" not in done.stderr
    assert _last_line(done.stderr) == (
        f"taskd: cannot listen on 127.0.0.1 port {port} (http.host, http.port): Address already in use"
    )
    assert "embedded valkey stopped" in done.stderr  # what it had started is stopped


async def test_a_data_dir_that_cannot_be_made_stops_start_up_with_one_line_and_exit_status_4(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")

    done = await _serve(tmp_path, TASKD_DATA_DIR=str(tmp_path / "a-file" / "data"))

    assert done.returncode == 4
    assert "Traceback" not in done.stderr
    assert _last_line(done.stderr).startswith(f"taskd: cannot use {tmp_path / 'a-file' / 'data'}")
    assert _last_line(done.stderr).endswith(": Not a directory")


async def test_a_data_dir_other_users_can_write_stops_start_up_with_one_line_and_exit_status_4(tmp_path):
    # security.md: whoever can write it chooses the embedded Valkey's password and config, and the keys.
    (tmp_path / "data").mkdir()
    (tmp_path / "data").chmod(0o777)

    done = await _serve(tmp_path)

    assert done.returncode == 4
    assert "Traceback" not in done.stderr
    assert _last_line(done.stderr).startswith(
        f"taskd: cannot use {tmp_path / 'data'}: other users can write it (mode 0777)"
    )
    assert not (tmp_path / "data" / "valkey").exists()  # nothing read or made there


async def test_a_data_dir_named_through_a_link_other_users_can_replace_stops_start_up_with_exit_status_4(
    tmp_path,
):
    # Whoever can write the link's folder chooses where the data dir is at each start.
    (tmp_path / "real").mkdir(mode=0o700)
    links = tmp_path / "links"
    links.mkdir()
    (links / "data").symlink_to(tmp_path / "real")
    links.chmod(0o777)

    done = await _serve(tmp_path, timeout=30, TASKD_DATA_DIR=str(links / "data"))

    assert done.returncode == 4
    assert _last_line(done.stderr).startswith(
        f"taskd: cannot use {links}: other users can write it (mode 0777)"
    )
    assert not (tmp_path / "real" / "valkey").exists()


async def test_a_full_disk_under_the_data_dir_stops_start_up_with_one_line_and_exit_status_4(tmp_path):
    # /dev/full answers every write with ENOSPC, as a full filesystem does: the embedded Valkey's
    # config is written aside first, and that aside file is made to land there.
    valkey_dir = tmp_path / "data" / "valkey"
    valkey_dir.mkdir(parents=True)
    (valkey_dir / ".valkey.conf.tmp").symlink_to("/dev/full")

    done = await _serve(tmp_path)

    assert done.returncode == 4
    assert "Traceback" not in done.stderr
    assert (
        _last_line(done.stderr) == f"taskd: cannot use {valkey_dir / 'valkey.conf'}: No space left on device"
    )
    assert not (valkey_dir / ".valkey.conf.tmp").exists()  # nothing half-written left behind


async def test_an_embedded_valkey_that_cannot_load_its_file_stops_start_up_with_its_last_words(tmp_path):
    aof_dir = tmp_path / "data" / "valkey" / "appendonly"
    aof_dir.mkdir(parents=True)
    (aof_dir / "appendonly.aof.manifest").write_text("this is not a manifest\n")

    done = await _serve(tmp_path)

    assert done.returncode == 3
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    line = _last_line(done.stderr)
    assert line.startswith(
        f"taskd: the embedded valkey did not start (see {tmp_path / 'data' / 'valkey' / 'valkey.log'}): "
    )
    assert "manifest" in line  # what Valkey itself said was wrong


_CTRL_C_WHILE_LOADING = """
import sys

class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "taskd.service":
            raise KeyboardInterrupt

sys.meta_path.insert(0, CtrlC())
from taskd.cli import main
sys.exit(main(["serve"]))
"""


async def test_ctrl_c_while_serve_loads_its_modules_ends_it_with_status_130_and_no_traceback(tmp_path):
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _CTRL_C_WHILE_LOADING],
        env=_base_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 130
    assert done.stderr == ""


async def test_a_damaged_kept_api_key_does_not_stop_start_up_when_keys_are_configured(tmp_path):
    # security.md: a truncated api_key file stops start-up only when it is the key in use.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "api_key").write_text("truncated\n")

    async with serving(tmp_path, RedisConfig(), workers=False) as (_, api):
        status, _ = await api.call("GET", "/api/v1/tasks/metrics")

    assert status == 200


async def test_a_kept_api_key_that_cannot_be_read_stops_start_up_with_one_line_and_exit_status_4(tmp_path):
    (tmp_path / "data" / "api_key").mkdir(parents=True)  # a bad restore: a folder where the file was

    done = await _serve(tmp_path, TASKD_AUTH__API_KEYS="")

    assert done.returncode == 4
    assert "Traceback" not in done.stderr
    assert _last_line(done.stderr) == f"taskd: cannot use {tmp_path / 'data' / 'api_key'}: Is a directory"


@pytest.mark.parametrize("kept", ["api_key", "media_secret", "webhook_secret"])
async def test_a_fifo_in_place_of_a_kept_file_stops_start_up_with_one_line_not_a_hang(tmp_path, kept):
    # Opened and read as a file, a FIFO no process writes to held start-up for ever.
    (tmp_path / "data").mkdir()
    os.mkfifo(tmp_path / "data" / kept)

    done = await _serve(tmp_path, timeout=30, TASKD_AUTH__API_KEYS="")

    assert done.returncode == 4
    assert _last_line(done.stderr) == (
        f"taskd: cannot use {tmp_path / 'data' / kept}: not a plain file (a FIFO, a device or a socket)"
    )


@pytest.mark.parametrize("kept", ["api_key", "media_secret", "webhook_secret"])
async def test_a_kept_file_other_users_can_write_stops_start_up_with_one_line(tmp_path, kept):
    # Whoever can write it chooses the key or secret taskd trusts: a local user who made the file
    # in the data directory before taskd's first start, say.
    (tmp_path / "data").mkdir()
    made = tmp_path / "data" / kept
    made.write_text("whsec_" + "A" * 43 + "\n" if kept == "webhook_secret" else "a" * 64 + "\n")
    made.chmod(0o666)

    done = await _serve(tmp_path, TASKD_AUTH__API_KEYS="")

    assert done.returncode == 4
    assert "Traceback" not in done.stderr
    assert _last_line(done.stderr).startswith(
        f"taskd: cannot use {made}: other users can write it (mode 0666): they choose the key or secret"
    )


async def test_a_kept_api_key_linked_to_a_missing_file_stops_start_up_with_one_line_and_exit_status_4(
    tmp_path,
):
    # A secrets mount not there yet: the link cannot be read, and no key is made in its place.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "api_key").symlink_to(tmp_path / "secrets" / "api_key")

    done = await _serve(tmp_path, TASKD_AUTH__API_KEYS="")

    assert done.returncode == 4
    assert "Traceback" not in done.stderr
    assert (
        _last_line(done.stderr)
        == f"taskd: cannot use {tmp_path / 'data' / 'api_key'}: No such file or directory"
    )
    assert not (tmp_path / "secrets").exists()
