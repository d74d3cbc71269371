"""Every worker host's GPUs in Redis: published with each heartbeat, read by any API node.

A worker process writes its host's report (`{taskd}:gpu_host:{host}`, expiring after the heartbeat
TTL) and the time of that beat in `{taskd}:gpu_hosts`. Processes of one host write the same report
(the slot counts are host-wide), so the last one wins. A host that stops beating drops out when its
report expires, and its devices' holders (`{taskd}:gpu:{host}:{index}`) with it; nobody has to remove them.
"""

from __future__ import annotations

import logging

import attrs
import cattrs
import orjson
from redis.asyncio import Redis

from taskd import keys
from taskd.gpu.scheduler import GpuScheduler
from taskd.heartbeat import beating_within
from taskd.model import now

log = logging.getLogger("taskd.gpu")

_CONVERTER = cattrs.Converter(forbid_extra_keys=False)


@attrs.frozen
class PublishedDevice:
    """One device of a host as its last heartbeat saw it."""

    index: int
    name: str
    utilization: float
    memory_used: int
    memory_total: int
    temperature: float | None
    slots: int
    slots_used: int


@attrs.frozen
class HostGpus:
    """A worker host's devices (by index) and when its last heartbeat published them (epoch seconds)."""

    host: str
    heartbeat_at: float
    devices: list[PublishedDevice]


class HostPublisher:
    """Writes this host's GPU report; called after every heartbeat of a worker process."""

    def __init__(self, redis: Redis, scheduler: GpuScheduler, ttl: float) -> None:
        self.redis = redis
        self.scheduler = scheduler
        self.ttl = ttl

    async def report(self) -> HostGpus:
        """This host's devices and slots in use now."""
        readings = self.scheduler.inventory.read()
        uses = {use.index: use for use in await self.scheduler.usage()}
        devices = [
            PublishedDevice(
                index=reading.index,
                name=reading.name,
                utilization=reading.utilization,
                memory_used=reading.memory_used,
                memory_total=reading.memory_total,
                temperature=reading.temperature,
                slots=self.scheduler.config.slots,
                slots_used=uses[reading.index].used if reading.index in uses else 0,
            )
            for reading in readings
        ]
        return HostGpus(self.scheduler.host, now(), sorted(devices, key=lambda d: d.index))

    async def publish(self) -> None:
        """Write the report, expiring after the heartbeat TTL (a host without GPUs: an empty list).

        The holders of the host's devices expire with it too: only an acquire on the same host drops
        a dead worker's holders, so the hashes of a host that never comes back (a killed container,
        a host id that changed) were kept for ever. While the host beats they are renewed here; a
        holder outlives its worker's liveness key anyway (this runs after the beat), and a holder
        whose worker's key is gone counts for nothing (acquire.lua)."""
        report = await self.report()
        ttl_ms = int(self.ttl * 1000)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.gpu_host(report.host), orjson.dumps(attrs.asdict(report)), px=ttl_ms)
            pipe.zadd(keys.GPU_HOSTS, {report.host: int(report.heartbeat_at * 1000)})
            for device in report.devices:
                pipe.pexpire(keys.gpu_device(report.host, str(device.index)), ttl_ms)
            await pipe.execute()


async def read_hosts(redis: Redis, ttl: float) -> list[HostGpus]:
    """Every host that published within `ttl`, by host id, each with its devices by index."""
    members = await beating_within(redis, keys.GPU_HOSTS, ttl)
    if not members:
        return []
    hosts = sorted(member.decode() for member in members)
    reports = []
    for host, raw in zip(hosts, await redis.mget([keys.gpu_host(host) for host in hosts]), strict=True):
        if raw is None:  # expired between the two reads: gone
            continue
        try:
            reports.append(_CONVERTER.structure(orjson.loads(raw), HostGpus))
        except (ValueError, cattrs.BaseValidationError) as exc:  # a report of another version
            log.warning("unreadable GPU report of host %s: %s", host, exc)
    return reports
