"""systemd: sd_notify messages on a test NOTIFY_SOCKET from a real `taskd serve`, and the unit files."""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import childproc
import pytest
from conftest import API_KEY

from taskd.cli import _parser
from taskd.sdnotify import Notifier

ROOT = Path(__file__).resolve().parent.parent
# Linux's <asm-generic/socket.h> (x86-64, arm64), which Python's socket module does not name: the
# time a datagram was queued to the socket, by the sender's sendmsg, as a struct timespec beside it.
SO_TIMESTAMPNS = 35
TIMESPEC = struct.Struct("@ll")
UNITS = ("taskd.service", "taskd-worker@.service")


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd; its path is short enough for AF_UNIX."""
    directory = tempfile.mkdtemp(prefix="sdn", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield sock, path
    sock.close()
    shutil.rmtree(directory)


def receive(sock: socket.socket, until: str, timeout: float = 15) -> list[str]:
    """Messages until one contains `until`; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            break
        seen.append(message)
        if until in message:
            return seen
    raise AssertionError(f"no {until!r} within {timeout} s; got {seen}")


def serve(tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    environment = childproc.taskd_env(tmp_path / "data", TASKD_AUTH__API_KEYS=API_KEY, **env)
    for inherited in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        environment.pop(inherited, None)
    environment.update(env)
    proc = childproc.start(["serve"], environment, tmp_path)
    childproc.wait_listening(proc)
    return proc


def test_ready_and_status_arrive_once_the_api_and_workers_are_up(tmp_path, notify_socket):
    sock, path = notify_socket

    proc = serve(tmp_path, NOTIFY_SOCKET=path)
    messages = receive(sock, "READY=1")
    childproc.stop(proc)

    assert messages[0] == "STATUS=starting"
    ready = messages[-1].split("\n")
    assert ready[0] == "READY=1"
    assert ready[1].startswith("STATUS=serving: API on http://127.0.0.1:")
    assert ready[1].endswith("workers for cpu_intensive, default, gpu_heavy, gpu_medium")


def test_an_abstract_namespace_socket_is_reached(tmp_path):
    name = f"taskd-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)

        proc = serve(tmp_path, NOTIFY_SOCKET="@" + name)
        messages = receive(sock, "READY=1")
        childproc.stop(proc)

    assert "READY=1" in messages[-1]


def arrivals(sock: socket.socket, message: str, count: int, timeout: float = 15) -> list[float]:
    """When each of the next `count` datagrams reading `message` was sent, as the kernel stamped it
    (seconds): a reader slowed down by a busy machine does not move them. `sock` must have
    SO_TIMESTAMPNS on before they are sent (else a datagram is stamped when read). Fails if one
    takes more than `timeout` seconds to come."""
    sock.settimeout(timeout)
    times = []
    while len(times) < count:
        try:
            data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(TIMESPEC.size))
        except TimeoutError:
            raise AssertionError(
                f"{len(times)} {message!r} of {count}: none more within {timeout} s"
            ) from None
        stamps = [
            item for level, kind, item in ancillary if (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMPNS)
        ]
        if data.decode() == message:
            seconds, nanoseconds = TIMESPEC.unpack(stamps[0])
            times.append(seconds + nanoseconds / 1e9)
    return times


def test_the_watchdog_is_pinged_on_and_on_never_sooner_than_half_its_interval(tmp_path, notify_socket):
    sock, path = notify_socket
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    proc = serve(tmp_path, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")  # half: a ping each 0.2 s
    try:
        pings = arrivals(sock, "WATCHDOG=1", 6)
    finally:
        childproc.stop(proc)

    # A busy machine may hold a ping back, never send one early: only the shortest gap is bounded.
    # That it is half of WatchdogSec is Notifier.watchdog_interval's
    # (test_child_processes_do_not_inherit_the_notify_socket).
    gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
    assert min(gaps) >= 0.2 * 0.95


def test_stopping_is_sent_when_taskd_is_asked_to_stop(tmp_path, notify_socket):
    sock, path = notify_socket
    proc = serve(tmp_path, NOTIFY_SOCKET=path)
    receive(sock, "READY=1")

    proc.send_signal(signal.SIGTERM)
    messages = receive(sock, "STOPPING=1")
    code = childproc.stop(proc)

    assert messages[-1].startswith("STOPPING=1\nSTATUS=stopping")
    assert code == 0


def test_child_processes_do_not_inherit_the_notify_socket():
    environ = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000", "PATH": "/bin"}

    notifier = Notifier.from_env(environ)

    assert environ == {"PATH": "/bin"}
    assert notifier.address == "/run/systemd/notify"
    assert notifier.watchdog_interval == 15.0


def test_a_watchdog_meant_for_another_process_is_ignored():
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})

    assert notifier.watchdog_interval is None


def test_without_notify_socket_nothing_is_sent():
    assert Notifier.from_env({}).ready("serving") is False


@pytest.mark.parametrize("unit", UNITS)
def test_the_units_run_taskd_as_a_hardened_notify_service(unit):
    lines = set((ROOT / "systemd" / unit).read_text().splitlines())

    assert {"Type=notify", "NotifyAccess=main", "WatchdogSec=30", "KillMode=mixed"} <= lines
    assert {"NoNewPrivileges=yes", "ProtectSystem=strict", "StateDirectory=taskd", "PrivateTmp=yes"} <= lines
    assert {"User=taskd", "DevicePolicy=closed", "DeviceAllow=char-nvidia-frontend rw"} <= lines
    assert "PrivateDevices=yes" not in lines
    stop = next(int(line.split("=")[1]) for line in lines if line.startswith("TimeoutStopSec="))
    assert stop > 30  # the 30 s graceful shutdown fits


@pytest.mark.parametrize(
    ("unit", "command"), [("taskd.service", "serve"), ("taskd-worker@.service", "worker")]
)
def test_the_units_command_line_parses_with_the_config_file(unit, command):
    lines = (ROOT / "systemd" / unit).read_text().splitlines()
    exec_start = next(line.removeprefix("ExecStart=") for line in lines if line.startswith("ExecStart="))
    binary, *argv = shlex.split(exec_start.replace("%i", "gpu_heavy,gpu_medium"))

    args = _parser().parse_args(argv)

    assert binary == "/opt/taskd/.venv/bin/taskd"
    assert (args.command, args.config) == (command, "/etc/taskd/taskd.toml")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_units_pass_systemd_analyze_verify(tmp_path):
    # verify checks that ExecStart= exists: point it at this checkout's taskd, through a link in a
    # directory under /tmp, since systemd refuses an executable's name with a quote, `$` or `%` and
    # splits it at spaces, and the checkout's path or TMPDIR may hold some.
    with tempfile.TemporaryDirectory(prefix="taskd-", dir="/tmp") as bin_dir:
        taskd = Path(bin_dir) / "taskd"
        taskd.symlink_to(Path(sys.executable).parent / "taskd")
        for unit in UNITS:
            text = (ROOT / "systemd" / unit).read_text().replace("/opt/taskd/.venv/bin/taskd", str(taskd))
            (tmp_path / unit).write_text(text)

        result = subprocess.run(
            ["systemd-analyze", "verify", "./taskd.service", "./taskd-worker@gpu_heavy.service"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )

    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr
    )
