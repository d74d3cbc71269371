"""Runs one task: claim the record, run the handler under its limits, record how it ended.

A coroutine handler runs in this event loop; a plain-function handler runs in a job process
(taskd/engine/jobproc/pool.py). Either way the outcome is one of: completed, failed, retry later
(transient error with attempts left), cancelled (the API already recorded it), handed back
(the worker is shutting down: the task goes back on its queue for another worker), or handed on
(its type is not installed here and another live worker of its queue has it).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
import time
import traceback
from collections.abc import Awaitable, Callable, Collection, Coroutine, Generator, Iterable
from functools import partial
from typing import Any, Literal, Protocol, TypeVar

import aiohttp
import attrs
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskd import keys, refs, runtasks, tracing
from taskd.backoff import Backoff, exponential_delay, retry_delay
from taskd.config import Config
from taskd.engine.jobproc.pool import Limits, ProcessOutcome, Runner, RunnerPool
from taskd.errors import describe, message_of, result_refusal
from taskd.gpu.scheduler import GpuScheduler, Lease
from taskd.heartbeat import live_workers
from taskd.logs import REDACTOR, bind_task
from taskd.media import scratch
from taskd.media.publish import STORED, Stored, withdraw
from taskd.media.store import scratch_root
from taskd.model import TaskRecord, TaskStatus, ValidationError, now
from taskd.proctree import CURRENT, WATCH_INTERVAL, ProcessTree, TreeLimits
from taskd.providers.limits import ProviderLimits
from taskd.queue.task_queue import TaskQueue
from taskd.queue.workers import JobFunction
from taskd.redis_conn import refused_by_acl, refuses_writes
from taskd.runtasks import RunTasks
from taskd.shapes import MAX_DEPENDS_ON
from taskd.shown_paths import SHOWN_PATHS
from taskd.stopping import cancel_and_wait
from taskd.store import TAKE_SCAN, CorruptRecord, Start, Takes, TaskStore
from taskd.store.run_state import RunState, RunStates, stored_media
from taskd.tasks.registry import Registry
from taskd.tasks.spec import SoftTimeLimitExceeded, TaskContext, TaskError, TaskType, is_transient

log = logging.getLogger("taskd.engine")

# Retrying the write of a task's outcome while Redis is unreachable (issue 9, tests/faults/).
STORE_RETRY_FIRST, STORE_RETRY_MAX = 0.25, 5.0
# A write retried that long is logged once per this many seconds, not at each try: a disk full
# for hours under the embedded Valkey made a line every 5 s for each queue and each ended task.
STORE_RETRY_LOG_EVERY_S = 60.0
# The most characters of a run's error and traceback kept (stored, logged, in webhooks).
ERROR_MAX_CHARS, TRACEBACK_MAX_CHARS = 4_000, 32_000
# How many queued tasks a worker remembers having shown as waiting for a GPU.
WAITING_NOTED_MAX = 10_000
# Cancels heard for tasks that run nowhere in this process, kept for a run that begins here later
# (Executor.cancel_local); the oldest are forgotten past this many (each notice reaches every process).
HEARD_CANCELS_MAX = 10_000
# The longest a task of a type this host lacks waits before it is handed on again (_without_handler).
HAND_ON_MAX_DELAY = 60.0
# Hand-ons of one task in a row made due at once for an idle worker that has its type, before the
# back-off is used (that worker may not take it: its wake-up lost, or another throttle).
HAND_ON_AT_ONCE_MAX = 3
# Seconds between the listener's tries while Redis's ACL refuses taskd's user its channels.
ACL_RETRY = 10.0
# The least a cancelled (or stopped) coroutine handler, and the tasks it made, are waited for:
# execution.cancel_grace = 0 kills a task's processes at once, and no wait at all cut a handler's
# cleanup at its second await (cancelled again, left running, warned of).
HANDLER_GRACE_MIN = 1.0
# The error of a run whose job process SIGTERM from outside taskd stopped (_in_process): a transient
# one, retried.
STOPPED_FROM_OUTSIDE = "The task's job process was stopped by a signal from outside taskd; it is tried again"
T = TypeVar("T")


async def _until_stored(what: str, write: Callable[[], Awaitable[T]]) -> T:
    """Run a Redis write of a task's start or outcome, retrying while Redis is unreachable or
    refuses writes (`refuses_writes`).

    Without this a task running during a Redis outage was lost: its outcome write failed, and
    once Redis was back the worker's heartbeat (beating again) kept the task `processing` for ever.
    The scripts refuse a second write (and a repeated start by the same worker only reads), so a
    retry after a lost reply changes nothing.
    """
    delays = Backoff(STORE_RETRY_FIRST, STORE_RETRY_MAX)
    tries, first_failed, logged_at = 0, 0.0, None
    while True:
        try:
            written = await write()
        except (RedisConnectionError, RedisTimeoutError, ResponseError) as exc:
            # A Redis that refuses writes for now (full, its disk full, a replica) takes them again later.
            if isinstance(exc, ResponseError) and not refuses_writes(exc):
                raise
            at = time.monotonic()
            tries, first_failed = tries + 1, first_failed or at
            delay = delays.next_delay()
            if logged_at is None or at - logged_at >= STORE_RETRY_LOG_EVERY_S:
                logged_at = at
                log.warning(
                    "recording %s failed (%s); retrying every %.0f s at most, logged once a minute",
                    what,
                    exc,
                    STORE_RETRY_MAX,
                )
            await asyncio.sleep(delay)
            continue
        if tries:
            log.info(
                "recorded %s after %d failed tries (%.1f s)", what, tries, time.monotonic() - first_failed
            )
        return written


def _named(task: asyncio.Task[Any]) -> str:
    """A task as a log line names it: its coroutine's qualified name."""
    coro = task.get_coro()
    return getattr(coro, "__qualname__", None) or task.get_name()


def _masked(text: str | None) -> str | None:
    return None if text is None else REDACTOR.redact(text)


def _cut(text: str | None, limit: int) -> str | None:
    """`text` masked, and at most about `limit` characters of it: its start and its end."""
    text = _masked(text)
    if text is None or len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} … ({len(text) - 2 * half} characters cut) … {text[-half:]}"


def _cut_error(text: str | None) -> str | None:
    return _cut(None if text is None else SHOWN_PATHS.text(text), ERROR_MAX_CHARS)


def _cut_traceback(text: str | None) -> str | None:
    return _cut(None if text is None else SHOWN_PATHS.traceback(text), TRACEBACK_MAX_CHARS)


# What a task's caller reads of a Redis failure in its run. redis-py's message names the server
# (`Error 111 connecting to 10.0.0.5:6379`), as do its traceback's frames (the connection's
# arguments): the operator's, whose log has them. Sentinel and cluster find their servers at run
# time, so no list of addresses to rewrite (shown_paths) could cover them.
REDIS_FAILED = (
    "Task execution failed: taskd's task storage (Redis) failed: {kind}; the operator's log has the detail"
)


def _shown(exc: Exception, error: str, trace: str) -> tuple[str, str | None]:
    """The error and traceback a caller reads of `exc`: those given, unless Redis failed."""
    if isinstance(exc, RedisError):
        return REDIS_FAILED.format(kind=type(exc).__name__), None
    return error, trace


@attrs.frozen
class Outcome:
    """How a run ended, before it is recorded."""

    kind: str  # completed | failed | retry | cancelled | handed_back | handed_on
    result: Any = None
    # What the caller reads is masked like a log line (a provider's error may quote a key), names
    # none of the operator's folders (shown_paths), and is bounded: a handler's message may hold
    # what a caller sent, and it is stored, logged and sent.
    error: str | None = attrs.field(default=None, converter=_cut_error)
    traceback: str | None = attrs.field(default=None, converter=_cut_traceback)
    # A hand-on's seconds until the task is due again, and the worker woken for it then (one that
    # has the task's type and waits idle).
    delay: float = 0.0
    wake: str | None = None


class _Interruptible:
    """Wraps a coroutine so that one cancellation can reach it as another exception.

    That is how a coroutine handler gets `SoftTimeLimitExceeded` at an await, where it can
    clean up and re-raise, just like a plain function in a job process gets it from a signal.
    """

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self._replacement: BaseException | None = None
        # The coroutine awaiting this one is being closed (GeneratorExit at our await), which the
        # GeneratorExit a handler raises itself is not: the first must end the coroutine quietly.
        self.closed = False

    def interrupt(self, task: asyncio.Task[Any], exc: BaseException) -> None:
        """Deliver `exc` at the coroutine's current await."""
        self._replacement = exc
        task.cancel()

    def __await__(self) -> Generator[Any, Any, Any]:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                yielded = self._coro.throw(error) if error is not None else self._coro.send(value)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            try:
                value = yield yielded
            except GeneratorExit:
                self.closed = True
                self._coro.close()
                raise
            except asyncio.CancelledError as exc:
                error = exc
                if self._replacement is not None:
                    error, self._replacement = self._replacement, None
                    current = asyncio.current_task()
                    if current is not None:
                        current.uncancel()
            except BaseException as exc:
                error = exc


async def _handler_run(
    interruptible: _Interruptible, tree: ProcessTree, running: _Running, made: RunTasks
) -> Any:
    """A coroutine handler's run, as its task awaits it: what it returns, or raises as an Exception."""
    # Every child the handler starts (taskd.proctree.spawn) joins this task's tree, every file it
    # puts into the media store (taskd.media.publish) is noted in `running.stored`, and every
    # asyncio task it makes is one of `made`.
    CURRENT.set(tree)
    STORED.set(running.stored)
    made.enter()
    try:
        return await interruptible
    except (Exception, asyncio.CancelledError):
        raise
    except BaseException as exc:
        if interruptible.closed:
            # close() of this coroutine, as when its task is destroyed still pending (its loop
            # closed under it): GeneratorExit must end it, or close() raises what replaced it
            # ("Exception ignored in: <coroutine …>").
            raise
        # SystemExit or KeyboardInterrupt out of a task stops the event loop (the whole taskd, and
        # again at each restart while the task is queued), and any other BaseException ends the
        # queue's worker loop for good: a handler's failure like any other instead.
        raise TaskError(f"Task execution failed: {describe(exc)}") from exc
    finally:
        if not interruptible.closed:  # closed, its loop may be gone: nobody waits for it then
            running.end()


class _Running:
    """A task running in this process, and how to stop it."""

    def __init__(
        self, task: asyncio.Task[Any] | None = None, runner: Runner | None = None, job_id: str | None = None
    ) -> None:
        self.task = task
        self.runner = runner
        # The arq job of the run: the record names it while the run is the task's current one.
        self.job_id = job_id
        # Stopped because the task was started again since (here or by another worker): a run
        # whose end the scripts would refuse; it writes nothing and keeps the media it stored,
        # which the newer run stores under the same names.
        self.taken_over = False
        # The processes a coroutine handler started (ffmpeg, espeak-ng, a plugin's tools).
        self.tree: ProcessTree | None = None
        self.cancelled = False
        self.grace = 0.0
        # Why the engine stopped the handler itself: "hard_limit" or "memory" (None: it did not).
        self.stopped_for: str | None = None
        # A coroutine handler's run state (taskd.store.run_state), told when the run is handed back.
        self.run_state: RunState | None = None
        # A coroutine handler's end, or the end of the wait for it once it was cancelled and did not
        # end within its grace (it caught the cancellation and went on): the run ends either way.
        self.ended: asyncio.Future[None] | None = None
        # How long the handler is waited for once cancelled or stopped at a limit (Executor._in_loop).
        self.handler_grace = 0.0
        # When a dropped progress write was last logged, and how many were dropped unlogged since.
        self.progress_dropped_logged_at: float | None = None
        self.progress_dropped_unlogged = 0
        # The asyncio tasks a coroutine handler made (its run's: taskd.runtasks).
        self.made: RunTasks | None = None
        # The media a coroutine handler stored, deleted when its task ends without a result
        # (Executor._withdraw_if_unnamed).
        self.stored = Stored()

    def cancel(self, grace: float) -> None:
        self.cancelled = True
        self.grace = grace
        if self.runner is not None:
            self.runner.terminate(grace)
            return
        if self.tree is not None:
            # SIGTERM to every process of the task now, SIGKILL after the grace; the handler is
            # cancelled at its current await, so its `finally` cleanup runs meanwhile.
            self.tree.terminate(grace)
        self._cancel_handler()

    def take_over(self, grace: float, *, runs_again: bool) -> None:
        """The task was started again since: stop this run as a cancel stops it. When the task
        `runs_again` (its newer run is queued or running), what this run started and kept (a
        provider's job) is left to that run, which reads it, as at a hand-back: cancelled at the
        provider, the job the newer run followed ended under it, unmade. A task that ended
        meanwhile (failed for its worker's deaths) has no next run: the job is cancelled."""
        if not self.taken_over:
            self.taken_over = True
            if not self.cancelled:
                if self.run_state is not None and runs_again:
                    self.run_state.handed_back = True
                self.cancel(grace)

    def stop_for(self, reason: str) -> None:
        """A limit was passed: kill the task's processes now and cancel the handler."""
        self.stopped_for = reason
        if self.tree is not None:
            self.tree.signal(signal.SIGKILL)
        self._cancel_handler()

    def watch(self, task: asyncio.Task[Any], ended: asyncio.Future[None], handler_grace: float) -> None:
        """The coroutine handler's task, and `ended`, set as it ends (by `_handler_run`, without a
        callback of the loop's: the no-op run's cost) or when the wait for it is given up; cancelled
        or at a limit, it is given `handler_grace` seconds to end."""
        self.task, self.ended, self.handler_grace = task, ended, handler_grace

    def end(self, _: object = None) -> None:
        """The run's wait for its handler is over."""
        if self.ended is not None and not self.ended.done():
            self.ended.set_result(None)

    def _cancel_handler(self) -> None:
        if self.task is not None:
            self.task.cancel()
            # Cancelled before it began, the coroutine never runs to say it ended.
            self.task.add_done_callback(self.end)
            # A handler that catches its CancelledError and goes on would hold its task
            # `processing` (and its worker slot) for ever: waited for `handler_grace` seconds at most.
            self.task.get_loop().call_later(self.handler_grace, self.end)

    def attach(self, runner: Runner) -> None:
        """The job process now running the task; a cancel that came while it started applies now."""
        self.runner = runner
        if self.cancelled:
            runner.terminate(self.grace)


class EndWebhooks(Protocol):
    """What the executor asks of its process's webhook sender (taskd.webhooks.sender.WebhookSender)."""

    def lease_until(self, at_ms: int, callback_url: str, key_id: str | None) -> int | None:
        """The lease a finish at `at_ms` may take on its end's webhook to `callback_url`, of a task
        submitted by the key `key_id`; None: queue it due now."""

    def send_ended(self, record: TaskRecord, lease: int) -> None:
        """Send the end's webhook of `record`, which the finish queued under `lease`."""

    def wake(self, task_id: str | None = None) -> None:
        """Claim due webhooks now: the finish queued `task_id`'s due now."""


class Executor:
    """Runs tasks for the arq workers of one process and stops them when they are cancelled."""

    def __init__(
        self,
        store: TaskStore,
        queue: TaskQueue,
        registry: Registry,
        config: Config,
        http: aiohttp.ClientSession,
        worker_id: str,
        runners: RunnerPool,
        gpu: GpuScheduler | None = None,
        provider_limits: ProviderLimits | None = None,
        run_states: RunStates | None = None,
    ) -> None:
        self.store = store
        self.queue = queue
        self.registry = registry
        self.config = config
        self.http = http
        self.worker_id = worker_id
        self.runners = runners
        self.gpu = gpu
        self.provider_limits = provider_limits
        # What a run keeps for the next run of its task (a provider's job, an LLM's answers); None:
        # nothing is kept.
        self.run_states = run_states
        self.running: dict[str, _Running] = {}
        # Tasks started for this worker and not yet ended here: from the take or claim that started
        # them (a recovered one may wait for a slot) until their run's end is written. The reclaim
        # takes back a task that Redis says this worker runs and that is not here (its end was lost
        # with a failed-over primary): held by a live worker, nothing else would run it again.
        # Task id -> the job of its latest start here: a run that ends lets go of its own job only,
        # not of a newer run of the task (a retry due at once) that started meanwhile.
        self.held: dict[str, str | None] = {}
        # Each task's latest run in this process, from its job function's call until its end is
        # written (or refused): task id -> (its job, set when it is over). A task queued again while
        # its run here went on (this worker's heartbeat lapsed: a stalled loop, SIGSTOP) may be
        # started again by this worker's own take: that newer run waits for the older one's end
        # (_after_earlier_run), so that the two never run together and the task's end is its own.
        self._runs: dict[str, tuple[str | None, asyncio.Future[None]]] = {}
        # GPU slots taken for a task at its claim, held until its run ends.
        self._leases: dict[str, Lease] = {}
        # Tasks whose GPU slots' release is still being sent (retried until Redis answers). A new
        # claim of one waits for it: it would take the slots under the same holder, and the release
        # sent again after a lost reply would drop them while that run went on (gpu/release.lua).
        self._releasing: set[str] = set()
        # Queued tasks already shown as waiting for a GPU (one write each, not one per poll).
        self._waiting_noted: set[str] = set()
        # Tasks whose cancel was heard while no run of theirs was registered here (cancel_local).
        self._heard_cancels: collections.OrderedDict[str, None] = collections.OrderedDict()
        # Set by the service: wakes the workers of the GPU queues when slots come back.
        self.slots_freed: Callable[[], None] = lambda: None
        # Set by the service: this process's webhook sender, which sends the end's webhook of a
        # finish written here (or, without room for it, is woken to claim it).
        self.webhooks: EndWebhooks | None = None
        # Hand-back writes of cancelled runs: they outlive their runs (a stop cancels a run more
        # than once), and the service waits for them before it lets go of Redis.
        self._hand_backs: set[asyncio.Task[Any]] = set()
        # Tasks handed on at once to an idle worker with their type, and how many times in a row
        # (_without_handler); the oldest are forgotten past HEARD_CANCELS_MAX.
        self._handed_at_once: collections.OrderedDict[str, int] = collections.OrderedDict()

    def max_attempts(self, record: TaskRecord) -> int:
        """The run of `record` at which a transient error fails it rather than retrying it: this run
        plus the automatic retries it has left (`retry.max_retries` less those made). The first plus
        the retries for a task no one interrupted; a run taskd cut short (a stop's hand-back, a
        worker's death) spends none of them, as it was not the task's failure."""
        return record.attempt + max(0, self.config.retry.max_retries - record.retries_made)

    async def claim(self, queue: str, job_id: str, lock_ms: int) -> Start:
        """Claim an arq job of `queue` for this worker and start its task (one round trip).

        A task that needs GPU slots is claimed only once it holds them: until a device has room
        it stays `queued` (showing `current_step: waiting_for_gpu`), the job stays on the queue
        for whichever worker finds room first, and no worker slot is held meanwhile.
        """
        task_id = job_id.rsplit(".", 1)[0]
        lease = await self._lease_for(task_id, job_id, queue)
        if lease is False:
            return Start(claimed=False)
        try:
            start = await _until_stored(
                f"start of task {task_id}",
                partial(self.store.start, task_id, job_id, queue, self.worker_id, now(), lock_ms),
            )
        except CorruptRecord:  # logged by the store; running it would only fail again (issue 9)
            start = Start(claimed=True)
        finally:
            if lease:
                self._leases[task_id] = lease
        if start.record is not None:
            self.held[task_id] = start.record.job_id
        if start.record is None:
            # A job not claimed (a throttled project's head, a job another worker runs, one not due)
            # is asked again at every poll: giving its slots back must not wake the workers, or they
            # would ask again at once, in a loop. A claimed job that will not run is dropped.
            await self._release_lease(task_id, wake=start.claimed)
        return start

    async def take(
        self, queue: str, count: int, where: Collection[int] | None = None, recover: bool = False
    ) -> Takes:
        """Start up to `count` due jobs of `queue` for this worker in fair order (one round trip a
        partition; only in the partitions `where` when given: TaskStore.take).

        Retried while Redis is unreachable; a retry (or a take with `recover`) also asks for the
        tasks this worker already runs, since a call whose reply was lost may have started some (the
        worker skips those it knows).
        """

        async def attempt() -> Takes:
            nonlocal recover
            try:
                return await self.store.take(
                    queue, self.worker_id, now(), count, TAKE_SCAN, recover=recover, where=where
                )
            except (RedisConnectionError, RedisTimeoutError):
                recover = True
                raise

        takes = await _until_stored(f"take of queue {queue}", attempt)
        self.held.update(
            (taken.record.task_id, taken.record.job_id) for taken in takes.started if taken.record is not None
        )
        return takes

    async def _lease_for(self, task_id: str, job_id: str, queue: str) -> Lease | Literal[False] | None:
        """The GPU slots `task_id` needs, taken now; None when it needs none (or the host has no GPU);
        False when no device has room."""
        if task_id in self._releasing:
            return False
        if self.gpu is None or task_id in self._leases or not self.gpu.inventory.read():
            return None
        name = await self.store.task_type(task_id)
        task_type = None if name is None else self.registry.get(name)
        slots = None if task_type is None else self.gpu.slots_for(task_type.name, queue, task_type.gpu)
        if slots is None:
            return None
        # Its place in the queues decides whom a device reserved for a whole-device task holds back.
        score = await self.queue.score_of(job_id, queue)
        lease = await self.gpu.try_acquire(task_id, slots, score)
        if lease is None:
            if task_id not in self._waiting_noted:
                if len(self._waiting_noted) >= WAITING_NOTED_MAX:
                    # Tasks another worker started or a caller cancelled are never discarded here;
                    # forgetting them all costs one more (idempotent) write per task still waiting.
                    self._waiting_noted.clear()
                self._waiting_noted.add(task_id)
                await self.gpu.note_waiting(task_id)
            return False
        self._waiting_noted.discard(task_id)
        return lease

    async def _release_lease(self, task_id: str, *, wake: bool = True) -> None:
        lease = self._leases.pop(task_id, None)
        if lease is None or self.gpu is None:
            self._releasing.discard(task_id)
        else:
            # Retried as a run's end is: a holder is dropped only with its worker's heartbeat, so a
            # release Redis did not take (a connection lost as the run ended) held the device's slots
            # for as long as this worker lived, and a whole-device task waited for them for ever.
            self._releasing.add(task_id)
            try:
                await _until_stored(
                    f"release of the GPU slots of task {task_id}", partial(self.gpu.release, lease)
                )
            finally:
                self._releasing.discard(task_id)
            if wake:
                # Slots are free: the GPU queues' workers look for a job that fits now.
                self.slots_freed()

    def job_for(self, queue: str) -> JobFunction:
        """The arq job function for `queue`: runs the task its claim started (`ctx["record"]`), under
        the worker's job timeout (`ctx["deadline"]`).

        Returns True when the store dropped the arq job with the write that ended the run, or when
        the job is not to be dropped: the run's end was refused, the record being `queued` under
        that job again (Executor._queued_again_under).
        """

        async def run_task(ctx: dict[str, Any], task_id: str) -> bool:
            record: TaskRecord = ctx["record"]
            with bind_task(record):
                return await self._run(record, queue, ctx.get("deadline"))

        return run_task

    def run_of(self, task_id: str) -> str | None:
        """The job of `task_id`'s latest run in this process, from its job function's call until its
        end is written; None when there is none."""
        run = self._runs.get(task_id)
        return None if run is None else run[0]

    async def _run(self, record: TaskRecord, queue: str, deadline: asyncio.Timeout | None = None) -> bool:
        task_id = record.task_id
        # A task a submit's script started for this worker's held slot comes here without a take.
        self.held[task_id] = record.job_id
        # Registered before the first await: a later start of the task, which can only come in
        # through a reply read after this run's task began, finds it.
        earlier = self._runs.get(task_id)
        over: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._runs[task_id] = (record.job_id, over)
        lease = self._leases.get(task_id)  # taken by the claim, before the run
        try:
            if earlier is not None:
                # The earlier run is stale: its end would be refused. Stopped now, as a cancel stops
                # it, rather than let run to its own end (up to its hard limit) while this start waits.
                stale = self.running.get(task_id)
                if stale is not None and stale.job_id != record.job_id:
                    stale.take_over(self.config.execution.cancel_grace, runs_again=True)
            if earlier is not None and not await self._after_earlier_run(record, earlier[1], deadline):
                # Its job is kept as after a refused end: a failover may have lost this start while
                # it waited, and dropped, the job left the task `queued` for ever.
                return await self._queued_again_under(record)
            with tracing.run_span(record, None if lease is None else str(lease.device)):
                written = await self._run_claimed(record)
            return written or await self._queued_again_under(record)
        finally:
            over.set_result(None)
            # Only the task's latest run lets go of its entry. An earlier run can end after it, and
            # find none: when the worker stops, a later start that waited is handed back at once,
            # while the earlier run is still being stopped.
            latest = self._runs.get(task_id)
            if latest is not None and latest[1] is over:
                del self._runs[task_id]
            if self.held.get(task_id) == record.job_id:
                del self.held[task_id]
            if task_id in self._leases:  # not on a host without GPUs: no task for nothing
                # Marked now, not by the release's task once it begins: a claim of the task's newer
                # job in between (the run's entry is gone) took no lease of its own, the task
                # holding one, and that lease was then released under the newer run.
                self._releasing.add(task_id)
                await asyncio.shield(self._release_lease(task_id))

    async def _queued_again_under(self, record: TaskRecord) -> bool:
        """Whether the record, after this run's end was refused (or its start, which waited for an
        earlier run, found not current), says `queued` under the run's own job: a failover lost the
        run's start, and arq's set has the job again. The job is then left there for a claim or a
        take to start the task again; dropped as after any refused end, it left the task `queued`
        with no job, never to run again."""
        [(status, _, job_id)] = await _until_stored(
            f"the check of task {record.task_id}'s refused end", partial(self.store.runners, [record.task_id])
        )
        return status == TaskStatus.QUEUED.value and job_id == record.job_id

    async def _after_earlier_run(
        self, record: TaskRecord, earlier: asyncio.Future[None], deadline: asyncio.Timeout | None
    ) -> bool:
        """Wait until the earlier run of the task here is over, its end written or refused (the
        scripts check the job: that end is refused now); then whether `record`'s start is still the
        task's to run here, not cancelled or queued again meanwhile.

        The job's `deadline` (arq's job timeout, set for one run) is moved on by the wait: counted
        from the start, it cut a run that had waited long (an earlier run near its hard limit)
        before that run's own limits, and the task was handed back to run a third time.

        Skipped, as before, this start never ran and the earlier run's end was written under it (one
        run's result with another's attempt and start); and a start that came once the earlier run
        had left `running`, before its end was written, ran alongside it.
        """
        log.info(
            "task %s started again here (job %s) before its earlier run here ended; it runs once "
            "that run's end is written",
            record.task_id,
            record.job_id,
        )
        loop = asyncio.get_running_loop()
        waited_from, due = loop.time(), None if deadline is None else deadline.when()
        if deadline is not None:
            deadline.reschedule(None)  # the earlier run has its own, which bounds this wait
        try:
            await asyncio.shield(earlier)
        except asyncio.CancelledError:
            # The worker is stopping: this start is handed back, as a run would be.
            await self._hand_back(record)
            raise
        if deadline is not None and due is not None:
            deadline.reschedule(due + loop.time() - waited_from)
        records = await _until_stored(
            f"the check of task {record.task_id}'s start", partial(self.store.get_many, [record.task_id])
        )
        now_is = [(r.status, r.worker_id, r.job_id) for r in records]
        if now_is == [(TaskStatus.PROCESSING, self.worker_id, record.job_id)]:
            return True
        # Cancelled meanwhile (the cancel stopped the earlier run), or taken back again: nothing to
        # write, and a cancel heard meanwhile is spent.
        self._heard_cancels.pop(record.task_id, None)
        log.info(
            "task %s: its start under job %s is no longer current; not run", record.task_id, record.job_id
        )
        return False

    async def _hand_back(self, record: TaskRecord) -> None:
        """Write the hand-back of a run the worker's stop cancels; the write outlives the run (a stop
        cancels a run more than once) and the service waits for it (finish_hand_backs)."""
        write = asyncio.ensure_future(self._record(record, Outcome("handed_back")))
        self._hand_backs.add(write)
        write.add_done_callback(self._hand_backs.discard)
        await asyncio.shield(write)

    async def _resolve_refs(self, record: TaskRecord) -> dict[str, Any]:
        """record.task_data with each $ref replaced from its dependency's result; raises refs.Unresolved,
        or refs.TooLarge when the filled-in data would pass its limit."""
        dependencies = await self.store.get_many(record.depends_on or [])
        results = {dependency.task_id: dependency.result for dependency in dependencies}
        # Room for what was submitted and every dependency's largest result once: what a chain
        # needs; many $refs to one large value would make a copy each when sent as JSON.
        limit = self.config.limits.max_body_bytes + MAX_DEPENDS_ON * self.config.execution.result_max_bytes
        size = refs.filled_size(record.task_data, results)
        if size > limit:
            raise refs.TooLarge(
                size, limit, f"limits.max_body_bytes + {MAX_DEPENDS_ON} x execution.result_max_bytes"
            )
        resolved: dict[str, Any] = refs.substitute(record.task_data, results)
        return resolved

    def _invalid(
        self, task_type: TaskType, submitted: dict[str, Any], filled: dict[str, Any], exc: ValidationError
    ) -> str:
        """A run's error for task_data its type refuses (`submitted`, as stored; `filled`, its $refs filled in)."""
        error = f"Invalid task data: {exc.details}"
        if submitted is filled:
            return error
        # What a $ref brought is checked only now: the error says which $refs it may be about (one
        # for a dialogue line's start, when the whole list's check refuses it).
        return error + refs.filled_in(self.registry.input_errors(task_type, filled).at, submitted)

    async def _run_claimed(self, record: TaskRecord) -> bool:
        task_id = record.task_id
        task_type = self.registry.get(record.task_type)
        if task_type is None or task_type.handler is None:
            return await self._record(record, await self._without_handler(record))
        submitted = record.task_data
        if record.depends_on and any(refs.find(record.task_data)):
            try:
                # The stored task_data keeps its $refs (a retry resolves them again); this run,
                # in the loop or in a job process, gets the values they point to.
                record = attrs.evolve(record, task_data=await self._resolve_refs(record))
            except (refs.Unresolved, refs.TooLarge) as exc:
                return await self._record(record, Outcome("failed", error=str(exc)))
        try:
            data = self.registry.parse_input(task_type, record.task_data)
        except ValidationError as exc:
            error = self._invalid(task_type, submitted, record.task_data, exc)
            return await self._record(record, Outcome("failed", error=error))
        if task_id in self._heard_cancels:
            # Cancelled after its start was written and before this run was registered (it read
            # its $refs, or the take's reply came after the cancel's message): the handler never
            # runs. The record says cancelled: nothing to write.
            del self._heard_cancels[task_id]
            return await self._record(record, Outcome("cancelled"))
        running = _Running(job_id=record.job_id)
        if record.attempt > 1:
            await self._after_earlier_runs(record, task_type, running.stored)
        self.running[task_id] = running
        lease = self._leases.get(task_id)
        device = None if lease is None else str(lease.device)
        try:
            if task_type.runs_in_process:
                outcome = await self._in_process(record, task_type, running, device)
            else:
                outcome = await self._in_loop(record, task_type, data, running, device)
        except asyncio.CancelledError:
            # The worker is stopping: hand the task back so another worker runs it.
            await self._hand_back(record)
            raise
        except Exception as exc:
            # taskd's side of the run failed (a handler's own errors are outcomes already): the task
            # still ends, retried while it has attempts, or it would stay `processing` for ever
            # under a worker whose heartbeat goes on.
            log.exception("running task %s failed", task_id)
            error, trace = _shown(exc, f"Task execution failed: {describe(exc)}", traceback.format_exc())
            retry = record.attempt < self.max_attempts(record)
            outcome = Outcome("retry" if retry else "failed", error=error, traceback=trace)
        finally:
            self.running.pop(task_id, None)
        if running.taken_over:
            # Its end would be refused; its media are the newer run's names, not to be withdrawn.
            log.info(
                "task %s: run under job %s stopped, the task having been started again since; "
                "nothing written",
                task_id,
                record.job_id,
            )
            return False
        # A result refused for its size fails the task here, before its media's fate is decided:
        # no result will name what the run stored.
        outcome = self._storable(outcome)
        written = await self._record(record, outcome)
        if running.stored.names or running.stored.earlier:
            await self._withdraw_if_unnamed(record, outcome, written, running.stored)
        return written

    async def _after_earlier_runs(self, record: TaskRecord, task_type: TaskType, stored: Stored) -> None:
        """Before a task's second or later run: its earlier runs' scratch dirs removed, and what they
        put into the media store read, for this run to delete should it end without a result."""
        await self._remove_earlier_scratch(record.task_id)
        if task_type.stores_media:
            client = self.store.clients[keys.task_partition(record.task_id)]
            stored.earlier = await stored_media(client, record.task_id)

    async def _remove_earlier_scratch(self, task_id: str) -> None:
        """Remove the scratch dirs of an earlier run of the task whose worker was killed (they are
        only swept once older than any task can run)."""
        try:
            removed = await asyncio.to_thread(scratch.remove_earlier, scratch_root(self.config), task_id)
        except OSError as exc:  # the sweeper removes them later; the run needs them gone no sooner
            log.warning("could not remove the scratch dirs of an earlier run of task %s: %s", task_id, exc)
            return
        if removed:
            log.info("removed %d scratch dirs an earlier run of task %s left", removed, task_id)

    async def _withdraw_if_unnamed(
        self, record: TaskRecord, outcome: Outcome, written: bool, stored: Stored
    ) -> None:
        """Delete the media a run stored when no task result will name it: the run ended by a
        cancel, or failed for good (a time limit while its output was stored), or its `completed`
        was refused because the task was cancelled meanwhile (a cancel that came while the media was
        being stored, or after, before the end was written). A `completed` refused because another
        attempt took the task over keeps them, and so does a run to be retried: those runs store
        the same names. What the task's earlier runs stored goes with them; once the task has
        completed, only what its result does not name (an image an earlier run stored in another
        format)."""
        if outcome.kind == "completed" and written:
            unnamed = [name for name in stored.earlier if name not in stored.names]
            if unnamed:
                await self._withdraw(record, unnamed)
            return
        if not (
            outcome.kind == "cancelled"
            or (outcome.kind == "failed" and written)
            or (outcome.kind == "completed" and not written)
        ):
            return
        try:
            if outcome.kind == "completed":
                [status] = await self.store.statuses([record.task_id])
                if status != TaskStatus.CANCELLED.value:
                    return
            log.info("task %s ended without a result; deleting the media it stored", record.task_id)
            # A copy still going (its handler given up on after its cancel grace) would land after.
            await stored.copied()
        except Exception as exc:  # Redis failing now: the media sweeper deletes them later
            log.warning("could not delete the media task %s stored: %s", record.task_id, exc)
            return
        await self._withdraw(record, [*stored.earlier, *(n for n in stored.names if n not in stored.earlier)])

    async def _withdraw(self, record: TaskRecord, names: list[tuple[str, str]]) -> None:
        try:
            await withdraw(self.config, names)
        except Exception as exc:  # Redis or the store failing now: the media sweeper deletes them later
            log.warning("could not delete the media task %s stored: %s", record.task_id, exc)

    async def _without_handler(self, record: TaskRecord) -> Outcome:
        """How a task of a type this process cannot run ends here: handed on, due a heartbeat
        interval later (doubling with each take, up to a minute), while another live worker of its
        queue says it has the type; else failed."""
        # Hosts whose tasks.modules differ (a deploy under way, a host left out): the API node took
        # the type, and failing it here would fail work that a worker beside this one can do.
        workers = await live_workers(self.store.redis, self.config.worker.heartbeat_ttl)
        able = [
            worker
            for worker in workers
            if worker.worker_id != self.worker_id
            and record.queue in worker.queues
            and record.task_type in (worker.task_types or ())
        ]
        host = self.config.worker.host
        if able:
            log.info(
                "task %s handed on: no handler for task type '%s' on host %s; worker host(s) %s of "
                "queue %s have one (tasks.modules differs between hosts)",
                record.task_id,
                record.task_type,
                host,
                ", ".join(sorted({worker.host for worker in able})),
                record.queue,
            )
            # One of them waits idle for a job of the queue: due at once, and that worker woken for
            # it (a wake-up of the queue goes to any idle worker, and a worker polls for a due job
            # at its own pace: without the wake this one, which looks again one poll delay after
            # each take, took the task again as it fell due). A few times in a row at most, in case
            # that worker does not take it after all.
            idle = await self._idle_one(record, [worker.worker_id for worker in able])
            at_once = self._handed_at_once.pop(record.task_id, 0)
            if idle is not None and at_once < HAND_ON_AT_ONCE_MAX:
                self._handed_at_once[record.task_id] = at_once + 1
                if len(self._handed_at_once) > HEARD_CANCELS_MAX:
                    self._handed_at_once.popitem(last=False)
                return Outcome("handed_on", wake=idle)
            # Else taken again here no sooner than a back-off, while the hosts that have the type
            # are busy: asked less often each time, at most once a minute. The take ran nothing, so
            # it is not counted as an attempt (store.requeue's not_run): a task handed on while the
            # host with its type is busy for an hour would otherwise reach that host with its
            # retries used up.
            delay = exponential_delay(
                (record.hand_ons or 0) + 1, self.config.worker.heartbeat_interval, cap=HAND_ON_MAX_DELAY
            )
            return Outcome("handed_on", delay=delay)
        return Outcome(
            "failed",
            error=(
                f"No handler is installed for task type '{record.task_type}' on worker host {host}, "
                f"nor on any other live worker of queue {record.queue}"
            ),
        )

    async def _idle_one(self, record: TaskRecord, worker_ids: list[str]) -> str | None:
        """One of `worker_ids` that waits idle for a job of the task's queue and partition, or None."""
        partition = keys.task_partition(record.task_id)
        try:
            scores = await self.store.clients[partition].zmscore(
                keys.idle(record.queue, partition), worker_ids
            )
        except RedisError:
            return None  # the back-off then: the task waits a little longer, nothing is lost
        return next(
            (worker_id for worker_id, score in zip(worker_ids, scores, strict=True) if score is not None),
            None,
        )

    async def _wake(self, record: TaskRecord, worker_id: str) -> None:
        """Wake one worker for a job of the task's queue and partition (as lib/wake.lua does)."""
        partition = keys.task_partition(record.task_id)
        try:
            await self.store.clients[partition].publish(
                keys.wake_worker(worker_id), keys.partition_prefix(partition) + record.queue
            )
        except RedisError as exc:  # it finds the job at its next poll
            log.info("could not wake worker %s for task %s: %s", worker_id, record.task_id, exc)

    def handing_back(self) -> None:
        """The runs still going are about to be cancelled and their tasks handed back (the worker
        stops): each one's run state is told, unless the run is being stopped for its own end (a
        cancel, a limit), so that what it keeps for the next run is left running for it."""
        for running in self.running.values():
            if running.run_state is not None and not running.cancelled and running.stopped_for is None:
                running.run_state.handed_back = True

    async def finish_hand_backs(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the hand-back writes still going; give up on the rest.

        One given up on (Redis unreachable all that time) is not lost: the task stays `processing`
        under this worker, whose heartbeat then expires, and the reclaim queues it again.
        """
        if not self._hand_backs:
            return
        _, unfinished = await asyncio.wait(self._hand_backs, timeout=timeout)
        if unfinished:
            log.warning(
                "%d tasks not handed back within %.0f s (Redis unreachable); the reclaim queues them again",
                len(unfinished),
                timeout,
            )
            await cancel_and_wait(unfinished)

    def _limits(self, record: TaskRecord, task_type: TaskType) -> tuple[float | None, float]:
        hard = task_type.hard_time_limit or self.config.queues[record.queue].timeout
        return task_type.soft_time_limit, hard

    async def _in_loop(
        self, record: TaskRecord, task_type: TaskType, data: Any, running: _Running, device: str | None
    ) -> Outcome:
        context = TaskContext(
            task_id=record.task_id,
            project_id=record.project_id,
            attempt=record.attempt,
            max_attempts=self.max_attempts(record),
            config=self.config,
            http=self.http,
            metadata=record.metadata,
            sink=partial(self._report, record.task_id, record.job_id or ""),
            device=device,
            provider_limits=self.provider_limits,
            run_state=self.run_states.of(record.task_id) if self.run_states else None,
        )
        running.run_state = context.run_state
        running.stored.state = context.run_state
        soft, hard = self._limits(record, task_type)
        assert task_type.handler is not None
        tree = ProcessTree(self._tree_limits())
        running.tree = tree
        interruptible = _Interruptible(task_type.handler(context, data))  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        # Every asyncio task the handler makes (a TaskGroup's, gather's) is the run's, and is
        # stopped when the run ends, however it ends.
        runtasks.watch(loop)
        running.made = made = RunTasks()
        grace = max(self.config.execution.cancel_grace, HANDLER_GRACE_MIN)
        # Named for the log line of a stop that exits without a handler deaf to its cancel.
        task = asyncio.create_task(
            _handler_run(interruptible, tree, running, made),
            name=f"{record.task_type} handler of task {record.task_id}",
        )
        running.watch(task, loop.create_future(), grace)
        timers = [loop.call_later(hard, running.stop_for, "hard_limit")]
        if soft is not None:
            timers.append(
                loop.call_later(soft, interruptible.interrupt, task, SoftTimeLimitExceeded(f"{soft:g} s"))
            )
        # The memory watcher starts at its first check: most runs end before it and never need it.
        watchers: list[asyncio.Task[None]] = []
        timers.append(
            loop.call_later(
                WATCH_INTERVAL,
                lambda: watchers.append(asyncio.create_task(self._watch_memory(record, tree, running))),
            )
        )
        try:
            await self._handler_end(task, running, grace)
            if not task.done():
                # Cancelled (or stopped at a limit), it caught that and went on: the run is over
                # all the same; its task is cancelled again below, and left to the loop.
                log.warning(
                    "task %s: its handler did not end within %g s of its cancellation; the task "
                    "ends without it, and the coroutine is left running in the worker",
                    record.task_id,
                    grace,
                )
                return self._stopped(record, running, tree, hard) or Outcome("cancelled")
            result = task.result()
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            stopped = self._stopped(record, running, tree, hard)
            if stopped is not None or running.cancelled:
                return stopped or Outcome("cancelled")
            # Nobody cancelled it: the handler raised CancelledError itself (a library's, a timeout
            # it let out). Taken for a cancel, nothing was written and the task stayed `processing`
            # until a reclaim queued it again, to end the same way.
            return self._failure(record, TaskError(f"Task execution failed: {describe(exc)}"))
        except SoftTimeLimitExceeded as exc:
            return self._soft_limit_failure(record, exc, soft)
        except Exception as exc:
            return self._stopped(record, running, tree, hard) or self._failure(record, exc)
        finally:
            for timer in timers:
                timer.cancel()
            for watcher in watchers:
                watcher.cancel()
            await self._stop_what_is_left(record, running, made, tree, grace)
        return self._stopped(record, running, tree, hard) or Outcome("completed", result=result)

    @staticmethod
    async def _stop_what_is_left(
        record: TaskRecord, running: _Running, made: RunTasks, tree: ProcessTree, grace: float
    ) -> None:
        """Whatever the handler left running goes with its run (it had its chance to stop it): its
        asyncio tasks first, whose `finally` may stop their processes, then the processes."""
        assert running.task is not None and running.ended is not None
        given_up = running.ended.done() and not running.task.done()
        if given_up:
            running.task.cancel()  # once more: it may take this one
        # Not waited for again when the handler itself was given up on after its grace.
        left = await asyncio.shield(made.stop(0.0 if given_up else grace)) if made.pending else []
        if left:
            log.warning(
                "task %s: %d asyncio tasks its handler made did not end when cancelled at the "
                "run's end; left running in the worker: %s",
                record.task_id,
                len(left),
                ", ".join(sorted({_named(made_task) for made_task in left})),
            )
        if tree.alive:
            await asyncio.shield(tree.kill())

    @staticmethod
    async def _handler_end(task: asyncio.Task[Any], running: _Running, grace: float) -> None:
        """Wait for the handler's end (`running.ended`). A stop of the worker cancels the handler
        too, as awaiting its task would, and waits up to `grace` seconds for it before it goes on."""
        assert running.ended is not None
        try:
            await running.ended
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.shield(asyncio.wait([task], timeout=grace))
            raise

    def _soft_limit_failure(
        self, record: TaskRecord, exc: SoftTimeLimitExceeded, soft: float | None
    ) -> Outcome:
        if soft is None:
            # Raised by the handler itself (its type has no soft limit): an error like any other.
            return self._failure(record, exc)
        return Outcome(
            "failed",
            error=f"Task exceeded its soft time limit of {soft:g} seconds",
            traceback=traceback.format_exc(),
        )

    def _tree_limits(self) -> TreeLimits:
        execution = self.config.execution
        return TreeLimits(
            grace=execution.cancel_grace,
            memory_bytes=execution.memory_limit_mb * 1024 * 1024,
            address_space_bytes=execution.tool_address_space_mb * 1024 * 1024,
        )

    async def _watch_memory(self, record: TaskRecord, tree: ProcessTree, running: _Running) -> None:
        """Kill the task's processes when together they pass the memory limit (the job-process rule);
        started one WATCH_INTERVAL into the run, it checks at once, then every WATCH_INTERVAL."""
        while running.stopped_for is None:
            # Adding up the tree reads /proc for every process of the host: not on the loop.
            used = await asyncio.to_thread(tree.over_memory)
            if used is not None:
                running.stop_for("memory")
                # The health alerts name the task and the memory it reached.
                await asyncio.shield(self._note_memory_recycle(record, used // (1024 * 1024), "processes"))
            await asyncio.sleep(WATCH_INTERVAL)

    def _stopped(
        self, record: TaskRecord, running: _Running, tree: ProcessTree, hard: float
    ) -> Outcome | None:
        """The failure a limit the engine enforced makes of the run, whatever the handler did after."""
        if running.stopped_for == "hard_limit":
            return Outcome("failed", error=f"Task exceeded its hard time limit of {hard:g} seconds")
        if running.stopped_for == "memory":
            limit_mb = tree.limits.memory_bytes // (1024 * 1024)
            used_mb = tree.peak_rss // (1024 * 1024)
            return Outcome(
                "failed",
                error=(
                    f"The task's processes exceeded the memory limit of {limit_mb} MB ({used_mb} MB); "
                    "they were killed"
                ),
            )
        return None

    async def _in_process(
        self, record: TaskRecord, task_type: TaskType, running: _Running, device: str | None
    ) -> Outcome:
        # The job process parses task_data itself.
        soft, hard = self._limits(record, task_type)
        execution = self.config.execution
        limits = Limits(soft, hard, execution.memory_limit_mb * 1024 * 1024, execution.cancel_grace)
        runner = await self.runners.acquire(device)
        running.attach(runner)
        request = {
            "task_id": record.task_id,
            "project_id": record.project_id,
            "task_type": record.task_type,
            "task_data": record.task_data,
            "metadata": record.metadata,
            "attempt": record.attempt,
            "max_attempts": self.max_attempts(record),
            "device": device,
        }
        try:
            result = await runner.execute(
                request, limits, partial(self._report, record.task_id, record.job_id or "")
            )
        except asyncio.CancelledError:
            runner.terminate(min(execution.cancel_grace, 5.0))
            await asyncio.shield(runner.wait_exit(execution.cancel_grace))
            raise
        finally:
            # Detached before it goes back to the pool: the run stays registered until its end is
            # written, and a cancel or take-over heard meanwhile sent its SIGTERM to this process,
            # idle in the pool or running another task by then.
            running.runner = None
            await asyncio.shield(self.runners.release(runner))
        if result.kind == "cancelled" and not running.cancelled:
            # SIGTERM reached the job process from outside taskd (a stop sent to every process of the
            # service at once, systemd's default KillMode=control-group; a kill by hand): nobody
            # cancelled the task, and the input is not at fault. Taken for a cancel, nothing was
            # written and the task stayed `processing` until a check of this worker's runs queued it.
            log.warning("task %s: its job process was stopped by SIGTERM from outside taskd", record.task_id)
            kind = "retry" if record.attempt < self.max_attempts(record) else "failed"
            return Outcome(kind, error=STOPPED_FROM_OUTSIDE)
        return await self._process_outcome(record, result, soft, hard, limits)

    async def _process_outcome(
        self, record: TaskRecord, result: ProcessOutcome, soft: float | None, hard: float, limits: Limits
    ) -> Outcome:
        if result.kind == "done":
            return Outcome("completed", result=result.result)
        if result.kind == "cancelled":
            return Outcome("cancelled")
        if result.kind == "hard_limit":
            return Outcome(
                "failed", error=f"Task exceeded its hard time limit of {hard:g} seconds (job process killed)"
            )
        if result.kind == "memory":
            limit_mb = limits.memory_bytes // (1024 * 1024)
            used_mb = result.peak_rss // (1024 * 1024)
            await self._note_memory_recycle(record, used_mb, "job_process")
            return Outcome(
                "failed",
                error=f"Job process exceeded the memory limit of {limit_mb} MB ({used_mb} MB); it was replaced",
            )
        if result.kind == "template_gone":
            # taskd's own process went, not the task's: run it again while it has attempts.
            error = f"Job process died while running the task ({result.error})"
            return Outcome("retry" if record.attempt < self.max_attempts(record) else "failed", error=error)
        if result.kind == "crashed":
            return Outcome("failed", error=f"Job process died while running the task ({result.error})")
        if result.error_kind == "soft_limit" and soft is not None:
            return Outcome(
                "failed",
                error=f"Task exceeded its soft time limit of {soft:g} seconds",
                traceback=result.traceback,
            )
        if result.error_kind == "transient" and record.attempt < self.max_attempts(record):
            return Outcome("retry", error=result.error, traceback=result.traceback)
        return Outcome("failed", error=result.error, traceback=result.traceback)

    def _failure(self, record: TaskRecord, exc: Exception) -> Outcome:
        if isinstance(exc, RedisError):
            # The caller reads no more than that Redis failed (_shown): the operator, all of it.
            log.warning("task %s: its handler met a Redis failure", record.task_id, exc_info=exc)
        message = message_of(exc) if isinstance(exc, TaskError) else f"Task execution failed: {describe(exc)}"
        message, trace = _shown(exc, message, traceback.format_exc())
        if is_transient(exc) and record.attempt < self.max_attempts(record):
            return Outcome("retry", error=message, traceback=trace)
        return Outcome("failed", error=message, traceback=trace)

    def _storable(self, outcome: Outcome) -> Outcome:
        """`outcome`, or the failure it is when it completed with a result that cannot be stored."""
        if outcome.kind == "completed":
            refusal = result_refusal(outcome.result, self.config.execution.result_max_bytes)
            if refusal is not None:
                return Outcome("failed", error=refusal)
        return outcome

    async def _record(self, record: TaskRecord, outcome: Outcome) -> bool:
        """Write how the run ended (a `completed` one checked by _storable); True when that write
        also dropped the task's arq job."""
        at = now()
        tracing.note_outcome(outcome.kind, outcome.error)
        if outcome.kind == "completed":
            return await self._finish(record, TaskStatus.COMPLETED, at, result=outcome.result)
        if outcome.kind == "failed":
            log.warning("task %s failed: %s", record.task_id, outcome.error)
            return await self._finish(
                record, TaskStatus.FAILED, at, error=outcome.error, traceback=outcome.traceback
            )
        if outcome.kind == "retry":
            # The first retry waits up to base_delay, whatever runs were cut short before it.
            retry = self.config.retry
            delay = retry_delay(record.retries_made + 1, retry.base_delay, retry.max_delay)
            log.warning(
                "task %s attempt %d failed (%s); retrying in %.1f s",
                record.task_id,
                record.attempt,
                outcome.error,
                delay,
            )
            score: float = int((at + delay) * 1000)
            write = partial(self.store.requeue, record, self.worker_id, at, score, retry_error=outcome.error)
        elif outcome.kind == "handed_back":
            log.info("task %s handed back to its queue", record.task_id)
            write = partial(
                self.store.requeue, record, self.worker_id, at, self.queue.score(at, record.priority)
            )
        elif outcome.kind == "handed_on":
            # Due no sooner than its back-off, as a retry: the queue score of its priority would
            # move it earlier by the priority's head start (minutes), so that a worker without the
            # type took it again at once, thousands of times a second while the others were busy.
            score = int((at + outcome.delay) * 1000)
            write = partial(self.store.requeue, record, self.worker_id, at, score, not_run=True)
            requeued: bool = await _until_stored(f"task {record.task_id} {outcome.kind}", write)
            if requeued and outcome.wake is not None:
                await self._wake(record, outcome.wake)
            return requeued
        else:
            log.info("task %s stopped: cancelled", record.task_id)
            return False
        return await _until_stored(f"task {record.task_id} {outcome.kind}", write)

    async def _finish(self, record: TaskRecord, status: TaskStatus, at: float, **fields: Any) -> bool:
        """Write a run's end; its webhook goes to this process's sender at once. True when written."""
        webhooks = self.webhooks
        # The end's webhook is leased to this process's sender by the finish itself, so the POST
        # starts as soon as the finish returns: no pub/sub wake-up, no claim, no read in between.
        lease = None
        if webhooks is not None and record.callback_url:
            lease = webhooks.lease_until(int(at * 1000), record.callback_url, record.key_id)
        finished = await _until_stored(
            f"task {record.task_id} {status.value}",
            partial(self.store.finish, record, self.worker_id, status, at, webhook_lease=lease, **fields),
        )
        if finished.written and webhooks is not None:
            if finished.webhook_lease is not None and finished.ended is not None:
                webhooks.send_ended(finished.ended, finished.webhook_lease)
            elif lease is None and record.callback_url:
                webhooks.wake(record.task_id)
        if status is TaskStatus.COMPLETED:
            if finished.written:
                log.info("task %s completed in %.3f s", record.task_id, at - (record.started_at or at))
            else:
                log.info(
                    "task %s finished after it was cancelled or taken over; result dropped", record.task_id
                )
        return finished.written

    async def _note_memory_recycle(self, record: TaskRecord, used_mb: int, what: str) -> None:
        """Keep a memory kill for the health alerts: `what` was killed, a job process or a task's tools."""
        at = now()
        event = {
            "task_id": record.task_id,
            "worker_id": self.worker_id,
            "rss_mb": used_mb,
            "at": at,
            "what": what,
        }
        await self.store.note_memory_recycle(event, at)

    @property
    def tools_rss(self) -> int:
        """The largest process tree of a coroutine task running here, at its last memory check."""
        return max((r.tree.last_rss for r in self.running.values() if r.tree is not None), default=0)

    def whose(self, task: asyncio.Task[Any]) -> str | None:
        """`task <id>` when `task` is a coroutine run's handler, or a task its handler made; read
        from another thread (taskd.engine.loopwatch) while this one is held, so from a copy."""
        try:
            runs = list(self.running.items())
        except RuntimeError:  # changed while copied: the loop turns, nothing to name
            return None
        for task_id, running in runs:
            if running.task is task or (running.made is not None and task in running.made):
                return f"the handler of task {task_id}"
        return None

    def cancel_local(self, task_id: str) -> bool:
        """Stop `task_id` if it runs in this process: SIGTERM to its job process, or asyncio cancel."""
        running = self.running.get(task_id)
        if running is None:
            # Its run may not be registered yet, though the record says it started (a message is
            # published only for a task that was processing, and a cancelled task never starts
            # again): remembered, so that the run stops before its handler (_run_claimed). Before,
            # it was forgotten and the handler ran until a heartbeat's reconcile, or its first
            # progress write, found the record cancelled.
            self._heard_cancels[task_id] = None
            if len(self._heard_cancels) > HEARD_CANCELS_MAX:
                self._heard_cancels.popitem(last=False)
            return False
        if not running.cancelled:  # a second notice (pub/sub and reconcile) changes nothing
            running.cancel(self.config.execution.cancel_grace)
        return True

    async def _report(self, task_id: str, job_id: str, progress: float, step: str | None) -> None:
        # Progress is told, not kept: a write Redis cannot take now (down, full, refusing writes) is
        # dropped, and the run goes on; its outcome is written, retried, when it ends.
        try:
            written = await self.store.progress(task_id, job_id, self.worker_id, progress, step, now())
        except (RedisError, OSError) as exc:
            self._progress_dropped(task_id, exc)
            return
        if not written:
            # The record refused the write: the task may have been cancelled while the pub/sub
            # message that says so was lost.
            await self.reconcile([task_id])

    def _progress_dropped(self, task_id: str, exc: Exception) -> None:
        # A handler reports progress up to several times a second: while Redis refuses writes for
        # long (its disk full), one line per task per STORE_RETRY_LOG_EVERY_S, not one per report.
        running = self.running.get(task_id, _Running())
        at = time.monotonic()
        logged_at = running.progress_dropped_logged_at
        if logged_at is not None and at - logged_at < STORE_RETRY_LOG_EVERY_S:
            running.progress_dropped_unlogged += 1
            return
        unlogged = running.progress_dropped_unlogged
        running.progress_dropped_logged_at, running.progress_dropped_unlogged = at, 0
        log.warning(
            "progress of task %s not recorded: %s%s",
            task_id,
            exc,
            f" (and {unlogged} more reports dropped since the last such line)" if unlogged else "",
        )

    async def reconcile(self, task_ids: Iterable[str] | None = None) -> None:
        """Stop every task running here (or those of `task_ids`) whose record says `cancelled`, or
        no longer names this worker and the run's job (the task was taken over: this worker stalled
        past its heartbeat TTL and another run started since).

        The cancel channel is the fast path; this is the one that cannot be lost. It runs on every
        refused progress write and on every heartbeat, so a cancel published while this process's
        subscriber was disconnected stops the task within one heartbeat interval, and so does a
        take-over, of which nothing is published.
        """
        runs = [
            (task_id, running)
            for task_id in (self.running if task_ids is None else task_ids)
            if (running := self.running.get(task_id)) is not None
        ]
        if not runs:
            return
        now_are = await self.store.runners([task_id for task_id, _ in runs])
        for (task_id, running), (status, worker_id, job_id) in zip(runs, now_are, strict=True):
            if status == TaskStatus.CANCELLED.value:
                log.info("task %s is cancelled in its record; stopping it", task_id)
                self.cancel_local(task_id)
            elif self.running.get(task_id) is not running:
                # Ended meanwhile (its end is written after it leaves `running`): its runner may
                # run another task by now.
                continue
            elif not running.taken_over and self._taken_over(running, status, worker_id, job_id):
                # Once: a heartbeat and refused progress writes may each find it before the run's
                # stop (up to its cancel grace) has taken it off `running`.
                log.warning(
                    "task %s was started again since its run here (job %s) began (now %s, worker %s, "
                    "job %s); stopping this run, whose end would be refused",
                    task_id,
                    running.job_id,
                    status,
                    worker_id,
                    job_id,
                )
                running.take_over(
                    self.config.execution.cancel_grace,
                    runs_again=status in (TaskStatus.QUEUED.value, TaskStatus.PROCESSING.value),
                )

    def _taken_over(
        self, running: _Running, status: str | None, worker_id: str | None, job_id: str | None
    ) -> bool:
        """Whether the record (`status`, `worker_id`, `job_id`) says that `running` is no longer the
        task's run: another job's, another worker's, or ended. No record (deleted with its project)
        and a record `queued` under the run's own job (a failover lost its start: this worker may
        take the job again, and the run's end is written then) leave the run alone."""
        if status is None:
            return False
        if job_id != running.job_id:
            return True
        if status == TaskStatus.PROCESSING.value:
            return worker_id != self.worker_id
        return status != TaskStatus.QUEUED.value

    async def listen(
        self,
        redis: Redis,
        on_wake: Callable[[str], None],
        *,
        every_wake: bool = False,
        on_subscribed: Callable[[], None] = lambda: None,
    ) -> None:
        """Follow the cancel channel, this worker's own wake channel (lib/wake.lua wakes one idle
        worker on it) and, with `every_wake`, the wake channel of every process; reconnects on errors.

        Only a worker that claims one job at a time (a host with GPUs) needs `every_wake`: it never
        waits in the idle set, so a job that found no idle worker is announced to it there. A
        worker that takes batches is either idle (and woken alone) or looks by itself when a slot
        frees, so the broadcast would only wake it for nothing, once per submit and process.
        `on_subscribed` runs each time the channels are (re)subscribed: a wake-up published while
        the listener was away is lost, so the workers look once instead of waiting for their poll.
        """
        reconnects = Backoff.reconnect()
        while True:
            try:
                async with redis.pubsub() as pubsub:
                    channels = [keys.CANCEL_CHANNEL, keys.wake_worker(self.worker_id)]
                    await pubsub.subscribe(*channels, *([keys.WAKE_CHANNEL] if every_wake else []))
                    subscribed = False
                    async for message in pubsub.listen():
                        if message["type"] == "subscribe" and not subscribed:
                            # Counted as back only once Redis confirms: a SUBSCRIBE it refuses (an ACL
                            # user without the channels) is only known here, and reset when sent, the
                            # backoff tried again every 0.2 s for ever, each try waking the workers.
                            subscribed = True
                            reconnects.reset()
                            on_subscribed()
                        if message["type"] != "message":
                            continue
                        payload = message["data"].decode()
                        if message["channel"] == keys.CANCEL_CHANNEL.encode():
                            self.cancel_local(payload)
                        else:
                            on_wake(payload)
            except Exception as exc:  # redis-py's errors do not share one base with OSError
                delay = reconnects.next_delay()
                if refused_by_acl(exc):
                    # Mended on the Redis by its operator, not by trying again soon: said as an error,
                    # every ACL_RETRY seconds. Until then cancels reach this worker only by its checks.
                    delay = max(delay, ACL_RETRY)
                    log.error(
                        "pub/sub listener: Redis refuses taskd's user (%s); trying again in %.0f s",
                        exc,
                        delay,
                    )
                else:
                    log.warning("pub/sub listener lost Redis (%s); reconnecting in %.2f s", exc, delay)
                await asyncio.sleep(delay)
