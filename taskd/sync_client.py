"""`SyncTaskClient`: the Python client for code without an event loop; the async `TaskClient` underneath.

    with SyncTaskClient("http://127.0.0.1:8001", api_key) as client:
        submitted = client.submit("detective_series_001", "test_prompt", {"prompt_template": "Hi"})
        task = client.wait(submitted.task_id, on_event=print)
        print(task.result)

Every method of `TaskClient` is here, blocking, with the same arguments, results and errors. The
async client runs on a private event loop in a thread of this client's own, rather than on a
second HTTP library: the base install stays aiohttp alone, both clients share one implementation
of the event stream, the retries and the typed results, and a blocking call works in a program
that already runs a loop (a notebook, a sync handler inside an async framework), as the caller's
loop is never touched. Callbacks (`wait`'s `on_event`) and iterated events run in the caller's
thread, not the client's.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import queue
import selectors
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import CancelledError, Future
from typing import Any, Concatenate, Literal, ParamSpec, Self, TypeVar, overload

from taskd.client import DEFAULT_URL, MAX_RESPONSE_BYTES, StreamGap, Task, TaskClient, TaskEvent

_P = ParamSpec("_P")
_R = TypeVar("_R")
_Item = TypeVar("_Item")
# Put after the last event: the coroutine that produced them has returned or raised.
_END = object()
# Events read from the stream and not yet taken by the caller's thread: past this, the client's
# loop waits for the caller (the stream is read no faster), so memory stays bounded and a wait's
# timeout is late by at most this many of the caller's callbacks.
_ROOM = 16


class _HandOver:
    """Events from the client's loop to the caller's thread, at most _ROOM of them waiting."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._room = asyncio.Semaphore(_ROOM)

    async def put(self, item: Any) -> None:
        """On the client's loop: wait until the caller has taken enough, then hand `item` over."""
        await self._room.acquire()
        self._items.put(item)

    def end(self, _: object = None) -> None:
        """From any thread (a future's done callback): nothing comes after this."""
        self._items.put(_END)

    def get(self) -> Any:
        """In the caller's thread: the next item, or _END."""
        item = self._items.get()
        if item is not _END:
            try:
                self._loop.call_soon_threadsafe(self._room.release)
            except RuntimeError:
                # The loop is closed: the client was, and what it ran cancelled. Nothing more is
                # handed over (the caller's call raises that), rather than "Event loop is closed".
                return _END
        return item


def _blocking(
    method: Callable[Concatenate[TaskClient, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[SyncTaskClient, _P], _R]:
    """A TaskClient coroutine method as a blocking method of SyncTaskClient (same signature and doc)."""

    def call(self: SyncTaskClient, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return self._run(method(self.client, *args, **kwargs))

    # Its name and docstring (help(), IDEs); the returned wrapper's own type is too vague for mypy.
    functools.update_wrapper(call, method)
    return call


# Every SyncTaskClient of this process, made new in a child after os.fork(); and in a child, what
# they were in the parent (kept, see SyncTaskClient._after_fork).
_CLIENTS: weakref.WeakSet[SyncTaskClient] = weakref.WeakSet()
_INHERITED: list[tuple[TaskClient, asyncio.AbstractEventLoop, selectors.BaseSelector]] = []


def _after_fork() -> None:
    for client in list(_CLIENTS):
        client._after_fork()


# POSIX only: Windows has neither fork nor os.register_at_fork, whose absence made this module
# fail to import there (the base install, client included, is for Windows too).
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The client's thread: its loop, closed once stopped (by `_shut_down`, from whichever thread)."""
    try:
        loop.run_forever()
    finally:
        loop.close()


def _shut_down(
    client: TaskClient, loop: asyncio.AbstractEventLoop, thread: threading.Thread, *, calls: bool = False
) -> None:
    """Close `client`'s session on `loop`, then stop the loop and end its `thread`; with `calls`,
    cancel first what the loop still runs for other threads (their waits, events() loops, calls)."""
    if threading.current_thread() is thread:
        # Collected on its own thread (the collector runs in whichever thread it is triggered),
        # which cannot wait for itself: the loop closes the session, then stops.
        async def close_and_stop() -> None:
            try:
                await client.close()
            finally:
                loop.stop()

        loop.call_soon(loop.create_task, close_and_stop())
        return

    async def close() -> None:
        if calls and (running := asyncio.all_tasks() - {asyncio.current_task()}):
            for call in running:
                call.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        await client.close()

    try:
        asyncio.run_coroutine_threadsafe(close(), loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


class SyncTaskClient:
    """A blocking client of one taskd server; use `with` (or call `close`). Arguments as TaskClient's."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str = "",
        *,
        timeout: float = 60.0,
        retries: int = 3,
        max_retry_wait: float = 60.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self._settings: dict[str, Any] = {
            "timeout": timeout,
            "retries": retries,
            "max_retry_wait": max_retry_wait,
            "max_response_bytes": max_response_bytes,
        }
        self._url, self._api_key = url, api_key
        self._open()
        _CLIENTS.add(self)

    def _open(self) -> None:
        """The TaskClient, and the event loop and thread it runs on."""
        self.client = TaskClient(self._url, self._api_key, **self._settings)
        # Its selector held here, for _after_fork.
        self._selector = selectors.DefaultSelector()
        self._loop = asyncio.SelectorEventLoop(self._selector)
        # A daemon thread: a program that forgets `close` still exits.
        self._thread = threading.Thread(target=_serve, args=(self._loop,), name="taskd-client", daemon=True)
        self._thread.start()
        # `close`, and for a client nobody closed, its collection or the interpreter's exit: else
        # aiohttp printed "Unclosed client session" and "Unclosed connector" at the exit of a program
        # that never called `close`, and each client collected unclosed left its thread running.
        self._closer = weakref.finalize(self, _shut_down, self.client, self._loop, self._thread)

    def _after_fork(self) -> None:
        """In a child process forked from the one that made this client: a loop, thread and session
        of its own (the parent's loop has no thread here: a call waited for it forever).

        What the child holds of the parent's loop is cut off from the parent first. Its epoll is
        one kernel object with the parent's: the child's copies of the parent's connections, closed
        when the child collects them (at its exit), took the parent's pooled sockets out of it, and
        the parent's next request on one never saw its answer (a TaskdConnectionError after
        `timeout`). The child's descriptor of it now names an epoll of the child's own; the
        parent's objects are kept, never used, so that they are not collected before the child ends.
        """
        if self._loop.is_closed():
            return
        # The parent's thread is not here to shut its loop down: left alone at the child's exit.
        self._closer.detach()
        if (fileno := getattr(self._selector, "fileno", None)) is not None:
            own = type(self._selector)()
            os.dup2(own.fileno(), fileno(), inheritable=False)
            own.close()
        _INHERITED.append((self.client, self._loop, self._selector))
        self._open()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP session and stop the client's thread; the client cannot be used after. A
        call another thread is making on it (a wait, an events() loop) raises RuntimeError."""
        # Detached, not called, so that one close among threads closing at once does it. What runs
        # for other threads is cancelled here, not in the finalizer: left pending, its future never
        # ended and the thread waited forever; but at the interpreter's exit a daemon thread in a
        # wait is left as it is, rather than woken to print a traceback.
        if self._closer.detach() is not None:
            _shut_down(self.client, self._loop, self._thread, calls=True)

    def _start(self, coroutine: Coroutine[Any, Any, _R]) -> Future[_R]:
        if self._loop.is_closed():
            coroutine.close()
            raise RuntimeError("this SyncTaskClient is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def _result(self, future: Future[_R]) -> _R:
        """`future`'s result; RuntimeError where another thread closed the client while it ran
        (closing cancels what the client's loop still runs)."""
        try:
            return future.result()
        except CancelledError:
            if self._closer.alive:
                raise
            raise RuntimeError("this SyncTaskClient was closed while the call ran") from None

    def _run(self, coroutine: Coroutine[Any, Any, _R]) -> _R:
        future = self._start(coroutine)
        try:
            return self._result(future)
        finally:
            # After Ctrl-C in the caller, the request stops too.
            future.cancel()

    submit = _blocking(TaskClient.submit)
    submit_batch = _blocking(TaskClient.submit_batch)
    status = _blocking(TaskClient.status)
    cancel = _blocking(TaskClient.cancel)
    retry = _blocking(TaskClient.retry)
    list_tasks = _blocking(TaskClient.list_tasks)
    health = _blocking(TaskClient.health)
    queue_health = _blocking(TaskClient.queue_health)
    metrics = _blocking(TaskClient.metrics)

    def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,
        on_event: Callable[[TaskEvent], Any] | None = None,
        poll_interval: float = 1.0,
        raise_on_failure: bool = True,
    ) -> Task:
        """Follow a task until it ends and return its final status (as TaskClient.wait).

        `on_event` is called in this thread with each TaskEvent; an exception it raises stops the
        wait and is raised here. It is a plain function: one that returns an awaitable (an `async
        def`, which TaskClient.wait awaits) raises TypeError, as nothing here could await it.
        """
        events = _HandOver(self._loop)
        future = self._start(
            self.client.wait(
                task_id,
                timeout=timeout,
                on_event=events.put if on_event is not None else None,
                poll_interval=poll_interval,
                raise_on_failure=raise_on_failure,
            )
        )
        future.add_done_callback(events.end)
        try:
            while (event := events.get()) is not _END:
                if on_event is not None and inspect.isawaitable(outcome := on_event(event)):
                    # Else its body never ran, and the wait went on as if it had (a RuntimeWarning
                    # "never awaited" at most).
                    if inspect.iscoroutine(outcome):
                        outcome.close()
                    raise TypeError(
                        "SyncTaskClient.wait's on_event returned an awaitable (an async def?); "
                        "it is called in the caller's thread, where nothing awaits it: pass a plain function"
                    )
            return self._result(future)
        finally:
            future.cancel()

    @overload
    def events(
        self, task_id: str, *, last_event_id: str | None = None, gaps: Literal[False] = False
    ) -> Iterator[TaskEvent]: ...
    @overload
    def events(
        self, task_id: str, *, last_event_id: str | None = None, gaps: Literal[True]
    ) -> Iterator[TaskEvent | StreamGap]: ...
    @overload
    def events(
        self, task_id: str, *, last_event_id: str | None = None, gaps: bool = False
    ) -> Iterator[TaskEvent | StreamGap]: ...
    def events(
        self, task_id: str, *, last_event_id: str | None = None, gaps: bool = False
    ) -> Iterator[TaskEvent | StreamGap]:
        """A task's events as they happen (from the first, or after `last_event_id`); ends after the last.
        A `gap` is skipped, or yielded as a StreamGap with `gaps=True` (TaskClient.events)."""
        return self._iterate(self.client.events(task_id, last_event_id=last_event_id, gaps=gaps))

    @overload
    def project_events(
        self, project_id: str, *, last_event_id: str | None = None, gaps: Literal[False] = False
    ) -> Iterator[TaskEvent]: ...
    @overload
    def project_events(
        self, project_id: str, *, last_event_id: str | None = None, gaps: Literal[True]
    ) -> Iterator[TaskEvent | StreamGap]: ...
    @overload
    def project_events(
        self, project_id: str, *, last_event_id: str | None = None, gaps: bool = False
    ) -> Iterator[TaskEvent | StreamGap]: ...
    def project_events(
        self, project_id: str, *, last_event_id: str | None = None, gaps: bool = False
    ) -> Iterator[TaskEvent | StreamGap]:
        """Events of every task of a project from now (or after `last_event_id`); never ends by itself.
        A `gap` raises EventsLost, or is yielded as a StreamGap with `gaps=True`
        (TaskClient.project_events)."""
        return self._iterate(self.client.project_events(project_id, last_event_id=last_event_id, gaps=gaps))

    def _iterate(self, source: AsyncIterator[_Item]) -> Iterator[_Item]:
        """Yield what `source` yields on the client's loop; leaving the loop early closes the stream."""
        events = _HandOver(self._loop)

        async def pump() -> None:
            async for event in source:
                await events.put(event)

        future = self._start(pump())
        future.add_done_callback(events.end)
        try:
            while (event := events.get()) is not _END:
                yield event
            self._result(future)
        finally:
            future.cancel()
