"""Configuration: `taskd.toml` plus `TASKD_<SECTION>__<KEY>` environment overrides, parsed into attrs classes."""

from __future__ import annotations

import base64
import ipaddress
import itertools
import json
import logging
import math
import os
import re
import socket
import stat
import tomllib
from collections.abc import Mapping
from datetime import date, time
from pathlib import Path
from typing import Any, NewType, get_origin
from urllib.parse import SplitResult, parse_qs, urlsplit

import attrs
import cattrs
from cattrs.errors import IterableValidationError, IterableValidationNote
from cattrs.gen import make_dict_structure_fn, override

from taskd.logs import KEYED_BY_NAME, secrets_of
from taskd.shapes import MAX_SCHEDULE_AHEAD, PROJECT_ID
from taskd.validation import errors_by_path

ENV_PREFIX = "TASKD_"
# Read by the client commands (`taskd status`, ...), not config keys.
NOT_CONFIG = frozenset({"TASKD_CONFIG", "TASKD_URL", "TASKD_API_KEY"})
# Kubernetes gives every container the address of each Service in its namespace, in variables named
# after the Service: one named `taskd` (or `taskd-api`) gives TASKD_SERVICE_HOST, TASKD_SERVICE_PORT,
# TASKD_SERVICE_PORT_<PORT NAME>, TASKD_PORT and TASKD_PORT_8001_TCP[_PROTO|_PORT|_ADDR] (TASKD_API_…).
# They name no key: refused as typos, they stopped every pod started after such a Service was made.
# What follows the Service's name; each set comes with its <SERVICE>_SERVICE_HOST.
_SERVICE_LINK = re.compile(
    r"SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_[0-9]+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?"
)
SEARCH_PATHS = (Path("taskd.toml"), Path("/etc/taskd/taskd.toml"))


class ConfigError(Exception):
    """A configuration problem, worded as one line that names the key."""


# The longest duration any seconds setting may have: ten years. A TTL, a time limit or an interval
# longer than that is a typo, and one without bound is worse: Redis refuses an EXPIRE past 64 bits
# (every submit failed) and asyncio an infinite timeout (start-up died on an OverflowError).
MAX_SECONDS = 10 * 365 * 24 * 3600
SEND_TIMEOUT_MAX = (2**31 - 1) // 1000  # seconds: http.send_timeout in ms must fit a C int
MAX_TASK_DATA_DEPTH = 200


def _seconds(*, gt: float | None = None, ge: float | None = None) -> Any:
    """The validator of a duration in seconds: above `gt` (or at least `ge`), at most MAX_SECONDS."""

    def check(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
        _check_seconds(attribute.name, value, gt, ge)

    return check


def _check_seconds(name: str, value: float, gt: float | None = None, ge: float | None = None) -> None:
    if gt is not None and not value > gt:
        raise ValueError(f"'{name}' must be above {gt} seconds, got {value}")
    if ge is not None and not value >= ge:
        raise ValueError(f"'{name}' must be at least {ge} seconds, got {value}")
    if value > MAX_SECONDS:
        raise ValueError(f"'{name}' must be at most {MAX_SECONDS} seconds (10 years), got {value}")


def _time_limits(_: Any, attribute: attrs.Attribute[dict[str, float]], value: dict[str, float]) -> None:
    for task_type, seconds in value.items():
        _check_seconds(f"{attribute.name}.{task_type}", seconds, gt=0)


def _slot_counts(gpu: Any, attribute: attrs.Attribute[dict[str, int]], value: dict[str, int]) -> None:
    for name, slots in value.items():
        if slots < 0:
            raise ValueError(
                f"'{attribute.name}.{name}' must be at least 0 (0: the whole device), got {slots}"
            )
        # No device ever has room for more than its slots: such a job would wait for ever, and the
        # device it reserves (a job of more than one slot does) would hold back every job behind it.
        if slots > gpu.slots:
            raise ValueError(
                f"'{attribute.name}.{name}' must be at most slots ({gpu.slots}, a whole device), got {slots}"
            )


# What a queue's or a task type's name may be. Both are parts of Redis key names, where a project
# id follows a queue's name after a ':' (`{taskd}:project_waiting:<queue>:<project>`), of the
# metrics hash's fields (`wait_in:<queue>:<type>:<le>`) and of `--queues a,b`: with a ':' in a
# queue's name, queue `q` with project `big:alpha` and queue `q:big` with project `alpha` were one
# line, and a tenant's tasks waited in another's; a type with a ':' had no counters of its own.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


def name_problem(what: str, name: str) -> str | None:
    """Why `name` cannot be the name of a queue or task type (`what` says which), or None."""
    if NAME.fullmatch(name):
        return None
    return f"{what} must be {NAME_RULE} (it is part of Redis key names), got {name!r}"


def _queue_names(_: Any, attribute: attrs.Attribute[dict[str, str]], value: dict[str, str]) -> None:
    for task_type, queue in value.items():
        if not queue.strip():
            raise ValueError(f"'{attribute.name}.{task_type}' must name a queue, got an empty string")
        if problem := name_problem(f"'{attribute.name}.{task_type}'", queue):
            raise ValueError(problem)


def _queue_table(_: Any, attribute: attrs.Attribute[dict[str, Any]], value: dict[str, Any]) -> None:
    # Here, not in load_config: a Config built in Python (a test, an embedding program) is held
    # to the same names as one read from a file or the environment. Config's own field: its
    # message names it (there is no section above it to).
    for name in value:
        if problem := name_problem("a queue's name", name):
            raise ValueError(f"{attribute.name}: {problem}")


# A table keyed by task type or queue name, whose keys say nothing of whether a value is secret
# (logs.KEYED_BY_NAME).
_BY_NAME = {KEYED_BY_NAME: True}


def _listen_host(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    # aiohttp takes an empty host for every interface, IPv4 and IPv6: an unset variable in
    # TASKD_HTTP__HOST=$HOST must not open the API to the network. Every interface is 0.0.0.0 or ::.
    if not value.strip() or value != value.strip():
        raise ValueError(
            f"'{attribute.name}' must be a host name or address (0.0.0.0 or :: for every interface), "
            f"got {'an empty string' if not value.strip() else repr(value)}"
        )


@attrs.frozen
class HttpConfig:
    host: str = attrs.field(default="127.0.0.1", validator=_listen_host)
    port: int = attrs.field(
        default=8001, validator=attrs.validators.and_(attrs.validators.ge(0), attrs.validators.le(65535))
    )
    # Seconds a connection may hold no request in progress (idle between requests, or still sending
    # a request's headers) before it is closed: a client that opens connections and sends nothing,
    # or its headers a byte at a time, holds each for this long at most. Above the idle timeouts of
    # the usual proxies in front (60 s), so that none reuses a connection taskd is closing.
    idle_timeout: float = attrs.field(default=75.0, validator=_seconds(gt=0))
    # Seconds a request's body may take to arrive once the handler reads it; then 408.
    body_timeout: float = attrs.field(default=60.0, validator=_seconds(gt=0))
    # Seconds a client may leave the answer it is sent untaken (its TCP window shut, or what was sent
    # unacknowledged) before the connection is reset: nginx's send_timeout, kept by the kernel
    # (TCP_USER_TIMEOUT, Linux). At most SEND_TIMEOUT_MAX: the option is a C int of milliseconds.
    send_timeout: float = attrs.field(
        default=60.0, validator=[_seconds(gt=0), attrs.validators.le(SEND_TIMEOUT_MAX)]
    )


def _webhook_secret(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    # Standard Webhooks secrets are "whsec_" + base64 of the key bytes; "" means none.
    if not value:
        return
    try:
        key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
    except ValueError:
        key = b""
    if not value.startswith("whsec_") or len(key) < 16:
        raise ValueError(
            f"'{attribute.name}' must be whsec_ followed by the base64 of at least 16 random bytes"
        )


def _previous_webhook_secret(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    _webhook_secret(instance, attribute, value)
    if value and not instance.webhook_secret:
        raise ValueError(f"'{attribute.name}' is for rotation: it needs a 'webhook_secret' too")


def _check_api_key(key: str) -> None:
    # An empty key would let in a request that sends none; a blank one no header can carry.
    if not key.strip():
        raise ValueError("an API key must not be empty or blank")
    # Bytes of the environment that are not UTF-8 arrive escaped as surrogates: such a key has no
    # id (taskd.webhooks.signing.key_id hashes its UTF-8), so start-up broke off with a traceback.
    try:
        key.encode()
    except UnicodeEncodeError:
        raise ValueError("an API key must be UTF-8 text (its bytes in the environment are not)") from None


def _api_key(_: object, __: attrs.Attribute[str], key: str) -> None:
    _check_api_key(key)


def _project_ids(_: object, __: attrs.Attribute[list[str]], projects: list[str]) -> None:
    # An entry no project can have is a mistake; a blank one must not vanish, leaving the list
    # empty, which means every project.
    for project in projects:
        if not PROJECT_ID.fullmatch(project):
            raise ValueError(
                f"{project!r} is not a project id (1-128 letters, digits, '_', '.', ':', '@' or '-', "
                "starting with a letter or digit)"
            )


@attrs.frozen
class ScopedKey:
    """An API key that may use only the listed projects (empty list: every project).

    With `webhook_secret`, the webhooks of its tasks are signed with that secret (and
    `previous_webhook_secret` during a rotation) instead of `webhooks.secret`.
    """

    key: str = attrs.field(validator=_api_key)
    projects: list[str] = attrs.field(factory=list, validator=_project_ids)
    webhook_secret: str = attrs.field(default="", validator=_webhook_secret)
    previous_webhook_secret: str = attrs.field(default="", validator=_previous_webhook_secret)


def _lower(value: str) -> str:
    return value.strip().lower()


def _upper(value: str) -> str:
    return value.strip().upper()


def _distinct_keys(instance: Any, _: attrs.Attribute[list[ScopedKey]], keys: list[ScopedKey]) -> None:
    # One key, two entries: which projects and which webhook secret would be its? A key of api_keys
    # may use every project, one of keys only its own: a key in both is the same question.
    first: dict[str, int] = {}
    for index, entry in enumerate(keys):
        if entry.key in first:
            raise ValueError(f"auth.keys[{first[entry.key]}] and auth.keys[{index}] have the same key")
        first[entry.key] = index
        if entry.key in instance.api_keys:
            raise ValueError(
                f"the key of auth.keys[{index}] is also in auth.api_keys: give it once, scoped or not"
            )


@attrs.frozen
class AuthConfig:
    # Empty: taskd makes one key on first start. Env TASKD_AUTH__API_KEYS=k1,k2.
    api_keys: list[str] = attrs.field(factory=list, validator=attrs.validators.deep_iterable(_api_key))
    # [{key = "…", projects = ["p1", "p2"], webhook_secret = "whsec_…"}]; env TASKD_AUTH__KEYS as JSON.
    keys: list[ScopedKey] = attrs.field(factory=list, validator=_distinct_keys)

    def shared_webhook_secrets(self, webhooks: WebhooksConfig) -> list[str]:
        """Why a scoped key's tenant can verify and forge another's webhooks: it has no
        `webhook_secret` of its own, so its tasks are signed with the global one (`webhooks`' secret
        and previous_secret), as are those of every key without one; its secret is a global one; or
        another key of auth.keys with other projects (every project, for one without `projects`) has
        its secret (keys of one tenant, as in a key's rotation, have the same projects). Each a valid
        choice for keys of one owner, but not what `projects` is for. Said at start and by `taskd
        config check`."""
        warnings = [
            f"auth.keys[{index}] (projects {', '.join(entry.projects)}) has no webhook_secret: its "
            "tasks' webhooks are signed with the global webhooks.secret, as those of every key "
            "without one of its own, so each such key's receiver verifies the others' webhooks "
            "and whoever holds that secret can forge them; give each tenant's key its own"
            for index, entry in enumerate(self.keys)
            if entry.projects and not entry.webhook_secret
        ]
        scoped = [
            (index, entry, _own_secrets(entry)) for index, entry in enumerate(self.keys) if entry.projects
        ]
        shared_global = {secret for secret in (webhooks.secret, webhooks.previous_secret) if secret}
        for index, entry, secrets in scoped:
            if secrets & shared_global:
                warnings.append(
                    f"auth.keys[{index}] (projects {', '.join(entry.projects)}) has a webhook secret "
                    "that is also webhooks.secret or previous_secret: its receiver verifies the "
                    "webhooks of every key without a secret of its own, and its tenant can forge "
                    "them; give it one of its own"
                )
        # Every key with a secret of its own, scoped or not: a key of every project (no `projects`)
        # that shares a tenant's secret has that tenant verify and forge all its webhooks.
        owning = [(index, entry, _own_secrets(entry)) for index, entry in enumerate(self.keys)]
        for (first, one, ones), (second, other, others) in itertools.combinations(owning, 2):
            if ones & others and set(one.projects) != set(other.projects):
                warnings.append(
                    f"auth.keys[{first}] and auth.keys[{second}] have a webhook secret in common but "
                    "not their projects: each one's receiver verifies the other's webhooks, and each "
                    "tenant can forge them; give each its own"
                )
        return warnings


def _own_secrets(entry: ScopedKey) -> set[str]:
    """The webhook secrets a key of auth.keys signs with: its own and, during a rotation, the previous one."""
    return {secret for secret in (entry.webhook_secret, entry.previous_webhook_secret) if secret}


REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")
# The query options of a redis://, rediss:// or unix:// URL that redis-py's connections take (any
# other it passes on, and the first connection fails with a TypeError), and those it reads as numbers.
_REDIS_OPTIONS = {
    "redis": {
        "db",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "retry_on_timeout",
        "max_connections",
        "health_check_interval",
        "timeout",
        "client_name",
        "username",
        "password",
    },
    "redis+sentinel": {"sentinel_password"},  # taskd reads this one; it passes on none
}
_REDIS_OPTIONS["rediss"] = _REDIS_OPTIONS["redis"] | {
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
    "ssl_ciphers",
}
_REDIS_OPTIONS["unix"] = _REDIS_OPTIONS["redis"] - {"socket_keepalive"}  # a TCP option
_REDIS_NUMBER_OPTIONS = {
    "db": int,
    "max_connections": int,
    "health_check_interval": int,
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "timeout": float,
}


def _redis_url_problem(url: str) -> str | None:
    # What redis-py would only fail on when taskd first connects, with a traceback (or, for a db
    # that is not a number, not at all: it used db 0). Never the URL itself: it may hold a password.
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed [ of an IPv6 address
        return f"is not a URL ({exc})"
    if parts.scheme not in REDIS_SCHEMES or not url.startswith(f"{parts.scheme}://"):
        return "must start with one of " + ", ".join(f"{scheme}://" for scheme in REDIS_SCHEMES)
    if parts.scheme == "unix":
        if not parts.path.strip("/"):
            return "needs the socket's path: unix:///path/to/valkey.sock"
        return _redis_query_problem(parts)
    return _redis_hosts_problem(parts) or _redis_path_problem(parts) or _redis_query_problem(parts)


def _redis_hosts_problem(parts: SplitResult) -> str | None:
    hosts = parts.netloc.rpartition("@")[2]
    several = "+" in parts.scheme  # sentinel and cluster URLs list several host:port
    for item in hosts.split(",") if several else [hosts]:
        host, _, port = item.rpartition(":") if item.count(":") == 1 or "]:" in item else (item, "", "")
        if (item or several) and not host.strip("[]"):
            return "has an address with no host"
        if port and not (_digits(port) and int(port) <= 65535):
            return "has a port that is not a number from 0 to 65535"
    return None


def _redis_path_problem(parts: SplitResult) -> str | None:
    path = [segment for segment in parts.path.split("/") if segment]
    if parts.scheme == "redis+sentinel":
        if not 1 <= len(path) <= 2 or not all(map(_digits, path[1:])):
            return "must end in /<sentinel service name>[/<db number>]"
    elif parts.scheme == "redis+cluster":
        if path not in ([], ["0"]) or parts.query:
            return "of a cluster has no path (a cluster has database 0 only) and no options"
    elif len(path) > 1 or not all(map(_digits, path)):
        return "must end in /<db number> or nothing"
    return None


def _redis_query_problem(parts: SplitResult) -> str | None:
    known = _REDIS_OPTIONS.get(parts.scheme, set())
    for name, values in parse_qs(parts.query).items():
        if name not in known:
            return f"has an option {parts.scheme}:// URLs do not take: {name!r} (known: {', '.join(sorted(known))})"
        if name == "ssl_cert_reqs" and values[0].lower() not in ("none", "optional", "required"):
            return "has an ssl_cert_reqs option that is not none, optional or required"
        number = _REDIS_NUMBER_OPTIONS.get(name)
        if number is not None:
            try:
                number(values[0])
            except ValueError:
                return f"has a {name} option that is not a number"
    return None


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _redis_url(_: Any, attribute: attrs.Attribute[str], url: str) -> None:
    problem = _redis_url_problem(url) if url else None
    if problem:
        raise ValueError(f"'{attribute.name}' {problem}")


@attrs.frozen
class RedisConfig:
    # redis://…, rediss://…, unix:///path, redis+sentinel://[:password@]host:26379,host2:26379/<service>/<db>,
    # or redis+cluster://[:password@]host:6379,host2:6379 (docs/cluster.md).
    url: str = attrs.field(default="", validator=_redis_url)
    # Seconds any one Redis command may take before the API answers 503 (0: no limit).
    socket_timeout: float = attrs.field(default=10.0, validator=_seconds(ge=0))
    # Seconds a start-up waits for a Redis that does not answer (down, not yet started, a network
    # not up), trying again with a warning each time, before it stops with exit status 3.
    start_wait: float = attrs.field(default=60.0, validator=_seconds(ge=0))
    # Replicas that must hold a new task before its submit is acknowledged (WAIT); 0: do not wait.
    wait_replicas: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    wait_timeout: float = attrs.field(default=2.0, validator=_seconds(gt=0))
    # How many hash tags taskd's tasks are spread over, each project's in one (docs/cluster.md):
    # on a Redis Cluster, one per shard or more spreads taskd's load over the shards. Every process
    # must use the same number, and it is kept with the data: it cannot change once tasks are stored.
    partitions: int = attrs.field(default=1, validator=[attrs.validators.ge(1), attrs.validators.le(32)])
    # How often the embedded Valkey fsyncs its append-only file: everysec, always or no.
    embedded_appendfsync: str = attrs.field(
        default="everysec", converter=_lower, validator=attrs.validators.in_(("everysec", "always", "no"))
    )
    # The embedded Valkey's memory bound (Valkey units: 1gb, 512mb, bytes; "0": none). Past it writes
    # are refused (noeviction), never silently evicted: submits answer 503.
    embedded_maxmemory: str = attrs.field(
        default="1gb",
        converter=_lower,
        validator=attrs.validators.matches_re(r"[0-9]{1,15}(b|k|kb|m|mb|g|gb)?"),
    )
    # The embedded Valkey's allocator: "mimalloc" (preloaded on Linux, from the cmeel-mimalloc wheel)
    # or "libc", the binary's own (docs/performance.md, "The embedded Valkey's allocator").
    embedded_allocator: str = attrs.field(
        default="mimalloc", converter=_lower, validator=attrs.validators.in_(("mimalloc", "libc"))
    )


def _url_has_credentials(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.username is not None or parts.password is not None
    except ValueError:
        return False


def _key_or_url_credentials(instance: Any, attribute: attrs.Attribute[str], key: str) -> None:
    # A request cannot carry both: aiohttp refuses an Authorization header beside a URL's
    # credentials, so every call of the provider failed with a ValueError at run time.
    if key and _url_has_credentials(instance.base_url):
        raise ValueError(
            f"'{attribute.name}' is set and base_url carries a user name or password: "
            "each request has one Authorization, so give the credentials in one of them"
        )


@attrs.frozen
class LlmProvider:
    base_url: str = ""
    api_key: str = attrs.field(default="", validator=_key_or_url_credentials)
    model: str = "gpt-4o-mini"
    timeout: float = attrs.field(default=120.0, validator=_seconds(gt=0))
    # Shared by every worker on every host (taskd/providers/limits.py); 0 = unlimited.
    max_concurrency: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    per_minute: int = attrs.field(default=0, validator=attrs.validators.ge(0))


@attrs.frozen
class ImageProvider:
    base_url: str = ""
    api_key: str = attrs.field(default="", validator=_key_or_url_credentials)
    model: str = "gpt-image-1"
    timeout: float = attrs.field(default=180.0, validator=_seconds(gt=0))
    max_concurrency: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    per_minute: int = attrs.field(default=0, validator=attrs.validators.ge(0))


@attrs.frozen
class SpeechProvider:
    base_url: str = ""
    api_key: str = attrs.field(default="", validator=_key_or_url_credentials)
    model: str = "gpt-4o-mini-tts"
    voice: str = "alloy"
    timeout: float = attrs.field(default=120.0, validator=_seconds(gt=0))
    max_concurrency: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    per_minute: int = attrs.field(default=0, validator=attrs.validators.ge(0))


VIDEO_PROTOCOLS = ("", "openai", "replicate")
# What a Replicate-style model is sent, by taskd's name; the value is the model's input name ("": not sent).
DEFAULT_VIDEO_INPUTS = {"prompt": "prompt", "seconds": "duration", "size": "", "fps": "", "image": "image"}


def _video_protocol_needs(instance: Any, _: attrs.Attribute[str], protocol: str) -> None:
    if not protocol:
        return
    if instance.plugin.strip():
        raise ValueError("set providers.video.protocol or providers.video.plugin, not both")
    if not instance.base_url.strip():
        raise ValueError(f"protocol {protocol!r} needs providers.video.base_url")
    if not instance.model.strip():
        raise ValueError(f"protocol {protocol!r} needs providers.video.model")


def _video_inputs(_: Any, attribute: attrs.Attribute[dict[str, str]], value: dict[str, str]) -> None:
    unknown = sorted(set(value) - set(DEFAULT_VIDEO_INPUTS))
    if unknown:
        raise ValueError(
            f"'{attribute.name}' knows {', '.join(DEFAULT_VIDEO_INPUTS)}, not {', '.join(unknown)}"
        )


@attrs.frozen
class VideoProvider:
    # An asynchronous video-generation API (taskd/providers/video.py): "openai" (the Videos API) or
    # "replicate" (predictions); "" with no plugin: the built-in ffmpeg renderer.
    protocol: str = attrs.field(
        default="",
        converter=_lower,
        validator=[attrs.validators.in_(VIDEO_PROTOCOLS), _video_protocol_needs],
    )
    base_url: str = ""
    api_key: str = attrs.field(default="", validator=_key_or_url_credentials)
    # Replicate: "owner/name", or "owner/name:version" / a version id.
    model: str = ""
    timeout: float = attrs.field(default=60.0, validator=_seconds(gt=0))  # each HTTP request
    poll_interval: float = attrs.field(default=5.0, validator=_seconds(gt=0))
    # 429, 5xx and connection errors of one request: tried again this many times, `retry_delay`
    # doubling (at most 60 s, or what Retry-After says), before the task fails (and is retried).
    max_retries: int = attrs.field(default=5, validator=attrs.validators.ge(0))
    retry_delay: float = attrs.field(default=2.0, validator=_seconds(ge=0))
    # Jobs in flight at the provider at once, and jobs created per minute, across every worker; 0 = unlimited.
    max_concurrency: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    per_minute: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    # Replicate only: the model's input names where they differ from DEFAULT_VIDEO_INPUTS, and
    # constant inputs sent as they are (TOML types; from the environment they are strings).
    inputs: dict[str, str] = attrs.field(factory=dict, validator=_video_inputs)
    extra_input: dict[str, Any] = attrs.Factory(dict)
    # "module:callable" returning a taskd.media.video.ClipRenderer (docs/media.md); not with `protocol`.
    plugin: str = ""


@attrs.frozen
class ProvidersConfig:
    llm: LlmProvider = attrs.Factory(LlmProvider)
    image: ImageProvider = attrs.Factory(ImageProvider)
    speech: SpeechProvider = attrs.Factory(SpeechProvider)
    video: VideoProvider = attrs.Factory(VideoProvider)


@attrs.frozen
class S3Config:
    """The S3-compatible bucket of `media.backend = "s3"` (docs/media.md#object-storage-s3)."""

    endpoint: str = ""  # empty: AWS S3 of `region`; e.g. http://seaweedfs:8333, https://minio.example.com
    bucket: str = ""
    region: str = "us-east-1"
    access_key_id: str = ""  # empty (with secret_access_key): botocore's chain (env, profile, instance role)
    secret_access_key: str = ""
    # Keys are <prefix><project_id>/<file>; "" or e.g. "taskd/media/".
    prefix: str = attrs.field(default="", validator=attrs.validators.matches_re(r"([A-Za-z0-9_.-]+/)*"))
    addressing_style: str = attrs.field(
        default="path", converter=_lower, validator=attrs.validators.in_(("path", "virtual"))
    )
    timeout: float = attrs.field(default=60.0, validator=_seconds(gt=0))


def _media_backend(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if value == "s3" and not instance.s3.bucket:
        raise ValueError(f"'{attribute.name}' is s3: media.s3.bucket must be set")


@attrs.frozen
class MediaConfig:
    dir: str = ""  # empty: <data_dir>/media
    base_url: str = ""  # empty: http://<http.host>:<http.port>
    url_ttl: int = attrs.field(default=7 * 24 * 3600, validator=_seconds(ge=60))
    secret: str = ""  # empty: made once and kept in <data_dir>/media_secret
    # During a rotation, the secret media.secret had before: links signed with it are still served
    # (until they expire), and none is signed with it any more.
    previous_secret: str = ""
    scratch_dir: str = ""  # empty: <data_dir>/scratch
    max_download_bytes: int = attrs.field(default=50 * 1024 * 1024, validator=attrs.validators.ge(1024))
    max_inputs: int = attrs.field(default=32, validator=attrs.validators.ge(1))
    download_timeout: float = attrs.field(default=30.0, validator=_seconds(gt=0))
    # Bounds on what a task's inputs may make ffmpeg decode, and on what it may write.
    max_image_pixels: int = attrs.field(default=40_000_000, validator=attrs.validators.ge(1))
    max_input_seconds: float = attrs.field(default=3600.0, validator=_seconds(gt=0))
    # Bytes a render's images take decoded, summed over its distinct images: ffmpeg decodes them all at
    # once, so 10 inputs each under max_image_pixels (36 megapixels of 16-bit RGBA, 288 MB decoded)
    # took the render past execution.memory_limit_mb (2048) after half a minute of work.
    max_decoded_image_bytes: int = attrs.field(default=1024**3, validator=attrs.validators.ge(1024 * 1024))
    max_output_bytes: int = attrs.field(default=2 * 1024**3, validator=attrs.validators.ge(1024 * 1024))
    # Samples (rate x channels x seconds) a task's audio inputs may decode, summed over them: a 50 MB
    # FLAC holds an hour of 384 kHz 7.1 silence, 11 billion samples that took ffmpeg about three
    # minutes a pass to decode and resample on one core, and a mix decodes its tracks twice (measuring,
    # mixing), so 16 of them held a worker to its time limit. 4 billion is 11.5 hours of 48 kHz stereo.
    max_audio_samples: int = attrs.field(default=4_000_000_000, validator=attrs.validators.ge(1))
    # Stored media older than this (seconds, by mtime) is deleted by the sweeper, every sweep_interval.
    retention: int = attrs.field(default=7 * 24 * 3600, validator=_seconds(ge=60))
    sweep_interval: float = attrs.field(default=3600.0, validator=_seconds(gt=0))
    # Media tasks are refused (503) while the media dir's, or scratch dir's, filesystem has less free than either.
    min_free_bytes: int = attrs.field(default=1024**3, validator=attrs.validators.ge(0))
    min_free_ratio: float = attrs.field(
        default=0.05, validator=attrs.validators.and_(attrs.validators.ge(0), attrs.validators.lt(1))
    )
    # Where outputs are kept: "local" (`dir`, served by taskd) or "s3" (`[media.s3]`, presigned URLs).
    s3: S3Config = attrs.Factory(S3Config)
    backend: str = attrs.field(
        default="local",
        converter=_lower,
        validator=attrs.validators.and_(attrs.validators.in_(("local", "s3")), _media_backend),
    )


def _payload_auth(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if value and not (instance.api_key or (instance.email and instance.password)):
        raise ValueError(f"'{attribute.name}' is set: it needs api_key, or email and password")
    if _url_has_credentials(value):
        # Every request carries the key's or the login's Authorization, which aiohttp refuses
        # beside a URL's own credentials.
        raise ValueError(
            f"'{attribute.name}' must not carry a user name or password: use api_key, or email and password"
        )


@attrs.frozen
class PayloadConfig:
    """The Payload CMS that media outputs are uploaded to (docs/media.md#payload-cms); no base_url: none."""

    collection: str = attrs.field(default="media", validator=attrs.validators.matches_re(r"[a-z0-9_-]{1,64}"))
    # The auth-enabled collection of the API key or the user: `Authorization: <slug> API-Key <key>`,
    # or `POST /api/<slug>/login` with email and password.
    auth_collection: str = attrs.field(
        default="users", validator=attrs.validators.matches_re(r"[a-z0-9_-]{1,64}")
    )
    api_key: str = ""
    email: str = ""
    password: str = ""
    timeout: float = attrs.field(default=60.0, validator=_seconds(gt=0))
    # Tries of one upload (and of the login) before the result reports payload_error; 1 = no retry.
    max_attempts: int = attrs.field(
        default=3, validator=attrs.validators.and_(attrs.validators.ge(1), attrs.validators.le(10))
    )
    retry_delay: float = attrs.field(default=1.0, validator=_seconds(ge=0))
    # Last: its check reads the credentials above.
    base_url: str = attrs.field(default="", validator=_payload_auth)


def _ip_networks(_: Any, attribute: attrs.Attribute[list[str]], value: list[str]) -> None:
    for text in value:
        try:
            ipaddress.ip_network(text)
        except ValueError as exc:
            raise ValueError(f"'{attribute.name}' entries must be networks like 10.0.0.0/8: {exc}") from None


@attrs.frozen
class NetworkConfig:
    """Where outbound requests made for callers (task inputs, download URLs, webhooks) may go."""

    # true: any address, loopback and private ones too (dev and tests); webhooks.allow_private is an alias.
    allow_private: bool = False
    # CIDRs allowed even when allow_private is false, e.g. an internal object store the deployment trusts.
    allow_networks: list[str] = attrs.field(factory=list, validator=_ip_networks)


@attrs.frozen
class WebhooksConfig:
    allow_private: bool = False
    # Empty: taskd makes one on first start and keeps it in <data_dir>/webhook_secret.
    secret: str = attrs.field(default="", validator=_webhook_secret)
    # The secret before `secret` during a rotation: both sign every webhook until it is removed.
    previous_secret: str = attrs.field(default="", validator=_webhook_secret)
    timeout: float = attrs.field(default=30.0, validator=_seconds(gt=0))
    extra_delays: list[float] = attrs.field(
        factory=list, validator=attrs.validators.deep_iterable(_seconds(ge=0))
    )
    proxy: str = ""
    max_concurrency: int = attrs.field(default=64, validator=attrs.validators.ge(1))
    # POSTs in flight at once to one receiver (scheme, host, port): below max_concurrency, so that a
    # receiver that hangs never holds every place and others' webhooks still go out.
    max_per_receiver: int = attrs.field(default=32, validator=attrs.validators.ge(1))
    # POSTs in flight at once for the tasks of one tenant (the API key that submitted them), to all its
    # receivers: below max_concurrency, so that a tenant's receivers, however many, never hold every place.
    max_per_tenant: int = attrs.field(default=48, validator=attrs.validators.ge(1))
    # The least seconds between two `progress` webhooks of one task (those who ask for them).
    progress_interval: float = attrs.field(default=5.0, validator=_seconds(ge=0))

    def idle_caps(self) -> list[str]:
        """Why max_per_receiver or max_per_tenant protects nobody: at or above max_concurrency (a
        valid choice, as with one receiver for everything, but one an operator who only lowered
        max_concurrency did not make). Said at start and by `taskd config check`."""
        return [
            f"webhooks.{name} ({cap}) is not below webhooks.max_concurrency ({self.max_concurrency}): "
            f"one {who} can hold every place; set it lower to keep some for the others"
            for name, cap, who in (
                ("max_per_receiver", self.max_per_receiver, "receiver"),
                ("max_per_tenant", self.max_per_tenant, "API key's tasks"),
            )
            if cap >= self.max_concurrency
        ]


def _not_below_base_delay(instance: Any, attribute: attrs.Attribute[float], value: float) -> None:
    # A cap below the base would cut the first wait's bound too, silently: a `base_delay` above the
    # default cap (3600 s), valid before the cap came, made every wait at most an hour.
    if value < instance.base_delay:
        raise ValueError(
            f"'{attribute.name}' must be at least 'base_delay' ({instance.base_delay} seconds): the "
            f"first retry waits at most base_delay and the bound doubles up to {attribute.name}, "
            f"got {value}"
        )


@attrs.frozen
class RetryConfig:
    base_delay: float = attrs.field(default=60.0, validator=_seconds(ge=0))
    max_retries: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    # The longest bound of one wait: the doubling stops there. Without it, a larger max_retries
    # made waits of months (base_delay x 2^19 for the 20th), and past ~34 retries a wait beyond
    # year 9999, whose next_retry_at made every status read of the task a 500.
    max_delay: float = attrs.field(default=3600.0, validator=[_seconds(ge=0), _not_below_base_delay])


@attrs.frozen
class QueueConfig:
    concurrency: int = attrs.field(validator=attrs.validators.ge(1))
    timeout: float = attrs.field(validator=_seconds(gt=0))


def _default_queues() -> dict[str, QueueConfig]:
    # The API document's queue table.
    return {
        "gpu_heavy": QueueConfig(concurrency=2, timeout=600),
        "gpu_medium": QueueConfig(concurrency=4, timeout=300),
        "cpu_intensive": QueueConfig(concurrency=4, timeout=600),
        "default": QueueConfig(concurrency=8, timeout=120),
    }


@attrs.frozen
class StorageConfig:
    task_ttl: int = attrs.field(default=24 * 3600, validator=_seconds(ge=60))


def _host_id(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if value and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
        raise ValueError(
            f"'{attribute.name}' must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or "
            f"digit (it is part of Redis key names), got {value!r}"
        )


def _outlives_beats(instance: Any, attribute: attrs.Attribute[float], value: float) -> None:
    # A heartbeat that expires before the next one is written makes its live worker look dead
    # between beats: every other process's reclaim took its running tasks back, again and again,
    # until `execution.max_worker_deaths` failed them while their first run went on. Twice the
    # interval leaves one beat's room for a slow write or a busy loop.
    if value < 2 * instance.heartbeat_interval:
        raise ValueError(
            f"'{attribute.name}' must be at least twice 'heartbeat_interval' ({instance.heartbeat_interval} "
            f"seconds): a worker whose heartbeat expires before its next beat is taken for dead and its "
            f"running tasks are taken back, got {value}"
        )


@attrs.frozen
class WorkerConfig:
    heartbeat_interval: float = attrs.field(default=5.0, validator=_seconds(gt=0))
    heartbeat_ttl: float = attrs.field(default=20.0, validator=[_seconds(gt=0), _outlives_beats])
    poll_delay: float = attrs.field(default=0.5, validator=_seconds(gt=0))
    # The name this worker host goes by (its GPUs, its slot counts, its workers): empty means the
    # machine's hostname. Part of Redis key names, hence the short plain alphabet.
    host_id: str = attrs.field(default="", validator=_host_id)

    @property
    def host(self) -> str:
        """The host id in use: `host_id`, else the hostname."""
        return self.host_id or socket.gethostname()


@attrs.frozen
class ExecutionConfig:
    """How jobs run: cancel grace, runner process limits, crash handling, priorities, shutdown."""

    cancel_grace: float = attrs.field(default=30.0, validator=_seconds(ge=0))
    memory_limit_mb: int = attrs.field(default=2048, validator=attrs.validators.ge(16))
    # RLIMIT_AS of every tool child (ffmpeg, espeak-ng, a plugin's tools), 0 = none: the second line
    # behind the tree's memory watcher. Address space, not RSS: a tool's threads and mappings count.
    tool_address_space_mb: int = attrs.field(default=8192, validator=attrs.validators.ge(0))
    max_tasks_per_runner: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    max_worker_deaths: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    reclaim_interval: float = attrs.field(default=5.0, validator=_seconds(gt=0))
    priority_aging: float = attrs.field(default=300.0, validator=_seconds(ge=0))
    shutdown_grace: float = attrs.field(default=30.0, validator=_seconds(ge=0))
    # A result is kept in Redis and sent whole in every status answer, event and webhook: a
    # handler's result longer than this (as JSON) fails its task instead.
    result_max_bytes: int = attrs.field(default=1024 * 1024, validator=attrs.validators.ge(1))


@attrs.frozen
class TasksConfig:
    """Extra task-type modules (each exports TASK or TASKS), and per-type overrides of queue and limits."""

    modules: list[str] = attrs.Factory(list)
    # Keyed by task type; a name no installed type has stops start-up (taskd.tasks.registry).
    routes: dict[str, str] = attrs.field(factory=dict, validator=_queue_names, metadata=_BY_NAME)
    soft_time_limits: dict[str, float] = attrs.field(factory=dict, validator=_time_limits, metadata=_BY_NAME)
    hard_time_limits: dict[str, float] = attrs.field(factory=dict, validator=_time_limits, metadata=_BY_NAME)


@attrs.frozen
class LimitsConfig:
    """Rate limits per API key, concurrency per project, queue length and request size; 0 = unlimited."""

    submit_per_minute: int = attrs.field(default=100, validator=attrs.validators.ge(0))
    status_per_minute: int = attrs.field(default=1000, validator=attrs.validators.ge(0))
    # A throttle: a project's tasks past this many wait queued (start.lua), they are not refused.
    concurrent_per_project: int = attrs.field(default=50, validator=attrs.validators.ge(0))
    # A refusal: a project with this many tasks waiting gets 429 for the next one. A quarter of a
    # queue, so that no one project can fill a queue and have every other project's submits refused.
    queued_per_project: int = attrs.field(default=2500, validator=attrs.validators.ge(0))
    max_queue_length: int = attrs.field(default=10000, validator=attrs.validators.ge(0))
    # A refusal: the bytes one project's heavy records may hold in Redis (large task_data, metadata or
    # results, or kept longer than storage.task_ttl: taskd.store lib/stored.lua); past it, the next
    # heavy submit gets 429 until some expire. Light tasks are not counted.
    stored_bytes_per_project: int = attrs.field(default=256 * 1024 * 1024, validator=attrs.validators.ge(0))
    # Held open per API key, in each taskd process: event streams and `Prefer: wait` submits. Each
    # holds a connection (a file descriptor) for minutes or for ever, and the per-minute limits do
    # not count them: without a cap one key could take every connection the process can open.
    open_streams: int = attrs.field(default=100, validator=attrs.validators.ge(0))
    # Request bodies still arriving per API key, in each taskd process: each is held in memory, up to
    # max_body_bytes, for up to http.body_timeout; past the cap the next one is a 429, unread.
    open_bodies: int = attrs.field(default=32, validator=attrs.validators.ge(0))
    # Seconds ahead a submit's `run_at`/`delay_seconds` may schedule a task; later is a 400.
    max_schedule_ahead: int = attrs.field(default=MAX_SCHEDULE_AHEAD, validator=_seconds(ge=1))
    max_body_bytes: int = attrs.field(default=1024 * 1024, validator=attrs.validators.ge(1024))
    # At most MAX_TASK_DATA_DEPTH: orjson writes JSON at most 254 levels deep, and task_data is written
    # a few levels down (a batch's fingerprint, a job's payload); past that a submit it let in was a
    # 500 ("Recursion limit reached") when its record was written.
    max_task_data_depth: int = attrs.field(
        default=32, validator=[attrs.validators.ge(1), attrs.validators.le(MAX_TASK_DATA_DEPTH)]
    )
    max_task_data_items: int = attrs.field(default=10000, validator=attrs.validators.ge(1))


@attrs.frozen
class LoggingConfig:
    """Log lines on stderr: JSON, human text, or auto (text on a TTY, else JSON)."""

    format: str = attrs.field(
        default="auto", converter=_lower, validator=attrs.validators.in_(("auto", "json", "text"))
    )
    level: str = attrs.field(
        default="INFO",
        converter=_upper,
        validator=attrs.validators.in_(("DEBUG", "INFO", "WARNING", "ERROR")),
    )


@attrs.frozen
class MetricsConfig:
    """`GET /metrics` for Prometheus."""

    require_key: bool = False


DeviceSelection = NewType("DeviceSelection", str)


def _to_device_selection(value: Any, _: type) -> str:
    # Normalised to "auto", "none", "count:N" or "index:0,2".
    if isinstance(value, bool):
        raise ValueError(f"expected auto, none, a count or a list of indexes, got {_given(value)}")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        return f"count:{int(value)}"
    if isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        return "index:" + ",".join(str(i) for i in value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("auto", "none") or text.startswith(("count:", "index:")):
            return text
        parts = [part.strip() for part in text.strip("[]").split(",")]
        if parts and all(part.isdigit() for part in parts):
            return "index:" + ",".join(parts)
    raise ValueError(f"expected auto, none, a count or a list of indexes, got {_given(value)}")


# What a task type needs from a GPU: nothing, one slot of a device, or a whole device.
GPU_NEEDS = ("none", "slot", "device")


@attrs.frozen
class GpuConfig:
    """Which GPUs taskd schedules on this host and how many jobs share one."""

    # "auto" (every device NVML sees), "none", a count (2: the first two) or indexes ([0, 2]).
    devices: DeviceSelection = DeviceSelection("auto")
    slots: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    # Slots a job of each GPU queue takes (0 means the whole device), for a task type that does not
    # say what it needs (a plugin's; every built-in type does).
    queue_slots: dict[str, int] = attrs.field(
        factory=lambda: {"gpu_heavy": 0, "gpu_medium": 1}, validator=_slot_counts, metadata=_BY_NAME
    )
    # Per task type: what it needs, overriding what the type declares ("none", "slot", "device").
    task_needs: dict[str, str] = attrs.field(
        factory=dict,
        validator=attrs.validators.deep_mapping(
            key_validator=attrs.validators.instance_of(str), value_validator=attrs.validators.in_(GPU_NEEDS)
        ),
        metadata=_BY_NAME,
    )
    # Per task type: the number of slots (0 = the whole device), overriding everything above.
    task_slots: dict[str, int] = attrs.field(factory=dict, validator=_slot_counts, metadata=_BY_NAME)
    # Simulated devices instead of NVML: for tests and demos on machines without a GPU.
    simulate: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    wait_poll: float = attrs.field(default=0.25, validator=_seconds(gt=0))


@attrs.frozen
class Config:
    """The whole configuration; every field has the default `taskd.toml` documents."""

    data_dir: str = "data"
    http: HttpConfig = attrs.Factory(HttpConfig)
    auth: AuthConfig = attrs.Factory(AuthConfig)
    redis: RedisConfig = attrs.Factory(RedisConfig)
    providers: ProvidersConfig = attrs.Factory(ProvidersConfig)
    webhooks: WebhooksConfig = attrs.Factory(WebhooksConfig)
    network: NetworkConfig = attrs.Factory(NetworkConfig)
    retry: RetryConfig = attrs.Factory(RetryConfig)
    queues: dict[str, QueueConfig] = attrs.field(
        factory=_default_queues, validator=_queue_table, metadata=_BY_NAME
    )
    storage: StorageConfig = attrs.Factory(StorageConfig)
    worker: WorkerConfig = attrs.Factory(WorkerConfig)
    execution: ExecutionConfig = attrs.Factory(ExecutionConfig)
    gpu: GpuConfig = attrs.Factory(GpuConfig)
    tasks: TasksConfig = attrs.Factory(TasksConfig)
    media: MediaConfig = attrs.Factory(MediaConfig)
    payload: PayloadConfig = attrs.Factory(PayloadConfig)
    limits: LimitsConfig = attrs.Factory(LimitsConfig)
    logging: LoggingConfig = attrs.Factory(LoggingConfig)
    metrics: MetricsConfig = attrs.Factory(MetricsConfig)

    @property
    def data_path(self) -> Path:
        """The data directory as an absolute path."""
        return Path(self.data_dir).expanduser().resolve()

    def anchored(self) -> Config:
        """This config with its directories absolute, as the current directory makes them now.

        A running taskd reads them many times, and a relative one (`data_dir = "data"`, the
        default) followed the process's current directory, which a coroutine handler can change
        (os.chdir): every task after it stored its media, scratch and the media secret elsewhere.
        """

        def absolute(folder: str) -> str:
            return str(Path(folder).expanduser().resolve()) if folder else folder

        media = attrs.evolve(
            self.media, dir=absolute(self.media.dir), scratch_dir=absolute(self.media.scratch_dir)
        )
        return attrs.evolve(self, data_dir=absolute(self.data_dir), media=media)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _kind(value: Any) -> str:
    """What a config value is, in TOML's words: what an error message says instead of the value."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        odd = next((item for item in value if not isinstance(item, str)), None)
        return "a list" if odd is None else f"a list holding {_kind(odd)}"
    return "a date or time" if isinstance(value, date | time) else f"a {type(value).__name__}"


def _given(value: Any) -> str:
    # Called for numbers, booleans and device selections only, which are never secrets
    # (tests/test_config_validation.py checks that no field named like one has those types): a
    # string or number given is shown, it is the typo the operator needs to see. A table or a list
    # may be secrets put in the wrong place: their type only.
    return repr(value) if isinstance(value, str | int | float) else _kind(value)


def _to_bool(value: Any, _: type) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected true or false, got {_given(value)}")


def _to_number(value: Any, kind: type[int] | type[float]) -> int | float:
    # Environment values arrive as strings; TOML values already have their type.
    expected = "an integer" if kind is int else "a number"
    if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"expected {expected}, got {_given(value)}")
    try:
        number = kind(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):  # int(inf) overflows
        raise ValueError(f"expected {expected}, got {_given(value)}") from None
    # inf and nan pass every bound (nan compares false to each), and an integer past 64 bits is one
    # that Redis, a timeout or an rlimit cannot take.
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {_given(value)}")
    if isinstance(number, int) and abs(number) >= 2**63:
        raise ValueError(f"expected a 64-bit integer, got {_given(value)}")
    return number


def _json_items(text: str) -> list[Any] | None:
    """The items of a list setting given as one string (an environment variable) written as a JSON
    list, `["k1", "k2"]`, as auth.keys is given; None for comma-separated items. Read by commas, a
    JSON list was taken as it stood: TASKD_AUTH__API_KEYS='["k1"]' made the key `["k1"]`, and no
    client got in, without a word at start-up."""
    if not text.lstrip().startswith("["):
        return None
    try:
        items = json.loads(text)
    except ValueError:
        raise ValueError("expected a JSON list (the value starts with [) or comma-separated items") from None
    return list(items)


def _to_str_list(value: Any, _: type) -> list[str]:
    if isinstance(value, str):
        items = _json_items(value)
        if items is None:
            return [item.strip() for item in value.split(",") if item.strip()]
        value = items
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ValueError(f"expected a list of strings, got {_kind(value)}")


def _to_api_keys(value: Any, _: type) -> list[str]:
    # Unlike other lists, an empty item is kept (and refused): "k1,,k2" or " , " is a mistake,
    # not fewer keys; a blank value as a whole means none (taskd makes one).
    if isinstance(value, str) and _json_items(value) is None:
        keys = [item.strip() for item in value.split(",")] if value.strip() else []
    else:
        keys = _to_str_list(value, list)
    for key in keys:
        _check_api_key(key)
    return keys


def _to_projects(value: Any, _: type) -> list[str]:
    # Not split like other lists: "" or " , " would be no projects, which means every project.
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"expected a list of project ids ([]: every project), got {_kind(value)}")
    return list(value)


def _to_float_list(value: Any, _: type) -> list[float]:
    items = value
    if isinstance(value, str):
        parsed = _json_items(value)
        items = value.split(",") if parsed is None else parsed
    if not isinstance(items, list):
        raise ValueError(f"expected a list of numbers, got {_kind(value)}")
    return [float(_to_number(item, float)) for item in items if not isinstance(item, str) or item.strip()]


_SCOPED_KEY = "{key, projects} table"


def _json_list(value: Any) -> list[Any]:
    # TASKD_AUTH__KEYS='[{"key": "…", "projects": ["p1"]}]' arrives as one string.
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError:
            raise ValueError("expected a JSON list of {key, projects} objects") from None
        # In JSON's words: the value came as JSON.
        what = "an object" if isinstance(value, dict) else _kind(value)
    else:
        what = _kind(value)
    if not isinstance(value, list):
        raise ValueError(f"expected a list of {_SCOPED_KEY}s, got {what}")
    return value


def _to_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_kind(value)}")
    return value


def _table(structure: Any, what: str = "a table") -> Any:
    """`structure` (of an attrs class or a dict) behind a check that the value is a table at all."""

    def hook(value: Any, kind: type) -> Any:
        # Else cattrs fails inside with "'str' object has no attribute 'keys'".
        if not isinstance(value, Mapping):
            raise ValueError(f"expected {what}, got {_kind(value)}")
        return structure(value, kind)

    return hook


def _scoped_keys(conv: cattrs.Converter) -> Any:
    def hook(value: Any, _: type) -> list[ScopedKey]:
        found, errors = [], []
        for index, item in enumerate(_json_list(value)):
            try:
                found.append(conv.structure(item, ScopedKey))
            except Exception as exc:  # cattrs raises exception groups of many kinds
                # The entry's index in the key's path: auth.keys[1], not auth.keys.
                exc.add_note(IterableValidationNote(f"auth.keys[{index}]", index, ScopedKey))
                errors.append(exc)
        if errors:
            raise IterableValidationError("invalid auth.keys", errors, list[ScopedKey])
        return found

    return hook


def _converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook_func(lambda t: t == list[ScopedKey], _scoped_keys(conv))
    conv.register_structure_hook(bool, _to_bool)
    conv.register_structure_hook(int, _to_number)
    conv.register_structure_hook(float, _to_number)
    conv.register_structure_hook(str, _to_str)
    conv.register_structure_hook(DeviceSelection, _to_device_selection)
    conv.register_structure_hook_func(lambda t: t == list[str], _to_str_list)
    conv.register_structure_hook_func(lambda t: t == list[float], _to_float_list)
    # Made when a class is first structured, so each takes the hooks above.
    conv.register_structure_hook_factory(attrs.has, lambda cls: _class_hook(conv, cls))
    conv.register_structure_hook_factory(_is_dict, lambda kind: _table(conv.gen_structure_mapping(kind)))
    return conv


def _class_hook(conv: cattrs.Converter, cls: type) -> Any:
    overrides: dict[str, Any] = {}
    if cls is AuthConfig:
        overrides["api_keys"] = override(struct_hook=_to_api_keys)
    if cls is ScopedKey:
        overrides["projects"] = override(struct_hook=_to_projects)
    structure: Any = make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True, **overrides)
    return _table(structure, f"a {_SCOPED_KEY}" if cls is ScopedKey else "a table")


def _is_dict(kind: Any) -> bool:
    origin: Any = get_origin(kind)
    return origin is dict


_CONVERTER = _converter()


def find_config_file(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    """The config file by DESIGN.md's lookup order: --config, $TASKD_CONFIG, ./taskd.toml, /etc/taskd."""
    for candidate in (explicit, environ.get("TASKD_CONFIG")):
        if candidate:
            path = Path(candidate)
            if path.is_dir():
                raise ConfigError(f"config file {path} is a directory")
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            return path
    return next((path for path in SEARCH_PATHS if path.is_file()), None)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    # Names are matched without their case, so TASKD_HTTP__PORT and TASKD_Http__Port are one key:
    # given both, the environment's order picked the value without a word.
    named: dict[tuple[str, ...], str] = {}
    links = _service_links(environ)
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in NOT_CONFIG or name in links:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            # TASKD_HTTP__PORT__=9000 or TASKD_HTTP____PORT: a typo, once skipped without a word
            # (taskd listened on 8001); an unknown key is refused, and so is this.
            raise ConfigError(f"{name}: an empty name between double underscores (TASKD_<SECTION>__<KEY>)")
        if (other := named.setdefault(tuple(path), name)) != name:
            raise ConfigError(f"{name}: sets the key {'.'.join(path)} that {other} sets too")
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: conflicts with another TASKD_ variable")
        node[path[-1]] = value
    return tree


def _service_links(environ: Mapping[str, str]) -> set[str]:
    """The TASKD_ names in `environ` that Kubernetes set for a Service named taskd or taskd-…: those
    of a Service whose <SERVICE>_SERVICE_HOST is there. A TASKD_PORT alone is still a typo."""
    suffix = "_SERVICE_HOST"
    services = {
        name.removesuffix(suffix) for name in environ if name.startswith(ENV_PREFIX) and name.endswith(suffix)
    }
    return {
        name
        for name in environ
        for service in services
        if name.startswith(f"{service}_") and _SERVICE_LINK.fullmatch(name[len(service) + 1 :])
    }


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _with_queue_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    # A queue named in config keeps the document's defaults for the keys it leaves out.
    queues = raw.get("queues")
    if not isinstance(queues, Mapping):
        return raw
    filled = {name: attrs.asdict(q) for name, q in _default_queues().items()}
    for name, settings in queues.items():
        if isinstance(settings, Mapping):
            filled[name] = {**filled.get(name, {}), **settings}
        else:
            filled[name] = settings
    return {**raw, "queues": filled}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:  # not readable by taskd's user, gone since it was found
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    try:
        # TOML is UTF-8 whatever the locale says (a bare read_text() would decode by the locale);
        # utf-8-sig: the byte order mark some editors begin a file with is not TOML's to read.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 (at byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def warn_if_everyone_reads_secrets(path: str | None = None, environ: Mapping[str, str] | None = None) -> None:
    """Warn when the config file holds a secret (an API key, a Redis URL's password, a provider's
    key) and every user of the host can read it: production.md makes it root:taskd 0640, and taskd
    refuses or warns of its own kept secrets so readable (files.warn_if_readable), but a file left
    0644 handed every local user the keys and the Redis password without a word. A group may read
    it (taskd's, in the units), and a file in a folder others cannot enter is not theirs to read;
    the environment's secrets are not in it."""
    config_file = find_config_file(path, os.environ if environ is None else environ)
    if config_file is None:
        return
    try:
        real = config_file.resolve(strict=True)
        mode = stat.S_IMODE(real.stat().st_mode)
        # A folder above it that other users cannot enter (a home made 0750) keeps it from them.
        reachable = all(folder.stat().st_mode & stat.S_IXOTH for folder in real.parents)
    except OSError:
        return  # read a moment ago; nothing to say of a file gone since
    if mode & stat.S_IROTH and reachable and any(_secrets_in(config_file)):
        logging.getLogger("taskd").warning(
            "config file %s holds secrets and every user of this host can read it (mode %04o): "
            "chmod o-r it (docs/production.md makes it root:taskd, 0640)",
            config_file,
            mode,
        )


def _secrets_in(config_file: Path) -> list[str]:
    """The secrets the config file itself holds, read as the loaded config's are: the entries of a
    table keyed by task type or queue (tasks.routes, gpu.task_needs) are names, not settings, and a
    plugin type called refresh_token routed to "cpu" holds no secret. A file valid only with the
    environment's values has its every string named like a secret counted."""
    try:
        return secrets_of(load_config(str(config_file), environ={}))
    except ConfigError:
        return secrets_of(_read_toml(config_file))


def load_config(path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the config file (if any) and the environment; raise ConfigError with one line on a bad value."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    config_file = find_config_file(path, environ)
    if config_file is not None:
        raw = _read_toml(config_file)
    raw = _with_queue_defaults(_merge(raw, _env_overrides(environ)))
    try:
        return _CONVERTER.structure(raw, Config)
    except Exception as exc:  # cattrs raises exception groups of many kinds
        problems = errors_by_path(exc, root="")
        key, problem = next(iter(problems.items()))
        # A validator of Config's own fields names its key in its message.
        raise ConfigError(f"config key {key}: {problem}" if key else f"config key {problem}") from None
