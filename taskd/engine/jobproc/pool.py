"""Job processes, seen from the worker: a pool of long-lived runners, each supervised while it works.

A runner runs one task at a time. The worker enforces the limits from outside: SIGUSR1 at the
soft time limit, SIGKILL at the hard limit or when the runner's memory passes the limit,
SIGTERM (then SIGKILL after a grace) on cancel. A runner is replaced after `max_tasks` tasks and
after anything that left it in doubt.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import psutil

from taskd.config import Config
from taskd.engine.jobproc import frames
from taskd.engine.jobproc.forkserver import ForkedProcess, Template, TemplateGone
from taskd.proctree import signal_group

log = logging.getLogger("taskd.engine")

MEMORY_CHECK_INTERVAL = 0.25
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0

ProgressCallback = Callable[[float, str | None], Awaitable[None]]


@attrs.frozen
class Limits:
    """What a runner may use for one task; None means no limit."""

    soft: float | None
    hard: float | None
    memory_bytes: int
    cancel_grace: float


@attrs.frozen
class ProcessOutcome:
    """How a task ended in a runner: `done`, `error`, `cancelled`, `hard_limit`, `memory`, `crashed` or
    `template_gone` (its process died with the template that forked it)."""

    kind: str
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    error_kind: str | None = None
    peak_rss: int = 0


def _lookup(pid: int) -> psutil.Process | None:
    # None when the process has gone, or when this one cannot read /proc now for want of open
    # files (EMFILE, an OSError psutil passes on as it is): the task is not failed for it, and the
    # memory check looks the process up again at its next reading.
    try:
        return psutil.Process(pid)
    except (psutil.NoSuchProcess, OSError):
        return None


def _rss(process: psutil.Process | None) -> int:
    # 0 when /proc cannot be read: the process has gone, or this one is out of open files (an
    # OSError, EMFILE, that psutil passes on as it is). Either way the check waits for the next
    # reading: an exception here failed the task, whoever had used up the files.
    if process is None:
        return 0
    try:
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error, OSError):
                total += child.memory_info().rss
        return total
    except (psutil.Error, OSError):
        return 0


class Runner:
    """One job process and the frames it sends."""

    def __init__(self, proc: ForkedProcess, device: str | None = None) -> None:
        self.proc = proc
        self.device = device
        self.tasks_done = 0
        self.cancelled = False
        # False from a task's start until it ended with a frame of its own (done, error): a process
        # whose run ended any other way may still be running a handler, and is never handed a task.
        self.clean = True
        # Threads its last task left running (their names): the process is replaced, which ends them.
        self.threads_left: list[str] = []
        # The frames read and not yet handled (None: the process closed its answers).
        self._frames: collections.deque[dict[str, Any] | None] = collections.deque()
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self._kill_timer: asyncio.TimerHandle | None = None
        self.rss = 0

    @classmethod
    async def start(cls, template: Template, device: str | None = None) -> Runner:
        """A job process forked from `template` (seeing only GPU `device`, if given), ready for tasks."""
        runner = cls(await template.fork(device), device)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                ready = await runner._next_frame()
            if ready is None or ready.get("op") != "ready":
                raise RuntimeError("job process failed to start")
        except BaseException:
            # Not started (a timeout, or the service stopping while it started): nobody else holds
            # this process, so it is killed and reaped here rather than left running.
            await asyncio.shield(runner.kill())
            raise
        return runner

    @property
    def pid(self) -> int:
        """The job process's pid."""
        return self.proc.pid

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.returncode is None

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            while (frame := await frames.read_async(self.proc.stdout)) is not None:
                self._arrive(frame)
        finally:
            self._arrive(None)

    def _arrive(self, frame: dict[str, Any] | None) -> None:
        # A handler reporting progress in a tight loop sends frames far faster than their Redis
        # writes go: kept one by one, they filled the worker's memory (1 GB in 16 s). Only the
        # latest progress not yet handled is kept (progress never moves backwards).
        last = self._frames[-1] if self._frames else None
        if (
            frame is not None
            and frame.get("op") == "progress"
            and last is not None
            and last.get("op") == "progress"
        ):
            # A step named by the frame replaced stays shown unless this one names another.
            self._frames[-1] = {**frame, "step": frame.get("step") or last.get("step")}
        else:
            self._frames.append(frame)
        self._arrived.set()

    async def _next_frame(self) -> dict[str, Any] | None:
        while not self._frames:
            self._arrived.clear()
            await self._arrived.wait()
        return self._frames.popleft()

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(frames.encode(message))

    def _signal(self, sig: int) -> None:
        """Signal the job process's whole group (a cancel or a kill stops what the handler started)."""
        if self.alive:
            signal_group(self.pid, sig)

    def terminate(self, grace: float) -> None:
        """Cancel: SIGTERM now, SIGKILL after `grace` seconds if it is still there."""
        self.cancelled = True
        self._signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        self._kill_timer = loop.call_later(grace, self._signal, signal.SIGKILL)

    async def kill(self) -> None:
        """SIGKILL and reap."""
        self._signal(signal.SIGKILL)
        await self.wait_exit(STOP_TIMEOUT)

    async def wait_exit(self, timeout: float) -> None:
        """Wait for the process to exit (bounded), then stop watching it."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.proc.wait()
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        if not self.alive:
            # Its task pipe too: a process that died (killed, crashed, with its template) was never
            # asked to stop, and an open writer left to the collector warns "unclosed".
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def stop(self) -> None:
        """Close stdin so the process exits on its own; kill it if it does not (or if the wait is cancelled)."""
        try:
            if self.alive and self.proc.stdin is not None:
                self.proc.stdin.close()
                await self.wait_exit(STOP_TIMEOUT)
        finally:
            if self.alive:
                await asyncio.shield(self.kill())

    async def execute(
        self, request: dict[str, Any], limits: Limits, on_progress: ProgressCallback
    ) -> ProcessOutcome:
        """Run one task to its end under `limits`; the process is `clean` again only when the task
        ended by its own frame (an exception out of here leaves it unclean)."""
        self.clean = False
        self.threads_left = []
        outcome = await self._execute(request, limits, on_progress)
        self.clean = outcome.kind in ("done", "error")
        return outcome

    async def _execute(
        self, request: dict[str, Any], limits: Limits, on_progress: ProgressCallback
    ) -> ProcessOutcome:
        # Looked up before the task is sent: a handler that kills its process at once would leave
        # no pid to find after, and the task would end in an exception instead of "crashed".
        process = _lookup(self.pid)
        self._send({"op": "run", **request})
        started = time.monotonic()
        soft_sent = False
        peak = 0
        while True:
            elapsed = time.monotonic() - started
            if limits.hard is not None and elapsed >= limits.hard:
                await self.kill()
                return ProcessOutcome("hard_limit", peak_rss=peak)
            if limits.soft is not None and not soft_sent and elapsed >= limits.soft:
                soft_sent = True
                # The soft limit is the handler's business alone: its children keep running.
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGUSR1)
            if process is None:
                process = _lookup(self.pid)
            self.rss = _rss(process)
            peak = max(peak, self.rss)
            if self.rss > limits.memory_bytes:
                await self.kill()
                return ProcessOutcome("memory", peak_rss=peak)
            try:
                async with asyncio.timeout(MEMORY_CHECK_INTERVAL):
                    frame = await self._next_frame()
            except TimeoutError:
                continue
            if frame is None:
                return await self._exited(peak)
            op = frame.get("op")
            self.threads_left = frame.get("threads_left") or []
            if op == "progress":
                await on_progress(frame["progress"], frame.get("step"))
            elif op == "done":
                self.tasks_done += 1
                return ProcessOutcome("done", result=frame["result"], peak_rss=peak)
            elif op == "error":
                self.tasks_done += 1
                return ProcessOutcome(
                    "error",
                    error=frame["error"],
                    traceback=frame.get("traceback"),
                    error_kind=frame.get("kind"),
                    peak_rss=peak,
                )
            elif op == "cancelled":
                await self.wait_exit(limits.cancel_grace)
                return ProcessOutcome("cancelled", peak_rss=peak)

    async def _exited(self, peak: int) -> ProcessOutcome:
        # The process closed its answers: what ended it?
        await self.wait_exit(STOP_TIMEOUT)
        if self.cancelled:
            return ProcessOutcome("cancelled", peak_rss=peak)
        if self.proc.template_gone:
            return ProcessOutcome("template_gone", error="its job-process template exited", peak_rss=peak)
        return ProcessOutcome("crashed", error=f"exit status {self.proc.returncode}", peak_rss=peak)


class RunnerPool:
    """Idle job processes ready for the next task, kept per GPU (a process's CUDA device is fixed at
    its start); a process is retired after `max_tasks` tasks."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.max_tasks = config.execution.max_tasks_per_runner
        self._idle: dict[str | None, list[Runner]] = {}
        self.busy: set[Runner] = set()
        self._template: Template | None = None
        self._template_lock = asyncio.Lock()

    async def acquire(self, device: str | None = None) -> Runner:
        """An idle runner for `device`, or a new one."""
        idle = self._idle.setdefault(device, [])
        while idle:
            runner = idle.pop()
            if runner.alive:
                self.busy.add(runner)
                return runner
        template = await self._running_template()
        try:
            runner = await Runner.start(template, device)
        except TemplateGone as exc:
            log.warning("job-process template gone (%s); starting a new one", exc)
            runner = await Runner.start(await self._running_template(gone=template), device)
        self.busy.add(runner)
        return runner

    async def _running_template(self, gone: Template | None = None) -> Template:
        """The template job processes are forked from, started on first use and after it died; `gone`
        is one a fork just found dead, replaced even before its exit has been noticed (a killed
        process's exit code and closed pipe reach the event loop a moment after its fork fails)."""
        async with self._template_lock:
            if self._template is None or self._template is gone or not self._template.alive:
                if self._template is not None:
                    await self._template.close()
                self._template = Template(self.config)
                await self._template.start()
            return self._template

    async def release(self, runner: Runner) -> None:
        """Take a runner back: kept if healthy and not worn out, else stopped (a new one comes when needed)."""
        self.busy.discard(runner)
        if runner.threads_left:
            log.warning(
                "replacing job process %d: its task left threads running (%s)",
                runner.pid,
                ", ".join(runner.threads_left),
            )
            await runner.stop()
            return
        if runner.alive and runner.clean and not runner.cancelled and runner.tasks_done < self.max_tasks:
            self._idle.setdefault(runner.device, []).append(runner)
            return
        if runner.alive and not runner.clean and not runner.cancelled:
            # Its task's run ended by an error on taskd's side: the handler may still be running,
            # and would answer the next task with this one's result.
            log.warning("killing job process %d: its task's run ended without an answer", runner.pid)
            await runner.kill()
            return
        if runner.alive:
            log.info("retiring job process %d after %d tasks", runner.pid, runner.tasks_done)
        await runner.stop()

    def peak_rss(self) -> int:
        """The largest RSS among busy job processes now."""
        return max((runner.rss for runner in self.busy), default=0)

    async def close(self) -> None:
        """Stop every idle runner (busy ones are stopped by their tasks)."""
        idle = [runner for runners in self._idle.values() for runner in runners]
        self._idle = {}
        await asyncio.gather(*(runner.stop() for runner in idle))
        for runner in list(self.busy):
            await runner.kill()
        if self._template is not None:
            await self._template.close()
            self._template = None
