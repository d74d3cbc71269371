"""The GPU scheduler: per device a host-wide count of slots in Redis, held by running jobs.

A job of a GPU queue takes `slots` slots of one device (0 = the whole device) for its whole run.
Holders are recorded per host and device in Redis with the worker that holds them, so every
taskd process on the host shares one count, and a holder whose worker stopped beating (killed,
crashed) no longer counts: its slots come back without anyone releasing them.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence

import attrs
from redis.asyncio import Redis

from taskd import keys
from taskd.config import GpuConfig
from taskd.gpu.devices import GpuInventory
from taskd.model import now
from taskd.store import scripts

# Slots per declared need: one slot, or 0 (= the whole device).
_NEED_SLOTS: dict[str, int | None] = {"none": None, "slot": 1, "device": 0}
# A whole-device task's reservation lasts this long after its last try: workers try again at every
# poll (`worker.poll_delay`, 0.5 s) and when slots come back, so it lapses only for a task that
# stopped asking (cancelled, or started elsewhere).
RESERVATION_MS = 5000
# What a queued task that no device has room for shows as its current_step.
WAITING_STEP = "waiting_for_gpu"


@attrs.frozen
class Lease:
    """Slots of one device held by a task."""

    task_id: str
    device: int
    slots: int


@attrs.frozen
class DeviceUse:
    """Who holds slots of a device now: task id -> slots."""

    index: int
    capacity: int
    holders: dict[str, int]

    @property
    def used(self) -> int:
        """Slots held."""
        return sum(self.holders.values())


class GpuScheduler:
    """Hands out device slots to jobs of GPU queues; every taskd process on a host shares the count."""

    def __init__(
        self,
        redis: Redis,
        inventory: GpuInventory,
        worker_id: str,
        host: str | None = None,
        partition_clients: Sequence[Redis] | None = None,
    ) -> None:
        self.redis = redis
        # The clients of the partitions the task records are in (taskd.keys.partitions).
        self._partition_clients = keys.client_per_partition(redis, partition_clients)
        self.inventory = inventory
        self.config: GpuConfig = inventory.config
        self.worker_id = worker_id
        self.host = host or socket.gethostname()
        self._acquire = scripts.load(redis, "acquire", "taskd.gpu")
        self._waiting = scripts.load(redis, "waiting", "taskd.gpu")
        self._release = scripts.load(redis, "release", "taskd.gpu")

    def slots_for(self, task_type: str, queue: str, declared: str | None = None) -> int | None:
        """Slots a task takes (0 = whole device), or None when it needs no GPU.

        The config's `task_slots`, then its `task_needs`, then what the type `declared`, then its
        queue's `queue_slots`.
        """
        if task_type in self.config.task_slots:
            return self.config.task_slots[task_type]
        need = self.config.task_needs.get(task_type, declared)
        if need is not None:
            return _NEED_SLOTS[need]
        return self.config.queue_slots.get(queue)

    def device_key(self, index: int | str) -> str:
        """The hash of a device's holders on this host."""
        return keys.gpu_device(self.host, str(index))

    async def try_acquire(self, task_id: str, slots: int, score: int | None = None) -> Lease | None:
        """Take `slots` of the best device now, or None if none has room (or the host has no GPU).

        `score` is the task's place in the queues (its job's score in ms; None: now, behind every
        queued task): a device reserved for a whole-device task binds only the tasks behind it.
        """
        devices = self.inventory.read()
        if not devices:
            return None
        pairs: list[int] = []
        for device in devices:
            pairs += [device.index, max(0, device.memory_total - device.memory_used)]
        index = await self._acquire(
            {},
            {
                "worker_prefix": keys.worker(""),
                "device_prefix": self.device_key(""),
                "task_id": task_id,
                "worker_id": self.worker_id,
                "wanted": slots,
                "capacity": self.config.slots,
                "reserve_ms": RESERVATION_MS,
                "score": int(now() * 1000) if score is None else score,
                "devices": pairs,
            },
        )
        if index is None or int(index) < 0:
            return None
        return Lease(task_id, int(index), slots or self.config.slots)

    async def acquire(
        self, task_id: str, slots: int, waiting: Callable[[], object] | None = None
    ) -> Lease | None:
        """Wait until `slots` of a device are free and take them; None at once on a host without GPUs."""
        if not self.inventory.read():
            return None
        announced = False
        while (lease := await self.try_acquire(task_id, slots)) is None:
            if waiting is not None and not announced:
                announced = True
                result = waiting()
                if asyncio.iscoroutine(result):
                    await result
            await asyncio.sleep(self.config.wait_poll)
        return lease

    async def note_waiting(self, task_id: str) -> None:
        """Show on a still-queued task that it waits for a GPU slot (`current_step: waiting_for_gpu`)."""
        await self._waiting(
            {"task": keys.task(task_id)},
            {"step": WAITING_STEP},
            client=self._partition_clients[keys.task_partition(task_id)],
        )

    async def release(self, lease: Lease) -> None:
        """Give the slots back, unless another worker holds them for the same task now (release.lua)."""
        await self._release(
            {"device": self.device_key(lease.device)},
            {"task_id": lease.task_id, "holder": f"{self.worker_id}|{lease.slots}"},
        )

    async def usage(self) -> list[DeviceUse]:
        """Holders of every selected device on this host (live workers only)."""
        indexes = [device.index for device in self.inventory.read()]
        return await device_use(self.redis, self.host, indexes, self.config.slots)


async def device_use(redis: Redis, host: str, indexes: list[int], capacity: int) -> list[DeviceUse]:
    """Holders of the devices `indexes` of `host` (any host: the GPU view reads them all), live workers only."""
    async with redis.pipeline(transaction=False) as pipe:
        for index in indexes:
            pipe.hgetall(keys.gpu_device(host, str(index)))
        rows = await pipe.execute()
    holders = [
        (index, task.decode(), *value.decode().rsplit("|", 1))
        for index, row in zip(indexes, rows, strict=True)
        for task, value in row.items()
    ]
    async with redis.pipeline(transaction=False) as pipe:
        for _, _, worker, _ in holders:
            pipe.exists(keys.worker(worker))
        alive = await pipe.execute() if holders else []
    live: dict[int, dict[str, int]] = {index: {} for index in indexes}
    for (index, task, _, slots), is_alive in zip(holders, alive, strict=True):
        if is_alive:
            live[index][task] = int(slots)
    return [DeviceUse(index, capacity, live[index]) for index in indexes]
