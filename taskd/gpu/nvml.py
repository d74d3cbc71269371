"""GPU readings from NVML (the `nvidia-ml-py` package); an empty list where there is no NVIDIA driver."""

from __future__ import annotations

import ctypes
import logging
import sys
from functools import cache
from types import ModuleType

import attrs

log = logging.getLogger("taskd.gpu")


@attrs.frozen
class DeviceReading:
    """One device as NVML reports it now."""

    index: int
    name: str
    utilization: float
    memory_used: int
    memory_total: int
    # Degrees Celsius of the GPU die; None where the device or its driver gives no reading.
    temperature: float | None = None


# The library pynvml loads on Linux. Probed first so that a host without the NVIDIA driver does
# not import pynvml at all: its 8,000 lines of bindings cost the idle service 1.3-2 MiB.
_NVML_LIBRARY = "libnvidia-ml.so.1"


@cache
def _nvml() -> ModuleType | None:
    try:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(_NVML_LIBRARY)  # OSError where there is no driver, as pynvml would raise
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # no library, no driver or no device: the same answer for taskd
        log.info("NVML not available (%s); GPU queues run without device readings", exc)
        return None
    module: ModuleType = pynvml
    return module


def read_devices() -> list[DeviceReading]:
    """Every visible NVIDIA device with its utilisation and memory; [] without NVML."""
    nvml = _nvml()
    if nvml is None:
        return []
    readings = []
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            name = nvml.nvmlDeviceGetName(handle)
            temperature = _temperature(nvml, handle)
            readings.append(
                DeviceReading(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    utilization=float(rates.gpu),
                    memory_used=int(memory.used),
                    memory_total=int(memory.total),
                    temperature=temperature,
                )
            )
    except Exception as exc:  # a device can fall off the bus; report what was read
        log.warning("NVML reading failed: %s", exc)
    return readings


def _temperature(nvml: ModuleType, handle: object) -> float | None:
    # Some devices (and MIG instances) have no sensor NVML can read: no reading, not a failure.
    try:
        return float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
    except Exception:
        return None
