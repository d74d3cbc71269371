"""Stopping background tasks reliably."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

ROUNDS = 20
ROUND_SECONDS = 0.25


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and wait for them to end, cancelling again while any is still running.

    One cancel is not always enough: a library awaiting inside a task (redis-py's connection
    code, asyncio.wait_for on Python 3.11) can swallow a CancelledError that lands at the wrong
    instant, and the task then simply goes on.
    """
    pending = [task for task in tasks if not task.done()]
    for _ in range(ROUNDS):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, still = await asyncio.wait(pending, timeout=ROUND_SECONDS)
        pending = list(still)
    await asyncio.gather(*tasks, return_exceptions=True)
