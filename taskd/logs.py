"""Log lines on stderr: one JSON object per line (human text on a TTY), carrying the ids of the task
being worked on, with every configured secret masked.

Code that works on a task wraps the work in `task_context(...)` (or `bind_task(record)`); every
line logged inside it, by any logger and in any coroutine started inside it, carries `task_id`,
`project_id` and `task_type`. Extra fields (`log.info("...", extra={"status_code": 200})`) become
JSON keys, or `key=value` pairs after the message in text.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any, Protocol
from urllib.parse import urlsplit

import attrs
import orjson

FORMATS = ("auto", "json", "text")
MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words
WEBHOOK_SECRET_PREFIX = "whsec_"
# Config fields whose values are secrets, wherever they are in the config tree (a scoped key's
# `key`, a key's `webhook_secret`, rotated `secrets` included).
SECRET_FIELD = re.compile(r"(^|_)(api_keys?|key|secrets?|password|token)$")
# The password of any URL with credentials: redis://:pw@host, https://user:pw@host.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)[^\s@/]+(?=@)")
_BEARER = re.compile(r"(?P<head>\bBearer\s+)[A-Za-z0-9._~+/=-]+")

_TASK: ContextVar[dict[str, str] | None] = ContextVar("taskd_log_task", default=None)
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class TaskLike(Protocol):
    task_id: str
    project_id: str
    task_type: str


@contextlib.contextmanager
def task_context(task_id: str, project_id: str, task_type: str) -> Iterator[None]:
    """Within this block (and tasks created in it), every log line carries the task's ids."""
    token = _TASK.set({"task_id": task_id, "project_id": project_id, "task_type": task_type})
    try:
        yield
    finally:
        _TASK.reset(token)


def bind_task(record: TaskLike) -> contextlib.AbstractContextManager[None]:
    """`task_context` for a task record."""
    return task_context(record.task_id, record.project_id, record.task_type)


class TaskContextFilter(logging.Filter):
    """Adds the current task's ids to every record that does not carry its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_TASK.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class Redactor:
    """Masks secrets: every registered value, URL passwords and bearer tokens."""

    def __init__(self) -> None:
        self._secrets: list[str] = []

    def add(self, *values: str | None) -> None:
        """Mask these values from now on (empty and very short ones are ignored)."""
        fresh = {v for v in values if v and len(v) >= MIN_SECRET_LENGTH} - set(self._secrets)
        # Longest first, so a secret containing another is masked whole.
        self._secrets = sorted([*self._secrets, *fresh], key=len, reverse=True)

    def redact(self, text: str) -> str:
        """`text` with every secret replaced by ***."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        # Each pattern needs its literal (`://`, `Bearer`): a substring test first spares most lines
        # both regex scans, which were most of a JSON line's formatting (7 strings, ~5 µs each).
        if "://" in text:
            text = _URL_PASSWORD.sub(rf"\g<head>{MASK}", text)
        if "Bearer" in text:
            text = _BEARER.sub(rf"\g<head>{MASK}", text)
        return text


REDACTOR = Redactor()


def url_password(url: str) -> str | None:
    """The password in a URL's credentials, if any."""
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def secrets_of(config: Any) -> list[str]:
    """Every secret in a config tree: fields named like a key, secret, password or token, and URL passwords."""
    found: list[str] = []

    def walk(value: Any, secret: bool) -> None:
        if attrs.has(type(value)):
            for field in attrs.fields(type(value)):
                walk(getattr(value, field.name), secret or bool(SECRET_FIELD.search(field.name)))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item, secret)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item, secret)
        elif isinstance(value, str):
            if secret:
                # A Standard Webhooks secret is also masked by its key part alone.
                found.extend({value, value.removeprefix(WEBHOOK_SECRET_PREFIX)})
            elif "://" in value and (password := url_password(value)):
                found.append(password)

    walk(config, False)
    return found


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _clean(value: Any) -> Any:
    # Values become JSON: strings are masked, anything unusual is rendered as masked text.
    if isinstance(value, str):
        return REDACTOR.redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return REDACTOR.redact(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, the task's ids and any extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(_clean(line)).decode()


class TextFormatter(logging.Formatter):
    """`2026-01-02T03:04:05.678Z INFO taskd.webhooks: Webhook sent successfully status_code=200 task_id=…`."""

    def format(self, record: logging.LogRecord) -> str:
        pairs = " ".join(f"{k}={v}" for k, v in sorted(_extras(record).items()))
        text = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if pairs:
            text += f" {pairs}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return REDACTOR.redact(text)


def resolve_format(fmt: str, stream: IO[str]) -> str:
    """`auto` becomes `text` on a terminal and `json` elsewhere."""
    if fmt == "auto":
        return "text" if stream.isatty() else "json"
    return fmt


def make_handler(fmt: str, stream: IO[str]) -> logging.Handler:
    """A handler writing to `stream` in `fmt` (auto, json or text), adding the current task's ids."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if resolve_format(fmt, stream) == "json" else TextFormatter())
    handler.addFilter(TaskContextFilter())
    return handler


def configure(fmt: str, level: str, secrets: Iterable[str] = (), stream: IO[str] | None = None) -> None:
    """Send every log record to `stream` (stderr) in `fmt`, at `level` and above, masking `secrets`."""
    REDACTOR.add(*secrets)
    root = logging.getLogger()
    root.handlers[:] = [make_handler(fmt, stream or sys.stderr)]
    root.setLevel(level.upper())
