"""The GPUs of every live worker host, with who holds their slots now: what health and the dashboard show."""

from __future__ import annotations

import attrs

from taskd.gpu.hosts import HostGpus, PublishedDevice, read_hosts
from taskd.gpu.scheduler import device_use
from taskd.http.context import Api


@attrs.frozen
class GpuRow:
    """One device of one host, and its slot holders now (task id -> slots; live workers only)."""

    host: HostGpus
    device: PublishedDevice
    holders: dict[str, int]

    @property
    def slots_used(self) -> int:
        """Slots held now."""
        return sum(self.holders.values())


async def gpu_rows(api: Api) -> list[GpuRow]:
    """Every device of every host that published within the heartbeat TTL, by host id, then index.

    The readings are those of the host's last heartbeat; the holders are read now, so a task shows
    on its device as soon as it holds a slot.
    """
    rows = []
    for host in await read_hosts(api.redis, api.config.worker.heartbeat_ttl):
        indexes = [device.index for device in host.devices]
        uses = await device_use(api.redis, host.host, indexes, api.config.gpu.slots)
        rows += [GpuRow(host, device, use.holders) for device, use in zip(host.devices, uses, strict=True)]
    return rows
