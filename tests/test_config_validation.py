"""What a careless or hostile config is refused with: one line naming the key, never a secret."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import attrs
import pytest

from taskd.config import Config, ConfigError, DeviceSelection, QueueConfig, load_config
from taskd.logs import SECRET_FIELD
from taskd.tasks import registry
from taskd.tasks.spec import TaskType


def refusal(tmp_path: Path, toml: str | None = None, **env: str) -> str:
    """The one-line ConfigError that `toml` (as the config file) and `env` give."""
    path = None
    if toml is not None:
        path = tmp_path / "taskd.toml"
        path.write_text(toml)
    with pytest.raises(ConfigError) as raised:
        load_config(str(path) if path else None, environ=env)
    message = str(raised.value)
    assert "\n" not in message
    return message


# ---- no secret in a message ----


def test_a_json_object_of_keys_is_refused_without_its_values(tmp_path):
    message = refusal(tmp_path, TASKD_AUTH__KEYS='{"key": "TOPSECRETKEY1"}')

    assert message == "config key auth.keys: expected a list of {key, projects} tables, got an object"


def test_a_toml_table_of_keys_is_refused_without_its_values(tmp_path):
    toml = '[auth]\nkeys = {key = "TOPSECRETKEY1", webhook_secret = "whsec_TOPSECRETWHSEC"}\n'

    message = refusal(tmp_path, toml)

    assert message == "config key auth.keys: expected a list of {key, projects} tables, got a table"


def test_a_list_of_api_keys_holding_a_number_is_refused_without_the_keys(tmp_path):
    message = refusal(tmp_path, '[auth]\napi_keys = ["TOPSECRETKEY1", 1]\n')

    assert message == "config key auth.api_keys: expected a list of strings, got a list holding an integer"


def test_a_password_written_as_a_number_is_refused_without_it(tmp_path):
    message = refusal(tmp_path, "[payload]\npassword = 123456789\n")

    assert message == "config key payload.password: expected a string, got an integer"


def test_a_string_given_for_a_number_is_quoted_to_show_the_typo(tmp_path):
    assert (
        refusal(tmp_path, TASKD_HTTP__PORT="8O01") == "config key http.port: expected an integer, got '8O01'"
    )


def _fields(cls: type, prefix: str = "") -> typing.Iterator[tuple[str, typing.Any]]:
    hints = typing.get_type_hints(cls)
    for field in attrs.fields(cls):
        kind = hints[field.name]
        yield f"{prefix}{field.name}", kind
        for inner in (kind, *typing.get_args(kind)):
            if attrs.has(inner):
                yield from _fields(inner, f"{prefix}{field.name}.")


def test_no_field_named_like_a_secret_is_a_number_boolean_or_device_selection():
    # The messages quote a string given for these types only (config._given): that is safe while
    # no secret is ever one of them.
    quoted = {int, float, bool, DeviceSelection}
    switches = {"metrics.require_key"}  # named like a key, but whether one is asked for

    secret_fields = {
        name: kind
        for name, kind in _fields(Config)
        if SECRET_FIELD.search(name.rsplit(".")[-1]) and name not in switches
    }

    assert secret_fields
    assert {name for name, kind in secret_fields.items() if quoted & {kind, *typing.get_args(kind)}} == set()


# ---- messages that say what was expected ----


def test_auth_keys_given_as_a_list_of_strings_says_a_table_was_expected(tmp_path):
    message = refusal(tmp_path, TASKD_AUTH__KEYS='["key-one-1", "key-two-2"]')

    assert message == "config key auth.keys[0]: expected a {key, projects} table, got a string"


def test_a_table_given_as_a_string_says_a_table_was_expected(tmp_path):
    message = refusal(tmp_path, TASKD_PROVIDERS__VIDEO__EXTRA_INPUT="aspect_ratio=16:9")

    assert message == "config key providers.video.extra_input: expected a table, got a string"


def test_a_section_given_as_a_string_says_a_table_was_expected(tmp_path):
    assert refusal(tmp_path, 'http = "0.0.0.0:8001"\n') == "config key http: expected a table, got a string"


def test_a_bad_webhook_secret_in_auth_keys_names_the_entry(tmp_path):
    toml = '[auth]\nkeys = [{key = "key-one-1"}, {key = "key-two-2", webhook_secret = "not-whsec"}]\n'

    message = refusal(tmp_path, toml)

    assert message.startswith("config key auth.keys[1]: 'webhook_secret' must be whsec_")
    assert "not-whsec" not in message


# ---- scoped keys fail closed ----


@pytest.mark.parametrize("projects", ['""', '" , "', '"p1,p2"'])
def test_a_scoped_keys_projects_given_as_a_string_is_refused(tmp_path, projects):
    message = refusal(tmp_path, TASKD_AUTH__KEYS=f'[{{"key": "tenant-key-1", "projects": {projects}}}]')

    assert message == (
        "config key auth.keys[0].projects: expected a list of project ids ([]: every project), got a string"
    )


def test_a_scoped_keys_projects_given_as_a_toml_string_is_refused(tmp_path):
    message = refusal(tmp_path, '[auth]\nkeys = [{key = "tenant-key-1", projects = ""}]\n')

    assert message.startswith("config key auth.keys[0].projects: expected a list of project ids")


@pytest.mark.parametrize("variable", ["TASKD_AUTH__API_KEYS", "TASKD_AUTH__KEYS"])
def test_an_api_key_whose_bytes_are_not_utf8_is_refused_without_it(tmp_path, variable):
    # os.environ gives such bytes escaped as surrogates (a Latin-1 byte in a key, say).
    key = "tenant-key-\udcff-0123456789"
    value = key if variable == "TASKD_AUTH__API_KEYS" else f'[{{"key": "{key}"}}]'

    message = refusal(tmp_path, **{variable: value})

    assert message.endswith("an API key must be UTF-8 text (its bytes in the environment are not)")
    assert "tenant-key" not in message


@pytest.mark.parametrize("blank", ["", " ", "p1 "])
def test_a_blank_or_impossible_project_id_in_a_scoped_key_is_refused(tmp_path, blank):
    message = refusal(
        tmp_path, TASKD_AUTH__KEYS=f'[{{"key": "tenant-key-1", "projects": ["p1", "{blank}"]}}]'
    )

    assert message.startswith(f"config key auth.keys[0]: {blank!r} is not a project id")


def test_an_empty_projects_list_still_means_every_project():
    config = load_config(environ={"TASKD_AUTH__KEYS": '[{"key": "tenant-key-1", "projects": []}]'})

    assert config.auth.keys[0].projects == []


def test_a_key_given_twice_in_auth_keys_is_refused_without_the_key(tmp_path):
    toml = (
        '[auth]\nkeys = [{key = "tenant-key-1", projects = ["p1"]}, {key = "tenant-key-1", projects = []}]\n'
    )

    message = refusal(tmp_path, toml)

    assert message == "config key auth: auth.keys[0] and auth.keys[1] have the same key"


def test_a_list_that_starts_as_json_but_is_not_json_is_refused_without_its_items(tmp_path):
    message = refusal(tmp_path, TASKD_AUTH__API_KEYS='["TOPSECRETKEY1", TOPSECRETKEY2]')

    assert message == (
        "config key auth.api_keys: expected a JSON list (the value starts with [) or comma-separated items"
    )


def test_a_key_both_in_api_keys_and_in_auth_keys_is_refused(tmp_path):
    message = refusal(
        tmp_path,
        TASKD_AUTH__API_KEYS="tenant-key-1",
        TASKD_AUTH__KEYS='[{"key": "tenant-key-1", "projects": ["p1"]}]',
    )

    assert message == (
        "config key auth: the key of auth.keys[0] is also in auth.api_keys: give it once, scoped or not"
    )


# ---- numbers that would crash or fail every task later ----


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("TASKD_WORKER__HEARTBEAT_TTL", "inf", "worker.heartbeat_ttl"),
        ("TASKD_EXECUTION__PRIORITY_AGING", "inf", "execution.priority_aging"),
        ("TASKD_WORKER__POLL_DELAY", "nan", "worker.poll_delay"),
        ("TASKD_RETRY__BASE_DELAY", "1e400", "retry.base_delay"),
    ],
)
def test_a_number_that_is_not_finite_is_refused(tmp_path, name, value, key):
    assert refusal(tmp_path, **{name: value}) == f"config key {key}: expected a finite number, got {value!r}"


def test_a_heartbeat_ttl_not_twice_its_interval_is_refused(tmp_path):
    message = refusal(tmp_path, TASKD_WORKER__HEARTBEAT_TTL="2", TASKD_WORKER__HEARTBEAT_INTERVAL="5")

    assert message == (
        "config key worker: 'heartbeat_ttl' must be at least twice 'heartbeat_interval' (5.0 seconds): a "
        "worker whose heartbeat expires before its next beat is taken for dead and its running tasks are "
        "taken back, got 2.0"
    )


def test_a_retry_max_delay_below_the_base_delay_is_refused(tmp_path):
    # Accepted before: a base_delay above the default cap (3600 s) made every wait at most an hour.
    message = refusal(tmp_path, TASKD_RETRY__BASE_DELAY="7200")

    assert message == (
        "config key retry: 'max_delay' must be at least 'base_delay' (7200.0 seconds): the first retry "
        "waits at most base_delay and the bound doubles up to max_delay, got 3600.0"
    )


def test_an_infinite_toml_float_is_refused(tmp_path):
    message = refusal(tmp_path, "[worker]\nheartbeat_ttl = inf\n")

    assert message == "config key worker.heartbeat_ttl: expected a finite number, got inf"


def test_an_integer_past_64_bits_is_refused(tmp_path):
    message = refusal(tmp_path, TASKD_STORAGE__TASK_TTL="99999999999999999999")

    assert message == "config key storage.task_ttl: expected a 64-bit integer, got '99999999999999999999'"


def test_a_fraction_given_for_an_integer_is_refused_not_cut(tmp_path):
    assert (
        refusal(tmp_path, "[http]\nport = 8001.5\n")
        == "config key http.port: expected an integer, got 8001.5"
    )


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("TASKD_STORAGE__TASK_TTL", "task_ttl"),
        ("TASKD_MEDIA__URL_TTL", "url_ttl"),
        ("TASKD_WORKER__HEARTBEAT_TTL", "heartbeat_ttl"),
        ("TASKD_EXECUTION__PRIORITY_AGING", "priority_aging"),
        ("TASKD_QUEUES__DEFAULT__TIMEOUT", "timeout"),
    ],
)
def test_a_duration_over_ten_years_is_refused(tmp_path, name, key):
    message = refusal(tmp_path, **{name: str(10 * 365 * 24 * 3600 + 1)})

    assert f"'{key}' must be at most 315360000 seconds (10 years), got 315360001" in message


def test_ten_years_is_still_a_duration():
    config = load_config(environ={"TASKD_STORAGE__TASK_TTL": str(10 * 365 * 24 * 3600)})

    assert config.storage.task_ttl == 315360000


@pytest.mark.parametrize("limits", ["hard_time_limits", "soft_time_limits"])
def test_a_time_limit_of_a_task_type_that_is_not_above_zero_is_refused(tmp_path, limits):
    message = refusal(tmp_path, f"[tasks]\n{limits} = {{noop = -5.0}}\n")

    assert message == f"config key tasks: '{limits}.noop' must be above 0 seconds, got -5.0"


@pytest.mark.parametrize("slots", ["task_slots", "queue_slots"])
def test_negative_gpu_slots_are_refused(tmp_path, slots):
    message = refusal(tmp_path, f"[gpu]\n{slots} = {{gpu_heavy = -1}}\n")

    assert message == f"config key gpu: '{slots}.gpu_heavy' must be at least 0 (0: the whole device), got -1"


@pytest.mark.parametrize("slots", ["task_slots", "queue_slots"])
def test_gpu_slots_beyond_a_whole_device_are_refused(tmp_path, slots):
    message = refusal(tmp_path, f"[gpu]\nslots = 2\n{slots} = {{gpu_heavy = 3}}\n")

    assert message == f"config key gpu: '{slots}.gpu_heavy' must be at most slots (2, a whole device), got 3"


def test_a_route_to_no_queue_is_refused(tmp_path):
    message = refusal(tmp_path, TASKD_TASKS__ROUTES__GENERATE_VIDEO="")

    assert message == "config key tasks: 'routes.generate_video' must name a queue, got an empty string"


# A queue's name is followed by a project id in Redis key names (`project_waiting:<queue>:<project>`):
# with a ':' in it, queue `q` with project `big:alpha` and queue `q:big` with project `alpha` shared
# one line, one tenant's tasks counted (and turned) in another's.
def test_a_queue_whose_name_holds_a_colon_is_refused(tmp_path):
    message = refusal(tmp_path, '["queues"."q:big"]\nconcurrency = 1\ntimeout = 60\n')

    assert message == (
        "config key queues: a queue's name must be 1-64 letters, digits, '.', '_' or '-', starting with a "
        "letter or digit (it is part of Redis key names), got 'q:big'"
    )


def test_a_config_built_in_python_with_a_queue_whose_name_holds_a_colon_is_refused():
    with pytest.raises(ValueError, match=r"^queues: a queue's name must be 1-64 letters.*, got 'q:big'$"):
        Config(queues={"q:big": QueueConfig(concurrency=1, timeout=60)})


def test_a_route_to_a_queue_whose_name_holds_a_colon_is_refused(tmp_path):
    message = refusal(tmp_path, TASKD_TASKS__ROUTES__GENERATE_VIDEO="gpu_heavy:big")

    assert message == (
        "config key tasks: 'routes.generate_video' must be 1-64 letters, digits, '.', '_' or '-', starting "
        "with a letter or digit (it is part of Redis key names), got 'gpu_heavy:big'"
    )


# ---- start-up ----


def start_up_refusal(tmp_path: Path, command: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`taskd <command>` in an empty dir with only `env`: what it exits with and says."""
    return subprocess.run(
        [sys.executable, "-m", "taskd", command],
        env={"PATH": "/usr/bin:/bin", "TASKD_DATA_DIR": str(tmp_path / "data"), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_start_up_refuses_a_time_limit_of_a_task_type_no_installed_module_has(tmp_path, command):
    result = start_up_refusal(tmp_path, command, TASKD_TASKS__HARD_TIME_LIMITS__NOOP="5")

    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        "taskd: config key tasks.hard_time_limits: no installed task type is called 'noop'"
    )


def test_serve_refuses_a_task_module_that_is_not_installed_in_one_line(tmp_path):
    result = start_up_refusal(tmp_path, "serve", TASKD_TASKS__MODULES="no.such.module")

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "taskd: config key tasks.modules: no.such.module could not be imported: "
        "ModuleNotFoundError: No module named 'no'"
    ]


# A type's name is part of the metrics hash's fields (`failed:<type>`, `wait_in:<queue>:<type>:<le>`):
# one with a ':' had no counters of its own (they were read as another's, or as `unknown`).
def _odd_module(tmp_path: Path, name: str, queue: str) -> None:
    (tmp_path / "odd_types.py").write_text(
        "import attrs\n"
        "from taskd.tasks.spec import TaskType\n"
        "@attrs.frozen\n"
        "class Input:\n"
        "    pass\n"
        f"TASK = TaskType({name!r}, Input, queue={queue!r}, expected_duration=1.0)\n"
    )


_NAME_RULE = "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (it is part of Redis key names)"


def test_serve_refuses_a_task_module_whose_type_has_a_name_no_key_can_hold(tmp_path):
    _odd_module(tmp_path, "render:4k", "default")

    result = start_up_refusal(tmp_path, "serve", TASKD_TASKS__MODULES="odd_types")

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"taskd: config key tasks.modules: odd_types exports task type 'render:4k', whose name {_NAME_RULE}, "
        "got 'render:4k'"
    ]


def test_serve_refuses_a_task_type_on_a_queue_no_key_can_hold(tmp_path):
    _odd_module(tmp_path, "render", "gpu:big")

    result = start_up_refusal(tmp_path, "serve", TASKD_TASKS__MODULES="odd_types")

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"taskd: config key tasks.routes: the queue of task type 'render' {_NAME_RULE}, got 'gpu:big'; "
        "route it to another queue"
    ]


def test_a_task_type_whose_own_queue_no_key_can_hold_may_be_routed_to_another(tmp_path):
    _odd_module(tmp_path, "render", "gpu:big")

    result = subprocess.run(
        [sys.executable, "-m", "taskd", "config", "check"],
        env={
            "PATH": "/usr/bin:/bin",
            "TASKD_DATA_DIR": str(tmp_path / "data"),
            "TASKD_TASKS__MODULES": "odd_types",
            "TASKD_TASKS__ROUTES__RENDER": "gpu_heavy",
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr


def test_a_plugins_task_type_whose_name_no_key_can_hold_is_ignored(monkeypatch, caplog):
    @attrs.frozen
    class Input:
        pass

    class Entry:
        name = "odd"

        @staticmethod
        def load() -> TaskType:
            return TaskType("render:4k", Input, queue="default", expected_duration=1.0)

    monkeypatch.setattr(registry, "entry_points", lambda group: [Entry()])

    loaded = registry.default_registry(builtin=False)

    assert "render:4k" not in loaded.types
    assert "entry point odd in taskd.tasks: task type 'render:4k', whose name must be" in caplog.text


# ---- redis.url ----


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://:pw-SECRET-1@127.0.0.1:notaport/0", "has a port that is not a number from 0 to 65535"),
        ("redis://:pw-SECRET-1@127.0.0.1:99999/0", "has a port that is not a number from 0 to 65535"),
        (
            "http://:pw-SECRET-1@127.0.0.1:6379/0",
            "must start with one of redis://, rediss://, unix://, redis+sentinel://, redis+cluster://",
        ),
        ("redis://:pw-SECRET-1@[::1:6379/0", "is not a URL (Invalid IPv6 URL)"),
        ("redis://:pw-SECRET-1@127.0.0.1:6379/zero", "must end in /<db number> or nothing"),
        (
            "redis://:pw-SECRET-1@127.0.0.1:6379/0?socket_timeout=soon",
            "has a socket_timeout option that is not a number",
        ),
        ("unix://", "needs the socket's path: unix:///path/to/valkey.sock"),
        (
            "redis+sentinel://:pw-SECRET-1@a:26379,b:port/mymaster",
            "has a port that is not a number from 0 to 65535",
        ),
        ("redis+sentinel://:pw-SECRET-1@a:26379", "must end in /<sentinel service name>[/<db number>]"),
        ("redis+cluster://:pw-SECRET-1@a:6379,:6379", "has an address with no host"),
    ],
)
def test_a_redis_url_taskd_could_not_connect_with_is_refused_without_its_password(tmp_path, url, problem):
    message = refusal(tmp_path, TASKD_REDIS__URL=url)

    assert message == f"config key redis: 'url' {problem}"


def test_a_redis_url_option_redis_py_would_fail_on_at_connect_is_refused(tmp_path):
    message = refusal(tmp_path, TASKD_REDIS__URL="redis://127.0.0.1:6379/0?ssl_cert_reqs=none")

    assert message.startswith(
        "config key redis: 'url' has an option redis:// URLs do not take: 'ssl_cert_reqs'"
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis://:pw@10.0.0.5:6379/0",
        "rediss://user:pw@[::1]:6380/1?ssl_cert_reqs=none",
        "redis://localhost",
        "unix:///var/lib/taskd/valkey/valkey.sock?db=0",
        "redis+sentinel://:pw@10.0.0.5:26379,10.0.0.6:26379/mymaster/0",
        "redis+cluster://:pw@10.0.0.5:6379,10.0.0.6:6379",
    ],
)
def test_the_documented_kinds_of_redis_url_are_accepted(url):
    assert load_config(environ={"TASKD_REDIS__URL": url}).redis.url == url


# ---- where the API listens ----


@pytest.mark.parametrize("host", ["", " "])
def test_an_empty_http_host_is_refused_not_taken_as_every_interface(tmp_path, host):
    message = refusal(tmp_path, TASKD_HTTP__HOST=host)

    assert message == (
        "config key http: 'host' must be a host name or address (0.0.0.0 or :: for every interface), "
        "got an empty string"
    )


def test_every_interface_is_still_reachable_by_name():
    assert load_config(environ={"TASKD_HTTP__HOST": "0.0.0.0"}).http.host == "0.0.0.0"


# ---- credentials of outside services ----


@pytest.mark.parametrize("provider", ["llm", "image", "speech", "video"])
def test_a_provider_url_with_credentials_beside_an_api_key_is_refused_without_them(tmp_path, provider):
    env = {
        f"TASKD_PROVIDERS__{provider.upper()}__BASE_URL": "https://user:URLSECRET1@provider.example/v1",
        f"TASKD_PROVIDERS__{provider.upper()}__API_KEY": "sk-TOPSECRETKEY1",
    }
    if provider == "video":
        env |= {"TASKD_PROVIDERS__VIDEO__PROTOCOL": "openai", "TASKD_PROVIDERS__VIDEO__MODEL": "sora-2"}

    message = refusal(tmp_path, **env)

    assert message == (
        f"config key providers.{provider}: 'api_key' is set and base_url carries a user name or password: "
        "each request has one Authorization, so give the credentials in one of them"
    )


def test_a_provider_url_with_credentials_and_no_api_key_is_accepted():
    url = "https://user:pass@provider.example/v1"

    assert load_config(environ={"TASKD_PROVIDERS__LLM__BASE_URL": url}).providers.llm.base_url == url


def test_a_payload_url_with_credentials_is_refused_without_them(tmp_path):
    message = refusal(
        tmp_path,
        TASKD_PAYLOAD__BASE_URL="https://user:URLSECRET1@cms.example",
        TASKD_PAYLOAD__API_KEY="TOPSECRETKEY1",
    )

    assert message == (
        "config key payload: 'base_url' must not carry a user name or password: "
        "use api_key, or email and password"
    )


# ---- the config file itself ----


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "taskd.toml"
    path.write_bytes(b'data_dir = "caf\xe9"\n')  # Latin-1

    with pytest.raises(ConfigError) as raised:
        load_config(str(path), environ={})

    assert str(raised.value) == f"config file {path} is not UTF-8 (at byte 15)"


def test_a_config_file_an_editor_began_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "taskd.toml"
    path.write_bytes(b"\xef\xbb\xbf[http]\nport = 8123\n")

    assert load_config(str(path), environ={}).http.port == 8123


def test_a_config_path_that_is_a_directory_says_so(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load_config(str(tmp_path), environ={})

    assert str(raised.value) == f"config file {tmp_path} is a directory"


def test_serve_refuses_a_config_file_that_is_not_utf8_in_one_line(tmp_path):
    (tmp_path / "latin1.toml").write_bytes(b'data_dir = "caf\xe9"\n')

    result = start_up_refusal(tmp_path, "serve", TASKD_CONFIG=str(tmp_path / "latin1.toml"))

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"taskd: config file {tmp_path / 'latin1.toml'} is not UTF-8 (at byte 15)"
    ]


def test_a_task_data_depth_past_what_taskd_can_write_is_refused(tmp_path):
    # orjson writes at most 254 levels: with 1000, a submit's task_data 300 levels deep passed the
    # check and was a 500 when its record was written.
    assert (
        refusal(tmp_path, TASKD_LIMITS__MAX_TASK_DATA_DEPTH="1000")
        == "config key limits: 'max_task_data_depth' must be <= 200: 1000"
    )
