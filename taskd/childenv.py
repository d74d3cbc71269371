"""What a child process of taskd gets: an allow-listed environment, no open file it was not given,
and for a job process a config without secrets.

Job processes, ffmpeg, espeak-ng and any other tool child start from `child_environment()`, never
from `os.environ`: taskd's own environment may hold `TASKD_AUTH__API_KEYS`, a Redis URL with its
password, provider keys or `OPENAI_API_KEY`, and a child needs none of them. A job process gets
`job_config()`, the config with every secret blanked; it answers no requests, talks to no Redis
and signs nothing, and the handlers it runs are plain functions that burn CPU or GPU.

Open files: uvloop's spawn, unlike the standard library's, closes none (it has no `close_fds`),
so a child got every inheritable descriptor of taskd's, those taskd inherited from whoever started
it included (a pipe, a lock, a socket), and a second copy of each stdio descriptor it was given
(a job process kept its template's channels to the worker). `taskd serve` and `taskd worker` keep
what they inherited to themselves (`keep_inherited_descriptors`), and a child that is Python at its
start closes the copies (`close_inherited_descriptors`; a tool child in proctree.TOOL_START).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from taskd.config import AuthConfig, Config
from taskd.logs import SECRET_FIELD, names_settings, url_secrets

# Names a child may inherit: the search path, locale and time zone, temp dir, the Python that runs
# job processes, the tools' own settings, GPU selection and model caches, CA bundles and proxies.
_NAMES = frozenset(
    {
        "PATH",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "LD_LIBRARY_PATH",
        "PYTHONPATH",
        "PYTHONHOME",
        "VIRTUAL_ENV",
        "PYTHONHASHSEED",
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONIOENCODING",
        "PYTHONUTF8",
        "COVERAGE_PROCESS_START",
        "IMAGEIO_FFMPEG_EXE",
        "ESPEAK_DATA_PATH",
        "FONTCONFIG_FILE",
        "FONTCONFIG_PATH",
        "XDG_CACHE_HOME",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_CACHE",
        "TRANSFORMERS_OFFLINE",
        "TORCH_HOME",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "all_proxy",
    }
)
_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "PYTORCH_", "NCCL_")
# Even an allowed name is dropped when it looks like a credential (CUDA_…_TOKEN, HF_…_KEY).
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)
_NEVER_PREFIX = "TASKD_"


def _allowed(name: str, value: str) -> bool:
    if name.startswith(_NEVER_PREFIX) or _SECRET_NAME.search(name):
        return False
    if name not in _NAMES and not name.startswith(_PREFIXES):
        return False
    # A proxy (or anything else) that carries a password or a ?token= in its URL stays behind.
    return not ("://" in value and url_secrets(value))


def child_environment(
    *,
    home: Path | None = None,
    extra: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment for a child process: the allow-listed part of `environ` (default: this
    process's), HOME set to `home` (unset without one), and `extra` on top."""
    source = os.environ if environ is None else environ
    env = {name: value for name, value in source.items() if _allowed(name, value)}
    # Caches (models, fonts) stay where they are even when HOME moves.
    real_home = source.get("HOME") or str(Path.home())
    env.setdefault("XDG_CACHE_HOME", str(Path(real_home) / ".cache"))
    if home is not None:
        env["HOME"] = str(home)
    env.update(extra or {})
    return env


def _open_descriptors() -> list[int]:
    """The descriptors this process has open above stderr (none found where there is no /dev/fd)."""
    try:
        names = os.listdir("/dev/fd")
    except OSError:
        return []
    return [fd for fd in map(int, names) if fd > 2]


def keep_inherited_descriptors() -> None:
    """Make every descriptor above stderr that this process has open close-on-exec: at start-up,
    those are what it inherited, which no child of taskd is meant to get."""
    for fd in _open_descriptors():
        # The listing's own descriptor is closed by now: EBADF.
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)


def close_inherited_descriptors() -> None:
    """Close every inheritable descriptor above stderr: in a child that is Python at its start, what
    its parent passed on besides its stdio (what Python opens itself is not inheritable)."""
    for fd in _open_descriptors():
        with contextlib.suppress(OSError):
            if os.get_inheritable(fd):
                os.close(fd)


def _blank(value: Any) -> Any:
    return type(value)() if isinstance(value, str | list | dict | tuple) else value


def _scrub(value: Any, *, settings: bool = True) -> Any:
    # Fields named like a secret are blanked, and so are the entries of a table of the operator's
    # own names (providers.video.extra_input = {api_key = …}), as logs.secrets_of finds them; any
    # other string holding a URL password is dropped. A table keyed by task type or queue
    # (`settings` False) keeps its entries: blanking the route of a type called refresh_token would
    # leave a config that fails its own validation, and no job process could start.
    if attrs.has(type(value)):
        changes = {}
        for field in attrs.fields(type(value)):
            current = getattr(value, field.name)
            if SECRET_FIELD.search(field.name):
                cleaned = _blank(current)
            else:
                cleaned = _scrub(current, settings=names_settings(field))
            if cleaned is not current:
                changes[field.name] = cleaned
        try:
            return attrs.evolve(value, **changes) if changes else value
        except ValueError:
            # Settings that are valid only with the secret just taken out (a CMS's base_url needs its
            # api_key or password, a video protocol its base_url that carried ?api-key=): without it
            # the section is of no use to a job process, which gets it as if unset, its defaults.
            # Kept, it failed its own validation, and no job process could start.
            return type(value)()
    if isinstance(value, dict):
        return {
            key: _blank(item) if settings and SECRET_FIELD.search(str(key)) else _scrub(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_scrub(item) for item in value)
    if isinstance(value, str) and "://" in value and url_secrets(value):
        return ""
    return value


def job_config(config: Config) -> Config:
    """`config` as a job process gets it: no API keys, no Redis URL, no signing secrets, no provider keys."""
    # Whole sections a job process never uses go first: a scoped key cannot be blank, so it cannot
    # stay behind with its key removed.
    lean = attrs.evolve(config, auth=AuthConfig(), redis=attrs.evolve(config.redis, url=""))
    scrubbed: Config = _scrub(lean)
    return scrubbed
