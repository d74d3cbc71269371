"""A media task whose disk fills up: a clear error, retried later, not the caller's fault.

/dev/full answers every write with ENOSPC, as a full filesystem does, so this runs anywhere
without mounting a small one.
"""

from __future__ import annotations

import pytest

from taskd.errors import TransientError
from taskd.media import ffmpeg
from taskd.media.scratch import scratch_dir


async def test_an_ffmpeg_that_runs_out_of_disk_space_is_a_transient_error_saying_so(tmp_path):
    with pytest.raises(TransientError) as failed:
        await ffmpeg.run_ffmpeg(
            ["-f", "lavfi", "-i", "testsrc=size=320x240:rate=10", "-t", "2", "-f", "nut", "/dev/full"],
            log_path=tmp_path / "ffmpeg.log",
            what="Rendering",
        )

    assert str(failed.value) == "Rendering failed: no space left on the disk it writes to (ffmpeg exit 228)"


async def test_a_write_that_finds_the_scratch_disk_full_is_a_transient_error_and_the_scratch_goes(tmp_path):
    root = tmp_path / "scratch"
    with pytest.raises(TransientError) as failed:
        async with scratch_dir(root, "task-1") as workdir:
            (workdir / "input.png").symlink_to("/dev/full")
            (workdir / "input.png").write_bytes(b"a download")

    # No path under the data dir in what the caller reads.
    assert str(failed.value) == "No space left on the disk a media task writes to; it is tried again later"
    assert list(root.iterdir()) == []
