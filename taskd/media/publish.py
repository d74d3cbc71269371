"""Putting a finished file into the media store and describing it in the documented result shape."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from taskd import runtasks
from taskd.config import Config
from taskd.errors import TransientError
from taskd.media import payload
from taskd.media.backend import media_backend
from taskd.media.capacity import Threshold, disk_usage, shortfall
from taskd.media.store import StoredMedia, media_dir
from taskd.stopping import outlast

if TYPE_CHECKING:
    from taskd.store.run_state import RunState

log = logging.getLogger("taskd.media")


@attrs.define
class Stored:
    """The files one run put into the store, or began to. The engine gives each run of a task its
    own and, when the task ends without a result (cancelled, or failed for good), takes those files
    back (withdraw) once the copies still going have ended: such a task leaves no stored media."""

    # `(project_id, filename)` of each file.
    names: list[tuple[str, str]] = attrs.Factory(list)
    # The copies into the store still going, each in a thread that no cancel stops.
    copying: set[asyncio.Future[StoredMedia]] = attrs.Factory(set)
    # Where the names are noted for the task's later runs and its end (RunState.note_media).
    state: RunState | None = None
    # What the task's earlier runs stored (read from its run state when this run began): a run
    # killed after its copy, or whose store failed after writing, was run again.
    earlier: list[tuple[str, str]] = attrs.Factory(list)

    async def copied(self) -> None:
        """Wait for the copies still going to end."""
        if self.copying:
            await asyncio.wait(self.copying)


STORED: ContextVar[Stored | None] = ContextVar("taskd_media_stored", default=None)


async def publish(
    config: Config,
    project_id: str,
    source: Path,
    filename: str,
    metadata: dict[str, Any],
    state: RunState | None = None,
) -> dict[str, Any]:
    """Store `source` as `<project_id>/<filename>`; the result: media_url, payload_media_id, metadata + file_size.

    The store's upload, then, with `[payload]` configured, the CMS upload, whose failure is reported
    as `metadata.payload_error` and a null `payload_media_id`. The CMS upload runs on the task's own
    loop, not in the store's thread: a cancel or a time limit stops it (a CMS that has the whole
    file by then still makes its document: docs/media.md). With the task's run `state`, the CMS
    document an earlier run of the task made of the same file is reused (taskd.media.payload).
    """
    run = STORED.get()
    if run is not None:
        run.names.append((project_id, filename))
        if run.state is not None:
            # Before the copy: a worker killed during it leaves the name for the task's end.
            await run.state.note_media(project_id, filename)
    # Storing copies or sends the whole file: in a thread, so the API keeps answering meanwhile. A
    # cancel cannot stop the thread, so it is waited for: once the run has ended, nothing it began
    # lands in the store behind the withdrawal of its files. The run's end may give up on a handler
    # still waiting after its cancel grace (a copy of gigabytes to a bucket): the withdrawal then
    # waits for `run.copying`. Not one of the run's tasks (taskd.runtasks), whose end cancels them:
    # that would end this wait, not the copy.
    copy = runtasks.detached(asyncio.to_thread(_store, config, project_id, source, filename))
    if run is not None:
        run.copying.add(copy)
        copy.add_done_callback(run.copying.discard)
    stored = await outlast(copy)
    result: dict[str, Any] = {
        "media_url": stored.url,
        "payload_media_id": None,
        "metadata": {**metadata, "file_size": stored.file_size},
    }
    if config.payload.base_url:
        delivered = await payload.upload(config.payload, source, filename, state)
        result["payload_media_id"] = delivered.media_id
        if delivered.error is not None:
            result["metadata"]["payload_error"] = delivered.error
    return result


def _store(config: Config, project_id: str, source: Path, filename: str) -> StoredMedia:
    # Checked again here, not only at submit: the disk may have filled while the task ran.
    if config.media.backend == "local" and shortfall(
        disk_usage(media_dir(config)), Threshold.from_config(config), source.stat().st_size
    ):
        raise TransientError("Media storage is nearly full: the result was not stored")
    return media_backend(config).put(project_id, filename, source)


async def withdraw(config: Config, names: Iterable[tuple[str, str]]) -> None:
    """Delete the stored files `names` (of a task that ended without a result); one that cannot be
    deleted is logged and left to the media sweeper (media.retention)."""
    await asyncio.to_thread(_withdraw, config, list(names))


# The withdrawals begun by withdraw_later and not ended: the loop holds only weak references to its tasks.
_LATER: set[asyncio.Task[None]] = set()


def withdraw_later(config: Config, names: Iterable[tuple[str, str]]) -> None:
    """`withdraw`, begun and not waited for: for a caller that must not wait on the store (the API's
    cancel, whose answer a bucket out of reach held for boto3's timeouts, up to minutes a file)."""
    task = runtasks.detached(withdraw(config, names))
    _LATER.add(task)
    task.add_done_callback(_ended_later)


def _ended_later(task: asyncio.Task[None]) -> None:
    _LATER.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        # The store's own errors are logged per file; this is what came before (its client not made).
        log.warning("could not delete the media of a task without a result: %s", exc)


def _withdraw(config: Config, names: list[tuple[str, str]]) -> None:
    backend = media_backend(config)
    for project_id, filename in names:
        try:
            backend.remove(project_id, filename)
        except Exception as exc:  # a bucket's errors are of many kinds; the sweeper deletes it later
            log.warning("could not delete %s/%s, of a task without a result: %s", project_id, filename, exc)
