"""`GET /metrics`: Prometheus exposition of the shared counters in Redis, queues, workers, GPUs and this process.

Everything but this process's own figures (the standard `process_*` ones, `taskd_build_info`) and
its host's GPUs is read from Redis at scrape time, so any API node reports the whole cluster and a
restart loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Iterator, Mapping

import attrs
from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from taskd import agreement, keys
from taskd.gpu.hosts import HostGpus, read_hosts
from taskd.heartbeat import WorkerInfo, live_workers
from taskd.http.context import API, Api
from taskd.http.scope import CALLER
from taskd.model import ApiError, now
from taskd.redis_memory import RedisMemory, fullest, read_every_node
from taskd.version import version

log = logging.getLogger("taskd.http")

# Task counters: metric suffix -> (aggregate field in the metrics hash, per-type field prefix, help).
TASK_COUNTERS = {
    "submitted": ("total_tasks", "submitted:", "Tasks submitted (retries included)"),
    "completed": ("completed_tasks", "duration_count:", "Tasks that completed"),
    "failed": ("failed_tasks", "failed:", "Tasks that failed"),
    "retried": ("retried_tasks", "retried:", "Automatic retries scheduled after a failure"),
    "cancelled": ("cancelled_tasks", "cancelled:", "Tasks cancelled while queued or processing"),
}
# Upper bounds (seconds) of the duration histogram buckets the store's finish script counts in
# `duration_in:<type>:<le>` fields (a task counts once, in the first bucket it fits: one write per
# task), added up here; `duration_bucket:<type>:<le>` fields (cumulative) are what it wrote before.
DURATION_BUCKETS = keys.DURATION_BUCKETS
# Upper bounds (seconds) of the wait-time histogram that the store's start script counts in
# `wait_in:<queue>:<type>:<le>` fields, one per start, the same way.
WAIT_BUCKETS = keys.WAIT_BUCKETS
UNTYPED = "unknown"  # counts recorded before per-type counters existed


@attrs.frozen
class Snapshot:
    """What Redis says at scrape time."""

    counters: dict[str, str]
    waiting: dict[str, int]
    running: dict[str, int]
    oldest_started: dict[str, float | None]
    workers: list[WorkerInfo]
    at: float
    redis_memory: RedisMemory | None = None
    webhooks_due: int = 0
    gpus: list[HostGpus] = attrs.Factory(list)
    # What Redis last failed to write to its disk (taskd.redis_memory), or None.
    redis_persistence_failure: str | None = None
    # The settings live processes publish (taskd.agreement), and those they do not agree on.
    compared_settings: frozenset[str] = frozenset()
    differing_settings: frozenset[str] = frozenset()


async def take_snapshot(api: Api) -> Snapshot:
    """Read counters, queues, live workers, the webhook outbox and this host's GPU slots from Redis."""
    queues = await api.queues_in_use()
    per_queue = await api.store.running_first(queues, 1)
    published = await agreement.read(api.redis, api.config.worker.heartbeat_ttl)
    # One value for every partition's server: the one nearest full, a failure to persist of any.
    nodes = await read_every_node(api.store.clients)
    return Snapshot(
        counters=await api.store.counters(),
        waiting=await api.queue.waiting(queues),
        running={queue: count for queue, (count, _) in per_queue.items()},
        oldest_started={queue: first[0][1] if first else None for queue, (_, first) in per_queue.items()},
        workers=await live_workers(api.redis, api.config.worker.heartbeat_ttl),
        at=now(),
        redis_memory=fullest(nodes),
        webhooks_due=await api.store.webhooks_due(),
        gpus=await read_hosts(api.redis, api.config.worker.heartbeat_ttl),
        redis_persistence_failure=next(
            (node.persistence_failure for node in nodes if node.persistence_failure), None
        ),
        compared_settings=frozenset(
            name for process in published for name in process.digests if agreement.governs(name) is not None
        ),
        differing_settings=frozenset(difference.setting for difference in agreement.differences(published)),
    )


def _number(text: str | None) -> float:
    try:
        return float(text) if text is not None else 0.0
    except ValueError:
        return 0.0


def _per_type(counters: Mapping[str, str], prefix: str) -> dict[str, float]:
    return {
        name.removeprefix(prefix): _number(value)
        for name, value in counters.items()
        if name.startswith(prefix) and ":" not in name.removeprefix(prefix)
    }


def task_counters(counters: Mapping[str, str]) -> Iterator[Metric]:
    """`taskd_tasks_<outcome>_total{task_type}`; counts without a type are labelled `unknown`."""
    for suffix, (total_field, prefix, help_text) in TASK_COUNTERS.items():
        family = CounterMetricFamily(
            f"taskd_tasks_{suffix}", f"{help_text}, by task type", labels=["task_type"]
        )
        by_type = _per_type(counters, prefix)
        for task_type, value in sorted(by_type.items()):
            family.add_metric([task_type], value)
        untyped = _number(counters.get(total_field)) - sum(by_type.values())
        if untyped > 0 or not by_type:
            family.add_metric([UNTYPED], max(0.0, untyped))
        yield family


def duration_histogram(counters: Mapping[str, str]) -> Metric:
    """`taskd_task_duration_seconds{task_type}` of completed tasks; only `+Inf` until buckets are counted."""
    family = HistogramMetricFamily(
        "taskd_task_duration_seconds", "Run time of completed tasks, by task type", labels=["task_type"]
    )
    for task_type, count in sorted(_per_type(counters, "duration_count:").items()):
        buckets = []
        # A bucket shows once some task fitted in it (or below), as when every bucket was written.
        below, seen = 0.0, False
        for le in DURATION_BUCKETS:
            counted = counters.get(f"duration_in:{task_type}:{le}")
            cumulative = counters.get(f"duration_bucket:{task_type}:{le}")
            below += _number(counted)
            seen = seen or counted is not None
            if seen or cumulative is not None:
                buckets.append((str(float(le)), below + _number(cumulative)))
        buckets.append(("+Inf", count))
        family.add_metric([task_type], buckets, _number(counters.get(f"duration_sum:{task_type}")))
    return family


def wait_histogram(counters: Mapping[str, str]) -> Metric:
    """`taskd_task_wait_seconds{queue,task_type}`: from when a task could start to when it started."""
    family = HistogramMetricFamily(
        "taskd_task_wait_seconds",
        "Time tasks waited to start (from submit, their scheduled time or their retry's), by queue and type",
        labels=["queue", "task_type"],
    )
    prefix = "wait_count:"
    for field, count in sorted(counters.items()):
        if not field.startswith(prefix):
            continue
        series = field.removeprefix(prefix)
        queue, _, task_type = series.rpartition(":")
        below, buckets = 0.0, []
        for le in WAIT_BUCKETS:
            below += _number(counters.get(f"wait_in:{series}:{le}"))
            buckets.append((str(float(le)), below))
        buckets.append(("+Inf", _number(count)))
        family.add_metric([queue, task_type], buckets, _number(counters.get(f"wait_sum:{series}")))
    return family


def queue_gauges(snapshot: Snapshot) -> Iterator[Metric]:
    """Waiting and running tasks per queue, and how long the oldest running task has run."""
    waiting = GaugeMetricFamily("taskd_queue_waiting_tasks", "Tasks waiting to start", labels=["queue"])
    running = GaugeMetricFamily("taskd_queue_running_tasks", "Tasks processing now", labels=["queue"])
    oldest = GaugeMetricFamily(
        "taskd_queue_oldest_running_task_age_seconds",
        "Seconds the longest-running task of the queue has been processing (0 when none)",
        labels=["queue"],
    )
    # A queue that no live worker serves (each worker host runs `--queues` without it) waits for ever.
    serving = GaugeMetricFamily(
        "taskd_queue_workers", "Live worker processes that serve the queue", labels=["queue"]
    )
    for queue in sorted(snapshot.running):
        waiting.add_metric([queue], snapshot.waiting.get(queue, 0))
        running.add_metric([queue], snapshot.running[queue])
        started = snapshot.oldest_started.get(queue)
        oldest.add_metric([queue], max(0.0, snapshot.at - started) if started is not None else 0.0)
        serving.add_metric([queue], sum(queue in worker.queues for worker in snapshot.workers))
    yield from (waiting, running, oldest, serving)


def worker_gauges(workers: Iterable[WorkerInfo]) -> Iterator[Metric]:
    """Live worker processes, and each one's RSS and running jobs."""
    workers = list(workers)
    yield GaugeMetricFamily(
        "taskd_workers_live", "Worker processes with a fresh heartbeat", value=len(workers)
    )
    rss = GaugeMetricFamily(
        "taskd_worker_resident_memory_bytes", "RSS of each live worker process", labels=["worker_id", "host"]
    )
    jobs = GaugeMetricFamily(
        "taskd_worker_running_tasks", "Tasks each live worker process runs now", labels=["worker_id", "host"]
    )
    for worker in workers:
        rss.add_metric([worker.worker_id, worker.host], worker.rss_bytes)
        jobs.add_metric([worker.worker_id, worker.host], worker.running)
    yield from (rss, jobs)


def webhook_counters(counters: Mapping[str, str]) -> Iterator[Metric]:
    """Webhooks delivered, and given up after every retry."""
    yield CounterMetricFamily(
        "taskd_webhooks_delivered",
        "Webhooks delivered (2xx)",
        value=_number(counters.get("webhooks_delivered")),
    )
    yield CounterMetricFamily(
        "taskd_webhooks_failed",
        "Webhooks given up after all retries",
        value=_number(counters.get("webhooks_failed")),
    )


def webhook_backlog(due: int) -> Metric:
    """Webhooks in the durable outbox: due now, or waiting for their next retry."""
    return GaugeMetricFamily(
        "taskd_webhooks_due", "Webhooks in the outbox, not yet delivered or given up", value=due
    )


def gpu_gauges(hosts: Iterable[HostGpus]) -> Iterator[Metric]:
    """Utilisation, memory, temperature and slots of each device of every live worker host,
    as its last heartbeat published them."""
    labels = ["host", "gpu", "name"]
    util = GaugeMetricFamily("taskd_gpu_utilization_ratio", "GPU utilisation, 0..1", labels=labels)
    used = GaugeMetricFamily("taskd_gpu_memory_used_bytes", "GPU memory in use", labels=labels)
    total = GaugeMetricFamily("taskd_gpu_memory_total_bytes", "GPU memory in all", labels=labels)
    temperature = GaugeMetricFamily(
        "taskd_gpu_temperature_celsius", "GPU temperature (devices with a sensor reading)", labels=labels
    )
    slots = GaugeMetricFamily("taskd_gpu_slots", "Jobs the device runs at once", labels=labels)
    slots_used = GaugeMetricFamily("taskd_gpu_slots_used", "Slots held by running jobs", labels=labels)
    for host in hosts:
        for device in host.devices:
            ids = [host.host, str(device.index), device.name]
            util.add_metric(ids, device.utilization / 100.0)
            used.add_metric(ids, device.memory_used)
            total.add_metric(ids, device.memory_total)
            if device.temperature is not None:
                temperature.add_metric(ids, device.temperature)
            slots.add_metric(ids, device.slots)
            slots_used.add_metric(ids, device.slots_used)
    yield from (util, used, total, temperature, slots, slots_used)


def build_info() -> Metric:
    """`taskd_build_info{version}` 1: which taskd the scraped process runs."""
    info = GaugeMetricFamily(
        "taskd_build_info", "The taskd version of the scraped process", labels=["version"]
    )
    info.add_metric([version()], 1)
    return info


def redis_memory_gauges(memory: RedisMemory | None) -> Iterator[Metric]:
    """Redis's used memory and its maxmemory (0: none); no sample when INFO gave no answer."""
    used = GaugeMetricFamily("taskd_redis_memory_used_bytes", "Memory Redis uses (INFO used_memory)")
    limit = GaugeMetricFamily(
        "taskd_redis_memory_max_bytes", "Redis maxmemory; writes are refused past it (0: no limit)"
    )
    if memory is not None:
        used.add_metric([], memory.used)
        limit.add_metric([], memory.limit)
    yield from (used, limit)


def redis_persistence_gauge(failure: str | None) -> Metric:
    """0 while Redis reports its last write to disk failed (it refuses writes: MISCONF), else 1."""
    return GaugeMetricFamily(
        "taskd_redis_persistence_ok",
        "0 while Redis cannot write to its disk (its last append-only file write or snapshot failed)",
        value=failure is None,
    )


def settings_gauge(compared: frozenset[str], differing: frozenset[str]) -> Metric:
    """1 for each setting that live processes disagree on, 0 for each other they publish (each
    limit, retry field and provider's limits is a setting of its own: `limits.submit_per_minute`).

    The queue health's `settings_mismatch` warning, for the operators who alert from Prometheus: a
    difference shows only as 401s, 403s or refused submits that depend on the node.
    """
    family = GaugeMetricFamily(
        "taskd_settings_mismatch",
        "1 while live taskd processes disagree on the setting (docs/production.md)",
        labels=["setting"],
    )
    for setting in sorted(compared | differing):
        family.add_metric([setting], setting in differing)
    return family


class SnapshotCollector(Collector):
    """Yields the metric families of one scrape's snapshot (None: Redis did not answer)."""

    def __init__(self, snapshot: Snapshot | None) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Every taskd metric family."""
        up = GaugeMetricFamily(
            "taskd_redis_up", "1 if Redis answered this scrape", value=self.snapshot is not None
        )
        yield up
        yield build_info()
        # Without Redis no host's GPUs can be read: the families stay, without samples.
        yield from gpu_gauges(self.snapshot.gpus if self.snapshot is not None else [])
        if self.snapshot is None:
            return
        yield from task_counters(self.snapshot.counters)
        yield duration_histogram(self.snapshot.counters)
        yield wait_histogram(self.snapshot.counters)
        yield from queue_gauges(self.snapshot)
        yield from worker_gauges(self.snapshot.workers)
        yield from webhook_counters(self.snapshot.counters)
        yield webhook_backlog(self.snapshot.webhooks_due)
        yield from redis_memory_gauges(self.snapshot.redis_memory)
        yield redis_persistence_gauge(self.snapshot.redis_persistence_failure)
        yield settings_gauge(self.snapshot.compared_settings, self.snapshot.differing_settings)


# The `version=` parameter of a media range in an Accept header.
_VERSION = re.compile(r";\s*version=[^;,]*")


def exposition(snapshot: Snapshot | None, accept: str = "") -> tuple[bytes, str]:
    """One scrape (this process's CPU, memory and file descriptors included) and its content type,
    in the text format or OpenMetrics as the `Accept` header asks."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    # The standard names (`process_cpu_seconds_total`, ...), which dashboards and alerts expect.
    ProcessCollector(registry=registry)
    try:
        encoder, content_type = choose_encoder(accept)
    except TypeError:
        # A newer prometheus_client compares a `version=` it cannot read as numbers (`version=abc`,
        # `1.x`) with a tuple of ints and raises: a 500 and a traceback for a header anyone may send.
        # Such a version is read as none, as prometheus-client 0.20 (the floor) reads every version:
        # `application/openmetrics-text` gets OpenMetrics 1.0.0, `text/plain` the text format.
        encoder, content_type = choose_encoder(_VERSION.sub("", accept))
    return encoder(registry), content_type


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics; no key unless `metrics.require_key` is set."""
    api = request.app[API]
    if api.config.metrics.require_key and CALLER not in request:
        raise ApiError(401, "authentication_failed", "Invalid or missing API key")
    try:
        async with asyncio.timeout(5):
            snapshot: Snapshot | None = await take_snapshot(api)
    except Exception as exc:  # a scrape must still answer, saying Redis is down
        log.warning("metrics scrape could not read Redis: %s", exc)
        snapshot = None
    body, content_type = exposition(snapshot, request.headers.get("Accept", ""))
    # A snapshot of now, and with `require_key` an answer for a key: a cache in front (Varnish
    # keeps a 200 without Cache-Control for two minutes) would hand it to a caller without one, as
    # it would an answer of /api/v1/ (taskd.http.auth).
    return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})
