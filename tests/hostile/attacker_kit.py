"""What the attacker suite needs: a real `taskd serve` with known secrets, hostile files, and loopback peers.

The peers are plain threaded HTTP servers. `127.0.0.2` plays the public internet (taskd is told to trust
that one network, `network.allow_networks`); `127.0.0.1` plays the internal network the attacker wants to
reach, and records every request it gets, so "nothing reached it" is a count of zero.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
from media_files import png_bomb

PUBLIC_HOST = "127.0.0.2"
INTERNAL_HOST = "127.0.0.1"
TERMINAL = {"completed", "failed", "cancelled"}


@attrs.frozen
class Secrets:
    """Every secret the service is given; none may ever reach an attacker, a log or a child."""

    api_key: str = "attacker-suite-admin-key-5b1f0e"
    scoped_key: str = "attacker-suite-tenant-key-9c2d4a"
    provider_key: str = "sk-provider-secret-77e1c9d0"
    media_secret: str = "media-secret-3f9a1c5e7b2d4f60a8c1e3b5d7f9a2c4"
    webhook_secret: str = "whsec_" + base64.b64encode(b"attacker-suite-global-webhook!!").decode()
    tenant_webhook_secret: str = "whsec_" + base64.b64encode(b"attacker-suite-tenant-webhook!!").decode()

    def values(self) -> list[str]:
        """The strings to look for; a webhook secret also by its base64 body alone."""
        plain = [self.api_key, self.scoped_key, self.provider_key, self.media_secret]
        hooks = [self.webhook_secret, self.tenant_webhook_secret]
        return plain + hooks + [s.removeprefix("whsec_") for s in hooks]


class Recorder(http.server.ThreadingHTTPServer):
    """A loopback HTTP server: serves `files`, redirects `/redirect?to=`, records every request."""

    daemon_threads = True

    def __init__(self, host: str) -> None:
        super().__init__((host, 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        """`http://<host>:<port>`."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, name: str, body: bytes) -> str:
        """Serve `body` at `/files/<name>`; its URL."""
        self.files[name] = body
        return f"{self.base_url}/files/{name}"

    def hits(self) -> int:
        """How many requests arrived so far."""
        with self.lock:
            return len(self.requests)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Recorder

    def log_message(self, *_: Any) -> None:
        pass

    def _record(self, body: bytes) -> None:
        with self.server.lock:
            self.server.requests.append((self.command, self.path, dict(self.headers), body))

    def do_GET(self) -> None:
        self._record(b"")
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/redirect?to="))
            self.end_headers()
            return
        body = self.server.files.get(self.path.removeprefix("/files/"))
        if body is None:
            # What an internal service might answer: the attacker must never see it.
            body = b'{"internal": "instance-metadata", "token": "INTERNAL-ONLY-9f8e7d"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/x-internal-secret")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._record(self.rfile.read(length))
        self.send_response(204)
        self.end_headers()


@contextlib.contextmanager
def serving(host: str) -> Iterator[Recorder]:
    """A Recorder running in a thread on `host`."""
    server = Recorder(host)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@attrs.define
class Taskd:
    """A `taskd serve` child process, its data dir and its log file."""

    proc: subprocess.Popen[str]
    base_url: str
    data_dir: Path
    log_path: Path

    def client(self, key: str) -> httpx.Client:
        """An HTTP client of the API that sends `key`."""
        return httpx.Client(base_url=self.base_url, headers={"X-API-Key": key}, timeout=30)

    def log(self) -> str:
        """Everything the service logged so far."""
        return self.log_path.read_text("utf-8", "replace")


def start_taskd(root: Path, secrets: Secrets, public: Recorder) -> Taskd:
    """`taskd serve` on a free port, the embedded Valkey, a scoped key, every secret set, JSON logs."""
    data_dir = root / "data"
    scoped = [
        {"key": secrets.scoped_key, "projects": ["tenant-a"], "webhook_secret": secrets.tenant_webhook_secret}
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    env.update(
        {
            "TASKD_DATA_DIR": str(data_dir),
            "TASKD_HTTP__PORT": "0",
            "TASKD_AUTH__API_KEYS": secrets.api_key,
            "TASKD_AUTH__KEYS": json.dumps(scoped),
            "TASKD_MEDIA__SECRET": secrets.media_secret,
            "TASKD_WEBHOOKS__SECRET": secrets.webhook_secret,
            "TASKD_PROVIDERS__LLM__API_KEY": secrets.provider_key,
            "TASKD_PROVIDERS__IMAGE__API_KEY": secrets.provider_key,
            "TASKD_PROVIDERS__SPEECH__API_KEY": secrets.provider_key,
            "TASKD_PROVIDERS__LLM__BASE_URL": f"{public.base_url}/v1",
            "TASKD_NETWORK__ALLOW_NETWORKS": f"{PUBLIC_HOST}/32",
            "TASKD_TASKS__MODULES": "taskd.tasks.diagnostics",
            "TASKD_LIMITS__SUBMIT_PER_MINUTE": "0",
            "TASKD_LIMITS__STATUS_PER_MINUTE": "0",
            "TASKD_MEDIA__DOWNLOAD_TIMEOUT": "5",
            "TASKD_LOGGING__FORMAT": "json",
            "TASKD_LOGGING__LEVEL": "DEBUG",
        }
    )
    log_path = root / "taskd.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskd", "serve"],
            env=env,
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if match := re.search(r"listening on (http://\S+)", line):
            # The rest of stdout is drained so the service never blocks on a full pipe.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return Taskd(proc, match.group(1), data_dir, log_path)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"taskd serve did not start: {log_path.read_text()}")


def stop_taskd(taskd: Taskd) -> None:
    """SIGTERM, then SIGKILL if it does not stop in time."""
    taskd.proc.terminate()
    try:
        taskd.proc.wait(30)
    except subprocess.TimeoutExpired:
        taskd.proc.kill()
        taskd.proc.wait(10)
    if taskd.proc.stdout is not None:
        taskd.proc.stdout.close()


def wait_terminal(client: httpx.Client, task_id: str, timeout: float = 60) -> dict[str, Any]:
    """Poll the status until the task has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/tasks/{task_id}/status").json()
        if body["status"] in TERMINAL:
            return body
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not end within {timeout} s")


def tree_state(root: Path, skip: tuple[str, ...]) -> dict[str, str]:
    """Every file under `root` (not under the `skip` folders) with a digest of its content."""
    state = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if relative.split("/")[0] in skip or not path.is_file():
            continue
        state[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


# ---- hostile files (the rest are in media_files.py) ------------------------------------------------


def small_png() -> bytes:
    """A valid 32x32 grey PNG."""
    return png_bomb(32, 32)
