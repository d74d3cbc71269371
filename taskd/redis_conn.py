"""The one place taskd opens its Redis: a plain `redis://` URL, or Sentinel with `redis+sentinel://`.

Sentinel form: `redis+sentinel://[:password@]host1:26379,host2:26379/<service name>[/<db>]`,
optionally `?sentinel_password=…` when the sentinels themselves need a password. The client
asks the sentinels for the current primary on every new connection, and drops its connections
when the primary it knew becomes a replica, so taskd follows a failover without a restart.

Redis Cluster is not supported yet (docs/cluster.md says why and what it takes): a
`redis+cluster://` URL, or a `redis://` URL of a cluster node, is refused at start with a
ConfigError rather than failing later, command by command, with MOVED and CROSSSLOT errors.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

from taskd.config import ConfigError

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
CLUSTER_UNSUPPORTED = (
    "taskd does not run on a Redis Cluster yet: its Lua scripts touch keys of many hash slots "
    "(docs/cluster.md); use a standalone Redis/Valkey or Sentinel"
)
DEFAULT_SENTINEL_PORT = 26379
# A bound on every connect; a Redis that is down answers 503 at once instead of hanging requests.
CONNECT_TIMEOUT = 5.0


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


def connect(url: str, *, socket_timeout: float | None = None) -> Redis:
    """A client for `url` (`redis://`, `rediss://`, `unix://` or `redis+sentinel://`); connects lazily.

    `socket_timeout` bounds every command (None: wait for ever, for pub/sub listeners).
    """
    options: dict[str, Any] = {
        "health_check_interval": 10,
        "socket_keepalive": True,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": socket_timeout,
    }
    if url.startswith(CLUSTER_SCHEME + "://"):
        raise ConfigError(f"redis.url: {CLUSTER_UNSUPPORTED}")
    if not url.startswith(SENTINEL_SCHEME + "://"):
        direct: Redis = Redis.from_url(url, **options)
        return direct
    parsed = parse_sentinel_url(url)
    sentinel_options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": socket_timeout or CONNECT_TIMEOUT,
    }
    if parsed.sentinel_password:
        sentinel_options["password"] = parsed.sentinel_password
    sentinel = Sentinel(parsed.hosts, sentinel_kwargs=sentinel_options)
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


async def refuse_cluster(redis: Redis) -> None:
    """Raise ConfigError when `redis` is a node of a Redis Cluster.

    A cluster node answers for its own slots only: taskd would start, then fail part of its
    commands (MOVED) and every script whose keys hash to several slots (CROSSSLOT).
    """
    info = await redis.info("cluster")
    if int(info.get("cluster_enabled", 0)):
        raise ConfigError(f"redis.url is a Redis Cluster node; {CLUSTER_UNSUPPORTED}")
