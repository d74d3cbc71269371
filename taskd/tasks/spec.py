"""What a task type is, and what its handler gets: the interface between taskd and task code.

A handler is either a coroutine function, run in the worker's event loop (work that waits on the
network or supervises its own child process such as ffmpeg), or a plain function, run in a
supervised job process (work that burns CPU or GPU in Python). Either may be run more than once
for the same task (at-least-once): `attempt` tells which run this is.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

import attrs

from taskd.config import GPU_NEEDS, Config

# Re-exported: task modules import these from here (they live at the bottom floor, taskd.errors).
from taskd.errors import Cancelled as Cancelled
from taskd.errors import SoftTimeLimitExceeded as SoftTimeLimitExceeded
from taskd.errors import TaskError as TaskError
from taskd.errors import TransientError as TransientError

if TYPE_CHECKING:
    # Only for the coroutine side: a job process imports this module too, and aiohttp, redis-py and
    # the provider limits would add most of a second to each one's start.
    import aiohttp

    from taskd.net.guarded import GuardedClient
    from taskd.providers.limits import Gate, ProviderLimits
    from taskd.store.run_state import RunState

ProgressSink = Callable[[float, str | None], Awaitable[None]]


def _transient_types() -> tuple[type[BaseException], ...]:
    # Only a library that is loaded can have raised: a job process never loads aiohttp or redis-py.
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    if (aiohttp_module := sys.modules.get("aiohttp")) is not None:
        found += [aiohttp_module.ClientConnectionError, aiohttp_module.ServerTimeoutError]
    if (redis_errors := sys.modules.get("redis.exceptions")) is not None:
        found += [redis_errors.ConnectionError, redis_errors.TimeoutError]
    return tuple(found)


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: connection errors, timeouts, provider 429/5xx; never bad input or auth."""
    if isinstance(exc, TaskError):
        return exc.transient  # the handler (or provider client) knows best
    return isinstance(exc, _transient_types())


@attrs.define
class TaskContext:
    """Handed to a coroutine handler: who it runs for, shared clients, and a way to report progress."""

    task_id: str
    project_id: str
    attempt: int
    # The run at which a TransientError fails the task: this one plus the automatic retries left.
    # Runs taskd cut short (a stop's hand-back, a worker's death) count in `attempt`, not here.
    max_attempts: int
    config: Config
    # For the providers the operator configured, never for a URL a caller or a provider's answer
    # supplies: those go through `inputs`.
    http: aiohttp.ClientSession
    metadata: dict[str, Any]
    _sink: ProgressSink
    # The GPU this task holds (as CUDA_VISIBLE_DEVICES would name it), None without one.
    device: str | None = None
    # The worker's shared provider limits; None (a context made by hand): the providers are unlimited.
    provider_limits: ProviderLimits | None = None
    # What an earlier run of this task kept for this one, and where this one keeps what it was
    # answered (taskd.store.run_state); None (a context made by hand): nothing is kept.
    run_state: RunState | None = None
    _progress: float = attrs.field(default=0.0, init=False)
    # The last step reported, shown again once a wait for a provider slot is over.
    _step: str | None = attrs.field(default=None, init=False)

    @property
    def final_attempt(self) -> bool:
        """True when a TransientError now would fail the task instead of retrying it."""
        return self.attempt >= self.max_attempts

    @property
    def inputs(self) -> GuardedClient:
        """The client for URLs a caller or a provider's answer supplies (the SSRF guard); `http` is for
        the providers the operator configured."""
        from taskd.net.guarded import GuardedClient  # not at the top: see TYPE_CHECKING above

        return GuardedClient.from_config(self.config, self.http)

    async def progress(self, fraction: float, step: str | None = None) -> None:
        """Report progress 0..1 and the current step; progress never moves backwards."""
        self._progress = max(self._progress, min(1.0, max(0.0, fraction)))
        # None or "" keeps the step last named. Each report carries it, whole: reports made at once
        # (the handler's asyncio tasks) may be run by Redis out of order, and one found below the
        # recorded progress is dropped (progress.lua), so a later report that named no step would
        # leave the step of the one before the dropped one.
        self._step = step or self._step
        await self._sink(self._progress, self._step)

    def provider_gate(self, name: Literal["llm", "image", "speech", "video"]) -> Gate | None:
        """The shared limits of provider `name` ("llm", "image", "speech" or "video") for its client; None when
        it has none. While a request waits for a slot the task's `current_step` says so; the task's
        project waits for its turn among the projects waiting for the provider."""
        if self.provider_limits is None:
            return None
        provider = getattr(self.config.providers, name)
        waiting = functools.partial(self._waiting, name)
        return self.provider_limits.gate(
            name, provider.max_concurrency, provider.per_minute, project=self.project_id, waiting=waiting
        )

    async def _waiting(self, name: str, step: str | None) -> None:
        # The wait is shown, then the handler's own step again (one that names the call, if the
        # handler gave none yet: the stored step cannot be cleared).
        await self._sink(self._progress, step or self._step or f"calling_provider:{name}")


@attrs.define
class ProcessContext:
    """Handed to a plain-function handler in its job process; `progress` sends to the worker."""

    task_id: str
    project_id: str
    attempt: int
    # The run at which a TransientError fails the task: this one plus the automatic retries left.
    # Runs taskd cut short (a stop's hand-back, a worker's death) count in `attempt`, not here.
    max_attempts: int
    config: Config
    metadata: dict[str, Any]
    device: str | None
    _send: Callable[[float, str | None], None]
    _progress: float = attrs.field(default=0.0, init=False)
    _step: str | None = attrs.field(default=None, init=False)

    @property
    def final_attempt(self) -> bool:
        """True when a TransientError now would fail the task instead of retrying it."""
        return self.attempt >= self.max_attempts

    def progress(self, fraction: float, step: str | None = None) -> None:
        """Report progress 0..1 and the current step; progress never moves backwards."""
        self._progress = max(self._progress, min(1.0, max(0.0, fraction)))
        # Each report carries the step last named, as TaskContext's do: the handler's threads'
        # reports may reach the worker out of order, and one below the recorded progress is dropped.
        self._step = step or self._step
        self._send(self._progress, self._step)


Handler = Callable[[Any, Any], Awaitable[dict[str, Any]] | dict[str, Any]]


@attrs.frozen
class TaskType:
    """One kind of work: its input class, queue, limits and handler (None until one is installed)."""

    name: str
    input: type
    queue: str
    expected_duration: float
    handler: Handler | None = None
    soft_time_limit: float | None = None
    hard_time_limit: float | None = None
    # Stores its result in the media store: refused with 503 while the media disk is nearly full.
    stores_media: bool = False
    # What it needs from a GPU while it runs: "none" (ffmpeg on the CPU, a remote provider), "slot"
    # (one of a device's `gpu.slots`) or "device" (a whole device); None lets its queue decide
    # (`gpu.queue_slots`), as for task types written before types could say.
    gpu: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.in_(GPU_NEEDS))
    )
    # For a type whose result's size the caller decides (a small input may ask for a large result):
    # the bytes its result will hold as JSON, from its validated input (a $ref's value, known only
    # when it runs, is None there; an input that cannot be read so, a $ref in a field refusing None,
    # reserves execution.result_max_bytes instead). A submit reserves that much of its project's
    # storage budget, as a large result would take, and is refused (429) when it does not fit; the
    # task's end counts its real result instead (docs/production.md, "Memory a task takes"). None: the type's results
    # are bounded by taskd, not by its caller, and nothing is reserved.
    result_estimate: Callable[[Any], int] | None = None

    @property
    def runs_in_process(self) -> bool:
        """True for a plain-function handler, which runs in a supervised job process."""
        return self.handler is not None and not inspect.iscoroutinefunction(self.handler)
