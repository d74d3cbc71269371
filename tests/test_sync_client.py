"""`taskd.sync_client.SyncTaskClient` against a real `taskd serve` over a socket, and against a local
server that refuses with 429/503 and `Retry-After` before it answers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import API_KEY, TaskdProcess, child_env

from taskd.client import (
    EventsLost,
    RateLimited,
    ServiceUnavailable,
    StreamGap,
    TaskEvent,
    TaskFailed,
    TaskNotFoundError,
    TaskStatus,
)
from taskd.sync_client import SyncTaskClient


@pytest.fixture(scope="module")
def server(module_spawn_taskd, tmp_path_factory: pytest.TempPathFactory) -> TaskdProcess:
    """One `taskd serve` child for the module: each test reads only the tasks it submitted."""
    return module_spawn_taskd("serve", env=child_env(tmp_path_factory.mktemp("data")))


@pytest.fixture
def client(server: TaskdProcess) -> Iterator[SyncTaskClient]:
    assert server.base_url is not None
    with SyncTaskClient(server.base_url, API_KEY) as client:
        yield client


def test_submit_and_wait_return_the_completed_task(client):
    submitted = client.submit("films", "sleep", {"seconds": 0.2, "steps": 2})

    task = client.wait(submitted.task_id, timeout=20)

    assert (task.status, task.result) == (TaskStatus.COMPLETED, {"slept": 0.2, "attempt": 1})


def test_wait_calls_on_event_in_the_callers_thread_with_the_progress(client):
    submitted = client.submit("films", "sleep", {"seconds": 0.4, "steps": 4})
    seen: list[tuple[int, str | None]] = []

    client.wait(
        submitted.task_id,
        timeout=20,
        on_event=lambda event: seen.append((threading.get_ident(), event.current_step)),
    )

    assert {thread for thread, _ in seen} == {threading.get_ident()}
    assert "step_4_of_4" in [step for _, step in seen]


def test_an_exception_in_on_event_stops_the_wait_and_is_raised(client):
    submitted = client.submit("films", "sleep", {"seconds": 5, "steps": 50})

    def stop(_event: object) -> None:
        raise KeyError("enough")

    started = time.monotonic()
    with pytest.raises(KeyError):
        client.wait(submitted.task_id, timeout=20, on_event=stop)

    assert time.monotonic() - started < 4


def test_an_async_on_event_raises_type_error_rather_than_never_running(client):
    submitted = client.submit("films", "noop", {})

    async def on_event(_event: object) -> None:
        pass

    with pytest.raises(TypeError, match="on_event returned an awaitable"):
        client.wait(submitted.task_id, timeout=20, on_event=on_event)


def test_wait_raises_task_failed_with_the_final_status(client):
    submitted = client.submit("films", "fail", {"message": "no good"})

    with pytest.raises(TaskFailed) as failed:
        client.wait(submitted.task_id, timeout=20)

    assert failed.value.task.error == "no good"


def test_an_unknown_task_raises_task_not_found(client):
    with pytest.raises(TaskNotFoundError) as missing:
        client.status("no-such-task")

    assert missing.value.body["error"] == "task_not_found"


def test_the_same_idempotency_key_gives_the_same_task(client):
    first = client.submit("films", "noop", {}, idempotency_key="sync-scene-1")
    again = client.submit("films", "noop", {}, idempotency_key="sync-scene-1")

    assert again.task_id == first.task_id


def test_events_iterate_until_the_task_ends(client):
    submitted = client.submit("films", "sleep", {"seconds": 0.2, "steps": 2})

    events = list(client.events(submitted.task_id))

    assert events[-1].status is TaskStatus.COMPLETED
    assert events[-1].is_terminal


def test_a_closed_client_refuses_calls(server: TaskdProcess):
    assert server.base_url is not None
    client = SyncTaskClient(server.base_url, API_KEY)
    client.close()

    with pytest.raises(RuntimeError, match="closed"):
        client.status("x")


def test_closing_the_client_ends_a_wait_in_another_thread_with_runtime_error(
    server: TaskdProcess, client: SyncTaskClient
):
    assert server.base_url is not None
    closing = SyncTaskClient(server.base_url, API_KEY)
    submitted = client.submit("films", "sleep", {"seconds": 60, "steps": 60})
    following = threading.Event()
    raised: list[BaseException] = []

    def follow() -> None:
        try:
            closing.wait(submitted.task_id, timeout=90, on_event=lambda _: following.set())
        except BaseException as error:
            raised.append(error)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    assert following.wait(30)
    closing.close()
    follower.join(30)
    client.cancel(submitted.task_id)

    assert [(type(error), str(error)) for error in raised] == [
        (RuntimeError, "this SyncTaskClient was closed while the call ran")
    ]


def test_closing_the_client_in_on_event_ends_the_wait_with_runtime_error(
    server: TaskdProcess, client: SyncTaskClient
):
    assert server.base_url is not None
    closing = SyncTaskClient(server.base_url, API_KEY)
    # More events than are handed over ahead of the caller (16): the wait is still running, held
    # until this thread takes them, when the client is closed.
    submitted = client.submit("films", "sleep", {"seconds": 0.5, "steps": 40})
    seen: list[TaskEvent] = []

    def on_event(event: TaskEvent) -> None:
        seen.append(event)
        # The task has ended: as many later events as are handed over wait for this thread.
        client.wait(submitted.task_id, timeout=30)
        closing.close()

    with pytest.raises(RuntimeError, match=r"^this SyncTaskClient was closed while the call ran$"):
        closing.wait(submitted.task_id, timeout=30, on_event=on_event)
    assert len(seen) == 1


def _python(server: TaskdProcess, program: str) -> subprocess.CompletedProcess[str]:
    """Run `program` in a Python of its own after `client = SyncTaskClient(<server>)` and
    `client.health()` (a pooled connection); what it printed."""
    prologue = f"""
        import gc, os, signal, sys
        from taskd.sync_client import SyncTaskClient
        client = SyncTaskClient({server.base_url!r}, {API_KEY!r}, timeout=30)
        client.health()
    """
    source = textwrap.dedent(prologue) + textwrap.dedent(program)
    return subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=120, check=True
    )


def test_a_client_never_closed_leaves_nothing_unclosed_at_exit(server: TaskdProcess):
    ran = _python(server, "print('exiting')")

    assert (ran.stdout, ran.stderr) == ("exiting\n", "")


def test_a_client_collected_unclosed_ends_its_thread(server: TaskdProcess):
    ran = _python(
        server,
        """
        thread = client._thread
        del client
        gc.collect()
        thread.join(60)
        print("thread running:", thread.is_alive())
        """,
    )

    assert ran.stdout == "thread running: False\n"


def test_a_client_collected_unclosed_on_its_own_thread_ends_that_thread(server: TaskdProcess):
    # The collector runs in whichever thread triggers it, the client's own among them, which
    # cannot wait for its loop as another thread does.
    ran = _python(
        server,
        """
        gc.disable()
        client.cycle = client  # only the collector frees it
        loop, thread = client._loop, client._thread
        del client
        loop.call_soon_threadsafe(gc.collect)
        thread.join(60)
        print("thread running:", thread.is_alive(), "loop closed:", loop.is_closed())
        """,
    )

    assert (ran.stdout, ran.stderr) == ("thread running: False loop closed: True\n", "")


def _forking(server: TaskdProcess, program: str) -> str:
    """`_python` with `child = os.fork()` after the prologue; the standard output. A child that waits
    for nothing is ended by SIGALRM after 60 s, rather than holding the test."""
    return _python(server, "child = os.fork()\n" + textwrap.dedent(program)).stdout


def test_a_client_made_before_a_fork_answers_in_the_child(server: TaskdProcess):
    out = _forking(
        server,
        """
        if child == 0:
            signal.alarm(60)
            print("child", client.health().status, flush=True)
            client.close()
            os._exit(0)
        print("child ended with", os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]))
        """,
    )

    assert out.splitlines() == ["child healthy", "child ended with 0"]


def test_the_parent_is_answered_after_a_forked_child_exits(server: TaskdProcess):
    out = _forking(
        server,
        """
        if child == 0:
            sys.exit(0)  # an interpreter's exit: it collects what it holds of the parent's client
        os.waitpid(child, 0)
        print("parent", client.health().status)
        client.close()
        """,
    )

    assert out.splitlines() == ["parent healthy"]


def test_the_client_imports_and_answers_where_os_has_no_fork(server: TaskdProcess):
    # As on Windows, whose os module has neither fork nor register_at_fork.
    program = f"""
        import os
        del os.fork, os.register_at_fork
        from taskd.sync_client import SyncTaskClient
        with SyncTaskClient({server.base_url!r}, {API_KEY!r}) as client:
            print(client.health().status)
    """
    ran = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(program)], capture_output=True, text=True, timeout=120
    )

    assert (ran.stdout, ran.returncode) == ("healthy\n", 0), ran.stderr


# A local server that refuses first, then answers: the retries of both clients.

SUBMITTED = {
    "task_id": "t1",
    "status": "queued",
    "project_id": "films",
    "estimated_duration": 1,
    "queue_position": 1,
    "created_at": "2026-01-01T00:00:00Z",
}


class Refusing(ThreadingHTTPServer):
    """Answers the submit route with `refusals` (status, Retry-After or None) in turn, then 200; any
    GET with a project stream that says `gap`."""

    def __init__(self, refusals: list[tuple[int, str | None]]) -> None:
        super().__init__(("127.0.0.1", 0), _RefusingHandler)
        self.refusals = refusals
        self.arrivals: list[float] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class _RefusingHandler(BaseHTTPRequestHandler):
    server: Refusing

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.arrivals.append(time.monotonic())
        if self.server.refusals:
            status, retry_after = self.server.refusals.pop(0)
            # taskd's own bodies say retry_after too; this one does not, so the header is what counts.
            self._answer(status, {"error": "rate_limited", "message": "slow down"}, retry_after)
        else:
            self._answer(200, SUBMITTED, None)

    def do_GET(self) -> None:
        # A project's stream that lost events: a gap, then the one event it kept.
        raw = (
            b"event: gap\n"
            b'data: {"type": "gap", "after": "1-0", "kept_from": "5-0"}\n\n'
            + b"id: 5-0\nevent: status\ndata: "
            + json.dumps(
                {"type": "status", "task_id": "t1", "project_id": "films", "status": "completed"}
            ).encode()
            + b"\n\n"
        )
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _answer(self, status: int, body: dict[str, object], retry_after: str | None) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def refusing() -> Iterator[Refusing]:
    server = Refusing([])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_a_429_is_sent_again_after_its_retry_after(refusing: Refusing):
    refusing.refusals = [(429, "1")]

    with SyncTaskClient(refusing.url, API_KEY) as client:
        submitted = client.submit("films", "noop", {})

    assert submitted.task_id == "t1"
    assert len(refusing.arrivals) == 2
    assert refusing.arrivals[1] - refusing.arrivals[0] >= 0.95


def test_a_503_without_retry_after_is_sent_again_after_a_backoff(refusing: Refusing):
    refusing.refusals = [(503, None), (503, None)]

    with SyncTaskClient(refusing.url, API_KEY) as client:
        submitted = client.submit("films", "noop", {})

    assert submitted.task_id == "t1"
    assert len(refusing.arrivals) == 3


def test_a_retry_after_given_as_an_http_date_is_honoured(refusing: Refusing):
    from email.utils import formatdate

    refusing.refusals = [(429, formatdate(time.time() + 2, usegmt=True))]

    with SyncTaskClient(refusing.url, API_KEY) as client:
        client.submit("films", "noop", {})

    assert refusing.arrivals[1] - refusing.arrivals[0] >= 0.95


def test_the_last_refusal_is_raised_once_the_retries_are_spent(refusing: Refusing):
    refusing.refusals = [(503, "0")] * 3

    with SyncTaskClient(refusing.url, API_KEY, retries=2) as client, pytest.raises(ServiceUnavailable):
        client.submit("films", "noop", {})

    assert len(refusing.arrivals) == 3


def test_a_retry_after_longer_than_max_retry_wait_is_raised_at_once(refusing: Refusing):
    refusing.refusals = [(429, "120")]

    with (
        SyncTaskClient(refusing.url, API_KEY, max_retry_wait=10) as client,
        pytest.raises(RateLimited) as limited,
    ):
        client.submit("films", "noop", {})

    assert limited.value.retry_after == 120
    assert len(refusing.arrivals) == 1


async def test_a_blocking_call_works_inside_a_running_event_loop(refusing: Refusing):
    # As in a notebook: the caller's loop runs, and the client never touches it.
    with SyncTaskClient(refusing.url, API_KEY) as client:
        submitted = client.submit("films", "noop", {})

    assert submitted.task_id == "t1"


def test_project_events_raise_events_lost_at_a_gap(refusing: Refusing):
    with SyncTaskClient(refusing.url, API_KEY) as client, pytest.raises(EventsLost) as lost:
        list(client.project_events("films", last_event_id="1-0"))

    assert lost.value.gap == StreamGap(after="1-0", kept_from="5-0")


def test_project_events_with_gaps_yield_the_gap_then_the_events(refusing: Refusing):
    with SyncTaskClient(refusing.url, API_KEY) as client:
        seen = list(client.project_events("films", last_event_id="1-0", gaps=True))

    assert seen[0] == StreamGap(after="1-0", kept_from="5-0")
    assert [(event.id, event.status) for event in seen[1:]] == [("5-0", TaskStatus.COMPLETED)]


def test_an_api_key_with_a_control_character_is_refused_when_the_client_is_made():
    with pytest.raises(ValueError, match=r"^api_key holds a line break or another control character$"):
        SyncTaskClient("http://127.0.0.1:8001", "tsk_key\r\n")
