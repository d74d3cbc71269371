"""The job-process template: imports the task modules once, then forks every job process of its worker.

`python -m taskd.engine.jobproc.template`, started by a worker's pool (`forkserver.Template`) with
the allow-listed environment. Its stdin is a SOCK_SEQPACKET socket: the first packet is the config
(JSON, without secrets); each later packet asks for one job process (`{"device": …}`) and carries
the two pipe ends that become that process's frame input and output. It answers on stdout with
frames: `ready` once, then `forked` (the pid) for each request in order, and `exited` (pid and
status, negative for a signal, as asyncio reports it) as each job process ends.

Why fork: a fresh interpreter spends ~0.4 s of CPU importing taskd and the task modules before it
can take a task; a fork of this template starts with all of that in memory (copy-on-write), so
"replace a job process after N tasks" costs milliseconds. The price is the usual one of a
fork server (gunicorn's preload, Celery's prefork): task modules are imported here, once, so
they must not start threads or initialise CUDA at import time; a model belongs in the handler,
loaded lazily and cached per job process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import sys
import traceback
from typing import BinaryIO

import cattrs
import orjson
import psutil

from taskd.childenv import close_inherited_descriptors
from taskd.config import Config
from taskd.engine.jobproc import child, frames
from taskd.proctree import die_with_parent
from taskd.tasks.registry import Registry, default_registry

_PR_SET_CHILD_SUBREAPER = 36

MAX_PACKET = 1024 * 1024  # the config packet is the largest: a few KiB
FDS_PER_REQUEST = 2


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 512):
            pass


class _Template:
    """The loaded config and task types, the channels to the worker, and the forking."""

    def __init__(self, control: socket.socket, out: BinaryIO, config: Config, registry: Registry) -> None:
        self.control = control
        self.out = out
        self.config = config
        self.registry = registry
        # SIGCHLD wakes the select through this pipe; the handler itself does nothing.
        self.wake_read, wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
        # The worker's death arrives as SIGTERM (forkserver.Template.start) with its end of the
        # control socket closed: outlive the signal, and the loop ends on that close.
        signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
        self.channels = [control.fileno(), self.wake_read, wake_write, out.fileno()]
        # Made here, not in a child: it checks that the child's parent is this process.
        self.die_with_template = die_with_parent()
        self.jobs: set[int] = set()  # the job processes forked and not yet reaped

    def serve(self) -> None:
        """Fork job processes on request until the worker closes the control socket (or dies:
        then a report to it fails), and leave nothing running below this process."""
        try:
            frames.write(self.out, {"op": "ready", "pid": os.getpid()})
            while True:
                readable, _, _ = select.select([self.control.fileno(), self.wake_read], [], [])
                if self.wake_read in readable:
                    _drain(self.wake_read)
                    self._reap()
                if self.control.fileno() in readable and not self._fork_requested():
                    return
        except BrokenPipeError:
            # The worker is gone (killed: the kernel closes its ends of the pipes before this process
            # gets its parent-death signal) and a report to it failed: nobody reads them any more.
            # Not an error to print into the worker's log; the unsent frame goes with the stream.
            with contextlib.suppress(BrokenPipeError):
                self.out.close()
        finally:
            self._kill_everything()

    def _kill_everything(self) -> None:
        """The worker is done with this template: kill every process below it. A job process still
        running (one that ignores SIGTERM, left behind by a stop that could not wait for it) would die
        by its parent-death signal as this process exits, but what its handler started out of its
        group would live on, with no subreaper left to pass it to. A second sweep takes what forked
        during the first."""
        for _ in range(2):
            with contextlib.suppress(psutil.Error):
                for process in psutil.Process().children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        process.kill()

    def _reap(self) -> None:
        """Report every job process that has ended since the last look, and kill what it left."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid in self.jobs:
                self.jobs.discard(pid)
                frames.write(
                    self.out, {"op": "exited", "pid": pid, "status": os.waitstatus_to_exitcode(status)}
                )
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        """Kill every child of this process that is not a job process: what a job process's handler
        started and left running when that job process ended without stopping it (killed at a limit
        or after a cancel's grace, crashed, or cancelled while a child ignores SIGTERM or left its
        group), passed up to this process, their subreaper. Reaped at their own SIGCHLD."""
        try:
            leftovers = [pid for pid in child.children_of_self() if pid not in self.jobs]
        except OSError:
            return  # not Linux: not a subreaper, nothing is passed up here
        for pid in leftovers:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                for member in [*process.children(recursive=True), process]:
                    with contextlib.suppress(psutil.Error):
                        member.kill()

    def _fork_requested(self) -> bool:
        """Fork the job process one packet asks for; False once the worker has closed the socket."""
        message, fds, _, _ = socket.recv_fds(self.control, MAX_PACKET, FDS_PER_REQUEST)
        if not message:
            return False
        if len(fds) != FDS_PER_REQUEST:
            for fd in fds:
                os.close(fd)
            return True
        pid = os.fork()
        if pid == 0:
            self._become_job_process(orjson.loads(message).get("device"), fds)
        self.jobs.add(pid)
        for fd in fds:
            os.close(fd)
        frames.write(self.out, {"op": "forked", "pid": pid})
        return True

    def _become_job_process(self, device: str | None, fds: list[int]) -> None:
        """In the forked child: shed the template's channels, take the pipes, serve tasks, never return."""
        code = 0
        try:
            os.setsid()  # its own process group: a cancel or a kill reaches what the handler starts
            if sys.platform.startswith("linux"):
                # The subreaper of what the handler starts: an orphan (its parent exited) becomes
                # this process's child, not init's, and is stopped with the rest when the task ends.
                ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            if self.die_with_template is not None:
                self.die_with_template()  # and the template dies with the worker
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in self.channels:
                os.close(fd)
            # fd 0 was the control socket (closed above): a handler reading stdin reads nothing.
            devnull = os.open(os.devnull, os.O_RDONLY)
            if devnull != 0:
                os.dup2(devnull, 0)
                os.close(devnull)
            if device is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = device
            read_fd, write_fd = fds
            with os.fdopen(read_fd, "rb") as tasks, os.fdopen(write_fd, "wb") as answers:
                child.serve(tasks, answers, self.config, self.registry)
        except BrokenPipeError:
            # Its worker is gone (killed) and the answer or a progress report went to a pipe nobody
            # reads (child.serve writes nothing else; a handler's own errors are its task's answer):
            # the task is taken back from its record. Printed, it was two tracebacks in the worker's
            # log (the write, then the close of the stream) for each task a killed worker ran here.
            code = 1
        except BaseException:  # nothing may unwind into the template's loop in a child
            traceback.print_exc()
            code = 1
        finally:
            sys.stderr.flush()
            os._exit(code)


def main() -> None:
    """Load the config and the task types once, then fork job processes on request."""
    # The second copies of its stdin and stdout that uvloop's spawn left open: else every job process
    # forked here kept the channels it closes (_become_job_process).
    close_inherited_descriptors()
    control = socket.socket(fileno=0)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a task module that prints must not corrupt the frames
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        # What a job process's handler left behind comes here when that job process dies (as each
        # job process is the subreaper of its own handler's children): see _kill_leftovers.
        ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    init = control.recv(MAX_PACKET)
    if not init:
        return
    config = cattrs.Converter().structure(orjson.loads(init)["config"], Config)
    # Every built-in type has a coroutine handler, which never runs in a job process; leaving them
    # out spares importing aiohttp, ffmpeg's helpers and the providers.
    registry = default_registry(config.tasks, builtin=False)
    _Template(control, out, config, registry).serve()


if __name__ == "__main__":
    main()
