"""The durable outbox in Redis: which webhooks are due, who is sending them, and how each delivery went.

`{taskd}:webhooks:due` (one per partition, taskd.keys.webhooks_due) scores a task id with the ms
its next attempt is due. A sender claims due members by moving their score to a lease
(now + lease): no other process sends that attempt
while the lease runs, and if the sender dies the lease runs out and another one sends it. Only
the holder of the lease (the score it set) may record the attempt's outcome. The finish of a run
(taskd/store/lua/finish.lua) may queue its end's webhook already under such a lease, held by the
sender of the worker's own process (`WebhookSender.send_ended`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from redis.asyncio import Redis

from taskd import keys
from taskd.model import now
from taskd.store import scripts

LUA = "taskd.webhooks"  # the package whose lua/ folder holds the outbox's scripts
# How long past its next attempt's end a retried webhook's task record is kept at least: room for
# the attempt's outcome to be written and GET status to show it (record.lua).
KEEP_MARGIN_MS = 60_000


def now_ms() -> int:
    """Milliseconds on taskd's clock (taskd.model.now), the unit of the outbox's scores and times."""
    return int(now() * 1000)


_MS_FIELDS = ("last_attempt_at", "delivered_at", "failed_at", "next_attempt_at", "redelivered_at")


@attrs.frozen
class Claim:
    """A due webhook this process now holds the lease of, with its task's record as it was at the claim."""

    task_id: str
    lease: int
    # The task's record hash (empty when the task is gone), undecoded: a corrupt one fails only its own delivery.
    record: dict[bytes, bytes] = attrs.field(factory=dict)
    attempts: int = 0  # attempts the current delivery has made
    # For a `started` webhook, the run it reports (its attempt and start, epoch seconds), as the
    # start recorded them: the record may have gone back to `queued` since. None for the others.
    run: int | None = None
    run_started_at: float | None = None


@attrs.frozen
class Attempt:
    """How one POST went."""

    delivered: bool
    status: int | None = None
    error: str | None = None


@attrs.frozen
class DeliveryState:
    """What `GET status` shows under `webhook`; times are epoch seconds."""

    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    last_attempt_at: float | None = None
    delivered_at: float | None = None
    failed_at: float | None = None
    next_attempt_at: float | None = None

    @classmethod
    def from_redis(cls, fields: dict[bytes, bytes], due_ms: float | None) -> DeliveryState:
        """The state from its hash and the task's score in the due set (the next attempt until one was made)."""
        raw = {name.decode(): value.decode() for name, value in fields.items()}
        times = {name: int(raw[name]) / 1000 for name in _MS_FIELDS if name in raw}
        next_at = times.get("next_attempt_at")
        if next_at is None and due_ms is not None and "delivered_at" not in raw and "failed_at" not in raw:
            next_at = due_ms / 1000
        return cls(
            attempts=int(raw.get("attempts", 0)),
            last_status=int(raw["last_status"]) if "last_status" in raw else None,
            last_error=raw.get("last_error"),
            last_attempt_at=times.get("last_attempt_at"),
            delivered_at=times.get("delivered_at"),
            failed_at=times.get("failed_at"),
            next_attempt_at=next_at,
        )


class Outbox:
    """The Redis side of webhook delivery; every change is one Lua script."""

    def __init__(self, redis: Redis, ttl: int, partition_clients: Sequence[Redis] | None = None) -> None:
        self.redis = redis
        # One outbox per partition (taskd.keys.partitions), each with its partition's client.
        self.clients = keys.client_per_partition(redis, partition_clients)
        self._turn = 0
        self.ttl = ttl
        self._claim = scripts.load(redis, "claim", LUA)
        # Its record's event stream lives no longer than a taskd whose records live `ttl` lets it.
        self._record = scripts.load(redis, "record", LUA, events_ttl=keys.events_ttl(ttl))
        self._release = scripts.load(redis, "release", LUA)
        self._redeliver = scripts.load(redis, "redeliver", LUA)

    async def claim(self, now_ms: int, lease_ms: int, limit: int) -> tuple[list[Claim], int | None]:
        """Lease up to `limit` due webhooks, each with its record and attempt count, and say when the
        earliest one left in the outbox (a lease counts) is due, in ms: one round trip a partition,
        starting at the next partition each time."""
        lease = now_ms + lease_ms
        claims: list[Claim] = []
        firsts: list[int] = []
        self._turn = (self._turn + 1) % len(self.clients)
        for step in range(len(self.clients)):
            partition = (self._turn + step) % len(self.clients)
            ids, first, records, states = await self._claim(
                {"due": keys.webhooks_due(partition)},
                {"now": now_ms, "lease_until": lease, "most": max(0, limit - len(claims))},
                client=self.clients[partition],
            )
            claims += [
                Claim(
                    raw.decode(),
                    lease,
                    dict(zip(flat[::2], flat[1::2], strict=True)),
                    int(count or 0),
                    int(run) if run else None,
                    float(run_started_at) if run_started_at else None,
                )
                for raw, flat, (count, run, run_started_at) in zip(ids, records, states, strict=True)
            ]
            if first:
                firsts.append(int(float(first)))
        return claims, min(firsts, default=None)

    async def record(
        self,
        claim: Claim,
        attempt: int,
        outcome: Attempt,
        now_ms: int,
        next_ms: int | None,
        attempt_ms: int = 0,
    ) -> bool:
        """Write an attempt's outcome: delivered, retry at `next_ms`, or failed for good; False if the
        lease was lost. A retry keeps the task's record until that attempt, taking `attempt_ms`, is
        over (record.lua)."""
        if outcome.delivered:
            result = "delivered"
        elif next_ms is not None:
            result = "retry"
        else:
            result = "failed"
        args: dict[str, Any] = {
            "task_id": claim.task_id,
            "lease": claim.lease,
            "now": now_ms,
            "attempt": attempt,
            "outcome": result,
            "status": "" if outcome.status is None else outcome.status,
            "error": outcome.error or "",
            "next_due": "" if next_ms is None else next_ms,
            "ttl": self.ttl,
            "keep_until": "" if next_ms is None else next_ms + attempt_ms + KEEP_MARGIN_MS,
        }
        partition = _partition(claim.task_id)
        written = await self._record(
            {
                "due": keys.webhooks_due(partition),
                "state": keys.webhook(claim.task_id),
                "metrics": keys.metrics(partition),
            },
            args,
            client=self.clients[partition],
        )
        return bool(written)

    async def release(self, claim: Claim, due_ms: int | None) -> None:
        """Give a lease back: due again at `due_ms`, or dropped from the outbox when None."""
        partition = _partition(claim.task_id)
        await self._release(
            {"due": keys.webhooks_due(partition)},
            {"task_id": claim.task_id, "lease": claim.lease, "due_at": "" if due_ms is None else due_ms},
            client=self.clients[partition],
        )

    async def redeliver(self, task_id: str, now_ms: int) -> None:
        """Start a fresh delivery now (the attempt count restarts) and wake every sender."""
        partition = _partition(task_id)
        await self._redeliver(
            {"due": keys.webhooks_due(partition), "state": keys.webhook(task_id)},
            {"task_id": task_id, "now": now_ms, "ttl": self.ttl, "wake": keys.WEBHOOKS_WAKE},
            client=self.clients[partition],
        )


def _partition(member: str) -> int:
    # An outbox member is a task id, or `<task id>:<event>` (taskd.keys.webhook_member).
    return keys.task_partition(member.partition(":")[0])


async def delivery_state(partition_clients: Sequence[Redis], task_id: str) -> DeliveryState:
    """The delivery state of a task's webhook, in one round trip (to its partition)."""
    partition = _partition(task_id)
    async with partition_clients[partition].pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.webhook(task_id))
        pipe.zscore(keys.webhooks_due(partition), task_id)
        fields, due = await pipe.execute()
    return DeliveryState.from_redis(fields, due)
