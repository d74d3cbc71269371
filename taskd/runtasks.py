"""The asyncio tasks a coroutine handler starts, kept so that none of them outlives its run.

A coroutine handler may start tasks of its own: an `asyncio.TaskGroup`, `gather`, `create_task`.
A run that ends (completed, failed, at a time limit, cancelled) while some of them still run
left them running in the worker's event loop after its task had ended: storing media, calling
providers, reporting progress for a task already failed. The one case asyncio handles itself,
a TaskGroup, aborts its children only on a CancelledError, and the soft time limit is delivered
as `SoftTimeLimitExceeded` instead.

Python 3.11 has no `Task.get_context()`, so a task cannot be asked which run made it. Instead each
run's handler task sets a context variable to its `RunTasks` in its own context, which every task
created from it inherits (a copy of its creator's context), and a task factory on the loop adds
each task created in such a context to that run's set. Tasks made outside any run pay one
context-variable read in the factory.

A task that serves every run, started lazily by whichever caller comes first (the store's batched
sends), is made in `outside()`, or the end of that caller's run would cancel the others' calls.
The libraries taskd shares between runs start such tasks of their own (aiohttp's lookup of a host
name, shared by every request to it meanwhile, is shielded from its first caller's cancel), so a
task one of them makes is never a run's: it ends with the caller that awaits it. What made a task
is its creator's frame, not its coroutine's module: a task the handler makes itself of a library's
coroutine (`asyncio.create_task(response.read())`, `gather(redis.get(a), redis.get(b))`) is the
handler's work, and its run's.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Callable, Coroutine, Generator
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")

_RUN: contextvars.ContextVar[RunTasks | None] = contextvars.ContextVar("taskd_run_tasks", default=None)
# The libraries whose tasks may serve several runs at once (module name prefixes).
_SHARED_LIBRARIES = ("aiohttp.", "aiohappyeyeballs.", "aiodns.", "redis.")
# Between a task's maker and the task factory: asyncio's create_task, ensure_future, gather, wait_for.
_PASSED_THROUGH = ("asyncio.", __name__)


class RunTasks:
    """The tasks one coroutine run has made and that have not ended yet."""

    def __init__(self) -> None:
        self._pending: set[asyncio.Task[Any]] = set()

    def enter(self) -> None:
        """From now on every task made in the current context (a task's own: each task runs in a
        copy) belongs to this run, and so does every task those make."""
        _RUN.set(self)

    def add(self, task: asyncio.Task[Any]) -> None:
        """Count `task` as this run's until it ends."""
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def __contains__(self, task: object) -> bool:
        return task in self._pending

    @property
    def pending(self) -> list[asyncio.Task[Any]]:
        """The run's tasks that have not ended."""
        return [task for task in self._pending if not task.done()]

    async def stop(self, timeout: float) -> list[asyncio.Task[Any]]:
        """Cancel every task of the run and wait up to `timeout` seconds for them to end (their
        `finally` blocks run meanwhile); the ones still running then are returned: they caught
        their cancellation and went on, and nothing more can be done about them here."""
        pending = self.pending
        if not pending:
            return []
        for task in pending:
            task.cancel()
        _, still = await asyncio.wait(pending, timeout=timeout)
        # Retrieved, so that an exception one of them ended with is not logged as never retrieved:
        # its run's outcome is already decided.
        for task in pending:
            if task.done() and not task.cancelled():
                task.exception()
        return list(still)


def outside() -> contextvars.Context:
    """A copy of the current context in which the tasks made belong to no run."""
    context = contextvars.copy_context()
    context.run(_RUN.set, None)
    return context


def detached(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task for `coro` that is no run's, for work a run begins that must reach its end whenever
    the run ends: a provider's job cancelled once its create answers, a slot given back, a copy in
    a thread. Shielded, such work outlives its caller's cancel, and the end of a run that gave up
    on its handler (execution.cancel_grace) would cancel it were it the run's."""
    return asyncio.get_running_loop().create_task(coro, context=outside())


_Factory = Callable[..., "asyncio.Future[Any]"]


def _task_factory(previous: _Factory | None) -> _Factory:
    def factory(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
        context: contextvars.Context | None = None,
    ) -> asyncio.Future[Any]:
        task: asyncio.Future[Any]
        if previous is not None:
            task = previous(loop, coro) if context is None else previous(loop, coro, context=context)
        else:
            task = asyncio.Task(coro, loop=loop, context=context)
        run = _RUN.get() if context is None else context.get(_RUN)
        if run is not None and isinstance(task, asyncio.Task) and not _made_by_a_shared_library():
            run.add(task)
        return task

    factory.taskd_run_tasks = True  # type: ignore[attr-defined]
    return factory


def _made_by_a_shared_library() -> bool:
    """True when the code that asked for the task being made (past asyncio's own functions) is a
    library taskd shares between runs (_SHARED_LIBRARIES).

    Asked of the creator, not of the task's coroutine: a handler's own task of a library coroutine
    (a response's read, a Redis call) was taken for the library's, and outlived its run.
    """
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith(_PASSED_THROUGH):
        frame = frame.f_back
    return frame is not None and str(frame.f_globals.get("__name__", "")).startswith(_SHARED_LIBRARIES)


def watch(loop: asyncio.AbstractEventLoop) -> None:
    """Make `loop` count the tasks made inside a run as that run's (once per loop; a task factory
    already set, an embedding program's, still makes the tasks)."""
    previous = loop.get_task_factory()
    if not getattr(previous, "taskd_run_tasks", False):
        loop.set_task_factory(_task_factory(previous))
