"""A task's caller reads no path of the operator's machine: a failed task's traceback names taskd's
files inside the package, not where taskd is installed, and an error naming a file of the data dir
names it under `<data_dir>`, `<media_dir>` or `<scratch_dir>` (docs/security.md, "Secrets")."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import imageio_ffmpeg

import taskd
from taskd.shown_paths import SHOWN_PATHS

INSTALL = str(Path(taskd.__file__).resolve().parent.parent)


async def test_a_failed_tasks_traceback_names_files_inside_their_package_not_the_install(start_service):
    service = await start_service()
    task = await service.submit("fail", {"message": "no rain"})

    body = await service.wait_terminal(task["task_id"])

    frames = [line.strip() for line in body["traceback"].splitlines() if line.strip().startswith("File ")]
    assert 'File "taskd/tasks/diagnostics.py"' in " ".join(frames), body["traceback"]
    assert [frame for frame in frames if frame.startswith('File "/')] == []
    assert INSTALL not in json.dumps(body) and sys.prefix not in json.dumps(body)


async def test_an_error_naming_a_file_of_the_data_dir_names_it_under_a_placeholder(start_service):
    service = await start_service()
    data_dir = service.service.config.data_path
    message = (
        f"[Errno 28] No space left on device: '{data_dir}/media/proj-1/take.mp4' (from {data_dir}/scratch/t1)"
    )
    task = await service.submit("fail", {"message": message})

    body = await service.wait_terminal(task["task_id"])

    assert body["error"] == (
        "[Errno 28] No space left on device: '<media_dir>/proj-1/take.mp4' (from <scratch_dir>/t1)"
    )
    assert str(data_dir) not in json.dumps(body)


async def test_an_error_naming_a_file_in_the_home_dir_names_it_under_a_tilde(start_service):
    service = await start_service()
    home = os.path.expanduser("~")
    task = await service.submit("fail", {"message": f"no model at {home}/.cache/models/voice.onnx"})

    body = await service.wait_terminal(task["task_id"])

    assert body["error"] == "no model at ~/.cache/models/voice.onnx"


async def test_a_file_url_in_an_error_names_its_file_under_a_placeholder(start_service):
    # A file URL's path is the file's own, though a `/` comes before it (a URL's path, elsewhere).
    service = await start_service()
    home, data_dir = os.path.expanduser("~"), service.service.config.data_path
    message = f"cannot open file://{home}/.cache/voice.onnx nor FILE://localhost{data_dir}/media/p/x.wav"
    task = await service.submit("fail", {"message": message})

    body = await service.wait_terminal(task["task_id"])

    assert body["error"] == "cannot open file://~/.cache/voice.onnx nor FILE://localhost<media_dir>/p/x.wav"


async def test_an_error_naming_a_file_inside_an_installed_package_names_it_from_the_package_on(start_service):
    service = await start_service()
    binaries = Path(imageio_ffmpeg.__file__).parent / "binaries"
    task = await service.submit("fail", {"message": f"[Errno 13] Permission denied: '{binaries}/ffmpeg'"})

    body = await service.wait_terminal(task["task_id"])

    assert body["error"] == "[Errno 13] Permission denied: 'imageio_ffmpeg/binaries/ffmpeg'"


async def test_a_url_whose_path_spells_a_folder_of_the_server_is_left_as_written(start_service):
    service = await start_service()
    data_dir = service.service.config.data_path
    message = (
        f"Image https://example.com{data_dir}/x.png (from https://example.com{INSTALL}/y) is not readable"
    )
    task = await service.submit("fail", {"message": message})

    body = await service.wait_terminal(task["task_id"])

    assert body["error"] == message


def test_a_traceback_line_full_of_frame_look_alikes_is_rewritten_in_one_read():
    # A handler's error quoting a caller's text ends its traceback. Each `File "/…", line 1` of one
    # line once made the rewrite read the line back to its start: 3.4 s of the worker's loop for
    # 1 MiB (the default body limit), many minutes for these 16 MiB, past the suite's timeout.
    # Quoted after other text on their line, they are no frame's line, so they stay as written.
    line = 'File "/a", line 1 ' * (16 * 1024 * 1024 // 18)
    text = (
        f'Traceback (most recent call last):\n  File "{taskd.__file__}", line 9, in run\nTaskError: {line}\n'
    )

    shown = SHOWN_PATHS.traceback(text)

    assert (
        shown
        == f'Traceback (most recent call last):\n  File "taskd/__init__.py", line 9, in run\nTaskError: {line}\n'
    )
