"""Stopping background tasks reliably."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")

ROUNDS = 20
ROUND_SECONDS = 0.25


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and wait for them to end, cancelling again while any is still running.

    One cancel is not always enough: a library awaiting inside a task (redis-py's connection
    code, asyncio.wait_for on Python 3.11) can swallow a CancelledError that lands at the wrong
    instant, and the task then simply goes on.
    """
    tasks = list(tasks)
    await cancel_within_rounds(tasks)
    await asyncio.gather(*tasks, return_exceptions=True)


async def cancel_within_rounds(tasks: Iterable[asyncio.Task[Any]]) -> list[asyncio.Task[Any]]:
    """Cancel `tasks` as `cancel_and_wait` does, for its rounds only; those still running then (each
    swallowed every cancel) are returned, not waited for."""
    pending = [task for task in tasks if not task.done()]
    for _ in range(ROUNDS):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, still = await asyncio.wait(pending, timeout=ROUND_SECONDS)
        pending = list(still)
    return pending


async def outlast(future: asyncio.Future[T]) -> T:
    """`future`'s result, waited for to its end even when the caller is cancelled (or interrupted by
    a time limit) meanwhile; that interruption is raised once `future` is done.

    For work in a thread, which no cancel can stop: a caller that returned early would let it go on
    (a copy into the media store, a tree being removed) after the task reported its end.
    """
    interruption: BaseException | None = None
    while not future.done():
        try:
            await asyncio.shield(future)
        except BaseException as exc:
            own = future.done() and not future.cancelled() and future.exception() is exc
            # A cancel outranks what came before it (a soft time limit, then the hard one).
            if not own and (interruption is None or isinstance(exc, asyncio.CancelledError)):
                interruption = exc
    if interruption is not None:
        raise interruption
    return future.result()
