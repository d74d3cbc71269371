"""The media sweeper: deletes stored media past `media.retention`, and the scratch dirs and partial copies
into the store that killed workers abandoned.

With `media.backend = "s3"` the stored media are the bucket's objects under `media.s3.prefix`,
deleted by their LastModified; scratch dirs are always local.

It touches only what taskd itself writes: files at `<media dir>/<project>/<file>` (a partial copy
`.<file>.partial` once older than any task can run), empty project dirs, and `<task id>-<random>`
entries at the top of the scratch root. It never follows a symlink (a link is judged, and removed, as a link), never leaves its root, and refuses a root
that holds the data dir or overlaps the other root, so a misconfigured `media.dir` cannot wipe
Valkey's files or the secrets. Deleting is idempotent: any number of taskd processes on any
number of hosts sharing the directories may sweep at once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs

from taskd.config import Config
from taskd.loops import every
from taskd.media.s3 import DELETE_BATCH, S3Store, describe
from taskd.media.store import media_dir, scratch_root

log = logging.getLogger("taskd.media")

# An empty project dir is kept this long, so a file being stored into a fresh one never loses it.
EMPTY_DIR_GRACE_S = 300.0
# Added to the longest hard time limit: a task killed at its limit gets cancel_grace, then this.
SCRATCH_MARGIN_S = 60.0
# What taskd.media.scratch.scratch_dir makes: "<task id>-<mkdtemp's 8 random characters>".
_SCRATCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]*-[a-z0-9_]{8}$")
# What taskd.media.store.MediaStore.put copies into before the file takes its name.
_PARTIAL = re.compile(r"^\..+\.partial$")


@attrs.define
class SweepReport:
    """What one sweep removed."""

    media_files: int = 0
    # Copies into the store cut short by a killed worker (`.<name>.partial`, see MediaStore.put).
    partial_files: int = 0
    project_dirs: int = 0
    scratch_dirs: int = 0
    errors: int = 0

    @property
    def removed(self) -> int:
        """Entries removed in all."""
        return self.media_files + self.partial_files + self.project_dirs + self.scratch_dirs


def scratch_max_age(config: Config, hard_limits: Iterable[float | None]) -> float:
    """Seconds after which a scratch dir is certainly abandoned: no task runs longer than this."""
    longest = max([*(queue.timeout for queue in config.queues.values()), *(h for h in hard_limits if h)])
    return longest + config.execution.cancel_grace + SCRATCH_MARGIN_S


def unsafe_root(root: Path, data_dir: Path, other: Path) -> str | None:
    """Why sweeping `root` could delete what is not taskd's media or scratch, or None when it is safe."""
    if root == data_dir or root in data_dir.parents:
        return f"it is or holds the data dir {data_dir}"
    if root == other or root in other.parents or other in root.parents:
        return f"it overlaps {other}"
    return None


class MediaSweeper:
    """Deletes media older than the retention, empty project dirs and abandoned scratch dirs."""

    def __init__(
        self,
        media_root: Path,
        scratch: Path,
        data_dir: Path,
        retention: float,
        scratch_age: float,
        bucket: S3Store | None = None,
    ) -> None:
        self.media_root = media_root
        self.bucket = bucket
        self.scratch = scratch
        self.data_dir = data_dir
        self.retention = retention
        self.scratch_age = scratch_age

    @classmethod
    def from_config(cls, config: Config, hard_limits: Iterable[float | None] = ()) -> MediaSweeper:
        """The sweeper of `config`'s media and scratch dirs; `hard_limits` of every task type."""
        return cls(
            media_dir(config),
            scratch_root(config),
            config.data_path,
            config.media.retention,
            scratch_max_age(config, hard_limits),
            S3Store.from_config(config) if config.media.backend == "s3" else None,
        )

    def sweep(self, at: float | None = None) -> SweepReport:
        """One pass over both roots; returns what it removed."""
        at = time.time() if at is None else at
        report = SweepReport()
        if self.bucket is not None:
            self._sweep_bucket(self.bucket, at, report)
        elif self._safe(self.media_root, self.scratch):
            self._sweep_media(at, report)
        if self._safe(self.scratch, self.media_root):
            self._sweep_scratch(at, report)
        if report.removed or report.errors:
            log.info(
                "media sweep removed %d files, %d partial copies, %d empty project dirs and %d scratch dirs"
                " (%d errors)",
                report.media_files,
                report.partial_files,
                report.project_dirs,
                report.scratch_dirs,
                report.errors,
            )
        return report

    async def run(self, interval: float) -> None:
        """Sweep now and then every `interval` seconds, in a thread, until cancelled; a failed pass only delays the next."""
        await every(interval, self._sweep_in_thread, name="media sweep", logger=log)

    async def _sweep_in_thread(self) -> SweepReport:
        return await asyncio.to_thread(self.sweep)

    def _safe(self, root: Path, other: Path) -> bool:
        problem = unsafe_root(root, self.data_dir, other)
        if problem is not None:
            log.error("not sweeping %s: %s", root, problem)
        return problem is None

    def _sweep_media(self, at: float, report: SweepReport) -> None:
        for project in _entries(self.media_root, report):
            if not project.is_dir(follow_symlinks=False):
                continue  # not a project dir taskd made: left alone, never followed
            for entry in _entries(Path(project.path), report):
                if entry.is_dir(follow_symlinks=False):
                    continue
                if _PARTIAL.match(entry.name):
                    # No copy takes longer than its task may run: one older was cut short by a
                    # killed worker, and is of no use to anyone (its task's next run makes its own).
                    if _older(entry, at - self.scratch_age, report) and _unlink(entry.path, report):
                        report.partial_files += 1
                elif _older(entry, at - self.retention, report) and _unlink(entry.path, report):
                    report.media_files += 1
            if _older(project, at - EMPTY_DIR_GRACE_S, report) and _rmdir_if_empty(project.path, report):
                report.project_dirs += 1

    def _sweep_bucket(self, bucket: S3Store, at: float, report: SweepReport) -> None:
        self._sweep_objects(bucket, at, report)
        self._sweep_uploads(bucket, at, report)

    def _sweep_uploads(self, bucket: S3Store, at: float, report: SweepReport) -> None:
        # A multipart upload (boto3 sends large files so) whose worker was killed is never completed
        # nor aborted: the store keeps its parts, unlisted among the objects, for ever. None lasts
        # longer than its task may run.
        cutoff = at - self.scratch_age
        try:
            for key, upload_id, initiated in list(bucket.uploads()):
                if initiated.timestamp() < cutoff:
                    bucket.abort(key, upload_id)
                    report.partial_files += 1
        except Exception as exc:  # botocore raises errors of many kinds; the next sweep tries again
            report.errors += 1
            log.warning(
                "media sweep: aborting the abandoned uploads of %s failed: %s", bucket.where, describe(exc)
            )

    def _sweep_objects(self, bucket: S3Store, at: float, report: SweepReport) -> None:
        cutoff = at - self.retention
        try:
            # Deleted a batch at a time as the listing goes, not listed whole first: a backlog of
            # millions (a retention shortened, a sweep refused for weeks) held every key at once.
            # Deleting keys already listed moves no later page: a listing goes on after the last
            # key it gave (as `aws s3 rm --recursive` relies on).
            old: list[str] = []
            for key, modified in bucket.objects():
                if modified.timestamp() < cutoff:
                    old.append(key)
                if len(old) == DELETE_BATCH:
                    _delete(bucket, old, report)
                    old = []
            if old:
                _delete(bucket, old, report)
        except Exception as exc:  # botocore raises errors of many kinds; the next sweep tries again
            report.errors += 1
            log.warning("media sweep: %s failed: %s", bucket.where, describe(exc))

    def _sweep_scratch(self, at: float, report: SweepReport) -> None:
        for entry in _entries(self.scratch, report):
            if not _SCRATCH_NAME.match(entry.name) or not _older(entry, at - self.scratch_age, report):
                continue
            if entry.is_dir(follow_symlinks=False):
                removed = _rmtree(entry.path, report)
            else:
                removed = _unlink(entry.path, report)
            if removed:
                report.scratch_dirs += 1
                log.warning("removed abandoned scratch dir %s", entry.path)


def _delete(bucket: S3Store, keys: list[str], report: SweepReport) -> None:
    deleted, errors = bucket.delete(keys)
    report.media_files += deleted
    report.errors += errors


def _entries(path: Path, report: SweepReport) -> Iterator[os.DirEntry[str]]:
    """The entries of `path`, read as they are used: a project dir of a million files is never held
    whole (each entry about 1 KB), in every process that sweeps it. Removing the entries already read
    does not make the listing skip the others (`rm -r` relies on it); one removed may still be
    listed, and is then found gone."""
    try:
        with os.scandir(path) as listing:
            yield from listing
    except FileNotFoundError:
        return
    except OSError as exc:
        _failed("listing", str(path), exc, report)


def _older(entry: os.DirEntry[str], cutoff: float, report: SweepReport) -> bool:
    """True when the entry itself (a link, not its target) was last modified before `cutoff`."""
    try:
        return entry.stat(follow_symlinks=False).st_mtime < cutoff
    except FileNotFoundError:
        return False
    except OSError as exc:
        _failed("reading", entry.path, exc, report)
        return False


def _unlink(path: str, report: SweepReport) -> bool:
    try:
        os.unlink(path)  # on a symlink: the link goes, its target stays
    except FileNotFoundError:
        return False  # another process swept it first
    except OSError as exc:
        _failed("removing", path, exc, report)
        return False
    return True


def _rmdir_if_empty(path: str, report: SweepReport) -> bool:
    try:
        os.rmdir(path)
    except OSError as exc:
        # Gone (another sweeper) or not empty (it holds media): both are fine.
        if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST):
            _failed("removing", path, exc, report)
        return False
    return True


def _rmtree(path: str, report: SweepReport) -> bool:
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return _unlink(path, report)
        # rmtree never follows a symlink inside the tree (it removes the link).
        shutil.rmtree(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        _failed("removing", path, exc, report)
        return False
    return True


def _failed(doing: str, path: str, exc: OSError, report: SweepReport) -> None:
    report.errors += 1
    log.warning("media sweep: %s %s failed: %s", doing, path, exc.strerror or exc)
