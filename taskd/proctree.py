"""The processes a task starts, supervised as one tree under the task's limits.

Every child a task starts through `spawn` (ffmpeg, espeak-ng, a plugin's tool) gets its own
process group, an address-space rlimit, the allow-listed environment, and a parent-death signal,
and is registered with the running task's `ProcessTree` (a context variable the executor sets
for the task's coroutine). The executor then covers the whole tree with the task's limits:
a cancel sends SIGTERM to every group, waits the configured grace and sends SIGKILL; a hard time
limit or the memory limit (the RSS of every process of the tree, descendants included) kills it;
whatever is left when the task ends is killed. A job process is one more tree member: it runs in
its own group too (taskd/engine/jobproc/pool.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

import attrs
import psutil

from taskd.childenv import child_environment

# How long `stop` waits for a group that ignores nothing: SIGKILL is not refusable, only slow to reap.
REAP_TIMEOUT = 5.0
# How often the executor adds up a task's tree against the memory limit (as for job processes).
WATCH_INTERVAL = 0.25
# A child started outside any task (a test calling a media helper directly) still gets a grace.
DEFAULT_GRACE = 2.0
_PR_SET_PDEATHSIG = 1

MB = 1024 * 1024

# What a tool child runs first, as `python -I -S -c TOOL_START <address space> <parent pid> <kept fds>
# cmd…`: it closes every descriptor above stderr it was not given (`pass_fds`, comma-separated), as
# childenv.close_inherited_descriptors does (uvloop's spawn, unlike the standard library's, closes
# none: the tool got a second copy of each of its stdio descriptors, and anything else inheritable),
# sets the address-space rlimit (0 = none; the second line behind the tree's RSS watcher: an allocation
# past it fails inside the tool at once, between two watcher ticks), and the parent-death signal
# (Linux: a tool must not outlive a worker killed by SIGKILL, nobody would stop it), then execs.
TOOL_START = """
import os, resource, sys
limit, parent, command = int(sys.argv[1]), int(sys.argv[2]), sys.argv[4:]
kept = {int(fd) for fd in sys.argv[3].split(",") if fd}
try:
    found = [int(name) for name in os.listdir("/dev/fd")]
except OSError:
    found = []  # no /dev/fd (a container without /proc): nothing to close is known
for fd in found:
    if fd > 2 and fd not in kept:
        try:
            if os.get_inheritable(fd):
                os.close(fd)
        except OSError:
            pass  # the listing's own descriptor, closed since
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
if sys.platform.startswith("linux"):
    import ctypes, signal
    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)  # the worker died before the signal was armed
os.execvp(command[0], command)
"""


@attrs.frozen
class TreeLimits:
    """What a task's processes may use: the cancel grace, the tree's RSS, a tool child's address space."""

    grace: float = DEFAULT_GRACE
    memory_bytes: int = 0  # 0 = not watched
    address_space_bytes: int = 0  # 0 = no rlimit


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel send `sig` (SIGKILL unless a child must clean up first)
    to the child when taskd dies (Linux; None elsewhere).

    For job processes and their template, started a few times per worker's life: a tool child,
    started often, gets the same from TOOL_START instead, which keeps the fork cheap.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork: the child does little
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return hook


def signal_group(pid: int, sig: int) -> None:
    # Each member leads its own group (start_new_session), so the group id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def kill_sessions(leaders: Collection[int]) -> None:
    """SIGKILL every process left in the sessions these processes led, now gone (job processes whose
    template was killed). A session's id is not reused while a member lives; a process that got the
    number since (only once the pid counter has wrapped round) leads a session of its own (pid ==
    sid) and is spared, its own children would not be: that needs a wrap within this one look."""
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            sid = os.getsid(process.pid)
            if sid in leaders and process.pid != sid:
                process.kill()


class ProcessTree:
    """The children one task started, each the leader of its own process group."""

    def __init__(self, limits: TreeLimits | None = None) -> None:
        self.limits = limits or TreeLimits()
        self._leaders: dict[int, asyncio.subprocess.Process] = {}
        self._kill_timer: asyncio.TimerHandle | None = None
        self.last_rss = 0
        self.peak_rss = 0

    async def spawn(
        self, *cmd: str, env: dict[str, str] | None = None, **kwargs: Any
    ) -> asyncio.subprocess.Process:
        """Start `cmd` as a member of this tree (asyncio.create_subprocess_exec's keyword arguments).

        It starts as `python -I -S -c TOOL_START <limit> <parent pid> <kept fds> cmd…`, which closes
        the descriptors it was not given, sets the rlimit and the parent-death signal and then execs
        `cmd` (same pid, same group): a `preexec_fn` would do the same in the forked child, but it
        makes Python fork the whole worker instead of vfork, and the event loop waits for that fork,
        tens of milliseconds under load.
        """
        pass_fds: Sequence[int] = kwargs.pop("pass_fds", ())
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            "-c",
            TOOL_START,
            str(self.limits.address_space_bytes),
            str(os.getpid()),
            ",".join(map(str, pass_fds)),
            *cmd,
            env=child_environment() if env is None else env,
            start_new_session=True,
            pass_fds=pass_fds,
            **kwargs,
        )
        self.adopt(proc)
        return proc

    def adopt(self, proc: asyncio.subprocess.Process) -> None:
        """Count a process started elsewhere (as the leader of its own group) as a member."""
        self._leaders[proc.pid] = proc

    def forget(self, proc: asyncio.subprocess.Process) -> None:
        """Stop counting a member that has exited and been reaped."""
        self._leaders.pop(proc.pid, None)

    @property
    def alive(self) -> list[asyncio.subprocess.Process]:
        """Group leaders that have not been reaped yet."""
        return [proc for proc in self._leaders.values() if proc.returncode is None]

    def processes(self) -> Iterator[psutil.Process]:
        """Every live process of the tree: the leaders and all their descendants."""
        for proc in self.alive:
            try:
                leader = psutil.Process(proc.pid)
                yield leader
                yield from leader.children(recursive=True)
            except psutil.Error:
                continue

    def rss(self) -> int:
        """The resident memory of the whole tree now, in bytes (and the peak so far, kept)."""
        total = 0
        for process in self.processes():
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        self.last_rss = total
        self.peak_rss = max(self.peak_rss, total)
        return total

    def over_memory(self) -> int | None:
        """The tree's RSS when it is over the memory limit, else None."""
        if not self.limits.memory_bytes or not self._leaders:
            return None
        used = self.rss()
        return used if used > self.limits.memory_bytes else None

    def signal(self, sig: int) -> None:
        """Send `sig` to every member's whole process group."""
        for proc in self.alive:
            signal_group(proc.pid, sig)

    def terminate(self, grace: float | None = None) -> None:
        """Cancel: SIGTERM to every group now, SIGKILL to the tree after `grace` seconds (the limits'
        grace by default), without waiting here."""
        self.signal(signal.SIGTERM)
        if self._kill_timer is None:
            loop = asyncio.get_running_loop()
            delay = self.limits.grace if grace is None else grace
            self._kill_timer = loop.call_later(delay, self.signal, signal.SIGKILL)

    async def stop(self, grace: float | None = None) -> None:
        """SIGTERM to every group, up to `grace` seconds (the limits' grace by default) for them to
        exit, then SIGKILL to what is left; every leader is reaped."""
        if not self.alive:
            return
        self.signal(signal.SIGTERM)
        await self._wait(self.limits.grace if grace is None else grace)
        await self.kill()

    async def kill(self) -> None:
        """SIGKILL to every group now, and reap the leaders; a pending `terminate` timer is dropped
        (a group id may be reused once its processes are gone)."""
        if self._kill_timer is not None:
            self._kill_timer.cancel()
            self._kill_timer = None
        self.signal(signal.SIGKILL)
        await self._wait(REAP_TIMEOUT)

    async def _wait(self, timeout: float) -> None:
        waiting = [asyncio.ensure_future(proc.wait()) for proc in self.alive]
        if waiting:
            _, pending = await asyncio.wait(waiting, timeout=timeout)
            for future in pending:
                future.cancel()


CURRENT: ContextVar[ProcessTree | None] = ContextVar("taskd_process_tree", default=None)


def current() -> ProcessTree | None:
    """The tree of the task this coroutine runs for, if any."""
    return CURRENT.get()


async def spawn(*cmd: str, env: dict[str, str] | None = None, **kwargs: Any) -> asyncio.subprocess.Process:
    """Start a child of the running task: a member of its tree, under its limits.

    Outside a task (a script, a test) the child still gets its own group, the parent-death signal
    and the allow-listed environment, in a tree of its own with the default grace.
    """
    tree = current() or ProcessTree()
    return await tree.spawn(*cmd, env=env, **kwargs)


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    """Stop one child and its group: SIGTERM, the task's cancel grace, SIGKILL; reaped either way.

    Safe to call on a process that has exited. Cancelled while waiting, it kills at once.
    """
    tree = current()
    grace = tree.limits.grace if tree is not None else DEFAULT_GRACE
    try:
        if proc.returncode is None:
            signal_group(proc.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await proc.wait()
        # Whatever is left of the group (the leader past its grace, or what it started) goes now.
        signal_group(proc.pid, signal.SIGKILL)
        await proc.wait()
    except BaseException:
        signal_group(proc.pid, signal.SIGKILL)
        raise
    finally:
        if tree is not None and proc.returncode is not None:
            tree.forget(proc)
