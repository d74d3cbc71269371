"""The worker's side of the job-process template (template.py): start it, ask it for job processes.

A job process forked by the template is not the worker's child, so the worker cannot wait for it
the usual way: the template reaps it and reports its exit status, and `ForkedProcess` gives the
pool the part of `asyncio.subprocess.Process` it uses (pid, returncode, wait, send_signal, the
two frame streams).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
import sys

import cattrs
import orjson

from taskd.childenv import child_environment, job_config
from taskd.config import Config
from taskd.engine.jobproc import frames
from taskd.media.store import scratch_root
from taskd.proctree import die_with_parent, kill_sessions

log = logging.getLogger("taskd.engine")

START_TIMEOUT = 30.0
FORK_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
HOME_DIR = "home"


class TemplateGone(RuntimeError):
    """The template exited (or was killed): a new one is needed."""


class ForkedProcess:
    """A job process forked by the template, as the pool sees it."""

    def __init__(
        self,
        pid: int,
        stdin: asyncio.StreamWriter,
        stdout: asyncio.StreamReader,
        exited: asyncio.Future[int],
        template: Template,
    ) -> None:
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self._exited = exited
        self._template = template

    @property
    def template_gone(self) -> bool:
        """True when the template that forked it has exited (and it with it): not its task's doing."""
        return self._template.gone

    @property
    def returncode(self) -> int | None:
        """The exit status once the template has reaped it (negative: killed by that signal)."""
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        """Its exit status, once it has exited."""
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        """Signal the process itself (not its group)."""
        os.kill(self.pid, sig)


class Template:
    """One template process and the job processes it has forked for this worker."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._proc: asyncio.subprocess.Process | None = None
        self._control: socket.socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self.gone = False  # it exited after it started (its job processes with it)
        # Each request's answer: the pid and the future of its exit status (forks answer in order).
        self._forks: collections.deque[asyncio.Future[tuple[int, asyncio.Future[int]]]] = collections.deque()
        self._exits: dict[int, asyncio.Future[int]] = {}

    @property
    def alive(self) -> bool:
        """True while the template runs and answers."""
        return self._proc is not None and self._proc.returncode is None and not self._gone()

    def _gone(self) -> bool:
        return self._reader is not None and self._reader.done()

    async def start(self) -> None:
        """Start the template with the allow-listed environment and the config without secrets.

        Its HOME, and so every job process's, is an empty directory of taskd's, so no library finds
        the host user's credentials (~/.netrc, ~/.aws).
        """
        home = scratch_root(self.config) / HOME_DIR
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "taskd.engine.jobproc.template",
                stdin=theirs.fileno(),
                stdout=asyncio.subprocess.PIPE,
                limit=frames.MAX_FRAME,
                env=child_environment(home=home),
                # Its own process group, and it dies with the worker even when that is SIGKILLed
                # (its job processes, in turn, die with it). Told by SIGTERM, which it outlives
                # long enough to kill every process below it, what the job processes' handlers
                # started included: with SIGKILL those would be left to init, nobody to end them.
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        finally:
            theirs.close()
        self._proc, self._control = proc, ours
        try:
            ours.sendall(orjson.dumps({"config": cattrs.unstructure(job_config(self.config))}))
            assert proc.stdout is not None
            async with asyncio.timeout(START_TIMEOUT):
                ready = await frames.read_async(proc.stdout)
            if ready is None or ready.get("op") != "ready":
                raise RuntimeError("the job-process template failed to start")
        except BaseException:
            await asyncio.shield(self.close())
            raise
        self._reader = asyncio.create_task(self._read(proc.stdout), name="jobproc-template")

    async def _read(self, stdout: asyncio.StreamReader) -> None:
        try:
            while (frame := await frames.read_async(stdout)) is not None:
                if frame.get("op") == "forked":
                    pid = frame["pid"]
                    exited = self._exits[pid] = asyncio.get_running_loop().create_future()
                    waiter = self._forks.popleft()
                    if not waiter.done():
                        waiter.set_result((pid, exited))
                elif frame.get("op") == "exited":
                    ended = self._exits.pop(frame["pid"], None)
                    if ended is not None and not ended.done():
                        ended.set_result(frame["status"])
        finally:
            # Gone: its job processes die with it (their parent-death signal).
            self.gone = True
            # Killed, not closed (the OOM killer, a kill by hand): it could not kill what their
            # handlers started, and nothing else would.
            orphaned = set(self._exits) if self._control is not None else set()
            for waiter in self._forks:
                if not waiter.done():
                    waiter.set_exception(TemplateGone("the job-process template exited"))
            self._forks.clear()
            for exited in self._exits.values():
                if not exited.done():
                    exited.set_result(-signal.SIGKILL)
            self._exits.clear()
            if orphaned:
                # What stayed in a job process's session goes now (after the runs learn their end:
                # a task's next run is in a session of its own); one that made its own is beyond reach.
                await asyncio.to_thread(kill_sessions, orphaned)

    async def fork(self, device: str | None) -> ForkedProcess:
        """A new job process (seeing only GPU `device`, if given), its frame streams connected."""
        if not self.alive or self._control is None:
            raise TemplateGone("the job-process template is not running")
        loop = asyncio.get_running_loop()
        task_read, task_write = os.pipe()
        answer_read, answer_write = os.pipe()
        waiter: asyncio.Future[tuple[int, asyncio.Future[int]]] = loop.create_future()
        try:
            try:
                socket.send_fds(self._control, [orjson.dumps({"device": device})], [task_read, answer_write])
            except OSError as exc:
                raise TemplateGone(f"the job-process template does not answer: {exc}") from exc
            self._forks.append(waiter)
        finally:
            os.close(task_read)
            os.close(answer_write)
        try:
            async with asyncio.timeout(FORK_TIMEOUT):
                pid, exited = await waiter
        except BaseException:
            # A process forked after all finds its task pipe closed, and exits.
            os.close(task_write)
            os.close(answer_read)
            raise
        return ForkedProcess(pid, *await _streams(loop, task_write, answer_read), exited, self)

    async def close(self) -> None:
        """Stop the template: closing its control socket ends it; killed if it does not."""
        proc, control = self._proc, self._control
        self._proc = self._control = None
        if control is not None:
            control.close()
        if proc is not None:
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            finally:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    # Cancelled in its wait: reaped all the same (a SIGKILL ends it at once), or the
                    # loop could close first and leave its transport "still running".
                    await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


async def _streams(
    loop: asyncio.AbstractEventLoop, task_write: int, answer_read: int
) -> tuple[asyncio.StreamWriter, asyncio.StreamReader]:
    """asyncio streams over the worker's ends of a job process's two pipes."""
    reader = asyncio.StreamReader(limit=frames.MAX_FRAME)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(answer_read, "rb", 0)
    )
    # As asyncio.subprocess does for a child's stdin: a StreamWriter over a flow-controlled pipe.
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(task_write, "wb", 0)
    )
    return asyncio.StreamWriter(transport, protocol, None, loop), reader
