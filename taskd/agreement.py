"""The settings every taskd process of one deployment must agree on, and which of them differ.

Each process publishes, while it runs, a digest of each such setting (never the value) under its
process id, refreshed every `worker.heartbeat_interval` and gone a `worker.heartbeat_ttl` after it
stops; it compares them with every other live process's, logs a warning naming each setting that
differs and the process it differs from, and the queue health raises an alert for each
(docs/production.md#settings-that-differ-between-hosts). A setting is compared between two
processes only when both do what it governs: the API keys between API nodes, the retry policy and
the provider limits between workers, the rest between any two. The limits, the retry policy and the
providers are published one field apiece, so that a version that adds one is compared on the rest.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable

import attrs
import cattrs
import orjson
from redis.asyncio import Redis

from taskd import keys
from taskd.config import Config
from taskd.heartbeat import beating_within
from taskd.model import now
from taskd.net.guard import AddressPolicy

log = logging.getLogger("taskd.settings")
_CONVERTER = cattrs.Converter(forbid_extra_keys=False)

API, WORKER = "api", "worker"
BOTH = frozenset({API, WORKER})
# A digest is published where any key holder of Redis reads it: the secrets' pass through a slow
# hash (a media.secret may be a short word), the rest through a fast one.
SECRET_ROUNDS = 20_000
DIGEST_HEX = 16
WHERE = "docs/production.md, Settings that differ between hosts"


@attrs.frozen
class Published:
    """What one live process says of itself and its settings."""

    process_id: str
    host: str
    pid: int
    roles: list[str]
    digests: dict[str, str]
    # Whether the process names the queue of each job it lines up in the known queues
    # ({taskd}:queues, lib/enqueue.lua). A version before that set publishes no such field.
    names_queues: bool = False

    def does(self, roles: Iterable[str]) -> bool:
        """True when this process has one of `roles`."""
        return not set(self.roles).isdisjoint(roles)

    def named(self) -> str:
        """How a log line or an alert names the process."""
        return f"{'/'.join(sorted(self.roles))} on host {self.host} (pid {self.pid})"


@attrs.frozen
class Difference:
    """One setting whose digests differ among the live processes that use it."""

    setting: str
    # Each digest with the processes that have it, largest group first.
    groups: list[list[Published]]


def _digest(name: str, value: object, *, secret: bool = False) -> str:
    data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    salt = f"taskd-settings:{name}".encode()
    if secret:
        return hashlib.pbkdf2_hmac("sha256", data, salt, SECRET_ROUNDS).hex()[:DIGEST_HEX]
    return hashlib.sha256(salt + data).hexdigest()[:DIGEST_HEX]


# Which processes each setting governs: compared only between two that both have one of these roles.
GOVERNS: dict[str, frozenset[str]] = {
    "auth.api_keys/auth.keys": frozenset({API}),
    # Each API node answers /metrics by its own: without a key on one, every figure is anyone's.
    "metrics.require_key": frozenset({API}),
    "webhooks.secret": BOTH,
    "media": BOTH,
    "media.base_url": BOTH,
    "media.previous_secret": BOTH,
    # Every process sweeps the one store (bucket or shared dir) with its own: the shortest wins.
    "media.retention": BOTH,
    # How long a link lasts is the signer's: the worker's in a webhook, the node's in a status read.
    "media.url_ttl": BOTH,
    "storage.task_ttl": BOTH,
    "execution.priority_aging": BOTH,
    "tasks": BOTH,
    "execution.result_max_bytes": frozenset({WORKER}),
    # API nodes check a submit's callback_url with it, and every process sends webhooks (and a
    # worker fetches inputs) through it.
    "network": BOTH,
}
# Settings published one field (or provider) apiece, as `<group>.<name>`: a version that adds a
# limit, a retry field or a provider publishes one more digest, which the other versions do not
# compare, rather than a different digest of the whole group (a rolling upgrade would be warned of
# with every process agreeing).
GROUPS: dict[str, frozenset[str]] = {
    "limits": BOTH,
    "retry": frozenset({WORKER}),
    "providers": frozenset({WORKER}),
}


def governs(setting: str) -> frozenset[str] | None:
    """The roles `setting` is compared between; None for one this version does not know."""
    roles = GOVERNS.get(setting)
    if roles is None:
        group, dot, _ = setting.partition(".")
        roles = GROUPS.get(group) if dot else None
    return roles


def digests(
    config: Config,
    *,
    api_keys: Iterable[str],
    webhook_secret: str,
    media_secret: bytes,
    media_base_url: str,
) -> dict[str, str]:
    """A digest of each setting of GOVERNS, and of each field of GROUPS, as this process uses it: `api_keys`, `webhook_secret`,
    `media_secret` and `media_base_url` are those in use (configured, or made and kept in the data
    dir, or taskd's own address)."""
    auth = config.auth
    keys_ = sorted([entry.key, sorted(entry.projects)] for entry in auth.keys)
    # Every process sends webhooks, each signed with its key's own secret where it knows the key.
    webhooks = [
        webhook_secret,
        config.webhooks.previous_secret,
        sorted([e.key, e.webhook_secret, e.previous_webhook_secret] for e in auth.keys if e.webhook_secret),
    ]
    media = config.media
    if media.backend == "s3":
        store: object = ["s3", media.s3.endpoint, media.s3.bucket, media.s3.prefix]
    else:
        # A link signed by one node is checked by another; the files are shared by a mount.
        store = [media.backend, media_secret.decode("utf-8", "replace")]
    tasks = config.tasks
    policy = AddressPolicy.from_config(config)
    # open_streams and open_bodies cap each process's own connections and memory: per process by design.
    limits = {
        f"limits.{name}": value
        for name, value in attrs.asdict(config.limits).items()
        if name not in ("open_streams", "open_bodies")
    }
    retry = {f"retry.{name}": value for name, value in attrs.asdict(config.retry).items()}
    providers = {
        f"providers.{name} (max_concurrency, per_minute)": [provider.max_concurrency, provider.per_minute]
        for name, provider in attrs.asdict(config.providers, recurse=False).items()
    }
    values: dict[str, tuple[object, bool]] = {
        "auth.api_keys/auth.keys": ([sorted(api_keys), keys_], True),
        "webhooks.secret": (webhooks, True),
        "media": (store, media.backend != "s3"),
        # The links a worker makes start with its own: without media.base_url, its own address,
        # where no API may listen; and a node re-signs only the links that start with its own.
        "media.base_url": ("" if media.backend == "s3" else media_base_url, False),
        # The secret a rotation still takes links of (published on its own: versions without it
        # compare the rest).
        "media.previous_secret": ("" if media.backend == "s3" else media.previous_secret, True),
        "media.retention": (media.retention, False),
        "media.url_ttl": (media.url_ttl, False),
        "metrics.require_key": (config.metrics.require_key, False),
        "storage.task_ttl": (config.storage.task_ttl, False),
        "execution.priority_aging": (config.execution.priority_aging, False),
        "tasks": (
            [sorted(tasks.modules), tasks.routes, tasks.soft_time_limits, tasks.hard_time_limits],
            False,
        ),
        "execution.result_max_bytes": (config.execution.result_max_bytes, False),
        # As the guard reads it (webhooks.allow_private is an alias): the same rules written either
        # way agree, and with allow_private the networks, which it then never reads, are not compared.
        "network": (
            [
                policy.allow_private,
                [] if policy.allow_private else sorted({str(net) for net in policy.networks}),
            ],
            False,
        ),
    }
    for name, value in (limits | retry | providers).items():
        values[name] = (value, False)
    return {name: _digest(name, value, secret=secret) for name, (value, secret) in values.items()}


def differences(processes: Iterable[Published]) -> list[Difference]:
    """The settings whose digests differ among the processes they govern, by setting name; a
    setting only some versions publish is compared between those that do."""
    processes = list(processes)
    found = []
    for setting in sorted({name for process in processes for name in process.digests}):
        roles = governs(setting)
        if roles is None:
            continue
        by_digest: dict[str, list[Published]] = {}
        for process in processes:
            if process.does(roles) and setting in process.digests:
                by_digest.setdefault(process.digests[setting], []).append(process)
        if len(by_digest) > 1:
            groups = sorted(by_digest.values(), key=lambda group: (-len(group), group[0].process_id))
            found.append(Difference(setting, groups))
    return found


async def read(redis: Redis, ttl: float) -> list[Published]:
    """Every live process's published settings; a record it cannot read (another version's) is skipped."""
    members = await beating_within(redis, keys.SETTINGS, ttl)
    found = await _records(redis, [member.decode() for member in members])
    return [published for published in found.values() if published is not None]


async def queues_watched(redis: Redis, ttl: float) -> bool:
    """True when a live process names the queue of each job it lines up in the known queues
    ({taskd}:queues): one of this version has watched them, up to now."""
    return any(published.names_queues for published in await read(redis, ttl))


async def _records(redis: Redis, process_ids: list[str]) -> dict[str, Published | None]:
    """The published settings of `process_ids` that are still there: None for one it cannot read."""
    if not process_ids:
        return {}
    raw = await redis.mget([keys.settings(process_id) for process_id in process_ids])
    found: dict[str, Published | None] = {}
    for process_id, value in zip(process_ids, raw, strict=True):
        if not value:  # gone between the two reads
            continue
        try:
            found[process_id] = _CONVERTER.structure(orjson.loads(value), Published)
        except (ValueError, cattrs.BaseValidationError):
            found[process_id] = None
    return found


class Agreement:
    """Publishes this process's digests and warns, once a setting and process, of those that differ."""

    def __init__(self, redis: Redis, me: Published, ttl: float) -> None:
        self.redis = redis
        self.me = me
        self.ttl = ttl
        self._warned: set[tuple[str, str]] = set()
        # The settings of the other live processes, read once each: a process publishes the same
        # record all its life, and reading every one at every publish of every process was N²
        # records (about 1.2 KB each) per heartbeat interval. None: one it cannot read.
        self._known: dict[str, Published | None] = {}

    async def publish(self) -> None:
        """Publish this process's digests now, then warn of the settings that differ from another's."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(
                keys.settings(self.me.process_id),
                orjson.dumps(attrs.asdict(self.me)),
                px=int(self.ttl * 1000),
            )
            pipe.zadd(keys.SETTINGS, {self.me.process_id: int(now() * 1000)})
            await pipe.execute()
        members = await beating_within(self.redis, keys.SETTINGS, self.ttl)
        live = [member.decode() for member in members if member.decode() != self.me.process_id]
        new = await _records(self.redis, [process_id for process_id in live if process_id not in self._known])
        self._known = {
            process_id: self._known[process_id] if process_id in self._known else new[process_id]
            for process_id in live
            if process_id in self._known or process_id in new
        }
        self.warn(published for published in self._known.values() if published is not None)

    def earlier_alive(self) -> bool:
        """True when, at the last publish, another live process was of a version before the known
        queues ({taskd}:queues): one that lines up jobs without naming their queue there."""
        return any(other is not None and not other.names_queues for other in self._known.values())

    def warn(self, others: Iterable[Published]) -> None:
        """Log each setting that differs between this process and one of `others` (the live
        processes but this one), once while that process lives."""
        others = list(others)
        live = {other.process_id for other in others}
        self._warned = {(setting, process) for setting, process in self._warned if process in live}
        for other in others:
            settings = [
                setting
                for setting, digest in self.me.digests.items()
                if (roles := governs(setting)) is not None
                and self.me.does(roles)
                and other.does(roles)
                and other.digests.get(setting, digest) != digest
                and (setting, other.process_id) not in self._warned
            ]
            if not settings:
                continue
            self._warned.update((setting, other.process_id) for setting in settings)
            log.warning(
                "settings differ from those of the taskd %s: %s; every process must agree on them (%s)",
                other.named(),
                ", ".join(settings),
                WHERE,
            )

    async def withdraw(self) -> None:
        """Take this process's digests out at once (it stops)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.settings(self.me.process_id))
            pipe.zrem(keys.SETTINGS, self.me.process_id)
            await pipe.execute()


def roles_of(*, http: bool, workers: bool) -> list[str]:
    """The roles of a process that serves the API (`http`) and/or runs workers."""
    return [role for role, has in ((API, http), (WORKER, workers)) if has]
