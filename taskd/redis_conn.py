"""The one place taskd opens its Redis: a plain `redis://` URL, Sentinel with `redis+sentinel://`, or a
Redis Cluster with `redis+cluster://`.

Sentinel form: `redis+sentinel://[:password@]host1:26379,host2:26379/<service name>[/<db>]`,
optionally `?sentinel_password=…` when the sentinels themselves need a password. The client
asks the sentinels for the current primary on every new connection, and drops its connections
when the primary it knew becomes a replica, so taskd follows a failover without a restart.

Cluster form: `redis+cluster://[:password@]host1:6379[,host2:6379…]`, the addresses of some of
the cluster's nodes. Every key taskd uses carries the hash tag of one partition (taskd.keys:
`{taskd}`, or with `redis.partitions` > 1 also `{taskd:<n>}`), so each partition lives in one slot,
and a client talks to the one primary that serves its partition's slot (`connect_partitions` makes
one per partition): each new connection asks the known nodes which node that is (CLUSTER SLOTS),
and a reply that says the slot moved (MOVED, after a failover or a resharding) drops the
connection, so the next one asks again. Scripts, pipelines, transactions, pub/sub and XREAD then
work as on a standalone Redis. docs/cluster.md says what that gives: failover, and with several
partitions taskd's load spread over the shards. A `redis://` URL of a cluster node is refused at
start: it would break at the first failover.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import ssl
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
import hiredis
from redis._parsers import _AsyncHiredisParser
from redis._parsers.socket import SERVER_CLOSED_CONNECTION_ERROR
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, Connection, ConnectionPool
from redis.asyncio.sentinel import Sentinel
from redis.crc import key_slot
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    DataError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskd import keys
from taskd.backoff import Backoff
from taskd.config import ConfigError
from taskd.logs import mask_url

log = logging.getLogger("taskd")

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
CLUSTER_SCHEME = "redis+cluster"
DEFAULT_CLUSTER_PORT = 6379
# Replies of a cluster node that no longer serves taskd's slot, or cannot serve it now (a failover,
# or a resharding that moves the slot: ASK until it has moved, then MOVED).
_SLOT_ELSEWHERE = ("MOVED ", "ASK ", "CLUSTERDOWN", "TRYAGAIN")
# The same news met by a command inside a script, which the script's caller gets as its error
# (Valkey's words): a key the script builds that is not on the node while its slot moves, or a
# command run while the cluster is down.
_SLOT_ELSEWHERE_IN_SCRIPT = ("non local key in a cluster node", "while the cluster is down")
# A Redis that cannot persist refuses writes with MISCONF. Inside a pipeline redis-py puts the
# command before the reply: "Command # 1 (ZREMRANGEBYSCORE …) of pipeline caused error: MISCONF …"
# (redis-py 5.0), or "…caused error: ('MISCONF …',)" (later: the exception's args, as repr quotes them).
_PIPELINED = r"""(?:Command # \d+ \(.*\) of pipeline caused error: \(?['"]?)?"""
_MISCONF = re.compile(_PIPELINED + "MISCONF", re.S)
# A primary set to write only with replicas in sync (`min-replicas-to-write`) refuses writes with
# NOREPLICAS while too few are, in a script too ("NOREPLICAS … script: on @user_script:27."), until
# a replica catches up.
_NOREPLICAS = re.compile(_PIPELINED + "NOREPLICAS", re.S)
# The reply of a Redis running another client's long script (BusyAsUnavailable).
_BUSY = "BUSY "
# A bound on every connect; a Redis that is down answers 503 at once instead of hanging requests.
CONNECT_TIMEOUT = 5.0
# The pauses between the tries of a start-up waiting for its Redis (wait_until_answers).
RECONNECT_FIRST_AT_START = 0.5
RECONNECT_CAP_AT_START = 5.0


@attrs.frozen
class SentinelUrl:
    """The parts of a `redis+sentinel://` URL."""

    hosts: list[tuple[str, int]]
    service: str
    db: int = 0
    password: str | None = None
    username: str | None = None
    sentinel_password: str | None = None


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Split a `redis+sentinel://` URL; raise ConfigError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ConfigError(f"redis.url: expected {SENTINEL_SCHEME}://…, got scheme {parts.scheme!r}")
    credentials, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    hosts = []
    for item in filter(None, hostlist.split(",")):
        host, _, port = item.rpartition(":") if item.count(":") == 1 or "]:" in item else (item, "", "")
        host = host.strip("[]")
        if not host or (port and not port.isdigit()):
            raise ConfigError(f"redis.url: bad sentinel address {item!r}")
        hosts.append((host, int(port) if port else DEFAULT_SENTINEL_PORT))
    path = [segment for segment in parts.path.split("/") if segment]
    if not hosts or not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ConfigError(
            "redis.url: expected redis+sentinel://[:password@]host:26379[,host2:26379]/<service name>[/<db>]"
        )
    query = parse_qs(parts.query)
    return SentinelUrl(
        hosts=hosts,
        service=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        password=unquote(password) or None,
        username=unquote(username) or None,
        sentinel_password=query.get("sentinel_password", [None])[0],
    )


# redis-py is not followed by mypy (pyproject.toml, [tool.mypy]), so its Redis is Any here.
class _SentinelRedis(Redis):  # type: ignore[misc]
    """A client of a Sentinel-managed primary that also closes its clients of the sentinels."""

    sentinel: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        """Close the connections to the primary, then those to the sentinels."""
        await super().aclose(close_connection_pool)
        if self.sentinel is not None:
            for client in self.sentinel.sentinels:
                await client.aclose()


class HiredisPacking:
    """Packs commands with hiredis's C packer, as redis-py's synchronous client does.

    redis-py's asyncio connections pack in Python, argument by argument: for a submit's EVALSHA of
    32 arguments that was ~40 µs of the API's ~330 µs of CPU per request; hiredis packs it in ~4 µs.
    The bytes sent are the same; a value Redis cannot take (None, a bool) is still a DataError.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        """One command in the Redis protocol (a list of one buffer, as redis-py's packer returns)."""
        # A first argument of several words ("CONFIG GET") is sent as separate arguments, as redis-py does.
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise DataError(str(exc)) from None


class BufferedReadyCheck(AbstractConnection):  # type: ignore[misc]
    """Tells the pool whether a connection holds data nobody asked for from what it has buffered,
    without a turn of the event loop.

    Before it hands out a connection, redis-py's pool asks it that (a reply left behind by an
    interrupted command, or the server's close) and reconnects if so. redis-py 5 answers by reading
    the socket under a zero timeout: one more turn of the event loop before every command is sent,
    in which whatever else is ready runs first (about 0.05 ms a command after idle here,
    docs/performance.md). redis-py 8 answers from what is buffered (redis/redis-py#4063), as here:
    the event loop reads a socket as soon as it is readable, so what arrived since the connection's
    last command is in its stream's buffer, or its end of file is, by the time the pool hands it out.
    """

    async def can_read_destructive(self) -> bool:
        """Whether the connection holds unread data or was closed: the pool then reconnects it."""
        parser = self._parser
        # Without a hiredis redis-py accepts (3 or later), redis-py parses in Python: its own check.
        if not isinstance(parser, _AsyncHiredisParser):
            held: bool = await super().can_read_destructive()
            return held
        if not parser._connected:
            raise RedisConnectionError(SERVER_CLOSED_CONNECTION_ERROR)
        stream = parser._stream
        # has_data(): bytes fed to hiredis and not yet parsed; _buffer: bytes not yet fed to it.
        return bool(parser._reader.has_data() or stream.at_eof() or stream._buffer)


class ServerBusy(RedisConnectionError):  # type: ignore[misc]
    """Redis answers BUSY: it runs another client's script or function past its
    `busy-reply-threshold` (5 s by default) and serves nothing else until that ends or is killed."""


class BusyAsUnavailable(AbstractConnection):  # type: ignore[misc]
    """Reads a BUSY reply as a Redis that cannot be reached for now (ServerBusy, a ConnectionError).

    redis-py gives BUSY no class of its own: it came as a plain ResponseError, which the API answered
    with a 500 and a traceback per request, and a worker's write of a task's outcome was not tried
    again, as it is through an outage. Redis answers again once the script ends or is killed, as
    after an outage; LOADING (a restart still reading its data) is a ConnectionError in redis-py too.
    """

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        """The reply; a BUSY one raises ServerBusy and drops the connection, as a lost one does (a
        pipeline's later replies are then never read out of order)."""
        try:
            return await super().read_response(*args, **kwargs)
        except ResponseError as exc:
            # "BUSY " with its space: BUSYGROUP and BUSYKEY are a command's own refusals.
            if not str(exc).startswith(_BUSY):
                raise
            await self.disconnect(nowait=True)
            raise ServerBusy(str(exc)) from exc


class ConnectsOutsideTheLock(ConnectionPool):  # type: ignore[misc]
    """Connects a new connection, and checks a kept one, after letting go of the pool's lock.

    redis-py 5's pool made each new connection under its lock, handshake included (AUTH, CLIENT
    SETINFO: a read each, of up to redis.socket_timeout): on a Redis that takes connections and
    never answers, the requests that needed a new connection queued behind one another, the n-th
    answered its 503 after n socket timeouts (20 requests at once: the last after minutes). Its
    BlockingConnectionPool connects outside its lock, as here. That lock came with redis-py 5.3;
    the pools of the releases before it have none (and connect outside of any): `connect` gives
    this class only to a pool that has the lock.
    """

    async def get_connection(
        self, command_name: Any = None, *keys: Any, **options: Any
    ) -> AbstractConnection:
        """A connection of the pool, connected and holding no reply nobody read."""
        async with self._lock:
            connection: AbstractConnection = self.get_available_connection()
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection


@functools.cache
def _taskd_pool(pool_class: type) -> type:
    # One subclass per pool class in use: the plain one, Sentinel's.
    if issubclass(pool_class, ConnectsOutsideTheLock):
        return pool_class
    return type(f"Taskd{pool_class.__name__}", (ConnectsOutsideTheLock, pool_class), {})


@functools.cache
def _taskd_connection(connection_class: type) -> type:
    # One subclass per connection class in use: TCP, TLS, unix socket, Sentinel's, the cluster's.
    return type(
        f"Taskd{connection_class.__name__}",
        (HiredisPacking, BufferedReadyCheck, BusyAsUnavailable, connection_class),
        {},
    )


def refuses_writes(exc: BaseException) -> bool:
    """True for a Redis that takes no writes for now but will again: full (OOM, maxmemory), unable
    to persist (MISCONF: a disk full or failing under its append-only file or snapshots), a
    replica (READONLY: a primary demoted behind a plain redis:// address, until it or the address
    serves a primary again), or short of replicas in sync (NOREPLICAS: `lacks_replicas`)."""
    return (
        isinstance(exc, OutOfMemoryError | ReadOnlyError)
        or (isinstance(exc, ResponseError) and _MISCONF.match(str(exc)) is not None)
        or lacks_replicas(exc)
    )


def lacks_replicas(exc: BaseException) -> bool:
    """True for a write refused by a primary with too few replicas in sync (`min-replicas-to-write`)."""
    return isinstance(exc, ResponseError) and _NOREPLICAS.match(str(exc)) is not None


def refused_by_acl(exc: BaseException) -> bool:
    """True for a command Redis's ACL refuses taskd's user (NOPERM), alone or inside a script (where
    it comes as "ERR ACL failure in script: …"): a grant missing on the Redis, for its operator to add."""
    return isinstance(exc, NoPermissionError) or (
        isinstance(exc, ResponseError) and "ACL failure in script" in str(exc)
    )


def slot_elsewhere(message: str) -> bool:
    """True for an error of a cluster node that cannot serve the slot now: the slot moved or is
    moving (a failover, a resharding), or the cluster is down. Like a lost connection, it passes:
    the API answers 503 and the loops retry."""
    return message.startswith(_SLOT_ELSEWHERE) or any(words in message for words in _SLOT_ELSEWHERE_IN_SCRIPT)


def distinct_partitions(clients: Sequence[Redis]) -> list[tuple[int, Redis]]:
    """One (partition, client) per distinct client, the lowest partition of each: on one server
    every partition has the same client, and one command there tells for all."""
    distinct = {id(client): (partition, client) for partition, client in reversed(list(enumerate(clients)))}
    return sorted(distinct.values(), key=lambda pair: pair[0])


def redis_of(partition: int | None) -> str:
    """How a message names a Redis server: "Redis", or the one of a partition where the
    partitions are on servers of their own (a cluster)."""
    return "Redis" if partition is None else f"Partition {partition}'s Redis"


async def serves_every_partition(clients: Sequence[Redis]) -> None:
    """Read a key of each partition through its client (taskd.keys.client_per_partition); raise what a
    read raises. A PING is not enough on a cluster: a node answers it while the slot of taskd's
    partition is unserved or the cluster is down, when every command with a key fails."""
    await asyncio.gather(
        *(client.exists(keys.metrics(partition)) for partition, client in distinct_partitions(clients))
    )


async def writes_refused(clients: Sequence[Redis], writer: str) -> dict[int, str]:
    """The partitions whose Redis refuses writes now (`refuses_writes`: full at its maxmemory, unable
    to persist, a replica), each with why (`why_writes_refused`); empty when every one takes them. Raise what
    else a write raises (Redis unreachable, a partition's slot unserved or the cluster down): the
    write tells all that serves_every_partition's read does. Redis answers reads and PING while it
    refuses every write, so only a write tells: one SET a distinct client, of a key nothing reads
    (keys.writes_taken), which a refusing Redis refuses as it refuses a submit."""
    distinct = distinct_partitions(clients)
    replies = await asyncio.gather(
        *(
            client.set(keys.writes_taken(partition), writer, px=keys.WRITES_TAKEN_TTL_MS)
            for partition, client in distinct
        ),
        return_exceptions=True,
    )
    refused = {}
    for (partition, _), reply in zip(distinct, replies, strict=True):
        if isinstance(reply, BaseException):
            if not refuses_writes(reply):
                raise reply
            refused[partition] = why_writes_refused(reply)
    return refused


def why_writes_refused(exc: BaseException) -> str:
    """Why Redis refuses writes, in taskd's words, for an error that `refuses_writes`."""
    if isinstance(exc, OutOfMemoryError):
        return "it is full (maxmemory reached, policy noeviction)"
    if isinstance(exc, ReadOnlyError):
        return "it is a read-only replica"
    if lacks_replicas(exc):
        return "too few of its replicas are in sync (min-replicas-to-write)"
    return "it cannot write to its disk (MISCONF)"


# How a Redis URL is printed: its password and credential query values masked.
URL_MASK = "********"


def printable(url: str) -> str:
    """`url` fit for a log line or an error message: its password masked."""
    return mask_url(url, URL_MASK)


def tls_hint(url: str, exc: BaseException) -> str:
    """What to add to the report of `exc`, met reaching Redis at `url`, when the likely cause is a
    server that does not speak TLS; empty otherwise.

    A plain Redis behind a `rediss://` URL reads the TLS hello as the start of a command and waits
    for its end: the connect times out, saying nothing of TLS. A server that answers in plain text
    fails the handshake (an ssl.SSLError, under redis-py's ConnectionError). A certificate refused
    (another name's, an authority not trusted) came from a server that speaks TLS: no hint, but the
    reason where redis-py's message lacks it: 5.0.1 (pyproject's floor) writes an error's number in
    place of its text, "Error 1 connecting to redis.internal:6380. 1.", not a word of a certificate.
    """
    if urlsplit(url).scheme.lower() != "rediss":
        return ""
    refused = next((c for c in (exc, exc.__context__) if isinstance(c, ssl.SSLCertVerificationError)), None)
    if refused is not None:
        reason = refused.verify_message or str(refused)
        return "" if reason in str(exc) else f"; certificate verify failed: {reason}"
    if isinstance(exc, TimeoutError | RedisTimeoutError | ssl.SSLError) or isinstance(
        exc.__context__, ssl.SSLError
    ):
        return "; is the server speaking TLS? (rediss:// connects with TLS)"
    return ""


async def wait_until_answers(redis: Redis, url: str, wait: float) -> None:
    """PING `redis` until it answers, for up to `wait` seconds, with a warning per failed try.

    A Redis started with (or after) taskd, a network not yet up at boot: taskd waits for it rather
    than exit at once into a restart loop its supervisor may give up on (systemd's start limit).
    What waiting cannot mend (a wrong password, a user refused the command, a certificate issued
    for another name) and the last failure are raised.
    """
    deadline = time.monotonic() + wait
    delays = Backoff(RECONNECT_FIRST_AT_START, RECONNECT_CAP_AT_START)
    while True:
        try:
            # A try ends with the wait, whatever redis.socket_timeout says (0: none): a server that
            # takes the connection and never answers (not Redis, a TLS port) hung start-up for ever.
            async with asyncio.timeout(max(deadline - time.monotonic(), CONNECT_TIMEOUT)):
                await redis.ping()
            return
        except (AuthenticationError, AuthorizationError):
            raise
        except (RedisConnectionError, RedisTimeoutError, TimeoutError) as exc:
            if _issued_for_another_name(exc):
                raise
            left = deadline - time.monotonic()
            if left <= 0 and isinstance(exc, RedisError):
                raise
            if left <= 0:
                raise RedisTimeoutError(f"no answer to PING within redis.start_wait ({wait:g} s)") from None
            log.warning(
                "Redis at %s does not answer (%s: %s%s); trying again for %.1f s more",
                printable(url),
                type(exc).__name__,
                exc,
                tls_hint(url, exc),
                left,
            )
            await asyncio.sleep(min(delays.next_delay(), left))


# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH (ssl names no constant).
_NAME_MISMATCH = frozenset({62, 64})


def _issued_for_another_name(exc: BaseException) -> bool:
    """Whether `exc` is a `rediss://` server's certificate refused for naming another host than the
    URL's (the URL names it by its IP address, the certificate by its DNS name, say). The server is
    up and speaks TLS, so no wait mends it, as none mends a wrong password: a start that waited
    `redis.start_wait` for it logged "does not answer" at each try before it gave up, which an
    upgrade from 28b50af, when the name began to be checked, showed every deployment so named.
    Other refusals are still waited out: a certificate not yet valid (a clock not yet set at boot)
    or just expired (its renewal under way) may mend itself."""
    return any(
        isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_code in _NAME_MISMATCH
        for cause in (exc, exc.__context__)
    )


def connect(url: str, *, socket_timeout: float | None = None, partition: int = 0) -> Redis:
    """A client for `url` (`redis://`, `rediss://`, `unix://` or `redis+sentinel://`); connects lazily.

    `socket_timeout` bounds every command (None: wait for ever, for pub/sub listeners). On a
    cluster, the client talks to the primary of `partition`'s slot (taskd.keys.partition_prefix).
    """
    client = _connect(url, socket_timeout=socket_timeout, partition=partition)
    # Before the pool made any connection (it makes them lazily), so that every one is taskd's.
    pool = client.connection_pool
    pool.connection_class = _taskd_connection(pool.connection_class)
    _connect_outside_the_lock(pool)
    return client


def _connect_outside_the_lock(pool: ConnectionPool) -> None:
    # redis-py below 5.3 (pyproject.toml allows 5.0.1) has no pool lock, nor the methods that
    # ConnectsOutsideTheLock calls: its pool connects outside of any lock already.
    if hasattr(pool, "_lock"):
        pool_class: type = type(pool)
        pool.__class__ = _taskd_pool(pool_class)


def connect_partitions(url: str, first: Redis, *, socket_timeout: float | None = None) -> list[Redis]:
    """A client per partition (taskd.keys.partitions), `first` (a client of `url`) the one of
    partition 0: on a cluster, each other one talks to the primary of its partition's slot;
    otherwise every partition is on the one server, and they are all `first`."""
    if not url.startswith(CLUSTER_SCHEME + "://"):
        return keys.client_per_partition(first)
    return [first] + [
        connect(url, socket_timeout=socket_timeout, partition=partition)
        for partition in keys.partitions()[1:]
    ]


def _connect(url: str, *, socket_timeout: float | None, partition: int) -> Redis:
    options: dict[str, Any] = {
        "health_check_interval": 10,
        "socket_keepalive": True,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": socket_timeout,
    }
    if url.startswith(CLUSTER_SCHEME + "://"):
        return _cluster_client(parse_cluster_url(url), options, partition)
    if url.startswith("unix://"):
        # TCP keepalive is a TCP option: redis-py's unix socket connection takes no such argument.
        del options["socket_keepalive"]
    if not url.startswith(SENTINEL_SCHEME + "://"):
        direct: Redis = Redis.from_url(url, **options, **_tls_options(url))
        return direct
    parsed = parse_sentinel_url(url)
    sentinel_options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": socket_timeout or CONNECT_TIMEOUT,
    }
    if parsed.sentinel_password:
        sentinel_options["password"] = parsed.sentinel_password
    sentinel = Sentinel(parsed.hosts, sentinel_kwargs=sentinel_options)
    # Each new connection to the primary first asks a sentinel where it is, through these clients:
    # a sentinel that hangs would queue those questions as a hung primary queues commands.
    for sentinel_client in sentinel.sentinels:
        _connect_outside_the_lock(sentinel_client.connection_pool)
    client = sentinel.master_for(
        parsed.service,
        redis_class=_SentinelRedis,
        db=parsed.db,
        password=parsed.password,
        username=parsed.username,
        **options,
    )
    client.sentinel = sentinel
    managed: Redis = client
    return managed


def _tls_options(url: str) -> dict[str, Any]:
    """What a `rediss://` URL's connections check beyond redis-py's defaults: the server's name.

    redis-py 5 checks that the certificate chains to a trusted authority, not that it was issued
    for the host in the URL (`ssl_check_hostname` defaults to false), so whoever could put
    themselves between taskd and its Redis with a certificate of any name that authority signed
    (a public one's, for a domain of their own) was sent the password. The URL's own
    `ssl_check_hostname` wins (redis-py's URL options override these), and a URL that asks for no
    certificate check (`ssl_cert_reqs=none`) checks no name either, as Python's ssl cannot.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "rediss":
        return {}
    cert_reqs = parse_qs(parts.query).get("ssl_cert_reqs", ["required"])[0]
    return {} if cert_reqs.lower() == "none" else {"ssl_check_hostname": True}


async def refuse_cluster(url: str, redis: Redis) -> None:
    """Raise ConfigError when `redis` is a node of a Redis Cluster reached by a plain `redis://` URL.

    Such a client talks to that node only: taskd would work while the node serves its slot, and
    fail every command (MOVED) once a failover or a resharding moves the slot elsewhere.
    """
    if url.startswith(CLUSTER_SCHEME + "://"):
        return
    info = await redis.info("cluster")
    if int(info.get("cluster_enabled", 0)):
        raise ConfigError(
            "redis.url is a node of a Redis Cluster: use redis+cluster://host:port[,host:port…] "
            "(docs/cluster.md)"
        )


@attrs.frozen
class ClusterUrl:
    """The parts of a `redis+cluster://` URL."""

    nodes: list[tuple[str, int]]
    password: str | None = None
    username: str | None = None


def parse_cluster_url(url: str) -> ClusterUrl:
    """Split a `redis+cluster://` URL; raise ConfigError naming what is wrong."""
    parts = urlsplit(url)
    credentials, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    nodes = [_address(item, DEFAULT_CLUSTER_PORT) for item in filter(None, hostlist.split(","))]
    # A cluster has database 0 only.
    if not nodes or parts.path.strip("/") not in ("", "0") or parts.query:
        raise ConfigError("redis.url: expected redis+cluster://[:password@]host:6379[,host2:6379…]")
    return ClusterUrl(nodes=nodes, password=unquote(password) or None, username=unquote(username) or None)


def _address(item: str, default_port: int) -> tuple[str, int]:
    host, _, port = item.rpartition(":") if item.count(":") == 1 or "]:" in item else (item, "", "")
    host = host.strip("[]")
    if not host or (port and not port.isdigit()):
        raise ConfigError(f"redis.url: bad address {item!r}")
    return host, int(port) if port else default_port


class _SlotPrimaryConnection(Connection):  # type: ignore[misc]
    """A connection to the primary that serves the slot of one partition's hash tag, found on connect."""

    def __init__(self, *, cluster_nodes: tuple[tuple[str, int], ...], partition: int, **kwargs: Any) -> None:
        self.cluster_nodes = cluster_nodes
        self.partition = partition
        super().__init__(**kwargs)

    async def connect(self) -> None:
        """Ask the known nodes which one serves taskd's slot now, then connect to it."""
        if not self.is_connected:
            self.host, self.port = await self._slot_primary()
        await super().connect()

    async def _slot_primary(self) -> tuple[str, int]:
        slot = key_slot(keys.partition_prefix(self.partition).encode())
        errors = []
        for host, port in self.cluster_nodes:
            node = Redis(
                host=host,
                port=port,
                username=self.username,
                password=self.password,
                socket_connect_timeout=self.socket_connect_timeout,
                socket_timeout=self.socket_connect_timeout,
            )
            try:
                for first, last, primary, *_ in await node.execute_command("CLUSTER SLOTS"):
                    if first <= slot <= last:
                        # An empty endpoint means the node that answered (as CLUSTER SLOTS documents).
                        return primary[0].decode() or host, int(primary[1])
                errors.append(f"{host}:{port} knows no node serving slot {slot}")
            except RedisError as exc:
                errors.append(f"{host}:{port}: {exc}")
            finally:
                await node.aclose()
        raise RedisConnectionError("no cluster node answered for taskd's slot: " + "; ".join(errors))

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        """A reply that says the slot is served elsewhere drops the connection (a ConnectionError,
        as for a node that went away): the next connection asks the cluster again."""
        try:
            return await super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if not slot_elsewhere(str(exc)):
                raise
            await self.disconnect(nowait=True)
            raise RedisConnectionError(
                f"taskd's slot is not served by {self.host}:{self.port}: {exc}"
            ) from exc


def on_cluster(redis: Redis) -> bool:
    """True for a client of `connect` on a `redis+cluster://` URL (its slot may migrate)."""
    return issubclass(redis.connection_pool.connection_class, _SlotPrimaryConnection)


def _cluster_client(parsed: ClusterUrl, options: dict[str, Any], partition: int) -> Redis:
    pool = ConnectionPool(
        connection_class=_SlotPrimaryConnection,
        cluster_nodes=tuple(parsed.nodes),
        partition=partition,
        username=parsed.username,
        password=parsed.password,
        **options,
    )
    # The client owns its pool: closing it closes the connections (Redis(connection_pool=…) would not).
    client: Redis = Redis.from_pool(pool)
    return client
