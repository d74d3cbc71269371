"""Fixtures that start real servers: an embedded Valkey per test, taskd in-process or as a child process."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import psutil
import pytest
from fake_media_apis import FileServer
from fake_openai import FakeOpenAI
from redis.asyncio import Redis
from webhook_receiver import WebhookReceiver

from taskd import keys
from taskd.config import (
    AuthConfig,
    Config,
    ExecutionConfig,
    HttpConfig,
    LlmProvider,
    ProvidersConfig,
    RedisConfig,
    RetryConfig,
    TasksConfig,
    WorkerConfig,
)
from taskd.embedded import EmbeddedValkey
from taskd.errors import TransientError
from taskd.media import publish
from taskd.service import Service
from taskd.store.run_state import RunState, RunStates
from taskd.submit import dispatch

API_KEY = "test-key-0123456789"
TEST_TASK_MODULES = ["taskd.tasks.diagnostics", "support_tasks"]
# Job processes import the test task modules too.
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])
)
TERMINAL = {"completed", "failed", "cancelled"}


@pytest.hookimpl(trylast=True)  # after -m has deselected
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `long` go first, so that under pytest-xdist they overlap the rest of the suite
    instead of running alone at its end: one at the head of each worker's share. `--dist worksteal`
    first hands each of the N workers a contiguous share (len(pending) // workers left), runs a share
    from its head and steals from its tail. The order is the same in every xdist worker."""
    long = [item for item in items if item.get_closest_marker("long") is not None]
    rest = [item for item in items if item.get_closest_marker("long") is None]
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    heads, pending = [], len(items)
    for worker in range(workers):
        heads.append(len(items) - pending)
        pending -= pending // (workers - worker)
    ordered: list[pytest.Item] = []
    for head, item in zip(heads, long, strict=False):
        take = max(0, head - len(ordered))
        ordered += rest[:take]
        rest = rest[take:]
        ordered.append(item)
    items[:] = ordered + long[len(heads) :] + rest


@pytest.fixture(autouse=True)
def one_partition_after() -> Iterator[None]:
    """A Service with `redis.partitions` sets the process's number (taskd.keys): the next test
    starts with one again."""
    yield
    keys.configure_partitions(1)


@pytest.fixture
async def valkey_url(tmp_path: Path) -> AsyncIterator[str]:
    """A fresh embedded Valkey for this test; its URL."""
    server = EmbeddedValkey(tmp_path / "redis")
    url = await server.start()
    yield url
    await server.stop()


@pytest.fixture
async def redis(valkey_url: str) -> AsyncIterator[Redis]:
    """A client of the test's Valkey."""
    client = Redis.from_url(valkey_url)
    yield client
    await client.aclose()


@pytest.fixture
async def run_state(redis: Redis) -> Callable[[], RunState]:
    """The run state of a task that worker `worker-a` runs (its record `processing`, kept 600 s),
    as each run of the task gets it."""
    task_id = "3f0c8a4e-0000-4000-8000-00000000000a"
    await redis.hset(keys.task(task_id), mapping={"status": "processing", "worker_id": "worker-a"})
    await redis.expire(keys.task(task_id), 600)
    return lambda: RunStates(redis, [redis], "worker-a").of(task_id)


@pytest.fixture
def submits_within_one_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API's next six submits get creation times a tenth of a millisecond apart, all within
    one millisecond (taskd.submit.dispatch.now)."""
    first = math.floor(time.time() * 1000) / 1000 + 0.0001
    times = iter(first + n / 10_000 for n in range(6))
    monkeypatch.setattr(dispatch, "now", lambda: next(times))


@pytest.fixture
def held_store(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Every store of a media output (local or a bucket) waits in its thread until `release` is set;
    `began` says one is waiting."""
    began, release = threading.Event(), threading.Event()
    real = publish._store

    def store(*args: Any) -> Any:
        began.set()
        release.wait(60)
        return real(*args)

    monkeypatch.setattr(publish, "_store", store)
    return began, release


@pytest.fixture
def answer_lost_once(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """The first store of a media output puts the file in the store, then fails as a store whose
    answer was lost does (a bucket that wrote the object, the connection reset before its reply):
    the run is retried, and keeps its file. `stored` says it happened."""
    stored, real = threading.Event(), publish._store

    def store(*args: Any) -> Any:
        made = real(*args)
        if not stored.is_set():
            stored.set()
            raise TransientError("Media store refused or failed the upload: the connection was reset")
        return made

    monkeypatch.setattr(publish, "_store", store)
    return stored


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client session, for task contexts built by hand."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def files() -> AsyncIterator[FileServer]:
    """A loopback server of static files (test media inputs)."""
    async with FileServer() as server:
        yield server


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    """A local webhook receiver that records what it is sent."""
    async with WebhookReceiver() as server:
        yield server


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeOpenAI]:
    """A local OpenAI-compatible server."""
    async with FakeOpenAI() as server:
        yield server


def is_running(pid: int) -> bool:
    """Whether the process exists and is not a zombie (one reaped while we look is not running)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def make_config(tmp_path: Path, redis_url: str, llm_url: str = "", **sections: Any) -> Config:
    """A config for tests: port 0, the test Valkey, a known key, fast heartbeats."""
    config = Config(
        data_dir=str(tmp_path / "data"),
        http=HttpConfig(host="127.0.0.1", port=0),
        auth=AuthConfig(api_keys=[API_KEY]),
        redis=RedisConfig(url=redis_url),
        providers=ProvidersConfig(
            llm=LlmProvider(base_url=llm_url, api_key="sk-test", model="test-model", timeout=5)
        ),
        retry=RetryConfig(base_delay=0.2),
        worker=WorkerConfig(heartbeat_interval=0.5, heartbeat_ttl=3, poll_delay=0.5),
        execution=ExecutionConfig(cancel_grace=2, reclaim_interval=0.5, shutdown_grace=2),
        tasks=TasksConfig(modules=TEST_TASK_MODULES),
    )
    return attrs.evolve(config, **sections)


@attrs.define
class RunningService:
    """A taskd Service started in the test's event loop, with an HTTP client that sends the key."""

    service: Service
    client: aiohttp.ClientSession
    base_url: str

    async def submit(self, task_type: str, task_data: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """Submit a task and return the 200 body."""
        body = {
            "project_id": fields.pop("project_id", "proj-1"),
            "task_type": task_type,
            "task_data": task_data,
            **fields,
        }
        async with self.client.post("/api/v1/tasks/submit", json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def status(self, task_id: str) -> dict[str, Any]:
        """The status body of a task."""
        async with self.client.get(f"/api/v1/tasks/{task_id}/status") as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def wait_for(self, task_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20):
        """Poll status until `predicate` holds; fail after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                body = await self.status(task_id)
                if predicate(body):
                    return body
                await asyncio.sleep(0.02)

    async def wait_terminal(self, task_id: str, timeout: float = 20) -> dict[str, Any]:
        """Poll until the task has ended."""
        return await self.wait_for(task_id, lambda body: body["status"] in TERMINAL, timeout)

    def deafen(self) -> None:
        """Stop this service's cancel/wake subscriber, as if its pub/sub connection had dropped."""
        (listener,) = [task for task in self.service._background if task.get_name() == "pubsub-listener"]
        listener.cancel()

    async def wait_idle(self, timeout: float = 20) -> None:
        """Wait until this service's workers run no job: each run over, its end written and what
        follows it done (the deletion of the media of a task that ended without a result). The
        executor's `running` lets go of a task before that: it is no sign of it."""
        assert self.service._pool is not None
        workers = self.service._pool.workers.values()
        async with asyncio.timeout(timeout):
            while any(worker.job_counter for worker in workers):
                await asyncio.sleep(0.05)


@pytest.fixture
async def start_service(tmp_path: Path, valkey_url: str) -> AsyncIterator[Callable[..., Any]]:
    """Start taskd Services in-process; all are stopped at the end of the test."""
    started: list[RunningService] = []

    async def start(
        *,
        http: bool = True,
        workers: bool = True,
        serve_queues: list[str] | None = None,
        gpu_backend: Any = None,
        llm_url: str = "",
        http_settings: HttpConfig | None = None,
        **sections: Any,
    ) -> RunningService:
        # `http` says whether to serve HTTP at all; the [http] section comes as `http_settings`.
        config = make_config(tmp_path, valkey_url, llm_url, **sections)
        if http_settings is not None:
            config = attrs.evolve(config, http=http_settings)
        service = Service(config, http=http, workers=workers, queues=serve_queues, gpu_backend=gpu_backend)
        await service.start()
        host, port = service.addresses[0] if service.addresses else ("127.0.0.1", 0)
        base_url = f"http://{host}:{port}"
        client = aiohttp.ClientSession(base_url=base_url, headers={"X-API-Key": API_KEY})
        running = RunningService(service, client, base_url)
        started.append(running)
        return running

    yield start
    for running in reversed(started):
        await running.client.close()
        await running.service.stop(grace=1)


@pytest.fixture
async def taskd(start_service: Callable[..., Any], fake_llm: FakeOpenAI) -> RunningService:
    """taskd (API + all workers) on the test's Valkey, with the fake LLM as its provider."""
    return await start_service(llm_url=fake_llm.base_url)


def child_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a `taskd` child process in tests: its data dir, a free port, the test key,
    the diagnostic task types, no rate limits, and fast heartbeats so dead workers are noticed in seconds."""
    return {
        "TASKD_DATA_DIR": str(data_dir),
        "TASKD_HTTP__PORT": "0",
        "TASKD_AUTH__API_KEYS": API_KEY,
        "TASKD_TASKS__MODULES": "taskd.tasks.diagnostics",
        "TASKD_LIMITS__SUBMIT_PER_MINUTE": "0",
        "TASKD_LIMITS__STATUS_PER_MINUTE": "0",
        "TASKD_WORKER__HEARTBEAT_INTERVAL": "0.5",
        "TASKD_WORKER__HEARTBEAT_TTL": "3",
        "TASKD_EXECUTION__RECLAIM_INTERVAL": "0.5",
        **extra,
    }


@attrs.define
class TaskdProcess:
    """A `taskd` command run as a child process."""

    proc: subprocess.Popen[str]
    base_url: str | None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the process and wait for it to exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def _read_until_listening(proc: subprocess.Popen[str], timeout: float) -> str:
    import selectors

    selector = selectors.DefaultSelector()
    assert proc.stdout is not None
    selector.register(proc.stdout, selectors.EVENT_READ)
    seen = []
    while selector.select(timeout):
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            return match.group(1)
    raise AssertionError(f"taskd did not start listening; output: {''.join(seen)}")


class TaskdSpawner:
    """Runs `taskd ...` as child processes in `cwd`; `stop_all` kills and reaps what is still running."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.procs: list[TaskdProcess] = []

    def __call__(
        self,
        *args: str,
        env: dict[str, str],
        wait_listening: bool = True,
        pass_fds: Sequence[int] = (),
        stderr: Path | None = None,
    ) -> TaskdProcess:
        """Start `taskd *args`; `pass_fds`: descriptors it inherits, as a careless parent's would be;
        `stderr`: a file its stderr (its log, and its children's) is appended to."""
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
        full_env.update(env)
        with stderr.open("ab") if stderr is not None else contextlib.nullcontext() as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "taskd", *args],
                env=full_env,
                cwd=self.cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL if err is None else err,
                text=True,
                pass_fds=pass_fds,
            )
        base_url = _read_until_listening(proc, 30) if wait_listening else None
        running = TaskdProcess(proc, base_url)
        self.procs.append(running)
        return running

    def stop_all(self) -> None:
        for running in self.procs:
            if running.proc.poll() is None:
                running.proc.kill()
                running.proc.wait(10)
            if running.proc.stdout is not None:
                running.proc.stdout.close()


@pytest.fixture
def spawn_taskd(tmp_path: Path) -> Iterator[Callable[..., TaskdProcess]]:
    """Run `taskd ...` as child processes with a given environment; all are stopped at the end."""
    spawner = TaskdSpawner(tmp_path)
    yield spawner
    spawner.stop_all()


@pytest.fixture(scope="module")
def module_spawn_taskd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., TaskdProcess]]:
    """`spawn_taskd` for a module-scoped fixture (one child shared by a module's tests, where their
    checks do not depend on what the others stored); all are stopped at the end of the module."""
    spawner = TaskdSpawner(tmp_path_factory.mktemp("taskd"))
    yield spawner
    spawner.stop_all()
