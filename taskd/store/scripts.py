"""taskd's Lua scripts: read from a room's `lua/` folder by name, composed, filled in and registered.

The store's scripts are in `taskd/store/lua/`; the rooms that keep other state in Redis (the GPU
slots, the webhook outbox, the rate limits, the provider limits) load theirs from their own `lua/` folders the same way.

Each script opens with a comment block (the header) that says what it does, then one line per
key and argument, in order, each with the name callers pass it under:

    -- KEYS[1]  task      {taskd}:task:{id}, the record hash
    -- ARGV[1]  task_id   the task's id
    -- ARGV[2..] fields   field/value pairs (a trailing `..` takes the rest of ARGV)
    -- Returns ...
    -- include lib/emit.lua

`-- include lib/<name>.lua` prepends a library file (a `local function` shared by several
scripts; libraries may include others, each file comes in once, in the order first named). A
room's script may include a library of the store's that its own `lua/` folder has none of.
`'@NAME@'` tokens are replaced by the key prefixes of taskd.keys, in the partition of the script's
first key (PARTITION_PREFIXES), and `@NAME@` by its constants (CONSTANTS), so the Lua and the
Python cannot disagree on a key's spelling; an unknown token is an error.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

import attrs
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript

from taskd import keys, redis_conn
from taskd.model import PRIORITY_LOW

# Keys of a partition (taskd.keys): a script names them after the partition of its first key,
# `P` (see `source`), so one script text serves every partition. Written in the Lua as '@NAME@'
# (quotes included), each becomes the expression (P .. '<name>').
PARTITION_PREFIXES: Mapping[str, str] = {
    "TASK_PREFIX": "task:",
    "WEBHOOK_PREFIX": "webhook:",
    "ACTIVE_PREFIX": "project_active:",
    "PROJECT_PREFIX": "project:",
    "QUEUE_PREFIX": "queue:",
    "WAITING_PREFIX": "waiting:",
    "PROJECT_WAITING_PREFIX": "project_waiting:",
    "HEADS_PREFIX": "heads:",
    "IDLE_PREFIX": "idle:",
    "RUNNING_PREFIX": "running:",
    "OUTBOX": "webhooks:due",
    "WORKER_PREFIX": "worker:",
    "PROCESSING_PREFIX": "project_processing:",
    "ACTIVE_PRUNED_PREFIX": "project_active_pruned:",
    "PROCESSING_PRUNED_PREFIX": "project_processing_pruned:",
    "PROJECT_PRUNED_PREFIX": "project_pruned:",
    "DEPENDENTS_PREFIX": "dependents:",
    "RUN_STATE_PREFIX": "run:",
    "STORED_PREFIX": "stored:",
    "SCHEDULED": "scheduled",
    "QUEUES": "queues",
    "IN_PROGRESS_PREFIX": "arq:in-progress:",
    "TASK_EVENTS_PREFIX": "events:task:",
    "PROJECT_EVENTS_PREFIX": "events:project:",
    # What a script gets for an optional key it is not given: a name in its slot, never written.
    "NO_KEY": "none",
}
# Where a script's keys begin: the hash tag of its first key and the colon after it.
PARTITION_OF_FIRST_KEY = "local P = string.match(KEYS[1], '^{[^}]*}:')\n"

CONSTANTS: Mapping[str, str] = {
    # The lowest priority: its jobs are not moved earlier by aging (taskd.queue.task_queue.job_score).
    "PRIORITY_LOW": str(PRIORITY_LOW),
    # The last part of NO_KEY's name, for lib/stable_slot.lua, which names it in any key's partition.
    "NO_KEY_NAME": PARTITION_PREFIXES["NO_KEY"],
    "TASK_EVENTS_MAXLEN": str(keys.TASK_EVENTS_MAXLEN),
    "PROJECT_EVENTS_MAXLEN": str(keys.PROJECT_EVENTS_MAXLEN),
    "EVENTS_TTL": str(keys.EVENTS_TTL),
    # How often a project's active or processing set may be read through for gone records (lib/prune.lua).
    "PRUNE_EVERY_MS": str(keys.PRUNE_EVERY_MS),
    # The most ids of a project's index such a read looks at (lib/admit.lua's prune_index).
    "INDEX_PRUNE_BATCH": str(keys.INDEX_PRUNE_BATCH),
    # A project changed more recently than this is listed without keeping its counts (list_look.lua).
    "LIST_QUIET_MS": str(keys.LIST_QUIET_MS),
    # Past this many projects waiting on a queue, a queue position is estimated (lib/fair.lua).
    "EXACT_PLACE_HEADS": str(keys.EXACT_PLACE_HEADS),
    # A task's end wakes the webhook senders of every process at once; a job wakes the workers.
    "WEBHOOKS_WAKE": keys.WEBHOOKS_WAKE,
    "WAKE": keys.WAKE_CHANNEL,
    # What makes a record heavy, and how its bytes are counted (lib/stored.lua).
    "STORED_FREE_BYTES": str(keys.STORED_FREE_BYTES),
    "STORED_RECORD_OVERHEAD": str(keys.STORED_RECORD_OVERHEAD),
    "STORED_SLICES": str(keys.STORED_SLICES),
    # Upper bounds of the per-type duration histogram, as a Lua list.
    "DURATION_BUCKETS": ", ".join(str(le) for le in keys.DURATION_BUCKETS),
    # And of the per-queue, per-type wait-time histogram.
    "WAIT_BUCKETS": ", ".join(str(le) for le in keys.WAIT_BUCKETS),
}

_TOKEN = re.compile(r"@([A-Z_]+)@")
_PARTITION_TOKEN = re.compile(r"'@([A-Z_]+)@'")
_INCLUDE = re.compile(r"^--\s+include\s+(\S+\.lua)\s*$")
_PARAMETER = re.compile(r"^--\s+(KEYS|ARGV)\[(\d+)(\.\.)?\]\s+(\w+)\b")


@attrs.frozen
class Header:
    """What a script's header declares: its key and argument names in order, and its includes."""

    keys: tuple[str, ...]
    args: tuple[str, ...]
    # The name of a trailing `ARGV[n..]` entry that takes the rest of ARGV, if any.
    rest: str | None
    includes: tuple[str, ...]


def header_lines(text: str) -> list[str]:
    """The comment lines a Lua file opens with, up to its first line of code."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        lines.append(line)
    return lines


def parse_header(name: str, text: str) -> Header:
    """The names and includes declared in the header of file `name`; raises ValueError if malformed."""
    names: dict[str, list[str]] = {"KEYS": [], "ARGV": []}
    rest = None
    includes = []
    for line in header_lines(text):
        if include := _INCLUDE.match(line):
            includes.append(include[1])
        elif parameter := _PARAMETER.match(line):
            kind, index, variadic, label = parameter.groups()
            if rest is not None or int(index) != len(names[kind]) + 1:
                raise ValueError(f"{name}: {kind}[{index}] {label} is out of order")
            if variadic:
                rest = label
            else:
                names[kind].append(label)
    for given in (names["KEYS"], names["ARGV"] + ([rest] if rest else [])):
        if len(set(given)) != len(given):
            raise ValueError(f"{name}: a key name or an argument name is used twice")
    return Header(tuple(names["KEYS"]), tuple(names["ARGV"]), rest, tuple(includes))


STORE = "taskd.store"


def read(name: str, package: str = STORE) -> str:
    """The text of `lua/<name>` (e.g. "lib/emit.lua") in `package` as shipped: no includes, no
    constants filled in."""
    return (resources.files(package) / "lua" / name).read_text(encoding="utf-8")


def library_package(name: str, package: str) -> str:
    """Where file `name` of a script of `package` is: in `package`, or, for a library it has none
    of, in the store's (its libraries are shared, as the slot's guard is)."""
    if package != STORE and not (resources.files(package) / "lua" / name).is_file():
        return STORE
    return package


def _with_includes(name: str, package: str, seen: list[str]) -> None:
    # Depth first, so a library comes before the first file that calls it.
    for include in parse_header(name, read(name, library_package(name, package))).includes:
        if include not in seen:
            _with_includes(include, package, seen)
    if name not in seen:
        seen.append(name)


def _fill(text: str, events_ttl: int = keys.EVENTS_TTL) -> str:
    constants = {**CONSTANTS, "EVENTS_TTL": str(events_ttl)}

    def partition_key(match: re.Match[str]) -> str:
        if match[1] not in PARTITION_PREFIXES:
            return match[0]
        return f"(P .. '{PARTITION_PREFIXES[match[1]]}')"

    def constant(match: re.Match[str]) -> str:
        if match[1] not in constants:
            raise ValueError(f"unknown constant @{match[1]}@ in a store script")
        return constants[match[1]]

    filled = _TOKEN.sub(constant, _PARTITION_TOKEN.sub(partition_key, text))
    return PARTITION_OF_FIRST_KEY + filled if "(P .. '" in filled else filled


# On a cluster every script opens with it (lib/stable_slot.lua), so that none can write half of its
# work while its slot migrates; one that declares no key calls it on a key prefix of its own (a no-op
# unless guarded). A standalone Redis or a Sentinel's primary never migrates a slot: the guard's
# command would be one more for every script, for nothing.
SLOT_GUARD = "lib/stable_slot.lua"
NO_GUARD = "local function stable_slot(_) end\n"


def _guarded(name: str, package: str, text: str, guarded: bool) -> str:
    if not guarded:
        return NO_GUARD + text
    guard = read(SLOT_GUARD)
    if parse_header(name, read(name, package)).keys:
        guard += "stable_slot(KEYS[1])\n"
    return _fill(guard) + "\n" + text


@functools.cache
def source(
    name: str, package: str = STORE, *, guarded: bool = True, events_ttl: int = keys.EVENTS_TTL
) -> str:
    """The text Redis runs for script `name` (e.g. "submit") of `package`: the slot's guard
    (lib/stable_slot.lua; `guarded` false: a stand-in that does nothing), then its includes, then its
    own text, constants filled in; the event streams it writes expire `events_ttl` seconds after
    their last event (taskd.keys.events_ttl)."""
    files: list[str] = []
    _with_includes(f"{name}.lua", package, files)
    text = _fill("\n".join(read(file, library_package(file, package)) for file in files), events_ttl)
    return _guarded(f"{name}.lua", package, text, guarded)


@attrs.frozen
class Script:
    """A registered store script, called with its keys and arguments by the names its header gives."""

    name: str
    header: Header
    registered: AsyncScript

    async def __call__(
        self, keys: Mapping[str, Any], args: Mapping[str, Any], client: Redis | Pipeline | None = None
    ) -> Any:
        """Run the script (queued on `client` when that is a pipeline); raises TypeError on a wrong name."""
        key_values = self._ordered("KEYS", self.header.keys, keys)
        return await self.registered(keys=key_values, args=self._argv(args), client=client)

    def arguments(self, keys: Mapping[str, Any], args: Mapping[str, Any]) -> list[Any]:
        """The keys, then the arguments, in the order EVALSHA takes them; raises TypeError on a wrong name."""
        return [*self._ordered("KEYS", self.header.keys, keys), *self._argv(args)]

    def _argv(self, args: Mapping[str, Any]) -> list[Any]:
        arg_values = self._ordered("ARGV", self._arg_names, args)
        if self.header.rest:
            arg_values = [*arg_values[:-1], *arg_values[-1]]
        return arg_values

    @property
    def _arg_names(self) -> tuple[str, ...]:
        return (*self.header.args, self.header.rest) if self.header.rest else self.header.args

    def _ordered(self, kind: str, names: tuple[str, ...], given: Mapping[str, Any]) -> list[Any]:
        if given.keys() != set(names):
            raise TypeError(f"{self.name}.lua takes {kind} {list(names)}, was given {list(given)}")
        return [given[name] for name in names]


def load(redis: Redis, name: str, package: str = STORE, *, events_ttl: int = keys.EVENTS_TTL) -> Script:
    """Script `lua/<name>.lua` of `package`, registered with `redis` (registering sends nothing to
    Redis); `events_ttl` as for `source`."""
    header = parse_header(f"{name}.lua", read(f"{name}.lua", package))
    text = source(name, package, guarded=redis_conn.on_cluster(redis), events_ttl=events_ttl)
    return Script(name, header, redis.register_script(text))
