"""Which GPUs this host has: NVML readings, or simulated devices, filtered by `gpu.devices`."""

from __future__ import annotations

import logging
from typing import Protocol

from taskd.config import GpuConfig
from taskd.gpu.nvml import DeviceReading, read_devices

log = logging.getLogger("taskd.gpu")

SIMULATED_MEMORY = 16 * 1024**3


class DeviceBackend(Protocol):
    """Where device readings come from."""

    def read(self) -> list[DeviceReading]:
        """Every device with its utilisation and memory now."""
        ...


class NvmlBackend:
    """The NVIDIA driver, through `nvidia-ml-py`."""

    def read(self) -> list[DeviceReading]:
        """NVML's readings; [] without a driver or device."""
        return read_devices()


class SimulatedBackend:
    """`count` idle devices of 16 GiB: GPU scheduling on machines without a GPU (tests, demos)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def read(self) -> list[DeviceReading]:
        """The simulated devices, always idle."""
        return [DeviceReading(i, f"Simulated GPU {i}", 0.0, 0, SIMULATED_MEMORY) for i in range(self.count)]


def select(readings: list[DeviceReading], selection: str) -> list[DeviceReading]:
    """The devices `gpu.devices` names among `readings` ("auto", "none", "count:N", "index:0,2")."""
    if selection == "none":
        return []
    if selection.startswith("count:"):
        return readings[: int(selection.removeprefix("count:"))]
    if selection.startswith("index:"):
        wanted = {int(i) for i in selection.removeprefix("index:").split(",") if i}
        return [reading for reading in readings if reading.index in wanted]
    return readings


class GpuInventory:
    """The devices taskd schedules on this host, read fresh on each call."""

    def __init__(self, config: GpuConfig, backend: DeviceBackend | None = None) -> None:
        self.config = config
        self.backend = backend or (SimulatedBackend(config.simulate) if config.simulate else NvmlBackend())

    def read(self) -> list[DeviceReading]:
        """The selected devices now."""
        return select(self.backend.read(), self.config.devices)
