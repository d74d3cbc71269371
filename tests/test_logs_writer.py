"""Log lines are written by a thread of their own (taskd/logs.py, `configure`): a stderr that blocks
holds that thread, never the caller; what waits is bounded, and written at exit."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import orjson
import pytest

from taskd import logs

WAIT = 10.0  # seconds: far more than any of these steps takes


class BlockedStream(io.StringIO):
    """A stderr that takes nothing until `unblock`: a full pipe, a stalled log collector."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.open = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        self.open.wait(3 * WAIT)  # longer than any test waits for a caller
        return super().write(text)

    def unblock(self) -> None:
        self.open.set()


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    """The root logger, as taskd configures it, restored afterwards."""
    logger = logging.getLogger()
    handlers, level = logger.handlers[:], logger.level
    yield logger
    logs.flush()
    logger.handlers[:] = handlers
    logger.setLevel(level)


def lines(stream: io.StringIO) -> list[dict]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def caught_up(stream: io.StringIO, count: int) -> None:
    """Wait until the writer has written `count` lines: nothing waits for it any more."""
    deadline = time.monotonic() + WAIT
    while stream.getvalue().count("\n") < count:
        assert time.monotonic() < deadline, stream.getvalue()
        time.sleep(0.01)


def log_in_a_thread(message: str) -> threading.Thread:
    """Log `message` from a thread of its own: one that stays blocked is still alive after WAIT."""
    thread = threading.Thread(target=logging.getLogger("test.writer").warning, args=(message,), daemon=True)
    thread.start()
    thread.join(WAIT)
    return thread


def test_a_line_goes_to_the_writer_thread_and_the_caller_does_not_wait_for_stderr(root):
    stream = BlockedStream()
    logs.configure("json", "INFO", stream=stream)

    caller = log_in_a_thread("first")

    assert not caller.is_alive()
    assert stream.entered.wait(WAIT)  # the writer holds the line
    stream.unblock()
    logs.flush()
    assert [line["message"] for line in lines(stream)] == ["first"]


def test_lines_past_the_bound_are_dropped_and_then_counted_in_a_line_of_their_own(root, monkeypatch):
    monkeypatch.setattr(logs, "MAX_WAITING_LINES", 3)
    stream = BlockedStream()
    logs.configure("json", "INFO", stream=stream)
    log = logging.getLogger("test.writer")

    log.warning("held by the writer")
    assert stream.entered.wait(WAIT)
    for n in range(8):
        log.warning("line %d", n)  # three wait, five are dropped
    stream.unblock()
    caught_up(stream, 4)
    log.warning("after")
    logs.flush()

    written = lines(stream)
    assert [line["message"] for line in written] == [
        "held by the writer",
        "line 0",
        "line 1",
        "line 2",
        "log lines dropped: stderr did not keep up",
        "after",
    ]
    assert written[4]["dropped_lines"] == 5
    assert written[4]["level"] == "WARNING"


def test_a_line_carries_the_ids_of_the_task_its_caller_worked_on(root):
    stream = io.StringIO()
    logs.configure("json", "INFO", stream=stream)

    with logs.task_context("t-1", "p-1", "noop"):
        logging.getLogger("test.writer").info("inside")
    logging.getLogger("test.writer").info("outside")
    logs.flush()

    inside, outside = lines(stream)
    assert (inside["task_id"], inside["project_id"], inside["task_type"]) == ("t-1", "p-1", "noop")
    assert "task_id" not in outside


def test_the_message_is_the_one_of_the_moment_of_the_call(root):
    stream = BlockedStream()
    logs.configure("json", "INFO", stream=stream)
    log = logging.getLogger("test.writer")
    state = ["before"]

    log.warning("held by the writer")
    assert stream.entered.wait(WAIT)
    log.warning("state %s", state)
    state[0] = "after"
    stream.unblock()
    logs.flush()

    assert lines(stream)[1]["message"] == "state ['before']"


def test_an_exception_is_written_with_its_traceback(root):
    stream = io.StringIO()
    logs.configure("json", "INFO", stream=stream)

    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("test.writer").exception("handler crashed")
    logs.flush()

    (line,) = lines(stream)
    assert line["message"] == "handler crashed"
    assert "ValueError: boom" in line["exc_info"]


def test_every_line_logged_before_a_process_exits_is_written():
    program = (
        "import logging\n"
        "from taskd import logs\n"
        "logs.configure('json', 'INFO')\n"
        "for n in range(3000):\n"
        "    logging.getLogger('test.writer').info('line %d', n)\n"
    )

    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr[-2000:]
    written = [orjson.loads(line)["message"] for line in result.stderr.splitlines()]
    assert written == [f"line {n}" for n in range(3000)]


def test_a_line_logged_after_the_writer_stopped_is_written_by_its_caller(root):
    stream = io.StringIO()
    logs.configure("json", "INFO", stream=stream)
    logs.flush()

    logging.getLogger("test.writer").warning("at exit")

    assert [line["message"] for line in lines(stream)] == ["at exit"]
