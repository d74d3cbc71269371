"""The answering node's CPU use for `GET /api/v1/health` (`system_load.cpu_percent`), sampled in the
background over a fixed window.

psutil's `cpu_percent(interval=None)` measures from its previous call, whoever made it: read by each
health request, one caller polling every few milliseconds left every other caller a window of a
few milliseconds, read as 0.0 (or 100.0) on a busy machine, and a caller polling once an hour got
the hour's mean. Sampled here every `SAMPLE_S`, every request reads the same figure: the CPU of the
last window.
"""

from __future__ import annotations

import psutil

from taskd.loops import every

# The window of one reading; a read of /proc/stat each, nothing on Redis.
SAMPLE_S = 2.0


class CpuLoad:
    """The node's CPU use (percent, all cores) over the last `SAMPLE_S`; 0.0 until the first window ends."""

    def __init__(self) -> None:
        self.percent = 0.0
        psutil.cpu_percent(interval=None)  # the first reading only starts the window

    async def _sample(self) -> None:
        self.percent = psutil.cpu_percent(interval=None)

    async def run(self) -> None:
        """Sample at the end of each window, until cancelled."""
        await every(SAMPLE_S, self._sample, name="cpu-load", wait_first=True)
