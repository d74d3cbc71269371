"""What the fault tests share: a Valkey server of their own, a webhook receiver, an API client, run counts."""

from __future__ import annotations

import asyncio
import collections
import collections.abc
import contextlib
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web
from conftest import API_KEY, TERMINAL, make_config
from redis.asyncio import Redis

from taskd.config import LimitsConfig, RedisConfig
from taskd.embedded import valkey_server_binary as get_binary_path
from taskd.service import Service
from taskd.tasks.diagnostics import runs_path


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ValkeyServer:
    """A valkey-server (or sentinel) child process on a fixed port, with its own directory and config file."""

    def __init__(
        self,
        folder: Path,
        port: int | None = None,
        *config: str,
        sentinel: bool = False,
        password: str | None = None,
    ) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.sentinel = sentinel
        self.password = password  # its default user's (requirepass)
        self.config = (*config, f"requirepass {password}") if password else config
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its redis:// URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Redis:
        """A new client of this server."""
        return Redis(host="127.0.0.1", port=self.port, password=self.password)

    async def start(self) -> ValkeyServer:
        """Start it (again, on the same port and directory) and wait until it answers PING."""
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / ("sentinel.conf" if self.sentinel else "valkey.conf")
        if not (self.sentinel and conf.exists()):  # a sentinel rewrites its own file: keep it
            lines = [f"port {self.port}", "bind 127.0.0.1", f'dir "{self.folder}"', 'save ""', *self.config]
            if not self.sentinel:
                lines += ["appendonly yes", "appendfsync everysec"]
            conf.write_text("\n".join(lines) + "\n")
        args = [get_binary_path(), str(conf), *(["--sentinel"] if self.sentinel else [])]
        log = (self.folder / "server.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        async with asyncio.timeout(10):
            while True:
                with contextlib.suppress(Exception):
                    async with self.client() as client:
                        if await client.ping():
                            return self
                await asyncio.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGTERM: it writes its append-only file first) and wait until it is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None


class Receiver:
    """A webhook receiver that fails the first `fail_first[path]` requests to a path with 500."""

    def __init__(self, fail_first: dict[str, int] | None = None) -> None:
        self.fail_left = dict(fail_first or {})
        self.ids: collections.Counter[str] = collections.Counter()
        self.delivered: set[str] = set()
        self.requests = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    def url(self, path: str = "/hook") -> str:
        """A callback URL on this receiver."""
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests += 1
        webhook_id = request.headers.get("webhook-id", "")
        self.ids[webhook_id] += 1
        if self.fail_left.get(request.path, 0) > 0:
            self.fail_left[request.path] -= 1
            return web.Response(status=500)
        self.delivered.add(webhook_id)
        return web.Response(status=200)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Api:
    """The HTTP API of a taskd under test, with the test key."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session, self.base_url = session, base_url

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """Status and JSON body of one request."""
        async with self.session.request(
            method, self.base_url + path, headers={"X-API-Key": API_KEY}, **kwargs
        ) as response:
            return response.status, await response.json(content_type=None)

    async def submit(self, task_type: str, task_data: dict[str, Any], **fields: Any) -> str:
        """Submit; the task id of the 200."""
        body = {
            "project_id": fields.pop("project_id", "faults"),
            "task_type": task_type,
            "task_data": task_data,
        }
        status, reply = await self.call("POST", "/api/v1/tasks/submit", json={**body, **fields})
        assert status == 200, reply
        return reply["task_id"]

    async def status(self, task_id: str) -> dict[str, Any]:
        """The status body of a task (which must exist)."""
        status, body = await self.call("GET", f"/api/v1/tasks/{task_id}/status")
        assert status == 200, body
        return body

    async def wait_all(self, task_ids: list[str], predicate: Any = None, timeout: float = 60) -> list[dict]:
        """Poll until every task satisfies `predicate` (default: ended); their status bodies."""
        predicate = predicate or (lambda body: body["status"] in TERMINAL)
        bodies: dict[str, dict] = {}
        async with asyncio.timeout(timeout):
            while len(bodies) < len(task_ids):
                for task_id in task_ids:
                    if task_id not in bodies and predicate(body := await self.status(task_id)):
                        bodies[task_id] = body
                await asyncio.sleep(0.1)
        return [bodies[task_id] for task_id in task_ids]


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, redis: RedisConfig, *, workers: bool = True, **sections: Any
) -> collections.abc.AsyncIterator[tuple[Service, Api]]:
    """A taskd (its API, and its workers unless told not) on `redis` (with no url: its embedded
    Valkey), without rate limits or the project throttle, in this process; it and its API.
    `sections` replace those of the test config (make_config)."""
    limits = LimitsConfig(submit_per_minute=0, status_per_minute=0, concurrent_per_project=0)
    service = Service(
        make_config(tmp_path, redis.url, redis=redis, limits=limits, **sections), http=True, workers=workers
    )
    await service.start()
    try:
        host, port = service.addresses[0]
        async with aiohttp.ClientSession() as session:
            yield service, Api(session, f"http://{host}:{port}")
    finally:
        await service.stop(grace=1)


def runs(data_dir: Path) -> list[tuple[str, str, int, int]]:
    """The `record_run` log: (event, task id, attempt, pid) per line."""
    path = runs_path(data_dir)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        event, task_id, attempt, pid = line.split()
        rows.append((event, task_id, int(attempt), int(pid)))
    return rows


def child_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of a `taskd` child in a fault test: fast heartbeats and reclaim, no rate limits."""
    return {
        "TASKD_DATA_DIR": str(data_dir),
        "TASKD_HTTP__PORT": "0",
        "TASKD_AUTH__API_KEYS": API_KEY,
        "TASKD_TASKS__MODULES": "taskd.tasks.diagnostics",
        "TASKD_LIMITS__SUBMIT_PER_MINUTE": "0",
        "TASKD_LIMITS__STATUS_PER_MINUTE": "0",
        "TASKD_LIMITS__CONCURRENT_PER_PROJECT": "0",
        "TASKD_WEBHOOKS__ALLOW_PRIVATE": "true",
        "TASKD_WORKER__HEARTBEAT_INTERVAL": "0.5",
        "TASKD_WORKER__HEARTBEAT_TTL": "3",
        "TASKD_EXECUTION__RECLAIM_INTERVAL": "0.5",
        **extra,
    }


def connections_to(port: int) -> int:
    """How many TCP connections this process holds to `port`."""
    process = psutil.Process()
    connections = getattr(process, "net_connections", None) or process.connections  # psutil < 6 (floors)
    return sum(1 for held in connections("tcp") if held.raddr and held.raddr.port == port)


async def reads_across_a_stop(
    client: Redis, proc: subprocess.Popen[bytes], port: int, count: int
) -> list[Any]:
    """`count` GETs of a missing key sent while `proc` (a Valkey or a sentinel) is stopped
    (SIGSTOP), which is resumed once each of them holds a connection of its own to `port`: their
    answers. A pool that connects under its lock never gets there (the wait's 30 s raise)."""
    reads: list[asyncio.Task[Any]] = []
    try:
        proc.send_signal(signal.SIGSTOP)
        reads = [asyncio.create_task(client.get("k")) for _ in range(count)]
        async with asyncio.timeout(30):
            while connections_to(port) < count:
                await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGCONT)
        async with asyncio.timeout(30):
            return await asyncio.gather(*reads)
    finally:
        for read in reads:
            read.cancel()
        proc.send_signal(signal.SIGCONT)


def monotonic() -> float:
    """time.monotonic, for measuring how long a step took."""
    return time.monotonic()
