"""Calls made in the same turn of the event loop, sent to Redis together.

Under load, most of the API's CPU per submit was the round trip itself, not the script: a socket
write and read for each call, and redis-py's per-call machinery (a connection from the pool, its
lock, the retry wrapper). Calls queued while the loop is busy go out in one pipeline instead: one
write and one read for all of them. Each call is still its own command (a script's EVALSHA, a
read), so each stays atomic and gets its own reply or error; a caller's await returns once its
call ran in Redis, as before. `Coalesced` does this for one script's calls (the rate limit's
spends), `Reads` for single read commands (a status read's HGETALL). `Merged` goes one step further
for a script written to take many calls at once (submit.lua, finish.lua, position.lua): the calls
become one call of it, each still run on its own with its own reply or error, and what they share
is written once (one counter write for all, not one each) or read once (the queue's heads for
every position).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, OutOfMemoryError, ReadOnlyError, RedisError, ResponseError

from taskd import runtasks
from taskd.redis_conn import slot_elsewhere
from taskd.store.scripts import Script

# The most calls one pipeline carries: Valkey runs a pipeline's scripts one after another, so a
# bound keeps one send from holding it for long under thousands of concurrent requests (64 scripts
# of ~0.2 ms: ~13 ms). With 50 clients, 4 to 64 at once measured the same throughput; 64 the least CPU.
MOST_AT_ONCE = 64

# A call's own error inside a merged script comes back as its message: the errors a write in a script
# can meet get the classes redis-py gives them as replies (a full Redis's OOM answers 503, a replica's
# READONLY makes the client look for the new primary); any other is a ResponseError.
_ERRORS_BY_PREFIX: dict[str, type[ResponseError]] = {"OOM": OutOfMemoryError, "READONLY": ReadOnlyError}

Call = TypeVar("Call")
Reply = TypeVar("Reply")


class _Together(Generic[Call, Reply]):
    """The queue of calls waiting for the next send, and the sends; `_run` sends a list of calls."""

    def __init__(self) -> None:
        # The calls waiting for the next send; None when no send is scheduled.
        self._queued: list[tuple[Call, asyncio.Future[Reply]]] | None = None
        # The sends in flight, kept referenced until they end (the loop keeps only weak references).
        self._sending: set[asyncio.Task[None]] = set()

    async def _join(self, call: Call) -> Reply:
        # The call goes in the next send; its reply or its error comes back.
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        if self._queued is None:
            # The send starts at the loop's next turn: calls made before then join it. It carries
            # other callers' calls too: not part of the run of a task whose handler came first.
            self._queued = []
            task = asyncio.create_task(self._send(self._queued), context=runtasks.outside())
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        self._queued.append((call, future))
        if len(self._queued) >= MOST_AT_ONCE:
            self._queued = None
        return await future

    async def _send(self, calls: list[tuple[Call, asyncio.Future[Reply]]]) -> None:
        if calls is self._queued:
            self._queued = None
        try:
            replies = await self._run([call for call, _ in calls])
        except BaseException as exc:
            for _, future in calls:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_, future), reply in zip(calls, replies, strict=True):
            if future.done():  # its caller went away (a client that hung up)
                continue
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _run(self, calls: list[Call]) -> list[Any]:
        """Each call's reply, or the exception it got, in order."""
        raise NotImplementedError


class Coalesced(_Together[list[Any], Any]):
    """`script`, called as `await coalesced(keys, args)`: its reply."""

    def __init__(self, redis: Redis, script: Script) -> None:
        super().__init__()
        self._redis = redis
        self._script = script

    @property
    def script(self) -> Script:
        """The script every call runs."""
        return self._script

    async def __call__(self, keys: Mapping[str, Any], args: Mapping[str, Any]) -> Any:
        """Run the script with these keys and arguments, in the next send; its reply or its error."""
        return await self._join(self._script.arguments(keys, args))

    async def _run(self, calls: list[list[Any]]) -> list[Any]:
        replies = await self._pipeline(calls)
        unknown = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if unknown:
            # A Redis that restarted or flushed its scripts: load it once, send those calls again.
            await self._redis.script_load(self._script.registered.script)
            again = await self._pipeline([calls[index] for index in unknown])
            for index, reply in zip(unknown, again, strict=True):
                replies[index] = reply
        return replies

    async def _pipeline(self, calls: list[list[Any]]) -> list[Any]:
        sha = self._script.registered.sha
        count = len(self._script.header.keys)
        async with self._redis.pipeline(transaction=False) as pipe:
            for values in calls:
                pipe.execute_command("EVALSHA", sha, count, *values)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies


class Reads(_Together[tuple[Any, ...], Any]):
    """Read commands, called as `await reads("HGETALL", key)`: the reply a direct call gives (redis-py's
    reply conversion included), or its error."""

    def __init__(self, redis: Redis) -> None:
        super().__init__()
        self._redis = redis

    async def __call__(self, *command: Any) -> Any:
        """Send `command` in the next send; its reply or its error."""
        return await self._join(command)

    async def _run(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for command in calls:
                pipe.execute_command(*command)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies


class Merged(_Together[list[Any], tuple[Any, int | None]]):
    """`script` called once for the calls made at once, as `await merged(values)`: `(reply, replicated)`.

    The script's trailing ARGV (its header's `ARGV[n..]`) takes each call's `values` one after
    another, each call's values saying where they end; the keys and the other arguments are the
    same for every call, given here. Its reply is the list of the calls' replies, in order, where
    `['error', message]` is that call's own error (raised to that caller with the class redis-py
    gives such a reply). With `wait_replicas`, one WAIT follows the call, which covers every write
    before it on that connection: `replicated` is its count (None without).
    """

    def __init__(
        self,
        redis: Redis,
        script: Script,
        keys: Mapping[str, Any],
        args: Mapping[str, Any],
        wait_replicas: int = 0,
        wait_timeout_ms: int = 0,
    ) -> None:
        super().__init__()
        self._redis = redis
        self._script = script
        self._keys = keys
        self._args = args
        if script.header.rest is None:
            raise ValueError(f"{script.name}.lua takes no trailing ARGV[n..] to merge calls into")
        self._rest = script.header.rest
        self._wait = (wait_replicas, wait_timeout_ms) if wait_replicas else None

    @property
    def script(self) -> Script:
        """The script every call runs."""
        return self._script

    async def __call__(self, values: list[Any]) -> tuple[Any, int | None]:
        """Run the script with this call's values, in the next send; its reply or its error."""
        return await self._join(values)

    async def _run(self, calls: list[list[Any]]) -> list[Any]:
        values = [value for call in calls for value in call]
        arguments = self._script.arguments(self._keys, {**self._args, self._rest: values})
        sent = await self._evalsha(arguments)
        if isinstance(sent[0], NoScriptError):
            # A Redis that restarted or flushed its scripts: load it once, send the call again.
            await self._redis.script_load(self._script.registered.script)
            sent = await self._evalsha(arguments)
        replies = sent[0]
        if isinstance(replies, BaseException):
            raise replies
        replicated = None
        if self._wait is not None:
            if isinstance(sent[1], BaseException):
                raise sent[1]
            replicated = int(sent[1])
        return [
            _error(reply[1].decode(errors="replace"))
            if isinstance(reply, list) and reply and reply[0] == b"error"
            else (reply, replicated)
            for reply in replies
        ]

    async def _evalsha(self, arguments: list[Any]) -> list[Any]:
        count = len(self._script.header.keys)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.execute_command("EVALSHA", self._script.registered.sha, count, *arguments)
            if self._wait is not None:
                pipe.execute_command("WAIT", *self._wait)
            sent: list[Any] = await pipe.execute(raise_on_error=False)
        return sent


def _error(message: str) -> RedisError:
    if slot_elsewhere(message):
        # A key the call's script built is not on this node while the slot moves, or the cluster is
        # down: a lost connection, as the same reply to a whole command is (taskd.redis_conn), not a
        # fault of the call, so the API answers 503 and the loops try again.
        return RedisConnectionError(message)
    return _ERRORS_BY_PREFIX.get(message.split(" ", 1)[0], ResponseError)(message)
