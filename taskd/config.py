"""Configuration: `taskd.toml` plus `TASKD_<SECTION>__<KEY>` environment overrides, parsed into attrs classes."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs

from taskd.validation import errors_by_path

ENV_PREFIX = "TASKD_"
SEARCH_PATHS = (Path("taskd.toml"), Path("/etc/taskd/taskd.toml"))


class ConfigError(Exception):
    """A configuration problem, worded as one line that names the key."""


@attrs.frozen
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = attrs.field(
        default=8001, validator=attrs.validators.and_(attrs.validators.ge(0), attrs.validators.le(65535))
    )


@attrs.frozen
class AuthConfig:
    api_keys: list[str] = attrs.Factory(list)


@attrs.frozen
class RedisConfig:
    url: str = ""


@attrs.frozen
class LlmProvider:
    base_url: str = ""
    api_key: str = ""
    model: str = "gpt-4o-mini"
    timeout: float = attrs.field(default=120.0, validator=attrs.validators.gt(0))


@attrs.frozen
class ProvidersConfig:
    llm: LlmProvider = attrs.Factory(LlmProvider)


@attrs.frozen
class WebhooksConfig:
    allow_private: bool = False


@attrs.frozen
class RetryConfig:
    base_delay: float = attrs.field(default=60.0, validator=attrs.validators.ge(0))
    max_retries: int = attrs.field(default=3, validator=attrs.validators.ge(0))


@attrs.frozen
class QueueConfig:
    concurrency: int = attrs.field(validator=attrs.validators.ge(1))
    timeout: float = attrs.field(validator=attrs.validators.gt(0))


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
    task_ttl: int = attrs.field(default=24 * 3600, validator=attrs.validators.ge(60))


@attrs.frozen
class WorkerConfig:
    heartbeat_interval: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    heartbeat_ttl: float = attrs.field(default=20.0, validator=attrs.validators.gt(0))
    poll_delay: float = attrs.field(default=0.05, validator=attrs.validators.gt(0))


@attrs.frozen
class Config:
    """The whole configuration; every field has the default `taskd.toml` documents."""

    data_dir: str = "data"
    http: HttpConfig = attrs.Factory(HttpConfig)
    auth: AuthConfig = attrs.Factory(AuthConfig)
    redis: RedisConfig = attrs.Factory(RedisConfig)
    providers: ProvidersConfig = attrs.Factory(ProvidersConfig)
    webhooks: WebhooksConfig = attrs.Factory(WebhooksConfig)
    retry: RetryConfig = attrs.Factory(RetryConfig)
    queues: dict[str, QueueConfig] = attrs.Factory(_default_queues)
    storage: StorageConfig = attrs.Factory(StorageConfig)
    worker: WorkerConfig = attrs.Factory(WorkerConfig)

    @property
    def data_path(self) -> Path:
        """The data directory as an absolute path."""
        return Path(self.data_dir).expanduser().resolve()


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _to_bool(value: Any, _: type) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected true or false, got {value!r}")


def _to_number(value: Any, kind: type) -> int | float:
    # Environment values arrive as strings; TOML values already have their type.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        return kind(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None


def _to_str_list(value: Any, _: type) -> list[str]:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ValueError(f"expected a list of strings, got {value!r}")


def _to_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(bool, _to_bool)
    conv.register_structure_hook(int, _to_number)
    conv.register_structure_hook(float, _to_number)
    conv.register_structure_hook(str, _to_str)
    conv.register_structure_hook_func(lambda t: t == list[str], _to_str_list)
    return conv


_CONVERTER = _converter()


def find_config_file(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    """The config file by DESIGN.md's lookup order: --config, $TASKD_CONFIG, ./taskd.toml, /etc/taskd."""
    for candidate in (explicit, environ.get("TASKD_CONFIG")):
        if candidate:
            path = Path(candidate)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            return path
    return next((path for path in SEARCH_PATHS if path.is_file()), None)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "TASKD_CONFIG":
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            continue
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: conflicts with another TASKD_ variable")
        node[path[-1]] = value
    return tree


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


def load_config(path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the config file (if any) and the environment; raise ConfigError with one line on a bad value."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    config_file = find_config_file(path, environ)
    if config_file is not None:
        try:
            raw = tomllib.loads(config_file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file}: not valid TOML: {exc}") from None
    raw = _with_queue_defaults(_merge(raw, _env_overrides(environ)))
    try:
        return _CONVERTER.structure(raw, Config)
    except Exception as exc:  # cattrs raises exception groups of many kinds
        problems = errors_by_path(exc)
        key, problem = next(iter(problems.items()))
        raise ConfigError(f"config key {key}: {problem}") from None
