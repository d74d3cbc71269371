"""Log lines on stderr: one JSON object per line (human text on a TTY), carrying the ids of the task
being worked on, with every configured secret masked, written by a thread of their own.

Code that works on a task wraps the work in `task_context(...)` (or `bind_task(record)`); every
line logged inside it, by any logger and in any coroutine started inside it, carries `task_id`,
`project_id` and `task_type`. Extra fields (`log.info("...", extra={"status_code": 200})`) become
JSON keys, or `key=value` pairs after the message in text.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import logging
import os
import queue
import re
import sys
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from typing import IO, Any, Protocol
from urllib.parse import unquote, unquote_plus, urlsplit

import attrs
import orjson

from taskd.printable import printable, printable_json

FORMATS = ("auto", "json", "text")
MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words
WEBHOOK_SECRET_PREFIX = "whsec_"
# Config fields whose values are secrets, wherever they are in the config tree (a scoped key's
# `key`, a key's `webhook_secret`, rotated `secrets` included).
# `access_key_id`: an S3 key's name, half of the credential, kept out of sight with its secret.
SECRET_FIELD = re.compile(r"(^|_)(api_keys?|key|secrets?|password|token|access_key_id)$")
# The attrs metadata of a config table keyed by task type or queue name (tasks.routes,
# gpu.task_needs): its keys are names of things, not of settings, and a plugin's type may well be
# called refresh_token or sign_key. Such a key says nothing of its value (a queue, "slot"), so the
# walkers that take an entry named like a secret for one (secrets_of, childenv.job_config, `taskd
# config show`) leave these tables' entries as they are.
KEYED_BY_NAME = "keyed_by_name"
# URL query parameters that carry a credential: ?api-key=…, ?apikey=…, ?access_token=…, ?key=…,
# ?X-Amz-Signature=… (the names providers and presigned URLs use; case and - or _ as they come).
SECRET_QUERY_NAME = re.compile(
    r"(^|[_-])(api_?keys?|key|secrets?|password|passwd|pwd|token|sig|signature|credentials?)$", re.IGNORECASE
)
# The password of any URL with credentials: redis://:pw@host, https://user:pw@host.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)[^\s@/]+(?=@)")
_BEARER = re.compile(r"(?P<head>\bBearer\s+)[A-Za-z0-9._~+/=-]+")
# A query parameter of a URL in a message ("?name=value" or "&name=value"): a value ends at a space,
# a quote or a bracket, as in "Track https://…?X-Amz-Signature=… is not …" and aiohttp's "url='…'".
# Matched on its own rather than with the URL before it, so that each character is read about once:
# a pattern from the scheme to the query read a 40 kB "a://a://…?" 10,000 times (1.4 s).
_QUERY_PARAMETER = re.compile(r"(?P<head>[?&](?P<name>[^\s=&?#'\"<>()]+)=)(?P<value>[^\s&#'\"<>()\[\]]*)")

# Lines waiting for the writer thread, at most: past it a line is dropped and counted, so that a
# stderr nobody reads can neither stop the work nor fill the memory (~10 MiB of records).
MAX_WAITING_LINES = 10_000
LINGER = 0.005  # seconds the writer waits before writing a line that came alone (_Writer)

# Libraries whose DEBUG lines carry credentials that no mask can tell from other text: botocore's
# (boto3's client) hold each request's signature ("Signature:\n<hex>", "Authorization: AWS4-HMAC-SHA256
# … Signature=…") and headers, and the signature of a URL it presigns is that URL's X-Amz-Signature.
# They log from INFO, whatever `logging.level` says.
QUIET_BELOW_INFO = ("botocore", "boto3", "s3transfer")

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
    """Masks secrets: every registered value, URL passwords, the query values of any URL named like a
    credential (as `mask_url` does) and bearer tokens."""

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
            # A URL a caller sent (a presigned S3 input, a signed media link, a receiver's ?token=)
            # is named in task errors and the lines about them; its query credentials are no
            # configured secret.
            if "?" in text:
                text = _QUERY_PARAMETER.sub(_masked_parameter, text)
        if "Bearer" in text:
            text = _BEARER.sub(rf"\g<head>{MASK}", text)
        return text


REDACTOR = Redactor()
# The longest message of another service (a provider, the object store, the CMS) taskd passes on.
SHORT_MESSAGE_CHARS = 300


def redact(text: str, secret: str) -> str:
    """`text` with `secret` masked."""
    return text.replace(secret, MASK) if secret else text


def shorten(text: str, secret: str = "") -> str:
    """Another service's message on one line, masked, then cut to SHORT_MESSAGE_CHARS.

    Masking comes first: a secret cut in half by the shortening would no longer be recognised.
    """
    text = REDACTOR.redact(redact(" ".join(text.split()), secret))
    return text if len(text) <= SHORT_MESSAGE_CHARS else text[: SHORT_MESSAGE_CHARS - 1] + "…"


def url_password(url: str) -> str | None:
    """The password in a URL's credentials, if any."""
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def _is_secret_parameter(name: str, value: str) -> bool:
    return bool(value) and bool(SECRET_QUERY_NAME.search(unquote_plus(name)))


def _masked_parameter(match: re.Match[str]) -> str:
    return match["head"] + MASK if _is_secret_parameter(match["name"], match["value"]) else match[0]


def basic_credentials(user: str, password: str) -> str:
    """The token of `Authorization: Basic` for a URL's user and password, as aiohttp sends it (the
    decoded user and password in Latin-1, base64): a provider that quotes its request's headers in
    an error quotes this, no form of the password masked otherwise."""
    pair = f"{unquote(user)}:{unquote(password)}".encode("latin-1", "replace")
    return base64.b64encode(pair).decode("ascii")


def url_secrets(url: str) -> list[str]:
    """The secrets a URL carries: its password (and the Basic credentials made of it), and each
    query value named like a credential, each as written and decoded, so that either form is masked
    (`p%40ss` is sent, and quoted back by the provider that decoded it, as `p@ss`)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return []
    found: list[str] = []
    if password:
        found.extend(dict.fromkeys([password, unquote(password)]))
        found.append(basic_credentials(parts.username or "", password))
    for pair in parts.query.split("&"):
        name, _, value = pair.partition("=")
        if _is_secret_parameter(name, value):
            found.extend(dict.fromkeys([value, unquote_plus(value)]))
    return found


def mask_url(url: str, mask: str) -> str:
    """`url` with its password and each query value named like a credential replaced by `mask`."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    netloc = parts.netloc.replace(f":{password}@", f":{mask}@", 1) if password else parts.netloc
    pairs = [pair.partition("=") for pair in parts.query.split("&")]
    query = "&".join(
        f"{name}={mask}" if _is_secret_parameter(name, value) else name + equals + value
        for name, equals, value in pairs
    )
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return parts._replace(netloc=netloc, query=query).geturl()


def names_settings(field: attrs.Attribute[Any]) -> bool:
    """Whether the keys of the table in config field `field` name settings, so that an entry named
    like a secret holds one (providers.video.extra_input = {api_key = …}); False for a table keyed by
    task type or queue (KEYED_BY_NAME)."""
    return not field.metadata.get(KEYED_BY_NAME, False)


def secrets_of(config: Any) -> list[str]:
    """Every secret in a config tree: fields (and table keys) named like a key, secret, password or
    token, URL passwords and URL query values named like a credential."""
    found: list[str] = []

    def walk(value: Any, secret: bool, settings: bool = True) -> None:
        if attrs.has(type(value)):
            for field in attrs.fields(type(value)):
                walk(
                    getattr(value, field.name),
                    secret or bool(SECRET_FIELD.search(field.name)),
                    names_settings(field),
                )
        elif isinstance(value, dict):
            # A table of the operator's own names (providers.video.extra_input = {api_key = …}); not
            # one keyed by task type, whose route to gpu_heavy would be masked in every line.
            for name, item in value.items():
                walk(item, secret or (settings and bool(SECRET_FIELD.search(str(name)))))
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item, secret)
        elif isinstance(value, str):
            if secret:
                # A Standard Webhooks secret is also masked by its key part alone.
                found.extend({value, value.removeprefix(WEBHOOK_SECRET_PREFIX)})
            elif "://" in value:
                found.extend(url_secrets(value))

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


def _surrogates_written_out(value: Any) -> Any:
    # `value` as _clean made it (dicts, lists, strings and scalars) with each lone surrogate as text.
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_surrogates_written_out(k): _surrogates_written_out(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_surrogates_written_out(v) for v in value]
    return value


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
        cleaned = _clean(line)
        try:
            text = orjson.dumps(cleaned)
        except orjson.JSONEncodeError:
            # A lone surrogate (a file name or a header that is not UTF-8, as Python decodes them),
            # which JSON cannot carry: written out as \udcff. Raised, it lost the line to logging's
            # "--- Logging error ---" traceback, which prints the message unmasked.
            text = orjson.dumps(_surrogates_written_out(cleaned))
        # A caller's text in a line must not break it where a reader splits lines (U+2028, NEL:
        # Python's splitlines, JavaScript log viewers) nor act on the terminal that tails it (C1).
        return printable_json(text.decode())


class TextFormatter(logging.Formatter):
    """`2026-01-02T03:04:05.678Z INFO taskd.webhooks: Webhook sent successfully status_code=200 task_id=…`."""

    def format(self, record: logging.LogRecord) -> str:
        # A message or a field may hold a caller's text (a task's error): on a terminal its control
        # characters would act, and a line break would forge a line of its own.
        pairs = " ".join(f"{k}={printable(v)}" for k, v in sorted(_extras(record).items()))
        text = f"{_timestamp(record)} {record.levelname} {record.name}: {printable(record.getMessage())}"
        if pairs:
            text += f" {pairs}"
        if record.exc_info:
            text += "\n" + printable(self.formatException(record.exc_info), lines=True)
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


class _Enqueue(QueueHandler):
    """Hands each line to the writer thread. What belongs to the moment of the call is fixed here,
    in the caller's thread: the task's ids (the filter) and the message with its arguments.
    Formatting, masking and the write to stderr happen in the writer."""

    def __init__(self, lines: queue.SimpleQueue[logging.LogRecord | None]) -> None:
        super().__init__(lines)
        self._lines = lines
        self.dropped = 0  # lines not queued since the last one that was (Handler.handle holds the lock)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg = record.getMessage()
        record.args = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        lines = self._lines
        if lines.qsize() >= MAX_WAITING_LINES:
            self.dropped += 1
            return
        if self.dropped:
            note = logging.LogRecord(
                "taskd.logs",
                logging.WARNING,
                __file__,
                0,
                "log lines dropped: stderr did not keep up",
                None,
                None,
            )
            note.dropped_lines = self.dropped
            self.dropped = 0
            lines.put_nowait(note)
        lines.put_nowait(record)


class _Writer(QueueListener):
    """The writer thread: formats, masks and writes the lines handed to it.

    A line that finds nothing else waiting is written LINGER seconds later, with whatever came
    meanwhile: the thread that logged it (the event loop) usually goes on at once with the work the
    line was about, and a writer that woke then would take the interpreter from it (the GIL) in
    the middle of that work. Measured at INFO (the default level): the start of a task on an idle
    `taskd serve` 0.22 ms sooner than with lines written by their caller, 8 rounds of 8; written
    without the delay, the writer cost the webhook's POST 0.07 ms, 7 rounds of 8.
    """

    def __init__(self, lines: queue.SimpleQueue[logging.LogRecord | None], handler: logging.Handler) -> None:
        super().__init__(lines, handler)
        self._lines = lines

    # The sentinel `stop` puts (None) comes out here too, as from QueueListener's own dequeue.
    def dequeue(self, block: bool) -> logging.LogRecord | None:  # type: ignore[override]
        record = self._lines.get(block)
        if record is not None and self._lines.empty():  # None: `stop`'s end of the lines
            time.sleep(LINGER)
        return record


_writer: QueueListener | None = None


def discard_stdout() -> None:
    """Point stdout at /dev/null once its reader went away (`taskd … | head`): what is still buffered,
    and what is printed later, is dropped rather than failing again, at exit too."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def configure(fmt: str, level: str, secrets: Iterable[str] = (), stream: IO[str] | None = None) -> None:
    """Send every log record to `stream` (stderr) in `fmt`, at `level` and above, masking `secrets`.

    The lines are written by a thread of their own: a stderr that blocks (a full pipe, a log
    collector that stalls) holds that thread, not the event loop with every task, heartbeat and
    request of the process. A line waits at most for MAX_WAITING_LINES before it; `flush` (run at
    exit) writes what waits.
    """
    global _writer
    REDACTOR.add(*secrets)
    flush()
    lines: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
    _writer = _Writer(lines, make_handler(fmt, stream or sys.stderr))
    _writer.start()
    handler = _Enqueue(lines)
    handler.addFilter(TaskContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in QUIET_BELOW_INFO:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))


def flush() -> None:
    """Write every line still waiting and stop the writer thread; later lines are written at once,
    by the caller (what exit handlers still log)."""
    global _writer
    writer, _writer = _writer, None
    if writer is None:
        return
    writer.stop()
    root = logging.getLogger()
    root.handlers[:] = [
        handler if not isinstance(handler, _Enqueue) else writer.handlers[0] for handler in root.handlers
    ]


atexit.register(flush)
