"""`taskd serve` and `taskd worker`: the HTTP API, the workers and the heartbeat in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from functools import partial
from pathlib import Path

import aiohttp
import attrs
import psutil
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from taskd import apikey, files, keys, logs, tracing
from taskd.agreement import Agreement, Published, digests, queues_watched, roles_of
from taskd.childenv import keep_inherited_descriptors
from taskd.clock import RedisClock
from taskd.config import Config, ConfigError
from taskd.embedded import DataDirInUse, EmbeddedValkey, ServerDidNotStart
from taskd.engine.executor import Executor
from taskd.engine.jobproc.pool import RunnerPool
from taskd.engine.keeper import LiveRecords
from taskd.engine.loopwatch import LoopWatch
from taskd.engine.reclaim import Reclaimer
from taskd.engine.scheduled import ScheduledRelease
from taskd.gpu.devices import DeviceBackend, GpuInventory
from taskd.gpu.hosts import HostPublisher
from taskd.gpu.scheduler import GpuScheduler
from taskd.heartbeat import Heartbeat, WorkerInfo, new_worker_id
from taskd.http.app import create_app
from taskd.http.context import Api
from taskd.http.keytable import KeyTable
from taskd.http.send_timeout import BoundedSite
from taskd.logs import REDACTOR, secrets_of, url_password
from taskd.loops import every
from taskd.media import ffmpeg
from taskd.media.capacity import MediaCapacity
from taskd.media.publish import withdraw_later
from taskd.media.retention import MediaSweeper
from taskd.media.store import base_url as media_base_url
from taskd.media.store import load_secret, media_dir, scratch_root
from taskd.model import now
from taskd.net.guard import AddressPolicy
from taskd.providers.http import USER_AGENT as PROVIDERS_USER_AGENT
from taskd.providers.limits import ProviderLimits
from taskd.queue.task_queue import TaskQueue
from taskd.queue.workers import WorkerPool
from taskd.redis_conn import (
    connect,
    connect_partitions,
    distinct_partitions,
    printable,
    redis_of,
    refuse_cluster,
    tls_hint,
    wait_until_answers,
)
from taskd.redis_memory import eviction_risk, read_every_node
from taskd.redis_needs import check_commands
from taskd.sdnotify import Notifier
from taskd.shown_paths import SHOWN_PATHS
from taskd.stopping import cancel_and_wait, cancel_within_rounds
from taskd.store import Admission, TaskStore, layout
from taskd.store.run_state import RunStates
from taskd.submit.dispatch import Dispatcher
from taskd.tasks.registry import Registry, check_names, default_registry
from taskd.webhooks.sender import WebhookSender
from taskd.webhooks.signing import SECRET_PREFIX, Signers, own_secret_ids

log = logging.getLogger("taskd")

# How long a stop waits for the hand-back writes of the runs it cancelled before it lets go of
# Redis (they retry while Redis is unreachable; one not done by then is queued again by the reclaim).
HAND_BACK_WAIT = 10.0

# aiohttp reads a shutdown_timeout of 0 as "no bound": a grace of 0 still ends requests in flight.
LEAST_REQUEST_WAIT = 0.1

# The exit status of a start-up that could not use its Redis: the operator commands' (cli_admin).
EXIT_REDIS = 3
# ... that the host refused what it needs: its HTTP address (in use, not this host's), a file or
# directory of the data dir (cannot be made, read or written).
EXIT_HOST = 4


class StartFailed(Exception):
    """Start-up could not finish: a line fit for stderr, and the exit status that says why."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def served_queues(config: Config, registry: Registry, only: list[str] | None) -> list[str]:
    """The queues this process works on: `only` if given (checked), else every known queue."""
    known = set(config.queues) | registry.queues()
    missing = sorted(registry.queues() - set(config.queues))
    if missing:
        raise ConfigError(f"queues {', '.join(missing)} are used by task types but not configured")
    if not only:
        return sorted(known)
    unknown = sorted(set(only) - known)
    if unknown:
        raise ConfigError(
            f"--queues names unknown queue(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return list(dict.fromkeys(only))


class Service:
    """One taskd process: optionally the HTTP API, optionally workers, always on one Redis."""

    def __init__(
        self,
        config: Config,
        *,
        http: bool,
        workers: bool,
        queues: list[str] | None = None,
        gpu_backend: DeviceBackend | None = None,
    ) -> None:
        # As written, links and all (anchored() resolves them): whoever can replace a link on it
        # chooses where it leads, so check_data_dir checks the folders of both paths.
        self._data_dir_written = Path(os.path.abspath(Path(config.data_dir).expanduser()))
        # Its directories fixed now: a handler's os.chdir must not move them (Config.anchored).
        self.config = config = config.anchored()
        self.gpu_backend = gpu_backend
        self.http = http
        self.registry = default_registry(config.tasks)
        check_names(config, self.registry)
        self.queues = served_queues(config, self.registry, queues) if workers else []
        self.generated_key: str | None = None
        self.key_is_new = False  # the generated key was made by this start (printed once, now)
        # The file of the webhook signing secret taskd made, when webhooks.secret is not set.
        self.webhook_secret_file: Path | None = None
        self.addresses: list[tuple[str, int]] = []
        self.worker_id = new_worker_id(config.worker.host)
        self._stack = contextlib.AsyncExitStack()
        self._embedded: EmbeddedValkey | None = None
        self._background: list[asyncio.Task[None]] = []
        self._pool: WorkerPool | None = None
        self._runners: RunnerPool | None = None
        self._executor: Executor | None = None
        self._heartbeat: Heartbeat | None = None
        self._agreement: Agreement | None = None
        # The keys the API accepts (configured, or made and kept in the data dir).
        self._api_keys: list[str] = list(config.auth.api_keys)
        self._runner: web.AppRunner | None = None
        self._stopped = False
        self._listener: Redis | None = None
        self._url = ""  # the Redis in use, once known: what a start-up failure names

    async def _redis_url(self) -> str:
        if self.config.redis.url:
            return self.config.redis.url
        if not self.http:
            running = EmbeddedValkey.running_url(self.config.data_path)
            if running is None:
                raise ConfigError(
                    f"no redis.url is set and no embedded server runs for data_dir {self.config.data_path}: "
                    "start `taskd serve` with the same data_dir first, or set TASKD_REDIS__URL"
                )
            return running
        self._embedded = EmbeddedValkey(
            self.config.data_path,
            appendfsync=self.config.redis.embedded_appendfsync,
            maxmemory=self.config.redis.embedded_maxmemory,
            allocator=self.config.redis.embedded_allocator,
        )
        self._stack.push_async_callback(self._embedded.stop)
        try:
            url = await self._embedded.start()
        except DataDirInUse as exc:
            raise ConfigError(f"data_dir {self.config.data_path}: {exc}") from None
        except ServerDidNotStart as exc:
            # A damaged append-only file, a bad setting: what the server said last, and where the rest is.
            raise StartFailed(
                f"the embedded valkey did not start (see {self._embedded.log_path}): {exc.reason}", EXIT_REDIS
            ) from None
        self._background.append(asyncio.create_task(self._embedded.supervise(), name="embedded-valkey"))
        return url

    async def start(self) -> None:
        """Connect (starting the embedded Valkey if needed), then start workers and the API."""
        try:
            await self._start()
        except BaseException as exc:
            # What had started is stopped as at a SIGTERM, without the grace: a job a worker took
            # before the API failed to listen goes back to its queue at once.
            await self.stop(grace=0)
            if isinstance(exc, RedisError):
                # Unreachable past redis.start_wait, a wrong password, a user refused a command:
                # what an operator must mend, said in one line rather than a traceback.
                where = printable(self._url)
                raise StartFailed(
                    f"Redis at {where}: {type(exc).__name__}: {exc}{tls_hint(self._url, exc)}", EXIT_REDIS
                ) from None
            if isinstance(exc, OSError) and exc.filename is not None:
                raise StartFailed(f"cannot use {exc.filename}: {exc.strerror or exc}", EXIT_HOST) from None
            raise

    async def _start(self) -> None:
        # Before anything in it is read or made: another user's data dir chooses what taskd trusts.
        files.check_data_dir(self._data_dir_written)
        signers = self._webhook_signers()  # first: a damaged secret file stops start-up before anything runs
        # Before the API and the sessions are made: they take the tracing middleware and trace configs.
        tracing.setup()
        self._url = url = await self._redis_url()
        REDACTOR.add(url_password(url))  # the embedded server's password is in no config field
        self._register_secrets()
        # Every command is bounded (a hung Redis means 503s, not hung requests); the pub/sub
        # listener gets its own client without a read timeout, as it may wait for ever.
        keys.configure_partitions(self.config.redis.partitions)
        redis = connect(url, socket_timeout=self.config.redis.socket_timeout or None)
        self._stack.push_async_callback(redis.aclose)
        partition_clients = connect_partitions(
            url, redis, socket_timeout=self.config.redis.socket_timeout or None
        )
        for client in partition_clients[1:]:
            if client is not redis:
                self._stack.push_async_callback(client.aclose)
        self._listener = connect(url)
        self._stack.push_async_callback(self._listener.aclose)
        await wait_until_answers(redis, url, self.config.redis.start_wait)
        await refuse_cluster(url, redis)
        await layout.upgrade(redis)
        await layout.check_partitions(redis)
        # On a cluster each shard has its own ACL and rename-commands: each partition's is checked.
        nodes = distinct_partitions(partition_clients)
        for partition, client in nodes:
            await check_commands(client, redis_of(partition if len(nodes) > 1 else None))
        # A managed Redis often comes with an evicting policy (allkeys-lru, volatile-lru): said at
        # every start, as /api/v1/tasks/health says it, rather than learnt from lost tasks. Each
        # partition's server: a cluster's shards each have their own policy.
        for node in await read_every_node(partition_clients):
            if node.memory is not None and (risk := eviction_risk(node.memory, redis_of(node.partition))):
                log.warning("%s", risk)
        # Before anything stamps a time: every process's times on Redis's clock (taskd/clock.py).
        redis_clock = RedisClock(redis)
        await redis_clock.follow()
        self._background.append(asyncio.create_task(redis_clock.run(), name="redis-clock"))
        # Providers' calls go through this session: with tracing on, each is a span of its run.
        session = await self._stack.enter_async_context(
            aiohttp.ClientSession(
                headers={"User-Agent": PROVIDERS_USER_AGENT}, trace_configs=tracing.client_trace_configs()
            )
        )
        store = TaskStore(
            redis,
            self.config.storage.task_ttl,
            self.config.redis.wait_replicas,
            self.config.redis.wait_timeout,
            concurrent_per_project=self.config.limits.concurrent_per_project,
            aging_window=self.config.execution.priority_aging,
            progress_interval=self.config.webhooks.progress_interval,
            partition_clients=partition_clients,
        )
        # Every process's queues are known to every other, and stay known once a later config names
        # them no more: their tasks are still kept, shown and alerted on (docs/guarantees.md). With
        # no process of this version alive, processes of an earlier one may have run meanwhile (a
        # downgrade and this upgrade again, the end of a rolling upgrade), lining up jobs without
        # naming their queue: the queues are looked for again. That look, a pass over the whole
        # keyspace, is made after the start, by the loop that makes the one at the end of a rolling
        # upgrade (layout.Relook): every process stopped is also an ordinary restart of a whole
        # deployment, and a start waited seconds for it each time (3 million keys: 7 to 19 s).
        # This process's settings, published at the end of its start, spare those that start next.
        watched = await queues_watched(redis, self.config.worker.heartbeat_ttl)
        relook = layout.Relook(
            store.clients, at_start=not watched and await layout.queues_known(store.clients)
        )
        await layout.know_queues(store.clients)
        await store.name_queues(set(self.config.queues) | self.registry.queues())
        queue = TaskQueue(redis, self.config.execution.priority_aging, partition_clients)
        gpu = GpuScheduler(
            redis,
            GpuInventory(self.config.gpu, self.gpu_backend),
            self.worker_id,
            self.config.worker.host,
            partition_clients,
        )
        if self.queues:
            # Locating ffmpeg and probing its encoders block (file checks, a subprocess): done once
            # now, in a thread, not inside the event loop when the first media task needs them.
            self._background.append(asyncio.create_task(ffmpeg.warm_up(), name="ffmpeg-warm-up"))
            await self._start_workers(redis, store, queue, session, gpu)
        if self.http:
            await self._start_http(redis, store, queue, gpu)
        executor = self._executor
        reclaimer = Reclaimer(
            store,
            queue,
            self.config,
            sorted(set(self.config.queues) | self.registry.queues()),
            self.worker_id,
            None if executor is None else executor.held.__contains__,
        )
        self._background.append(asyncio.create_task(reclaimer.run(), name="reclaimer"))
        live = LiveRecords(store, sorted(set(self.config.queues) | self.registry.queues()), self.worker_id)
        self._background.append(asyncio.create_task(live.run(), name="live-records"))
        release = ScheduledRelease(store)
        self._background.append(asyncio.create_task(release.run(), name="scheduled-release"))
        for warning in [
            *self.config.webhooks.idle_caps(),
            *self.config.auth.shared_webhook_secrets(self.config.webhooks),
        ]:
            log.warning("%s", warning)
        sender = WebhookSender(
            redis,
            store,
            self.config.webhooks,
            self.config.storage.task_ttl,
            signers,
            listener=self._listener,
            policy=AddressPolicy.from_config(self.config),
        )
        if self._executor is not None:
            self._executor.webhooks = sender
        self._background.append(asyncio.create_task(sender.run(), name="webhook-sender"))
        sweeper = MediaSweeper.from_config(
            self.config, (task_type.hard_time_limit for task_type in self.registry.types.values())
        )
        self._background.append(
            asyncio.create_task(sweeper.run(self.config.media.sweep_interval), name="media-sweeper")
        )
        await self._start_agreement(redis, signers, relook)

    async def _start_agreement(self, redis: Redis, signers: Signers, relook: layout.Relook) -> None:
        # Settings that differ between hosts are said at start-up, by the process that starts, and
        # by every other one within its next publish (taskd.agreement).
        worker = self.config.worker
        me = Published(
            self.worker_id,
            worker.host,
            os.getpid(),
            roles_of(http=self.http, workers=bool(self.queues)),
            digests(
                self.config,
                api_keys=self._api_keys,
                webhook_secret=self.config.webhooks.secret or signers.generated_secret or "",
                media_secret=load_secret(self.config),
                media_base_url=media_base_url(self.config),
            ),
            names_queues=True,
        )
        self._agreement = agreement = Agreement(redis, me, worker.heartbeat_ttl)
        await agreement.publish()
        earlier = agreement.earlier_alive()

        async def publish() -> None:
            nonlocal earlier
            await agreement.publish()
            # A process of an earlier version (a rolling upgrade) lines up jobs without naming their
            # queue in the known queues, and its config may name a queue no config here names: once
            # it was gone, nothing here kept or showed the tasks it left there, the start's one look
            # (layout.know_queues) being long past. So the queues are looked for again then, once,
            # by a loop of its own (layout.Relook): this one keeps the settings record alive.
            was, earlier = earlier, agreement.earlier_alive()
            if was and not earlier:
                relook.ask()

        self._background += [
            asyncio.create_task(
                every(worker.heartbeat_interval, publish, name="settings", wait_first=True),
                name="settings",
            ),
            asyncio.create_task(
                every(worker.heartbeat_interval, relook.look_if_asked, name="queues look", wait_first=True),
                name="queues-look",
            ),
        ]

    def _register_secrets(self) -> None:
        # Every process masks every secret it holds, however it was started (the CLI, tests, an
        # embedding program): the config's, and those taskd keeps in files of the data dir.
        media_secret = load_secret(self.config).decode("utf-8", "replace")
        # A kept key file is read (and checked) only when it is the key in use: with configured
        # keys, an old or damaged file there is ignored rather than stopping start-up.
        configured = self.config.auth.api_keys or self.config.auth.keys
        kept = None if configured else apikey.kept_key(self.config.data_path)
        REDACTOR.add(*secrets_of(self.config), kept, media_secret)
        # Not secrets, but the operator's, and no business of a task's caller (shown_paths).
        SHOWN_PATHS.add(self.config.data_path, "<data_dir>")
        SHOWN_PATHS.add(media_dir(self.config), "<media_dir>")
        SHOWN_PATHS.add(scratch_root(self.config), "<scratch_dir>")
        # A model cache or a credentials file a handler names (~ stays ~ without a home to expand).
        SHOWN_PATHS.add(os.path.expanduser("~"), "~")

    def _webhook_signers(self) -> Signers:
        signers = Signers.from_config(self.config)
        self.webhook_secret_file = signers.generated_file
        if signers.generated_secret is not None:
            # No config field holds it, so the log redactor learns it here (its key part too).
            REDACTOR.add(signers.generated_secret, signers.generated_secret.removeprefix(SECRET_PREFIX))
        return signers

    async def _start_workers(
        self,
        redis: Redis,
        store: TaskStore,
        queue: TaskQueue,
        session: aiohttp.ClientSession,
        gpu: GpuScheduler,
    ) -> None:
        self._runners = runners = RunnerPool(self.config)
        self._executor = executor = Executor(
            store,
            queue,
            self.registry,
            self.config,
            session,
            self.worker_id,
            runners,
            gpu,
            ProviderLimits(redis, self.worker_id),
            RunStates(redis, store.clients, self.worker_id),
        )
        devices = gpu.inventory.read()
        log.info(
            "GPUs: %s",
            ", ".join(f"{d.index} ({d.name})" for d in devices) or "none; GPU queues run on the CPU",
        )
        # A host with GPUs claims one job at a time: a claim must hold a device's slots first.
        self._pool = pool = WorkerPool(
            redis,
            executor,
            self.registry,
            self.config,
            self.queues,
            take=not devices,
            partition_clients=store.clients,
        )
        # GPU slots came back: any queue's worker may now find a job that fits (cheap: a wake-up).
        executor.slots_freed = pool.wake_all
        worker = self.config.worker
        info = WorkerInfo(
            self.worker_id,
            worker.host,
            psutil.Process().pid,
            self.queues,
            now(),
            task_types=self.registry.runnable(),
        )
        gpus = HostPublisher(redis, gpu, worker.heartbeat_ttl)

        async def after_beat() -> None:
            # The host's GPUs live as long as its heartbeat; then the tasks whose cancel this
            # process may have missed are stopped.
            await gpus.publish()
            await executor.reconcile()

        self._heartbeat = Heartbeat(
            redis,
            info,
            worker.heartbeat_interval,
            worker.heartbeat_ttl,
            lambda: pool.running_jobs,
            # A job process or a coroutine task's tools (ffmpeg, espeak-ng): whichever is largest.
            lambda: max(runners.peak_rss(), executor.tools_rss),
            after_beat,
            partition_clients=store.clients,
        )
        # The heartbeat is the lease on every task this process runs: it must exist first.
        await self._heartbeat.beat()
        await gpus.publish()
        pool.start()
        self._background += [
            asyncio.create_task(self._heartbeat.run(), name="heartbeat"),
            asyncio.create_task(LoopWatch(executor.whose).run(), name="loop-watch"),
            asyncio.create_task(
                executor.listen(
                    self._listener, self._wake, every_wake=bool(devices), on_subscribed=pool.wake_all
                ),
                name="pubsub-listener",
            ),
        ]
        log.info("workers serving queues: %s", ", ".join(self.queues))

    def _wake(self, message: str) -> None:
        if self._pool is not None:
            self._pool.wake(*keys.woken(message))

    async def _start_http(self, redis: Redis, store: TaskStore, queue: TaskQueue, gpu: GpuScheduler) -> None:
        scoped = {entry.key: frozenset(entry.projects) for entry in self.config.auth.keys if entry.projects}
        for entry in self.config.auth.keys:
            REDACTOR.add(entry.key)
        configured = [*self.config.auth.api_keys, *(entry.key for entry in self.config.auth.keys)]
        # The kept file is looked at only when its key is the one in use (as in _register_secrets):
        # with configured keys, an old or damaged file there does not stop start-up.
        self.key_is_new = not configured and apikey.kept_key(self.config.data_path) is None
        api_keys, self.generated_key = apikey.load_or_create(configured, self.config.data_path)
        self._api_keys = api_keys
        REDACTOR.add(self.generated_key)
        limits = self.config.limits
        admission = Admission(
            limits.queued_per_project, limits.max_queue_length, limits.stored_bytes_per_project
        )
        dispatcher = Dispatcher(
            redis,
            store,
            queue,
            self.registry,
            admission,
            # A worker that takes batches is woken by the submit script itself (lib/wake.lua), through
            # its process's pub/sub listener, which hears it about when the script's reply reaches
            # the API: a direct wake-up as well made it take a second time for nothing, most tasks.
            # A worker that claims one job at a time (a host with GPUs) may be passed over by that
            # script (another host's worker was idle), so the API wakes it directly.
            on_enqueued=self._wake if self._pool is not None and not self._pool.take else None,
            media_capacity=MediaCapacity.from_config(self.config),
            # This process's own idle worker gets the task started by the submit script itself.
            hold=self._pool.hold if self._pool is not None and self._pool.take else None,
            webhook_secret_ids=own_secret_ids(self.config),
            withdraw_media=partial(withdraw_later, self.config),
            result_max_bytes=self.config.execution.result_max_bytes,
        )
        api = Api(
            self.config, redis, store, queue, self.registry, dispatcher, KeyTable.of(api_keys, scoped), gpu
        )
        if self._pool is not None:
            api.unready_queues = self._pool.unready
        self._background.append(asyncio.create_task(api.cpu_load.run(), name="cpu-load"))
        self._runner = web.AppRunner(
            create_app(api),
            access_log=None,
            keepalive_timeout=self.config.http.idle_timeout,
            # A stop gives the requests in flight the running jobs' grace, at the same time, then
            # cancels them: aiohttp's own 60 s let one client that never sent its body (held up to
            # http.body_timeout) keep the jobs running that long before their grace even began.
            shutdown_timeout=max(self.config.execution.shutdown_grace, LEAST_REQUEST_WAIT),
        )
        await self._runner.setup()
        host, port = self.config.http.host, self.config.http.port
        try:
            await BoundedSite(self._runner, host, port, send_timeout=self.config.http.send_timeout).start()
        except OSError as exc:
            # errno's own words ("Address already in use"), not the event loop's long sentence.
            reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror or str(exc)
            raise StartFailed(
                f"cannot listen on {host or '*'} port {port} (http.host, http.port): {reason}", EXIT_HOST
            ) from None
        self.addresses = [(address[0], address[1]) for address in self._runner.addresses]

    async def stop(self, grace: float | None = None) -> None:
        """Stop the API, let running jobs finish for up to `grace` seconds (default: config), hand back the rest."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.execution.shutdown_grace if grace is None else grace
        # The API and the workers stop side by side: the workers take no job from the moment the
        # stop begins, and a request still in flight costs the stop no more than the jobs' grace.
        await asyncio.gather(self._stop_http(), self._stop_workers(grace))
        if self._pool is not None:
            # A submit in flight may have started a job for a worker after the workers' stop (its
            # script held up past their wait for the slot it held): no request is left now.
            await self._pool.hand_back_late()
        if self._executor is not None:
            await self._executor.finish_hand_backs(HAND_BACK_WAIT)
        if self._runners is not None:
            await self._runners.close()
        await cancel_and_wait(self._background)
        if self._heartbeat is not None:
            with contextlib.suppress(Exception):
                await self._heartbeat.remove()
        if self._agreement is not None:
            with contextlib.suppress(Exception):
                await self._agreement.withdraw()
        await self._stack.aclose()
        # The spans of the last runs and requests leave before the process does.
        if tracing.enabled():
            await asyncio.to_thread(tracing.flush)

    async def _stop_http(self) -> None:
        # Stops listening, ends the event streams and Prefer: wait submits, waits for the other
        # requests up to the runner's shutdown_timeout, then cancels those still running.
        if self._runner is not None:
            await self._runner.cleanup()

    async def _stop_workers(self, grace: float) -> None:
        if self._pool is not None:
            await self._pool.stop(grace)

    def announce(self, *, print_key: bool = False) -> None:
        """Print where the API listens and, when taskd made the key itself on this start, the key:
        on a terminal, or wherever stdout goes with `print_key` (`taskd serve --print-key`).

        A stdout that cannot be written (a pipe whose reader went away: `taskd serve | head -1`)
        stops nothing: taskd serves on, and a log line says where it listens instead.
        """
        try:
            self._print_announcement(print_key=print_key)
        except OSError as exc:
            logs.discard_stdout()
            listening = ", ".join(f"http://{host}:{port}" for host, port in self.addresses)
            # Where the key is, never the key: a log line may go anywhere.
            key = (
                f"; API key in {Path(self.config.data_path) / apikey.KEY_FILE}" if self.generated_key else ""
            )
            log.warning(
                "stdout cannot be written (%s); taskd listening on %s%s", exc.strerror or exc, listening, key
            )

    def _print_announcement(self, *, print_key: bool) -> None:
        for host, port in self.addresses:
            print(f"taskd listening on http://{host}:{port}", flush=True)
        if self.generated_key is not None:
            where = Path(self.config.data_path) / apikey.KEY_FILE
            if self.key_is_new and (print_key or sys.stdout.isatty()):
                # The only time the key is shown: on the terminal (or where `--print-key` asked for it,
                # as `make run` does for a first start that may be piped), never in a log line.
                print(f"API key (made by taskd, kept in {where}): {self.generated_key}", flush=True)
            elif self.key_is_new:
                # A stdout that is no terminal is a log: the journal under systemd, a container's log,
                # whatever collects them. A key for every project has no place there.
                print(
                    f"API key (made by taskd, not printed: stdout is not a terminal): in {where}", flush=True
                )
            else:
                print(f"API key: in {where}", flush=True)
        if self.webhook_secret_file is not None:
            print(f"Webhook signing secret (made by taskd) kept in {self.webhook_secret_file}", flush=True)


async def run(
    config: Config, *, http: bool, workers: bool, queues: list[str] | None = None, print_key: bool = False
) -> None:
    """Run a Service until SIGTERM, SIGINT or SIGHUP; `print_key`: `Service.announce`'s."""
    # Before any child starts: what whoever started taskd left open is not passed on to them.
    keep_inherited_descriptors()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGHUP: the terminal it was started from closed (an ssh session dropped). Its default would end
    # the process at once, its running jobs left to the reclaim; stopped as by SIGTERM, they go back.
    handled = [
        sig
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        # One it was started with ignored stays ignored, as Python leaves SIGINT: `nohup taskd serve`
        # asked to outlive its terminal, and a shell script's `taskd serve &` is not for the Ctrl-C
        # of the terminal the script runs in.
        if sig == signal.SIGTERM or signal.getsignal(sig) != signal.SIG_IGN
    ]
    for sig in handled:
        loop.add_signal_handler(sig, stop.set)
    try:
        await _serve(config, stop, http=http, workers=workers, queues=queues, print_key=print_key)
    finally:
        # Stopped: another of these signals now (a second Ctrl-C) changes nothing. Left to the
        # loop, they got their defaults back when it closed, and Python's exit restores the default
        # of any it handles itself: one in the moments before the exit killed the process, which
        # ended with status 130 (143, 129) rather than 0. Its children are gone by now, so none
        # inherits the ignored signals.
        for sig in handled:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)


async def _serve(
    config: Config,
    stop: asyncio.Event,
    *,
    http: bool,
    workers: bool,
    queues: list[str] | None,
    print_key: bool,
) -> None:
    """Start a Service, serve until `stop` is set, then stop it (run's body)."""
    open_files = raise_open_files_limit()
    notifier = Notifier.from_env()
    service = Service(config, http=http, workers=workers, queues=queues)
    notifier.status("starting")
    if not await _start_unless_stopped(service, stop):
        log.info("stopped during start-up")
        return
    tune_gc()
    # Said once started: a start-up that fails says so in one line, the last and only one.
    open_files.log()
    service.announce(print_key=print_key)
    notifier.ready(_status_line(service))
    watchdog = asyncio.create_task(notifier.watchdog(), name="systemd-watchdog")
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        notifier.stopping("stopping: draining running jobs")
        await service.stop()
        watchdog.cancel()
        await _end_what_handlers_left()


async def _end_what_handlers_left() -> None:
    """Cancel what still runs on the loop once the service has stopped, and exit without what will
    not end: a coroutine handler that swallows every cancel, left running when its run was handed
    back (Executor._in_loop). The loop's own close (asyncio.run) would wait for it for ever, and
    the process, its work done and its tasks handed back, never exited."""
    current = asyncio.current_task()
    deaf = await cancel_within_rounds(task for task in asyncio.all_tasks() if task is not current)
    if not deaf:
        return
    log.warning(
        "%d asyncio task(s) went on through every cancel (%s): taskd exits without them",
        len(deaf),
        ", ".join(sorted(task.get_name() for task in deaf)),
    )
    logs.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    os._exit(0)


async def _start_unless_stopped(service: Service, stop: asyncio.Event) -> bool:
    """Start `service`; False if `stop` was set first, when what start-up had begun is undone.

    A start-up may wait a while (for its Redis, for the embedded Valkey to load its file): a SIGTERM
    or Ctrl-C meanwhile stops it then, not once it is done, and nothing says it listens.
    """
    starting = asyncio.create_task(service.start(), name="start-up")
    stopping = asyncio.create_task(stop.wait(), name="stop-during-start-up")
    await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
    if starting.done():
        stopping.cancel()
        starting.result()  # start-up's own failure, if any
        return True
    # One cancel, not stopping.cancel_and_wait's repeated ones: they would cut short the stop that
    # Service.start makes of what it had begun.
    starting.cancel()
    try:
        await starting
    except asyncio.CancelledError:
        return False
    await service.stop()  # the cancel came as start-up ended (or was swallowed): it had started
    return False


# Below this many open files, a process serving HTTP runs short under a few hundred clients.
FEW_OPEN_FILES = 4096
# What macOS lets a process set where its hard limit says unlimited (OPEN_MAX).
UNLIMITED_OPEN_FILES = 10240


@attrs.frozen
class OpenFiles:
    """The process's limit on open files after start-up raised it: what its log line says."""

    soft: int | None  # None: unlimited, or not a platform with the limit
    raised_from: int | None = None
    refused: str | None = None  # why the raise was refused

    def log(self) -> None:
        """One line: a warning where the limit stays low, else the figure."""
        if self.soft is None:
            return
        if self.refused is not None:
            log.warning("open files: could not raise the limit from %d: %s", self.soft, self.refused)
        raised = f" (raised from {self.raised_from})" if self.raised_from is not None else ""
        if self.soft < FEW_OPEN_FILES:
            log.warning(
                "open files: at most %d%s, connections included; raise the hard limit (LimitNOFILE=, ulimit -Hn)",
                self.soft,
                raised,
            )
        else:
            log.info("open files: at most %d%s", self.soft, raised)


def raise_open_files_limit() -> OpenFiles:
    """Raise the soft limit on open files to the hard limit, as Go and many servers do at start-up.

    Every connection (each client's, each event stream's, Redis's) is a file descriptor. systemd's
    default soft limit for a service is 1024: a few hundred streams held open by one key used it up,
    and then the process could accept no one else's connection, nor open a file or a socket to
    Redis. The hard limit is the operator's bound (`LimitNOFILE=`); the soft one only a default.
    """
    if sys.platform == "win32":
        return OpenFiles(None)
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return OpenFiles(None)
    target = UNLIMITED_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
    if soft >= target:
        return OpenFiles(soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        return OpenFiles(soft, refused=f"to {target}: {exc}")
    return OpenFiles(target, raised_from=soft)


# Container objects allocated, less those freed, between two young collections (Python's default: 700).
# Under load the requests in flight hold a few thousand at once, so at 700 a young collection ran
# every ~30 requests, pushing their live objects into the older generations and their collections;
# at this bound none ran in thousands of submits. Cyclic garbage waits a little longer (at most a
# few MiB).
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Tune the cyclic garbage collector for a long-running server, once start-up is done."""
    # What start-up made (modules, classes, the config, the app) lives as long as the process: frozen,
    # the collector no longer walks it in every full collection.
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _status_line(service: Service) -> str:
    """What `systemctl status` shows while taskd runs."""
    parts = [f"API on http://{host}:{port}" for host, port in service.addresses]
    if service.queues:
        parts.append(f"workers for {', '.join(service.queues)}")
    return "serving: " + "; ".join(parts)
