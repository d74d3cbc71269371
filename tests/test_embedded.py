"""The embedded Valkey server: start, persistence, password, clean stop, stale servers."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import childproc
import psutil
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from taskd import embedded
from taskd.embedded import EmbeddedValkey


@pytest.fixture
def socket_dir(tmp_path: Path) -> Iterator[Path]:
    """A data dir whose server listens on a unix socket: tmp_path, or a directory under /tmp where
    the socket's path in tmp_path would be too long (a long TMPDIR: macOS's /var/folders/…/T/), and
    the server, rightly, would listen on TCP alone."""
    if embedded.unix_socket_path(tmp_path.resolve() / "a dir?#%20" / embedded.SUBDIR) is not None:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix="taskd-", dir="/tmp") as short:
        yield Path(short)


@pytest.fixture
async def server(socket_dir: Path) -> AsyncIterator[EmbeddedValkey]:
    valkey = EmbeddedValkey(socket_dir)
    await valkey.start()
    try:
        yield valkey
    finally:
        await valkey.stop()


async def _get(url: str, key: str) -> bytes | None:
    client = Redis.from_url(url)
    try:
        return await client.get(key)
    finally:
        await client.aclose()


async def _set(url: str, key: str, value: str) -> None:
    client = Redis.from_url(url)
    try:
        await client.set(key, value)
    finally:
        await client.aclose()


def _gone(pid: int) -> bool:
    """True once the process has exited; a zombie counts (its new parent may never reap it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        await asyncio.sleep(0.05)
    return False


async def _run_owner_that_gets_sigkilled(data_dir: Path, die_with_parent: bool) -> int:
    """Start a server from another Python process that then SIGKILLs itself; return the server's pid."""
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal, sys
        from pathlib import Path
        from taskd.embedded import EmbeddedValkey

        async def main():
            valkey = EmbeddedValkey(Path({str(data_dir)!r}), die_with_parent={die_with_parent})
            await valkey.start()
            print(valkey.pid, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    owner = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE)
    stdout, _ = await owner.communicate()
    assert owner.returncode == -9
    return int(stdout.decode().strip())


async def test_starts_and_answers_commands_with_the_password(server: EmbeddedValkey) -> None:
    assert server.url is not None
    await _set(server.url, "greeting", "hello")
    assert await _get(server.url, "greeting") == b"hello"


async def test_a_short_event_stream_takes_about_a_kilobyte_not_a_preallocated_four(
    server: EmbeddedValkey,
) -> None:
    # taskd writes a stream for every task and every project (taskd.keys), most of them a few
    # entries long: a tenant spreading tasks over new projects must not pay 4 KB of empty room each.
    assert server.url is not None
    client = Redis.from_url(server.url)
    try:
        for status in ("queued", "processing", "completed"):
            await client.xadd(
                "{taskd}:events:project:p1", {"type": "status", "data": f'{{"status":"{status}"}}'}
            )
        used = await client.memory_usage("{taskd}:events:project:p1")
    finally:
        await client.aclose()

    assert used is not None and used < 1500


async def test_refuses_commands_without_the_password(server: EmbeddedValkey) -> None:
    assert server.tcp_url is not None
    for client in (
        Redis(host="127.0.0.1", port=urlsplit(server.tcp_url).port),
        Redis(unix_socket_path=str(server.dir / "valkey.sock")),
    ):
        try:
            # redis-py raises AuthenticationError, or on the socket the ConnectionError it derives from.
            with pytest.raises(RedisConnectionError, match=r"(?i)auth"):
                await client.get("greeting")
        finally:
            await client.aclose()


@pytest.mark.parametrize(
    "command",
    [
        ("CONFIG", "SET", "dir", "/tmp"),
        ("CONFIG", "SET", "dbfilename", "authorized_keys"),
        ("MODULE", "LOAD", "/tmp/module.so"),
        ("DEBUG", "SLEEP", "0"),
    ],
    ids=" ".join,
)
async def test_the_password_does_not_open_commands_that_write_files_or_load_code(
    server: EmbeddedValkey, command: tuple[str, ...]
) -> None:
    assert server.url is not None
    client = Redis.from_url(server.url)
    try:
        with pytest.raises(ResponseError, match=r"protected config|not allowed"):
            await client.execute_command(*command)
        assert (await client.config_get("dir"))["dir"] == str(server.dir)
    finally:
        await client.aclose()


async def test_taskd_connects_through_a_unix_socket_only_its_owner_can_open(
    server: EmbeddedValkey,
) -> None:
    socket_path = server.dir / "valkey.sock"
    assert server.url is not None and server.url.startswith("unix://")
    assert stat.S_ISSOCK(socket_path.stat().st_mode)
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o700
    client = Redis.from_url(server.url)
    try:
        # Valkey names a unix socket client's address after the socket's path.
        assert str(socket_path) in (await client.client_info())["laddr"]
    finally:
        await client.aclose()


async def test_the_tcp_url_reaches_the_same_server(server: EmbeddedValkey) -> None:
    assert server.url is not None and server.tcp_url is not None
    assert server.tcp_url.startswith("redis://")
    await _set(server.url, "said", "on the socket")
    assert await _get(server.tcp_url, "said") == b"on the socket"


async def test_a_data_dir_too_deep_for_a_socket_path_is_served_over_tcp(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * (embedded.SOCKET_PATH_MAX - len(str(tmp_path))))
    async with EmbeddedValkey(deep) as valkey:
        assert valkey.url is not None and valkey.url == valkey.tcp_url
        assert not (valkey.dir / "valkey.sock").exists()
        await _set(valkey.url, "served", "over tcp")
        assert EmbeddedValkey.running_url(deep) == valkey.url


async def test_a_server_that_cannot_open_its_socket_is_served_over_tcp(tmp_path: Path) -> None:
    (tmp_path / "valkey" / "valkey.sock" / "in the way").mkdir(parents=True)
    async with EmbeddedValkey(tmp_path) as valkey:
        assert valkey.url is not None and valkey.url == valkey.tcp_url
        await _set(valkey.url, "served", "over tcp")


async def test_a_data_dir_with_url_characters_in_its_path_connects(socket_dir: Path) -> None:
    async with EmbeddedValkey(socket_dir / "a dir?#%20") as valkey:
        assert valkey.url is not None and valkey.url.startswith("unix://")
        await _set(valkey.url, "path", "quoted")
        assert await _get(valkey.url, "path") == b"quoted"


async def test_a_data_dir_whose_name_is_not_utf8_starts_and_answers(tmp_path: Path) -> None:
    # A Latin-1 directory name on a UTF-8 system: its text holds a lone surrogate, which the config
    # file (and a redis URL) had to encode as UTF-8.
    data_dir = tmp_path / os.fsdecode(b"lat\xe9in")
    async with EmbeddedValkey(data_dir) as valkey:
        assert valkey.url is not None
        await _set(valkey.url, "path", "latin-1")
        assert await _get(valkey.url, "path") == b"latin-1"
    assert os.path.isdir(os.fsencode(tmp_path) + b"/lat\xe9in/valkey/appendonly")


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="mimalloc is preloaded on Linux only"
)


@linux_only
async def test_the_server_allocates_with_mimalloc_from_the_server_extras_wheel(
    server: EmbeddedValkey,
) -> None:
    library = embedded.mimalloc_library()
    assert library is not None, "cmeel-mimalloc, a dependency of taskd[server] on Linux, is not installed"
    assert server.pid is not None
    assert str(library.resolve()) in _maps(server.pid)
    await _set(server.url or "", "allocated", "by mimalloc")
    assert await _get(server.url or "", "allocated") == b"by mimalloc"


@linux_only
async def test_the_server_allocates_with_mimalloc_where_its_path_holds_a_space_and_a_colon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A venv under "~/My Projects": LD_PRELOAD cannot name it as it is.
    library = embedded.mimalloc_library()
    assert library is not None, "cmeel-mimalloc, a dependency of taskd[server] on Linux, is not installed"
    spaced = tmp_path / "My Projects: taskd" / library.name
    spaced.parent.mkdir()
    spaced.symlink_to(library)
    monkeypatch.setattr(embedded, "mimalloc_library", lambda: spaced)
    async with EmbeddedValkey(tmp_path / "data") as valkey:
        assert valkey.pid is not None
        assert str(library.resolve()) in _maps(valkey.pid)


@linux_only
async def test_the_libc_allocator_preloads_nothing(tmp_path: Path) -> None:
    async with EmbeddedValkey(tmp_path, allocator="libc") as valkey:
        assert valkey.pid is not None
        assert "libmimalloc" not in _maps(valkey.pid)


async def test_url_and_password_files_are_private(server: EmbeddedValkey) -> None:
    assert stat.S_IMODE(server.dir.stat().st_mode) == 0o700
    for name in ("redis.url", "password", "valkey.conf"):
        assert stat.S_IMODE((server.dir / name).stat().st_mode) == 0o600, name
    assert (server.dir / "redis.url").read_text().strip() == server.url


@pytest.fixture
def shell_umask() -> Iterator[None]:
    """taskd started from a shell: umask 022, which makes new files 0644."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


async def test_every_file_the_server_makes_is_private_under_a_shells_umask(
    shell_umask: None, socket_dir: Path
) -> None:
    async with EmbeddedValkey(socket_dir) as valkey:
        assert valkey.url is not None
        await _set(valkey.url, "every tenant's", "tasks")
        client = Redis.from_url(valkey.url)
        try:
            await client.bgrewriteaof()  # a new base and increment, as Valkey makes them as it grows
            async with asyncio.timeout(30):
                while (await client.info("persistence"))["aof_rewrite_in_progress"]:
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        made = sorted(valkey.dir.rglob("*"))
        opened = {path: stat.S_IMODE(path.stat().st_mode) for path in made if not path.is_symlink()}
    assert any(path.suffix == ".aof" for path in opened)
    assert {str(path): mode for path, mode in opened.items() if mode & 0o077} == {}


async def test_a_start_takes_back_what_an_earlier_version_left_others_to_read(socket_dir: Path) -> None:
    async with EmbeddedValkey(socket_dir) as first:
        assert first.url is not None
        await _set(first.url, "every tenant's", "tasks")
    # As taskd up to 28b50af left them under a shell's umask: the server made its files with it.
    folder = socket_dir / "valkey" / "appendonly"
    for path in [socket_dir / "valkey" / "valkey.log", folder, *folder.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)

    async with EmbeddedValkey(socket_dir) as valkey:
        modes = {str(path): stat.S_IMODE(path.stat().st_mode) for path in valkey.dir.rglob("*")}
    assert any(path.endswith(".aof") for path in modes)
    assert {path: mode for path, mode in modes.items() if mode & 0o077} == {}


async def test_a_start_leaves_the_file_a_link_in_appendonly_names(socket_dir: Path, tmp_path: Path) -> None:
    async with EmbeddedValkey(socket_dir):
        pass
    # Another file of taskd's user, named by a link the take-back walks past.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("not the server's")
    elsewhere.chmod(0o644)
    (socket_dir / "valkey" / "appendonly" / "planted").symlink_to(elsewhere)

    async with EmbeddedValkey(socket_dir):
        pass
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o644


async def test_data_survives_stop_and_start(tmp_path: Path) -> None:
    async with EmbeddedValkey(tmp_path) as first:
        assert first.url is not None
        await _set(first.url, "kept", "across restarts")
    assert (tmp_path / "valkey" / "appendonly").is_dir()
    async with EmbeddedValkey(tmp_path) as second:
        assert second.url is not None
        assert await _get(second.url, "kept") == b"across restarts"


async def test_a_server_still_loading_its_data_when_the_ready_timeout_ends_is_waited_for(
    socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A big append-only file outlasts READY_TIMEOUT_S as it loads; here 30 keys held 0.2 s each
    # (Valkey's key-load-delay) outlast a 3 s one by 3 s, which a loaded machine's slow start of the
    # process does not eat up, and the server answers LOADING meanwhile.
    async with EmbeddedValkey(socket_dir) as first:
        assert first.url is not None
        client = Redis.from_url(first.url)
        try:
            # Values LZF cannot shrink: Valkey answers while loading once per 1024 bytes read.
            values = {f"key{n}": os.urandom(2048) for n in range(30)}
            await client.mset(values)
            await client.bgrewriteaof()  # into the base file, which loads key by key
            async with asyncio.timeout(30):
                while (await client.info("persistence"))["aof_rewrite_in_progress"]:
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()
    config_text = embedded._config_text
    monkeypatch.setattr(
        embedded,
        "_config_text",
        lambda *args: (
            config_text(*args) + "key-load-delay 200000\nloading-process-events-interval-bytes 1024\n"
        ),
    )
    monkeypatch.setattr(embedded, "READY_TIMEOUT_S", 3.0)
    async with EmbeddedValkey(socket_dir) as second:
        assert second.url is not None
        assert await _get(second.url, "key29") == values["key29"]


async def test_password_is_reused_across_restarts(socket_dir: Path) -> None:
    async with EmbeddedValkey(socket_dir) as first:
        first_url = first.url
    async with EmbeddedValkey(socket_dir) as second:
        second_url = second.url
    assert first_url is not None and second_url is not None
    password = (socket_dir / "valkey" / "password").read_text().strip()
    assert first_url.startswith(f"unix://:{password}@")
    assert second_url.startswith(f"unix://:{password}@")


async def test_stop_leaves_no_process_and_removes_url_file(tmp_path: Path) -> None:
    valkey = EmbeddedValkey(tmp_path)
    await valkey.start()
    pid = valkey.pid
    assert pid is not None and psutil.pid_exists(pid)
    await valkey.stop()
    assert not psutil.pid_exists(pid)
    assert not (tmp_path / "valkey" / "redis.url").exists()
    assert not (tmp_path / "valkey" / "valkey.pid").exists()
    await valkey.stop()  # idempotent


async def test_stop_asks_the_server_to_shut_down_instead_of_signalling_it(tmp_path: Path) -> None:
    # A SIGTERM only takes effect at the server's next cron tick; SHUTDOWN takes effect at once.
    valkey = EmbeddedValkey(tmp_path)
    await valkey.start()
    await valkey.stop()
    log = valkey.log_path.read_text()
    assert "User requested shutdown" in log
    assert "Received SIGTERM" not in log


async def test_a_server_that_refuses_shutdown_is_stopped_with_sigterm(tmp_path: Path) -> None:
    valkey = EmbeddedValkey(tmp_path)
    url = await valkey.start()
    pid = valkey.pid
    client = Redis.from_url(url)
    await client.config_set("requirepass", "changed-behind-taskds-back")
    await client.aclose()
    await valkey.stop()
    assert pid is not None and not psutil.pid_exists(pid)
    assert "Received SIGTERM" in valkey.log_path.read_text()


async def test_running_url_is_the_url_while_running_and_none_after_stop(tmp_path: Path) -> None:
    assert EmbeddedValkey.running_url(tmp_path) is None
    valkey = EmbeddedValkey(tmp_path)
    url = await valkey.start()
    try:
        assert EmbeddedValkey.running_url(tmp_path) == url
    finally:
        await valkey.stop()
    assert EmbeddedValkey.running_url(tmp_path) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
async def test_server_dies_when_its_owner_is_sigkilled(tmp_path: Path) -> None:
    pid = await _run_owner_that_gets_sigkilled(tmp_path, die_with_parent=True)
    assert await _wait_gone(pid)


async def test_stale_server_left_by_a_sigkilled_owner_is_replaced(tmp_path: Path) -> None:
    stale_pid = await _run_owner_that_gets_sigkilled(tmp_path, die_with_parent=False)
    assert not _gone(stale_pid)
    try:
        async with EmbeddedValkey(tmp_path) as valkey:
            assert _gone(stale_pid)
            assert valkey.pid != stale_pid
            assert valkey.url is not None
            await _set(valkey.url, "after", "replacement")
    finally:
        if not _gone(stale_pid):
            os.kill(stale_pid, 9)


async def test_a_second_start_on_a_data_dir_whose_server_is_in_use_is_refused_and_leaves_it_running(
    tmp_path: Path,
) -> None:
    async with EmbeddedValkey(tmp_path) as running:
        assert running.url is not None
        await _set(running.url, "kept", "by the first owner")

        with pytest.raises(embedded.DataDirInUse, match=str(os.getpid())):
            await EmbeddedValkey(tmp_path).start()

        assert await _get(running.url, "kept") == b"by the first owner"
        assert EmbeddedValkey.running_url(tmp_path) == running.url


async def test_a_second_taskd_serve_on_the_same_data_dir_stops_with_one_line_and_the_first_keeps_its_store(
    tmp_path: Path,
) -> None:
    env = childproc.taskd_env(tmp_path / "data", TASKD_AUTH__API_KEYS="k" * 24)
    first = childproc.start(["serve"], env, tmp_path)
    try:
        childproc.wait_listening(first)
        url = EmbeddedValkey.running_url(tmp_path / "data")
        assert url is not None

        second = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "taskd", "serve"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

        assert second.returncode == 2
        assert second.stderr.count("\n") == 1 and "still running" in second.stderr
        assert f"(pid {first.pid})" in second.stderr
        assert EmbeddedValkey.running_url(tmp_path / "data") == url
        await _set(url, "still", "served")
    finally:
        childproc.stop(first)


async def test_a_start_on_a_data_dir_whose_first_start_is_still_under_way_is_refused(tmp_path: Path) -> None:
    first, second = EmbeddedValkey(tmp_path), EmbeddedValkey(tmp_path)
    starting = asyncio.create_task(first.start())
    await asyncio.sleep(0)  # the first runs up to the spawn of its server: there is no pidfile yet
    assert not (tmp_path / "valkey" / "valkey.pid").exists()
    try:
        with pytest.raises(embedded.DataDirInUse, match=str(os.getpid())):
            await second.start()
        url = await starting
        assert EmbeddedValkey.running_url(tmp_path) == url
    finally:
        await second.stop()
        await starting
        await first.stop()


async def test_the_data_dir_is_free_again_once_its_server_stopped(tmp_path: Path) -> None:
    async with EmbeddedValkey(tmp_path):
        pass
    async with EmbeddedValkey(tmp_path) as again:
        assert again.url is not None


async def test_pidfile_naming_a_live_non_valkey_process_does_not_kill_it(tmp_path: Path) -> None:
    bystander = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        (tmp_path / "valkey").mkdir(mode=0o700)
        (tmp_path / "valkey" / "valkey.pid").write_text(f"{bystander.pid}\n")
        async with EmbeddedValkey(tmp_path) as valkey:
            assert bystander.returncode is None and not _gone(bystander.pid)
            assert valkey.url is not None
            await _set(valkey.url, "started", "anyway")
    finally:
        bystander.kill()
        await bystander.wait()


async def test_pidfile_naming_a_dead_process_is_cleaned(tmp_path: Path) -> None:
    finished = await asyncio.create_subprocess_exec("true")
    await finished.wait()
    pidfile = tmp_path / "valkey" / "valkey.pid"
    pidfile.parent.mkdir(mode=0o700)
    pidfile.write_text(f"{finished.pid}\n")
    async with EmbeddedValkey(tmp_path) as valkey:
        assert pidfile.read_text().strip() == str(valkey.pid)
    assert not pidfile.exists()


async def test_start_retries_when_the_chosen_port_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken, embedded._free_port()])
        monkeypatch.setattr(embedded, "_free_port", lambda: next(ports))
        async with EmbeddedValkey(tmp_path) as valkey:
            assert valkey.tcp_url is not None
            assert f":{taken}/" not in valkey.tcp_url
            await _set(valkey.tcp_url, "on", "another port")


async def test_start_failure_raises_with_the_log_tail(tmp_path: Path) -> None:
    aof_dir = tmp_path / "valkey" / "appendonly"
    aof_dir.mkdir(parents=True)
    (aof_dir / "appendonly.aof.manifest").write_text("this is not a manifest\n")
    valkey = EmbeddedValkey(tmp_path)
    with pytest.raises(RuntimeError, match=r"(?s)exited.*valkey\.log ends:.*manifest"):
        await valkey.start()
    assert valkey.pid is None
    assert EmbeddedValkey.running_url(tmp_path) is None


async def test_a_second_start_listens_on_the_port_of_the_first(tmp_path: Path) -> None:
    # A worker reaching the server over TCP (its socket path too long) keeps its URL across restarts.
    async with EmbeddedValkey(tmp_path) as first:
        first_url = first.tcp_url
    async with EmbeddedValkey(tmp_path) as second:
        assert second.tcp_url == first_url


class _Squatter:
    """Another local user's process listening on a port taskd's server had: what it was sent."""

    def __init__(self) -> None:
        self.received = bytearray()

    async def _keep(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            self.received.extend(data)
        writer.close()

    async def listen(self, port: int) -> asyncio.Server:
        """Listen on `port` as soon as it is free: the server that had it may still be going, and
        once it is gone any process's outgoing connection may take it a moment as its own end."""
        async with asyncio.timeout(30):
            while True:
                try:
                    return await asyncio.start_server(self._keep, "127.0.0.1", port)
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise
                await asyncio.sleep(0.001)


@pytest.fixture(params=["socket", "port alone"])
def reached_either_way(request: pytest.FixtureRequest, socket_dir: Path) -> Path:
    """A data dir whose server taskd reaches on its socket, or on its port alone (too deep for a
    socket's path)."""
    return socket_dir if request.param == "socket" else _too_deep_for_a_socket(socket_dir)


def _too_deep_for_a_socket(socket_dir: Path) -> Path:
    """A data dir in `socket_dir` whose server listens on its port alone."""
    return socket_dir / ("d" * (embedded.SOCKET_PATH_MAX - len(str(socket_dir))))


async def test_a_start_sends_no_password_to_whoever_took_the_port_of_the_last_one(
    reached_either_way: Path,
) -> None:
    async with EmbeddedValkey(reached_either_way) as first:
        assert first.tcp_url is not None
        old_port = urlsplit(first.tcp_url).port
    assert old_port is not None
    squatter = _Squatter()
    async with await squatter.listen(old_port), EmbeddedValkey(reached_either_way) as second:
        assert second.tcp_url is not None
        assert urlsplit(second.tcp_url).port != old_port
        await _set(second.tcp_url, "on", "another port")
    assert squatter.received == b""


async def test_the_server_is_in_a_session_of_its_own_so_a_ctrl_c_reaches_taskd_alone(
    server: EmbeddedValkey,
) -> None:
    assert server.pid is not None
    assert os.getsid(server.pid) == server.pid
    assert os.getpgid(server.pid) != os.getpgid(0)


async def test_a_server_killed_under_supervision_is_started_again_with_its_data_and_url(
    server: EmbeddedValkey,
) -> None:
    assert server.url is not None and server.pid is not None
    await _set(server.url, "kept", "through a kill")
    supervising = asyncio.create_task(server.supervise())
    killed = server.pid
    os.kill(killed, 9)

    async with asyncio.timeout(15):
        while server.pid == killed or await _get_or_none(server.url, "kept") is None:
            await asyncio.sleep(0.1)

    assert await _get(server.url, "kept") == b"through a kill"
    await server.stop()
    await asyncio.wait_for(supervising, 5)


async def test_a_restart_under_supervision_sends_no_password_to_whoever_took_its_port(
    reached_either_way: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with EmbeddedValkey(reached_either_way) as server:
        assert server.tcp_url is not None and server.pid is not None
        port = urlsplit(server.tcp_url).port
        assert port is not None
        killed = server.pid
        os.kill(killed, 9)
        squatter = _Squatter()
        # Supervised once the port is taken: a restart cannot win the port first on a slow machine.
        async with await squatter.listen(port), asyncio.timeout(30):
            supervising = asyncio.create_task(server.supervise())
            while "did not start again" not in caplog.text:
                await asyncio.sleep(0.05)
    await asyncio.wait_for(supervising, 5)
    assert squatter.received == b""


async def test_a_restart_that_keeps_failing_after_the_server_ran_a_while_backs_off(
    socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server that ran past RESTART_STEADY_S (0 here: every one has) and died; its port stays
    # taken and its clients know only the port, so each restart fails until the holder lets go.
    monkeypatch.setattr(embedded, "RESTART_STEADY_S", 0.0)
    monkeypatch.setattr(embedded, "RESTART_FIRST_S", 0.05)
    drawn: list[float] = []

    class RecordedDelays(embedded.Backoff):
        def next_delay(self) -> float:
            drawn.append(super().next_delay())
            return drawn[-1]

    monkeypatch.setattr(embedded, "Backoff", RecordedDelays)
    async with EmbeddedValkey(_too_deep_for_a_socket(socket_dir)) as server:
        assert server.tcp_url is not None and server.pid is not None
        port = urlsplit(server.tcp_url).port
        assert port is not None
        os.kill(server.pid, 9)
        async with await _Squatter().listen(port), asyncio.timeout(60):
            supervising = asyncio.create_task(server.supervise())
            while len(drawn) < 4:
                await asyncio.sleep(0.05)
    await asyncio.wait_for(supervising, 5)
    assert drawn[:4] == pytest.approx([0.05, 0.1, 0.2, 0.4])


async def test_a_server_served_on_its_socket_starts_again_on_another_port_when_its_port_was_taken(
    server: EmbeddedValkey,
) -> None:
    assert server.url is not None and server.url.startswith("unix://") and server.pid is not None
    assert server.tcp_url is not None
    port = urlsplit(server.tcp_url).port
    assert port is not None
    await _set(server.url, "kept", "through a kill")
    killed = server.pid
    os.kill(killed, 9)
    async with await _Squatter().listen(port):
        # Supervised once the port is taken: a restart cannot win the port first on a slow machine.
        supervising = asyncio.create_task(server.supervise())
        async with asyncio.timeout(30):
            while server.pid == killed or await _get_or_none(server.url, "kept") is None:
                await asyncio.sleep(0.1)
        assert server.tcp_url is not None and urlsplit(server.tcp_url).port != port
        assert await _get(server.tcp_url, "kept") == b"through a kill"
    await server.stop()
    await asyncio.wait_for(supervising, 5)


async def _get_or_none(url: str, key: str) -> bytes | None:
    try:
        return await _get(url, key)
    except RedisConnectionError:
        return None
