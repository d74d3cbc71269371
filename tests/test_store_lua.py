"""The store's Lua lives in taskd/store/lua/*.lua, each file documenting its KEYS, ARGV and reply."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

import taskd.store
from taskd import keys, redis_conn
from taskd.store import TaskStore, scripts
from taskd.store.coalesce import Coalesced, Merged

STORE_DIR = Path(taskd.store.__file__).parent
LUA_DIR = STORE_DIR / "lua"
LUA_FILES = sorted(path.relative_to(LUA_DIR).as_posix() for path in LUA_DIR.rglob("*.lua"))
SCRIPTS = [name.removesuffix(".lua") for name in LUA_FILES if not name.startswith("lib/")]
LIBRARIES = [name for name in LUA_FILES if name.startswith("lib/")]


def _body(name: str) -> str:
    text = scripts.read(name)
    return text[len("\n".join(scripts.header_lines(text))) :]


def _used(kind: str, text: str) -> set[int]:
    return {int(index) for index in re.findall(rf"\b{kind}\[(\d+)\]", text)}


def test_the_store_has_its_scripts_and_libraries_as_files():
    store_scripts = {
        "submit",
        "batch",
        "start",
        "progress",
        "progress_again",
        "finish",
        "requeue",
        "reclaim",
        "cancel",
        "position",
        "due",
        "take",
        # The waiting heads' scores a take over several partitions shares its slots by.
        "waiting_heads",
        # A listing of a project's tasks (TaskStore.list_project), a stretch of its index per call.
        "list",
        # A listing's first call, reading the counts kept for it (list_look.lua), and their keeping.
        "list_look",
        "list_keep",
        # The per-key rate limit's sliding window (taskd.http.ratelimit), among the store's scripts
        # so that submit.lua can include its library and spend a submit's quota in the same step.
        "window",
        # What a run keeps for the next run of its task (taskd.store.run_state).
        "keep",
        # The records of tasks still queued or processing, renewed (taskd.engine.keeper).
        "live",
        # The keeper's turn, kept the looking process's unless another took it (taskd.engine.keeper).
        "turn",
        # Where an event stream starts once its cap trimmed it (taskd.http.events' gap).
        "trimmed",
    }
    assert set(SCRIPTS) == store_scripts
    assert LIBRARIES


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_script_opens_with_its_keys_its_argv_and_what_it_returns(name):
    header = scripts.parse_header(name, scripts.read(f"{name}.lua"))
    lines = scripts.header_lines(scripts.read(f"{name}.lua"))

    assert header.keys
    assert header.args or header.rest or "-- ARGV: none" in lines
    assert any(line.startswith("-- Returns") for line in lines)


@pytest.mark.parametrize("name", LIBRARIES)
def test_a_library_opens_saying_it_takes_no_keys_or_argv_and_what_it_returns(name):
    lines = scripts.header_lines(scripts.read(name))

    assert lines[0].startswith(f"-- {name}: ")
    assert "-- KEYS: none" in lines
    assert "-- ARGV: none" in lines
    assert any(line.startswith("-- Returns") for line in lines)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_key_and_argument_a_script_uses_is_the_one_its_header_documents(name):
    header = scripts.parse_header(name, scripts.read(f"{name}.lua"))
    body = _body(f"{name}.lua")

    # The first key also names the partition of the keys the script builds (scripts.source's `P`).
    partition = {1} if "(P .. '" in scripts.source(name) else set()
    assert _used("KEYS", body) | partition == set(range(1, len(header.keys) + 1))
    assert _used("ARGV", body) == set(range(1, len(header.args) + 1))
    rest = len(header.args) + 1
    # The trailing ARGV[n..] is read by a loop over its values, pairs or triples, passed on whole
    # (unpack), or walked one call's values after another (finish.lua's ends).
    takes_rest = (
        f"for i = {rest}, #ARGV do" in body
        or f"for i = {rest}, #ARGV, 2" in body
        or f"for i = {rest}, #ARGV, 3" in body
        or f"unpack(ARGV, {rest})" in body
        or (f"local at = {rest}\n" in body and "while at <= #ARGV do" in body)
    )
    assert takes_rest == (header.rest is not None)


@pytest.mark.parametrize("name", LIBRARIES)
def test_a_library_reads_only_its_parameters(name):
    body = _body(name)

    assert _used("KEYS", body) == set()
    assert _used("ARGV", body) == set()


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_constant_of_a_script_is_filled_in(name):
    assert "@" not in scripts.source(name)


def test_a_library_comes_once_and_before_the_library_that_calls_it():
    finish = scripts.source("finish")

    assert finish.count("local function emit(") == 1
    assert finish.index("local function emit(") < finish.index("local function ended(")


async def test_every_script_the_store_registers_is_its_lua_file():
    redis = Redis()
    store = TaskStore(redis, 3600)
    # A coalescer per partition (lists of them) holds its script too.
    values = [
        item for value in vars(store).values() for item in (value if isinstance(value, list) else [value])
    ]
    registered = [
        value.script if isinstance(value, Coalesced | Merged) else value
        for value in values
        if isinstance(value, scripts.Script | AsyncScript | Coalesced | Merged)
    ]
    await redis.aclose()

    assert all(isinstance(script, scripts.Script) for script in registered)
    # window.lua is registered by the rate limiter (taskd.http.ratelimit), keep.lua by the run
    # states (taskd.store.run_state), not by the store.
    assert {script.name for script in registered} == set(SCRIPTS) - {"window", "keep"}
    assert all(
        script.registered.script == scripts.source(script.name, guarded=False, events_ttl=3600)
        for script in registered
    )


def test_no_lua_is_left_in_the_store_python():
    lua_in_python = [
        path.name
        for path in STORE_DIR.glob("*.py")
        if re.search(r"redis\.p?call\(|cjson\.", path.read_text(encoding="utf-8"))
    ]

    assert lua_in_python == []


async def test_a_script_called_with_a_key_its_header_does_not_name_is_refused_before_redis():
    # Port 1 has no server: a call that got as far as Redis would fail with a connection error.
    redis = Redis(port=1)
    progress = scripts.load(redis, "progress")

    with pytest.raises(TypeError, match=r"progress.lua takes KEYS \['task', 'outbox', 'progress_state'\]"):
        await progress(
            keys={"record": keys.task("x")},
            args={"progress": "0.5", "step": "", "now": "1.0", "worker_id": "w"},
        )
    await redis.aclose()


# The rooms besides the store that keep state in Redis load their scripts the same way.
ROOMS = ["taskd.gpu", "taskd.webhooks", "taskd.providers"]
ROOM_SCRIPTS = [
    (room, path.stem)
    for room in ROOMS
    for path in sorted((STORE_DIR.parent / room.removeprefix("taskd.") / "lua").glob("*.lua"))
]


def test_each_room_that_keeps_state_in_redis_has_its_scripts_as_files():
    assert {room for room, _ in ROOM_SCRIPTS} == set(ROOMS)


@pytest.mark.parametrize(("room", "name"), ROOM_SCRIPTS)
def test_a_room_script_documents_its_keys_its_argv_and_what_it_returns(room, name):
    text = scripts.read(f"{name}.lua", room)
    header = scripts.parse_header(name, text)
    lines = scripts.header_lines(text)
    body = text[len("\n".join(lines)) :]

    assert lines[0].startswith(f"-- {name}.lua: ")
    assert header.keys or any(line.startswith("-- KEYS: none") for line in lines)
    assert header.args or header.rest
    assert any(line.startswith("-- Returns") for line in lines)
    assert _used("KEYS", body) == set(range(1, len(header.keys) + 1))
    assert _used("ARGV", body) == set(range(1, len(header.args) + 1))


@pytest.mark.parametrize(("room", "name"), ROOM_SCRIPTS)
async def test_a_room_script_is_registered_as_its_file(room, name):
    redis = Redis(port=1)

    script = scripts.load(redis, name, room)
    await redis.aclose()

    # The file as shipped, with the key prefixes it names (@NAME@) filled in.
    assert script.registered.script == scripts.source(name, room, guarded=False)
    assert "@" not in script.registered.script


@pytest.mark.parametrize(("room", "name"), [(scripts.STORE, name) for name in SCRIPTS] + ROOM_SCRIPTS)
def test_every_script_reads_its_slots_never_written_key_before_any_other_command(room, name):
    # lib/stable_slot.lua: on a cluster, a script whose slot is migrating then fails before it writes.
    text = scripts.read(f"{name}.lua", room)
    source = scripts.source(name, room)
    guard = source[: source.index("\nend\n") + len("\nend\n")]

    assert "local function stable_slot(key)" in guard
    assert "redis.call" not in source[: source.index("stable_slot(")]
    if scripts.parse_header(name, text).keys:
        assert source[len(guard) :].startswith("stable_slot(KEYS[1])\n")
    else:  # it names its slot from a key prefix it is given
        own = text[len("\n".join(scripts.header_lines(text))) :]
        assert own.index("stable_slot(ARGV[") < own.index("redis.call(")


async def test_a_standalone_redis_is_sent_the_scripts_without_the_slot_guard():
    # Only a cluster's slot migrates: elsewhere the guard would be one more command in every script.
    redis = redis_conn.connect("redis://127.0.0.1:1")
    script = scripts.load(redis, "finish")
    await redis.aclose()

    assert script.registered.script.startswith(scripts.NO_GUARD)
    assert "stable_slot(KEYS[1])" not in script.registered.script


async def test_a_cluster_is_sent_the_scripts_with_the_slot_guard():
    redis = redis_conn.connect("redis+cluster://127.0.0.1:1")
    script = scripts.load(redis, "finish")
    await redis.aclose()

    assert script.registered.script == scripts.source("finish", guarded=True)
    assert "stable_slot(KEYS[1])" in script.registered.script


def test_no_lua_is_left_in_any_python_module_of_taskd():
    lua_in_python = [
        str(path.relative_to(STORE_DIR.parent))
        for path in STORE_DIR.parent.rglob("*.py")
        if re.search(r"redis\.p?call\(|cjson\.", path.read_text(encoding="utf-8"))
    ]

    assert lua_in_python == []
