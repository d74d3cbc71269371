"""taskd.toml, its lookup order and the TASKD_<SECTION>__<KEY> overrides."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from conftest import child_env

from taskd.cli import DESCRIPTION, _parser
from taskd.config import Config, ConfigError, load_config, warn_if_everyone_reads_secrets

REPO = Path(__file__).resolve().parent.parent


def test_defaults_follow_the_document():
    config = load_config(environ={})

    assert config.http.port == 8001
    assert config.retry.base_delay == 60
    assert config.storage.task_ttl == 24 * 3600
    assert {name: (q.concurrency, q.timeout) for name, q in config.queues.items()} == {
        "gpu_heavy": (2, 600),
        "gpu_medium": (4, 300),
        "cpu_intensive": (4, 600),
        "default": (8, 120),
    }


def _settings(config: Any, prefix: str = "") -> set[str]:
    """Dotted names of a config object's settings (its tables, and the queues' tables, opened)."""
    names = set()
    for field in attrs.fields(type(config)):
        value, name = getattr(config, field.name), f"{prefix}{field.name}"
        if attrs.has(type(value)):
            names |= _settings(value, f"{name}.")
        elif field.name == "queues":
            names |= {
                f"{name}.{queue}.{key}" for queue, table in value.items() for key in attrs.asdict(table)
            }
        else:
            names.add(name)
    return names


def _toml_settings(table: dict[str, Any], settings: set[str], prefix: str = "") -> set[str]:
    """Dotted names of a TOML file's keys, a table being a setting where the config has one so named."""
    names = set()
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in settings:
            names |= _toml_settings(value, settings, f"{name}.")
        else:
            names.add(name)
    return names


def test_taskd_toml_names_every_key():
    settings = _settings(Config())

    assert _toml_settings(tomllib.loads((REPO / "taskd.toml").read_text()), settings) == settings


@pytest.mark.parametrize(
    ("env", "read"),
    [
        ({"TASKD_DATA_DIR": "/srv/taskd"}, lambda c: c.data_dir == "/srv/taskd"),
        ({"TASKD_HTTP__HOST": "0.0.0.0"}, lambda c: c.http.host == "0.0.0.0"),
        ({"TASKD_HTTP__PORT": "9001"}, lambda c: c.http.port == 9001),
        ({"TASKD_AUTH__API_KEYS": "k1, k2,k3"}, lambda c: c.auth.api_keys == ["k1", "k2", "k3"]),
        ({"TASKD_REDIS__URL": "redis://h:6379/0"}, lambda c: c.redis.url == "redis://h:6379/0"),
        ({"TASKD_REDIS__URL": ""}, lambda c: c.redis.url == ""),
        (
            {"TASKD_PROVIDERS__LLM__BASE_URL": "http://127.0.0.1:9000/v1"},
            lambda c: c.providers.llm.base_url == "http://127.0.0.1:9000/v1",
        ),
        ({"TASKD_PROVIDERS__LLM__API_KEY": "sk-x"}, lambda c: c.providers.llm.api_key == "sk-x"),
        ({"TASKD_PROVIDERS__LLM__MODEL": "llama3"}, lambda c: c.providers.llm.model == "llama3"),
        ({"TASKD_WEBHOOKS__ALLOW_PRIVATE": "true"}, lambda c: c.webhooks.allow_private is True),
        ({"TASKD_RETRY__BASE_DELAY": "0.5"}, lambda c: c.retry.base_delay == 0.5),
        ({"TASKD_QUEUES__DEFAULT__CONCURRENCY": "16"}, lambda c: c.queues["default"].concurrency == 16),
    ],
)
def test_environment_overrides_each_contract_key(env, read):
    assert read(load_config(environ=env))


@pytest.mark.parametrize(
    ("env", "read"),
    [
        ({"TASKD_AUTH__API_KEYS": '["k1", "k2"]'}, lambda c: c.auth.api_keys == ["k1", "k2"]),
        (
            {"TASKD_TASKS__MODULES": '["taskd.tasks.diagnostics"]'},
            lambda c: c.tasks.modules == ["taskd.tasks.diagnostics"],
        ),
        (
            {"TASKD_NETWORK__ALLOW_NETWORKS": ' ["10.0.0.0/8"]'},
            lambda c: c.network.allow_networks == ["10.0.0.0/8"],
        ),
        ({"TASKD_WEBHOOKS__EXTRA_DELAYS": "[1, 2.5]"}, lambda c: c.webhooks.extra_delays == [1.0, 2.5]),
        ({"TASKD_AUTH__API_KEYS": "[]"}, lambda c: c.auth.api_keys == []),
    ],
)
def test_a_list_given_in_the_environment_as_a_json_list_is_read_as_its_items(env, read):
    # As auth.keys is given; read by commas, '["k1"]' was the one key `["k1"]` and no client got in.
    assert read(load_config(environ=env))


def test_environment_wins_over_the_file(tmp_path):
    path = tmp_path / "taskd.toml"
    path.write_text("[http]\nport = 7000\nhost = '0.0.0.0'\n")

    config = load_config(str(path), environ={"TASKD_HTTP__PORT": "7001"})

    assert (config.http.host, config.http.port) == ("0.0.0.0", 7001)


def test_file_from_taskd_config_variable(tmp_path):
    path = tmp_path / "elsewhere.toml"
    path.write_text("data_dir = '/var/lib/x'\n")

    assert load_config(environ={"TASKD_CONFIG": str(path)}).data_dir == "/var/lib/x"


def test_explicit_path_wins_over_taskd_config(tmp_path):
    explicit, other = tmp_path / "a.toml", tmp_path / "b.toml"
    explicit.write_text("data_dir = 'from-explicit'\n")
    other.write_text("data_dir = 'from-env'\n")

    assert load_config(str(explicit), environ={"TASKD_CONFIG": str(other)}).data_dir == "from-explicit"


def test_taskd_toml_in_the_working_directory_is_found(tmp_path, monkeypatch):
    (tmp_path / "taskd.toml").write_text("data_dir = 'here'\n")
    monkeypatch.chdir(tmp_path)

    assert load_config(environ={}).data_dir == "here"


def test_partly_configured_queue_keeps_the_other_defaults(tmp_path):
    path = tmp_path / "taskd.toml"
    path.write_text("[queues.gpu_heavy]\nconcurrency = 1\n")

    config = load_config(str(path), environ={})

    assert (config.queues["gpu_heavy"].concurrency, config.queues["gpu_heavy"].timeout) == (1, 600)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TASKD_HTTP__PORT": "eighty"}, "http.port"),
        ({"TASKD_HTTP__PORT": "70000"}, "http"),
        ({"TASKD_RETRY__BASE_DELAY": "-1"}, "retry"),
        ({"TASKD_WEBHOOKS__ALLOW_PRIVATE": "maybe"}, "webhooks.allow_private"),
        ({"TASKD_HTTP__COLOUR": "blue"}, "http.colour"),
        ({"TASKD_REDIS__EMBEDDED_ALLOCATOR": "jemalloc"}, "redis"),
    ],
)
def test_bad_value_is_one_line_naming_the_key(env, named):
    with pytest.raises(ConfigError) as raised:
        load_config(environ=env)

    assert f"config key {named}" in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("name", ["TASKD_HTTP__PORT__", "TASKD_HTTP____PORT", "TASKD___PORT", "TASKD_"])
def test_environment_name_with_an_empty_part_is_refused_naming_it(name):
    with pytest.raises(ConfigError) as raised:
        load_config(environ={name: "9000"})

    assert str(raised.value).startswith(f"{name}: an empty name")


def test_two_environment_names_for_one_key_are_refused():
    with pytest.raises(ConfigError, match=r"sets the key http\.port that TASKD_HTTP__PORT sets too"):
        load_config(environ={"TASKD_HTTP__PORT": "9000", "TASKD_Http__Port": "9001"})


# What Kubernetes sets in every container of a namespace holding a Service named taskd (its port
# named http) and one named taskd-api.
KUBERNETES_SERVICE_VARIABLES = {
    "TASKD_SERVICE_HOST": "10.96.3.7",
    "TASKD_SERVICE_PORT": "8001",
    "TASKD_SERVICE_PORT_HTTP": "8001",
    "TASKD_PORT": "tcp://10.96.3.7:8001",
    "TASKD_PORT_8001_TCP": "tcp://10.96.3.7:8001",
    "TASKD_PORT_8001_TCP_PROTO": "tcp",
    "TASKD_PORT_8001_TCP_PORT": "8001",
    "TASKD_PORT_8001_TCP_ADDR": "10.96.3.7",
    "TASKD_API_SERVICE_HOST": "10.96.3.8",
    "TASKD_API_SERVICE_PORT": "80",
    "TASKD_API_PORT": "tcp://10.96.3.8:80",
    "TASKD_API_PORT_80_TCP": "tcp://10.96.3.8:80",
    "TASKD_API_PORT_80_TCP_PROTO": "tcp",
    "TASKD_API_PORT_80_TCP_PORT": "80",
    "TASKD_API_PORT_80_TCP_ADDR": "10.96.3.8",
}


def test_kubernetes_variables_of_a_service_named_taskd_are_left_alone():
    config = load_config(environ={**KUBERNETES_SERVICE_VARIABLES, "TASKD_HTTP__PORT": "9000"})

    assert config.http.port == 9000


def test_a_port_variable_without_a_service_host_is_still_refused():
    with pytest.raises(ConfigError, match="config key port: Unknown field"):
        load_config(environ={"TASKD_PORT": "9000"})


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.toml"), environ={})


def test_documented_example_config_parses_to_the_defaults():
    assert load_config(str(REPO / "taskd.toml"), environ={}) == Config()


def test_bad_config_stops_start_up_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "taskd", "serve"],
        env={"TASKD_HTTP__PORT": "not-a-port", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "taskd: config key http.port: expected an integer, got 'not-a-port'"
    ]


def test_help_explains_both_commands():
    result = subprocess.run(
        [sys.executable, "-m", "taskd", "--help"], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0
    assert "taskd serve" in result.stdout and "taskd worker" in result.stdout


def test_help_summary_names_every_command():
    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    # The summary above the option list, where `taskd submit|status|…` groups the commands.
    named = set(re.findall(r"[a-z][a-z-]*", " ".join(re.findall(r"^  taskd (\S+)", DESCRIPTION, re.M))))

    assert set(commands.choices) - named == set()


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder every user can enter, as /etc/taskd: pytest's tmp_path is under a 0700 one."""
    with tempfile.TemporaryDirectory(prefix="taskd-", dir="/tmp") as folder:
        Path(folder).chmod(0o755)
        yield Path(folder)


def _serve_on_a_redis_that_is_not_there(config_file: Path, data_dir: Path) -> str:
    """What `taskd serve --config FILE` writes to stderr before it gives up on a Redis nobody runs."""
    environ = {
        **os.environ,
        **child_env(data_dir, TASKD_REDIS__START_WAIT="0.5", TASKD_LOGGING__FORMAT="text"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "taskd", "--config", str(config_file), "serve"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr
    return done.stderr


@pytest.mark.parametrize(
    ("mode", "redis_url", "warned"),
    [
        (0o644, "redis://:hunter2hunter2@127.0.0.1:1/0", True),
        (0o640, "redis://:hunter2hunter2@127.0.0.1:1/0", False),  # production.md's root:taskd 0640
        (0o644, "redis://127.0.0.1:1/0", False),  # nothing secret in it
    ],
    ids=["everyone reads a password", "its group reads a password", "everyone reads no secret"],
)
def test_a_config_file_holding_secrets_that_every_user_can_read_is_warned_of(
    tmp_path: Path, open_folder: Path, mode: int, redis_url: str, warned: bool
):
    config_file = open_folder / "taskd.toml"
    config_file.write_text(f'[redis]\nurl = "{redis_url}"\n')
    config_file.chmod(mode)

    stderr = _serve_on_a_redis_that_is_not_there(config_file, tmp_path / "data")

    warning = f"config file {config_file} holds secrets and every user of this host can read it (mode 0644)"
    assert (warning in stderr) == warned, stderr
    assert "hunter2hunter2" not in stderr


def test_a_config_file_whose_task_types_are_named_like_secrets_is_not_warned_of(
    open_folder: Path, caplog: pytest.LogCaptureFixture
):
    # Task types are keys of tasks.routes and gpu.task_needs: a plugin's refresh_token routed to
    # "cpu" names no secret, as the log's masking reads such tables too (logs.KEYED_BY_NAME).
    config_file = open_folder / "taskd.toml"
    config_file.write_text('[tasks.routes]\nrefresh_token = "cpu"\n\n[gpu.task_needs]\nsign_key = "slot"\n')
    config_file.chmod(0o644)

    warn_if_everyone_reads_secrets(str(config_file), environ={})

    assert "holds secrets" not in caplog.text


def test_a_config_file_in_a_folder_other_users_cannot_enter_is_not_warned_of(
    open_folder: Path, caplog: pytest.LogCaptureFixture
):
    # A checkout's ./taskd.toml left 0644 in a home made 0750: nobody but its user and group reads it.
    home = open_folder / "home"
    home.mkdir(mode=0o750)
    home.chmod(0o750)
    config_file = home / "taskd.toml"
    config_file.write_text('[redis]\nurl = "redis://:hunter2hunter2@127.0.0.1:1/0"\n')
    config_file.chmod(0o644)

    warn_if_everyone_reads_secrets(str(config_file), environ={})

    assert "holds secrets" not in caplog.text
