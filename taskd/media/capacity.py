"""Free space on the media and scratch filesystems: media tasks are refused, and files not stored, when it runs low."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from taskd.config import Config
from taskd.media.store import media_dir, scratch_root

log = logging.getLogger("taskd.media")

CACHE_SECONDS = 1.0
RETRY_AFTER = 300  # seconds a refused client waits: space comes back by a sweep or an operator
REFUSED = "Media storage is nearly full; media tasks are not accepted until space is freed"
SCRATCH_REFUSED = (
    "The scratch disk media tasks work on is nearly full; media tasks are not accepted until space is freed"
)


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
    """Size and free space of a filesystem, in bytes, and its device (the same device: the same filesystem)."""

    total: int
    free: int
    device: int


def disk_usage(path: Path) -> Usage:
    """The filesystem holding `path`, or its nearest existing parent (the media dir is made lazily)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            usage = shutil.disk_usage(candidate)
            return Usage(usage.total, usage.free, candidate.stat().st_dev)
    raise FileNotFoundError(path)


def shortfall(usage: Usage, threshold: Threshold, incoming: int = 0) -> int:
    """How many bytes short of the threshold the filesystem would be after writing `incoming` (0: none)."""
    return max(0, threshold.required(usage.total) - (usage.free - incoming))


@attrs.frozen
class Disk:
    """A folder media tasks write to, and what a submit refused for its filesystem being short is told."""

    name: str  # in the log: "media disk nearly full"
    path: Path
    refused: str


class MediaCapacity:
    """Answers "is there room for media?" from a reading at most CACHE_SECONDS old: cheap on every submit.

    Both the media folder (where results are stored) and the scratch folder (where downloads and
    ffmpeg's output are written first) are read: a scratch folder on its own, smaller filesystem
    would otherwise take tasks that then fail at run time. A scratch folder on the media
    filesystem is not read twice.
    """

    def __init__(
        self, disks: list[Disk], threshold: Threshold, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.disks = disks
        self.threshold = threshold
        self._clock = clock
        self._read_at: float | None = None
        self._refusal: str | None = None
        self._short = dict.fromkeys((disk.name for disk in disks), 0)

    @classmethod
    def from_config(cls, config: Config) -> MediaCapacity:
        """The gauge of `media_dir(config)` and `scratch_root(config)` against the configured thresholds."""
        disks = [
            Disk("media", media_dir(config), REFUSED),
            Disk("scratch", scratch_root(config), SCRATCH_REFUSED),
        ]
        return cls(disks, Threshold.from_config(config))

    def refusal(self) -> str | None:
        """What a media submit is told while a disk is below the threshold (None: there is room)."""
        at = self._clock()
        if self._read_at is None or at - self._read_at >= CACHE_SECONDS:
            self._read_at = at
            self._refusal = self._read()
        return self._refusal

    def _read(self) -> str | None:
        refusal = None
        read: set[int] = set()
        for disk in self.disks:
            try:
                usage = disk_usage(disk.path)
            except OSError as exc:  # unreadable: accept, and let the worker's own check decide
                log.warning("cannot read free space of %s: %s", disk.path, exc.strerror or exc)
                continue
            if usage.device in read:  # the scratch folder on the media filesystem: read once
                continue
            read.add(usage.device)
            short = shortfall(usage, self.threshold)
            # The operator hears of each change in the log, not of every reading.
            if short and not self._short[disk.name]:
                log.warning(
                    "%s disk nearly full: %d bytes free in %s, %d required; refusing media tasks",
                    disk.name,
                    usage.free,
                    disk.path,
                    self.threshold.required(usage.total),
                )
            elif self._short[disk.name] and not short:
                log.info(
                    "%s disk has room again (%d bytes free); accepting media tasks", disk.name, usage.free
                )
            self._short[disk.name] = short
            if short and refusal is None:
                refusal = disk.refused
        return refusal
