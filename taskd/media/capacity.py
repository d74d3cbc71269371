"""Free space on the media filesystem: media tasks are refused, and files not stored, when it runs low."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from taskd.config import Config
from taskd.media.store import media_dir

log = logging.getLogger("taskd.media")

CACHE_SECONDS = 1.0
RETRY_AFTER = 300  # seconds a refused client waits: space comes back by a sweep or an operator
REFUSED = "Media storage is nearly full; media tasks are not accepted until space is freed"


@attrs.frozen
class Threshold:
    """The least free space the media filesystem must keep: bytes and a share of its size (0: off)."""

    min_free_bytes: int
    min_free_ratio: float

    @classmethod
    def from_config(cls, config: Config) -> Threshold:
        """The thresholds `media.min_free_bytes` and `media.min_free_ratio`."""
        return cls(config.media.min_free_bytes, config.media.min_free_ratio)

    def required(self, total: int) -> int:
        """Bytes that must stay free on a filesystem of `total` bytes."""
        return max(self.min_free_bytes, int(self.min_free_ratio * total))


@attrs.frozen
class Usage:
    """Size and free space of a filesystem, in bytes."""

    total: int
    free: int


def disk_usage(path: Path) -> Usage:
    """The filesystem holding `path`, or its nearest existing parent (the media dir is made lazily)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            usage = shutil.disk_usage(candidate)
            return Usage(usage.total, usage.free)
    raise FileNotFoundError(path)


def shortfall(usage: Usage, threshold: Threshold, incoming: int = 0) -> int:
    """How many bytes short of the threshold the filesystem would be after writing `incoming` (0: none)."""
    return max(0, threshold.required(usage.total) - (usage.free - incoming))


class MediaCapacity:
    """Answers "is there room for media?" from a reading at most CACHE_SECONDS old: cheap on every submit."""

    def __init__(self, path: Path, threshold: Threshold, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.threshold = threshold
        self._clock = clock
        self._read_at: float | None = None
        self._short = 0

    @classmethod
    def from_config(cls, config: Config) -> MediaCapacity:
        """The gauge of `media_dir(config)` against the configured thresholds."""
        return cls(media_dir(config), Threshold.from_config(config))

    def is_full(self) -> bool:
        """True while free space is below the threshold; the operator hears of each change in the log."""
        at = self._clock()
        if self._read_at is None or at - self._read_at >= CACHE_SECONDS:
            self._read_at = at
            try:
                usage = disk_usage(self.path)
            except OSError as exc:  # unreadable: accept, and let the worker's own check decide
                log.warning("cannot read free space of %s: %s", self.path, exc.strerror or exc)
                return False
            short = shortfall(usage, self.threshold)
            if short and not self._short:
                log.warning(
                    "media disk nearly full: %d bytes free in %s, %d required; refusing media tasks",
                    usage.free,
                    self.path,
                    self.threshold.required(usage.total),
                )
            elif self._short and not short:
                log.info("media disk has room again (%d bytes free); accepting media tasks", usage.free)
            self._short = short
        return self._short > 0
