"""The webhook sender: claims due webhooks from the outbox and POSTs them, many at once, from the event loop.

Runs in every taskd process. Log lines are the API document's, under the logger `taskd.webhooks`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import aiohttp
import attrs
import orjson
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError as RedisReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError
from yarl import URL

from taskd import keys, tracing
from taskd.backoff import Backoff
from taskd.config import WebhooksConfig
from taskd.logs import MASK, bind_task, mask_url, shorten
from taskd.model import TaskRecord, TaskStatus
from taskd.net.guard import AddressPolicy, GuardedResolver, check_literal_host, host_and_port, refusal
from taskd.redis_conn import refuses_writes
from taskd.stopping import cancel_and_wait
from taskd.store import TaskStore, decode
from taskd.webhooks.connections import BadResponse, Receiver, ReceiverConnections, receiver_of
from taskd.webhooks.outbox import Attempt, Claim, Outbox, now_ms
from taskd.webhooks.payload import PROGRESS, STARTED, build_payload, event_id
from taskd.webhooks.schedule import SUCCESS_CODES, DeliverySchedule
from taskd.webhooks.signing import Signer, Signers

log = logging.getLogger("taskd.webhooks")

Line = TypeVar("Line", Receiver, str | None)  # what webhooks wait in: a receiver, or an API key's id

# Seconds between outbox polls when idle and no wake-up arrives. Every script that makes a webhook
# due now publishes on {taskd}:webhooks:wake, a retry or a lease waits for the earliest due time
# the claim returns, and the listener looks once each time it (re)subscribes: the poll only backs up
# a wake-up lost some other way. At 0.05 s it was two thirds of an idle `taskd serve`'s CPU.
POLL_INTERVAL = 0.5
LEASE_MARGIN = 30.0  # seconds a claim outlives the request timeout before another process may take it
# A webhook claimed while its receiver has webhooks.max_per_receiver POSTs in flight, or its tenant (the
# API key that submitted its task) webhooks.max_per_tenant, is handed back, due again this many ms later
# (not an attempt): the places it would have waited in are others'. Those handed back for one receiver
# (tenant) come due max_per_receiver (max_per_tenant) in this time at most (_take_turn).
RECEIVER_BUSY_DELAY_MS = 1000
USER_AGENT = "taskd-webhooks/1"
# The error of an attempt not made: the task's key had a webhook secret of its own, and neither is
# configured any more (docs/security.md, Revoking and rotating).
NOT_SIGNED = (
    "not sent: the API key that submitted the task and its webhook_secret are no longer configured "
    "(auth.keys); it is not signed with another secret"
)


class WebhookSender:
    """Delivers due webhooks until cancelled; a slow receiver holds only its own delivery."""

    def __init__(
        self,
        redis: Redis,
        store: TaskStore,
        config: WebhooksConfig,
        ttl: int,
        signers: Signers,
        listener: Redis | None = None,
        *,
        policy: AddressPolicy,
    ) -> None:
        self.redis = redis
        # Pub/sub may wait for ever: it wants a client without a read timeout.
        self.listener = listener or redis
        self.store = store  # a progress written during a send queues one more (progress_again.lua)
        self.config = config
        self.policy = policy  # the addresses callback URLs may reach (the [network] section)
        self.outbox = Outbox(redis, ttl, store.clients)
        self.schedule = DeliverySchedule(tuple(config.extra_delays))
        self.signers = signers
        self.lease_ms = int((config.timeout + LEASE_MARGIN) * 1000)
        self._wake = asyncio.Event()
        self._inflight: dict[asyncio.Task[None], Claim] = {}
        self._per_receiver: collections.Counter[Receiver] = collections.Counter()
        # POSTs in flight by the id of the API key that submitted their task (None: a task without one).
        self._per_key: collections.Counter[str | None] = collections.Counter()
        # When the next webhook handed back for a full receiver (key) is due (ms): the turns its waiting ones take.
        self._receiver_turns: dict[Receiver, float] = {}
        self._key_turns: dict[str | None, float] = {}
        # The latest a handed-back webhook is due again, ms after its hand-back: within a timeout a
        # hanging receiver's places have all freed, and one that came back has a look at each.
        self._horizon = max(RECEIVER_BUSY_DELAY_MS, int(config.timeout * 1000))
        self._resolver: GuardedResolver | None = None
        self._running = False  # run() runs: a POST has a client to go out on
        # One of the two clients, made by run(): taskd's own keep-alive pools (ReceiverConnections),
        # or aiohttp's where a proxy or tracing needs what only it has (CONNECT, the instrumentation).
        self._connections: ReceiverConnections | None = None
        self._session: aiohttp.ClientSession | None = None

    def wake(self, task_id: str | None = None) -> None:
        """Look at the outbox now rather than at the next poll, unless `task_id`'s webhook is already being sent.

        This process's executor calls it when a finish it wrote queued a webhook without a lease for
        this sender (it had no room): the claim then starts as soon as the finish returns, not after
        the pub/sub message makes its way round. That message, or a second wake for the same task,
        then costs no claim that finds nothing.
        """
        if task_id is None or all(claim.task_id != task_id for claim in self._inflight.values()):
            self._wake.set()

    def lease_until(self, at_ms: int, callback_url: str, key_id: str | None) -> int | None:
        """The lease (ms) a finish at `at_ms` may put on its end's webhook for `send_ended` to send it,
        or None when this sender is not running or has no room for one more POST (to that receiver,
        for that key's task)."""
        if not self._running or len(self._inflight) >= self.config.max_concurrency:
            return None
        if self._full(receiver_of(callback_url), key_id):
            return None
        return at_ms + self.lease_ms

    def _receiver_full(self, receiver: Receiver | None) -> bool:
        return receiver is not None and self._per_receiver[receiver] >= self.config.max_per_receiver

    def _full(self, receiver: Receiver | None, key_id: str | None) -> bool:
        # One tenant's receivers, however many (names of its own domain, ports), hold at most
        # max_per_tenant places: two hanging ones filled all 64, and every other tenant's webhooks
        # waited for their POSTs to time out.
        return self._receiver_full(receiver) or self._per_key[key_id] >= self.config.max_per_tenant

    def _turn_of_waiting(self, receiver: Receiver | None, key_id: str | None, at: int) -> int:
        """When a webhook claimed at `at`, handed back because its receiver or its key is full, is due
        again (ms): in the turn of those waiting for that receiver, else for that key (_take_turn)."""
        if receiver is not None and self._receiver_full(receiver):
            return _take_turn(self._receiver_turns, receiver, self.config.max_per_receiver, at, self._horizon)
        return _take_turn(self._key_turns, key_id, self.config.max_per_tenant, at, self._horizon)

    def send_ended(self, record: TaskRecord, lease: int) -> None:
        """POST the end's webhook of `record`, just ended by a finish that leased it until `lease`.

        No claim and no read: the finish put the webhook in the outbox under this lease and the
        caller has the record as ended. If this sender stopped meanwhile, the lease runs out and a
        sender claims it then.
        """
        if self._running:
            receiver = receiver_of(record.callback_url) if record.callback_url else None
            self._start(Claim(record.task_id, lease), receiver, record.key_id, record, self._begin(record))

    def _begin(self, record: TaskRecord) -> Awaitable[int] | None:
        """The end's POST begun now, in the turn of the loop its finish ended: on taskd's own client
        with a connection kept for the receiver, its request is written before this returns, where
        the delivery's task would write it a turn later. None with aiohttp's client (the POST belongs
        in the delivery's span), or when the request cannot be made: the delivery's task then makes
        it, and meets and records whatever went wrong here, outside the worker's finish."""
        if self._connections is None or not record.callback_url:
            return None
        if (signer := self.signers.for_task(record.key_id, record.webhook_secret_id)) is None:
            return None  # the delivery's post records the attempt that was not made
        try:
            body = orjson.dumps(build_payload(record))
            return self._request(record.callback_url, event_id(record), body, signer)
        except Exception:  # the run's end is recorded already: its webhook must not break the worker
            return None

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[None]:
        """The client POSTs go out on while run() runs: aiohttp's with a proxy or tracing, else taskd's pools."""
        proxy_host = URL(self.config.proxy).host if self.config.proxy else None
        # Also with allow_private (which allows every address): it reads 127.1 as getaddrinfo did.
        resolver = self._resolver = GuardedResolver(
            exempt=[proxy_host] if proxy_host else [], allowed=self.policy.allows
        )
        # With tracing on, each POST is a span and carries `traceparent` to the receiver.
        trace_configs = tracing.client_trace_configs()
        self._running = True
        try:
            if self.config.proxy or trace_configs:
                connector = aiohttp.TCPConnector(resolver=resolver, limit=self.config.max_concurrency)
                async with aiohttp.ClientSession(
                    connector=connector,
                    cookie_jar=aiohttp.DummyCookieJar(),
                    auto_decompress=False,
                    trace_configs=trace_configs,
                    # No deadline of aiohttp's own (its default gives up a connect at 30 s, and any
                    # POST at 5 min): webhooks.timeout bounds the whole attempt (_outcome), as on
                    # taskd's own client.
                    timeout=aiohttp.ClientTimeout(),
                ) as self._session:
                    yield
            else:
                self._connections = ReceiverConnections(resolver, max_draining=self.config.max_per_receiver)
                try:
                    yield
                finally:
                    self._connections.close()
        finally:
            self._running = False
            self._session = self._connections = None
            await resolver.close()

    async def run(self) -> None:
        """Send due webhooks until cancelled; on the way out, hand unfinished claims back as due now."""
        listener = asyncio.create_task(self._listen(), name="webhook-wake-listener")
        try:
            async with self._client():
                try:
                    retries = Backoff.reconnect()
                    while True:
                        try:
                            await self._step()
                        except Exception as exc:  # redis-py's errors do not share one base with OSError
                            delay = retries.next_delay()
                            log.warning("webhook sender lost Redis (%s); retrying in %.2f s", exc, delay)
                            await asyncio.sleep(delay)
                        else:
                            retries.reset()
                finally:
                    # No new POST from here; those in flight stop before their client closes under them.
                    self._running = False
                    await self._hand_back()
        finally:
            await cancel_and_wait([listener])

    async def _step(self) -> None:
        free = self.config.max_concurrency - len(self._inflight)
        if free <= 0:
            await asyncio.wait(list(self._inflight), return_when=asyncio.FIRST_COMPLETED)
            return
        self._wake.clear()
        at = now_ms()
        claims, first_due = await self.outbox.claim(at, self.lease_ms, free)
        busy: list[tuple[Claim, int]] = []
        for claim in claims:
            url = claim.record.get(b"callback_url")
            receiver = receiver_of(url.decode(errors="replace")) if url else None
            raw_key = claim.record.get(b"key_id")
            key_id = raw_key.decode(errors="replace") if raw_key else None
            if url and self._full(receiver, key_id):
                busy.append((claim, self._turn_of_waiting(receiver, key_id, at)))
            else:
                self._start(claim, receiver, key_id)
        await asyncio.gather(*(self.outbox.release(claim, due) for claim, due in busy))
        if len(claims) == free:  # more may be due
            return
        wait = POLL_INTERVAL if first_due is None else min(POLL_INTERVAL, max(0.0, (first_due - at) / 1000))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._wake.wait()

    async def _listen(self) -> None:
        reconnects = Backoff.reconnect()
        while True:
            try:
                async with self.listener.pubsub() as pubsub:
                    await pubsub.subscribe(keys.WEBHOOKS_WAKE)
                    reconnects.reset()
                    # A message published while this listener was not subscribed is lost: look now.
                    self.wake()
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self.wake(message["data"].decode())
            except Exception as exc:  # polling still delivers; this only makes it faster
                delay = reconnects.next_delay()
                log.debug("webhook wake-up listener lost Redis (%s); reconnecting in %.2f s", exc, delay)
                await asyncio.sleep(delay)

    async def _hand_back(self) -> None:
        claims = list(self._inflight.values())
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                at = now_ms()
                for claim in claims:
                    await self.outbox.release(claim, at)

    def _start(
        self,
        claim: Claim,
        receiver: Receiver | None,
        key_id: str | None,
        ended: TaskRecord | None = None,
        begun: Awaitable[int] | None = None,
    ) -> None:
        task = asyncio.create_task(self._deliver(claim, ended, begun), name=f"webhook-{claim.task_id}")
        self._inflight[task] = claim
        task.add_done_callback(self._inflight.pop)
        # Counted for webhooks.max_per_receiver and max_per_tenant until the delivery ends.
        self._per_key[key_id] += 1
        if receiver is not None:
            self._per_receiver[receiver] += 1
        task.add_done_callback(lambda _: self._left(receiver, key_id))

    def _left(self, receiver: Receiver | None, key_id: str | None) -> None:
        self._per_key[key_id] -= 1
        if not self._per_key[key_id]:
            del self._per_key[key_id]
        if receiver is not None:
            self._per_receiver[receiver] -= 1
            if not self._per_receiver[receiver]:
                del self._per_receiver[receiver]

    async def _deliver(self, claim: Claim, ended: TaskRecord | None, begun: Awaitable[int] | None) -> None:
        try:
            # An ended record handed over always has a callback_url: finish.lua leases only a webhook it queued.
            if ended is not None and ended.callback_url:
                await self._send(claim, ended, ended.callback_url, None, begun)
            else:
                await self._attempt(claim)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the lease runs out and the attempt is made again
            if not _redis_unavailable(exc):
                log.exception("webhook delivery for task %s broke off", claim.task_id)
                return
            # A Redis lost, failing over (a Cluster slot that moved reads as a lost connection,
            # taskd.redis_conn), or refusing writes for now (full, or its disk): nothing is wrong
            # with the delivery. Its lease still holds it in the outbox, so an attempt whose outcome
            # was not written (the write, not only its reply, lost) is made again, which receivers
            # drop by webhook-id (at least once, docs/webhooks.md).
            log.warning(
                "webhook delivery for task %s broke off, Redis unavailable (%s: %s); "
                "what it did not record is made again once its lease runs out",
                claim.task_id,
                type(exc).__name__,
                exc,
            )

    async def _attempt(self, claim: Claim) -> None:
        # The outbox member is the task id for the end's webhook, `{id}:{event}` for the others.
        task_id, _, event = claim.task_id.partition(":")
        if not claim.record:
            log.warning("Webhook dropped: task %s no longer exists", task_id)
            await self.outbox.release(claim, None)
            return
        record = decode(claim.record)
        if event == STARTED and claim.run is not None:
            # The run the webhook reports, not the record's latest: a transient error since put the
            # task back to `queued` (clearing started_at, which dropped this retry as no news).
            record = attrs.evolve(record, attempt=claim.run, started_at=claim.run_started_at)
        url = record.callback_url
        if not url or not _still_news(record, event or None):
            await self.outbox.release(claim, None)
            if url and event == PROGRESS and not record.is_terminal:
                # Between runs, or held back while its run has reported nothing: a report made since
                # the claim read the record queued nothing (this webhook was in the outbox), so it is
                # queued now, or it would wait for the run's next report. After the end none can come.
                await self.store.progress_again(record, now_ms() / 1000)
            return
        await self._send(claim, record, url, event or None)

    async def _send(
        self,
        claim: Claim,
        record: TaskRecord,
        url: str,
        event: str | None,
        begun: Awaitable[int] | None = None,
    ) -> None:
        with bind_task(record), tracing.webhook_span(record, event, claim.attempts + 1):
            await self._post_and_record(claim, record, url, event, begun)

    async def _post_and_record(
        self,
        claim: Claim,
        record: TaskRecord,
        url: str,
        event: str | None = None,
        begun: Awaitable[int] | None = None,
    ) -> None:
        attempt = claim.attempts + 1
        if begun is None:
            body = orjson.dumps(build_payload(record, event))
            signer = self.signers.for_task(record.key_id, record.webhook_secret_id)
            outcome = await self.post(url, event_id(record, event), body, signer)
        else:
            outcome = await self._outcome(begun)
        done = now_ms()
        next_ms = None
        # The log filter masks URL passwords; a receiver's ?token=… is the caller's credential too.
        shown = mask_url(url, MASK)
        if outcome.delivered:
            log.info(
                "Webhook sent successfully callback_url=%s status_code=%s task_id=%s",
                shown,
                outcome.status,
                record.task_id,
            )
        else:
            # The end's webhook fails with the API document's WARNING and ERROR, a few lines a task.
            # A `started` or `progress` one (a progress webhook every progress_interval for as long
            # as the task runs) to a receiver the tenant runs is the tenant's to mend: at those
            # levels a dead receiver wrote about a line a second at WARNING or above per running
            # task, for as long as it ran, past any submit quota.
            failed_level, given_up_level = (
                (logging.WARNING, logging.ERROR) if event is None else (logging.DEBUG, logging.INFO)
            )
            extra = {} if event is None else {"event": event}
            log.log(
                failed_level,
                "Webhook request failed callback_url=%s error=%s attempt=%d",
                shown,
                outcome.error,
                attempt,
                extra=extra,
            )
            delay = self.schedule.delay_after(attempt)
            if delay is None:
                log.log(
                    given_up_level,
                    "Failed to send webhook after all retries callback_url=%s task_id=%s",
                    shown,
                    record.task_id,
                    extra=extra if event is None else {**extra, "error": outcome.error},
                )
            else:
                next_ms = done + int(delay * 1000)
        await self.outbox.record(claim, attempt, outcome, done, next_ms, int(self.config.timeout * 1000))
        if event == PROGRESS:
            await self.store.progress_again(record, done / 1000)

    async def post(self, url: str, msg_id: str, body: bytes, signer: Signer | None) -> Attempt:
        """POST one attempt signed by `signer`; never follows a redirect, never raises for the receiver's failings.

        None for `signer`: the task's key and its own secret are gone from the config
        (Signers.for_task); the attempt fails unsent, and a later one, perhaps by a process that
        still has them (a rolling restart), may go out.
        """
        assert self._running, "post() runs inside run()"
        if signer is None:
            return Attempt(False, None, NOT_SIGNED)
        try:
            request = self._request(url, msg_id, body, signer)
        except (OSError, ValueError) as exc:
            return _failed(exc)
        return await self._outcome(request)

    def _request(self, url: str, msg_id: str, body: bytes, signer: Signer) -> Awaitable[int]:
        """The POST of one attempt, to await for its answer's status; on taskd's own client it is
        under way already (ReceiverConnections.post). Raises ForbiddenAddress for a literal address
        the policy refuses, ValueError for a URL that cannot be sent."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **signer.headers(msg_id, int(time.time()), body),
        }
        target = URL(url)
        if not self.policy.allow_private:
            check_literal_host(target, self.policy.allows)
        if self._connections is not None:
            return self._connections.post(target, headers, body)
        return self._post_with_aiohttp(target, headers, body)

    async def _outcome(self, request: Awaitable[int]) -> Attempt:
        """The attempt as the receiver answered it, or why it did not, within webhooks.timeout."""
        try:
            async with asyncio.timeout(self.config.timeout):
                status = await request
        except TimeoutError:
            return Attempt(False, None, f"timeout after {self.config.timeout:g}s")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return _failed(exc, self.config.proxy)
        if status in SUCCESS_CODES:
            return Attempt(True, status)
        if 300 <= status < 400:
            return Attempt(False, status, f"HTTP {status} (redirects are not followed)")
        return Attempt(False, status, f"HTTP {status}")

    async def _post_with_aiohttp(self, url: URL, headers: dict[str, str], body: bytes) -> int:
        assert self._session is not None
        if self.config.proxy and self._resolver is not None and not self.policy.allow_private:
            # The proxy connects, not taskd; still refuse a name that now points inside.
            host, port = host_and_port(url)
            await self._resolver.resolve(host, port, socket.AF_UNSPEC)
        async with self._session.post(
            url, data=body, headers=headers, allow_redirects=False, proxy=self.config.proxy or None
        ) as response:
            return response.status


def _take_turn(turns: dict[Line, float], line: Line, per_second: int, at: int, horizon: int) -> int:
    """When the next webhook handed back at `at` for `line` (a receiver or a key) is due (ms): a second
    later, and `per_second` a second after those handed back for it before, but `horizon` ms later at
    the latest (those past it come due together then).

    So a receiver that hangs with thousands of webhooks waiting costs a claim and a hand-back of
    max_per_receiver of them a second, or of all of them once per horizon (webhooks.timeout) when
    there are more; when all of them came due again each second, their claims kept a process and its
    Redis busy, and other receivers' webhooks waited behind them. The horizon bounds how long one
    waits once its receiver is back: thousands in turns of 32 a second would have taken minutes.
    """
    for passed in [waiting for waiting, turn in turns.items() if turn <= at]:
        del turns[passed]  # the map holds only lines with webhooks waiting
    due = max(at + RECEIVER_BUSY_DELAY_MS, min(turns.get(line, 0.0), at + horizon))
    turns[line] = due + RECEIVER_BUSY_DELAY_MS / per_second
    return int(due)


def _failed(exc: BaseException, proxy: str = "") -> Attempt:
    """Why an attempt failed, as the task's `webhook.last_error` tells the tenant."""
    refused = refusal(exc)
    if refused is not None:
        return Attempt(False, None, f"refused: {refused}")
    # The proxy is the operator's: aiohttp's text of these names its URL, credentials included.
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return Attempt(
            False, None, f"the egress proxy (webhooks.proxy) refused the tunnel: HTTP {exc.status}"
        )
    if isinstance(exc, aiohttp.ClientProxyConnectionError) or _at_proxy(exc, proxy):
        return Attempt(False, None, "the egress proxy (webhooks.proxy) could not be reached")
    if isinstance(exc, aiohttp.ClientResponseError) and exc.request_info.method == "CONNECT":
        # The proxy's own answer to an https callback's tunnel request: the receiver was never
        # reached, so it is not the receiver's answer that is not HTTP.
        return Attempt(
            False, None, "the egress proxy (webhooks.proxy) refused the tunnel: its answer is not HTTP"
        )
    if isinstance(exc, aiohttp.ClientResponseError):
        # An answer aiohttp's parser refused (with a proxy or tracing on): its message quotes what
        # it could not parse, up to all the receiver sent (100 kB and more), which became a log line
        # of that size and the task's last_error, with spaces where the receiver's text passed for
        # fields of a text log line (`task_id=…`). Said as taskd's own client says it.
        return Attempt(False, None, f"{BadResponse.__name__}: the receiver's answer is not HTTP")
    if isinstance(exc, OSError) and exc.errno is None and exc.strerror:
        # A lookup's failure (c-ares, via aiohttp) has no errno: "[Errno None] Domain name not found".
        return Attempt(False, None, f"{type(exc).__name__}: {exc.strerror}")
    # Masked as a task's error is: any other library's text may quote a URL with its credentials.
    # One line of SHORT_MESSAGE_CHARS at most, whatever it quotes.
    return Attempt(False, None, shorten(f"{type(exc).__name__}: {exc}"))


def _at_proxy(exc: BaseException, proxy: str) -> bool:
    """Whether `exc` is a failure to connect to the egress proxy itself. aiohttp raises
    ClientProxyConnectionError only when connecting fails (refused, unreachable): a proxy name that
    does not resolve is a ClientConnectorDNSError (told as "Domain name not found", which reads as
    the tenant's own host), a TLS failure with an https:// proxy a ClientConnectorSSLError naming it."""
    if not proxy or not isinstance(exc, aiohttp.ClientConnectorError):
        return False
    address = URL(proxy)
    return (exc.host, exc.port) == (address.host, address.port)


def _still_news(record: TaskRecord, event: str | None) -> bool:
    """Whether the webhook is still worth sending: an end's once the task ended, a start once it
    started, a progress while the task still runs (after its end, the end's webhook says more) and
    its run has reported some: one queued by an earlier run, which a stop or a worker's death cut
    short, would otherwise report the next run's start (0, no step) ahead of its `started`."""
    if event == STARTED:
        return record.started_at is not None
    if event == PROGRESS:
        reported = record.progress > 0 or record.current_step is not None
        return record.status is TaskStatus.PROCESSING and reported
    return record.is_terminal


def _redis_unavailable(exc: BaseException) -> bool:
    """True for a Redis that cannot be reached or takes no writes for now; it passes by itself."""
    unreachable = isinstance(exc, RedisConnectionError | RedisTimeoutError | RedisReadOnlyError)
    return unreachable or refuses_writes(exc)
