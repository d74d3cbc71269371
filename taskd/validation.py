"""Turn cattrs/attrs failures into `{field.path: message}`, the shape of the API's `details`."""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping, MutableMapping, MutableSequence, Sequence, Set
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from yarl import URL

from taskd.printable import shows_nothing

T = TypeVar("T")
Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]
# A field's place: its keys and indexes from the top. Kept apart until it is named to a caller
# (path_text): "a.b" as text is both key "b" inside "a" and the key "a.b", and which one an error is
# at decides whether a $ref sets it aside (taskd.refs.SetAside).
Path = tuple[str | int, ...]


# The whole numbers a double holds exactly (IEEE 754's 53-bit significand) are those below 2^53:
# 2^53 itself is also what 2^53 + 1 reads as (`9007199254740993.0` is the double 2^53), so from it
# on a float's integer value need not be the number the caller wrote.
_EXACT_IN_A_DOUBLE = 2**53


def whole_number(value: Any) -> int | None:
    """A JSON number with no fractional part as an int, else None (`true`, `"7"`, `7.5`).

    JSON has one kind of number, and JSON Schema's `integer` (the OpenAPI document's) is any number
    whose fractional part is zero: `24.0` is one, as Python's json module writes a float field and
    as pydantic (the document's own service) read it. Only a float a double holds exactly is taken.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_IN_A_DOUBLE:
        return int(value)
    return None


def path_text(path: Path) -> str:
    """`path` as the API's `details` name a field: `task_data.tracks[0].url` (`body` for none)."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text or "body"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return "This field is required"
    if isinstance(exc, TypeError | ValueError) and exc.args:
        text = str(exc.args[0])
        if "required positional argument" in text or ("missing" in text and "argument" in text):
            return "This field is required"
        return text
    return str(exc) or exc.__class__.__name__


def errors_by_path(exc: BaseException, prefix: str = "", root: str = "body") -> dict[str, str]:
    """Flatten a cattrs exception tree into dotted field paths with a readable message each;
    `root` is the path of an error of the outermost class itself (its own validators)."""
    found = errors_at(exc, (prefix,) if prefix else ())
    return {path_text(path) if path else root: message for path, message in found.items()}


def errors_at(exc: BaseException, prefix: Path = ()) -> dict[Path, str]:
    """Flatten a cattrs exception tree into field paths with a readable message each."""
    found: dict[Path, str] = {}
    if isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            found[(*prefix, key)] = "Unknown field"
        return found
    if isinstance(exc, ClassValidationError | IterableValidationError):
        for sub in exc.exceptions:
            path = prefix
            for note in getattr(sub, "__notes__", []):
                name = getattr(note, "name", None)
                index = getattr(note, "index", None)
                if name is not None:
                    path = (*prefix, name)
                elif index is not None:
                    path = (*prefix, index)
            found.update(errors_at(sub, path))
        return found
    found[prefix] = _describe(exc)
    return found


class LengthError(ValueError):
    """A string or list longer than its limit: an error about the field as it was given, which no
    value inside it can change (FieldErrors.firm)."""


def _found(exc: TypeError | ValueError, path: Path, found: dict[Path, str], firm: set[Path]) -> None:
    found[path] = _describe(exc)
    if isinstance(exc, LengthError):
        firm.add(path)


def _run_validators(obj: Any, prefix: Path, found: dict[Path, str], firm: set[Path]) -> None:
    if attrs.has(type(obj)):
        for field in attrs.fields(type(obj)):
            value = getattr(obj, field.name)
            path = (*prefix, field.name)
            if field.validator is not None:
                try:
                    field.validator(obj, field, value)
                except (TypeError, ValueError) as exc:
                    _found(exc, path, found, firm)
                    continue
            _run_validators(value, path, found, firm)
    elif isinstance(obj, list | tuple):
        for index, item in enumerate(obj):
            _run_validators(item, (*prefix, index), found, firm)


def structure_checked(converter: cattrs.Converter, data: Any, cls: type[T], prefix: str = "") -> T:
    """Structure `data` into `cls`, reporting every type and validator failure at once.

    Raises `FieldErrors` whose `details` maps each bad field's path to a message.
    """
    top: Path = (prefix,) if prefix else ()
    firm: set[Path] = set()
    # attrs.validators.disabled() as a context manager cost a submit a generator and five calls
    # (docs/performance.md); the same switch, set and restored here.
    were_disabled = attrs.validators.get_disabled()
    attrs.validators.set_disabled(True)
    try:
        obj = converter.structure(data, cls)
    except Exception as exc:  # cattrs raises exception groups of many kinds
        found = errors_at(exc, top)
        _check_fields_alone(converter, data, cls, top, found, firm)
        raise FieldErrors(found, firm) from None
    finally:
        attrs.validators.set_disabled(were_disabled)
    found = {}
    _run_validators(obj, top, found, firm)
    if found:
        raise FieldErrors(found, firm)
    return obj


def _check_fields_alone(
    converter: cattrs.Converter,
    data: Any,
    cls: type,
    prefix: Path,
    found: dict[Path, str],
    firm: set[Path],
    broken: Set[Path] | None = None,
) -> None:
    # The whole object could not be built, so its validators never ran: check each
    # well-typed field on its own, and the objects it holds with theirs, so one response names every
    # bad field. A field that could not be built either (a list of objects, one of them holding a
    # $ref's None where a string goes) is checked inside the same way (_check_inside): a track's
    # gain, or another track's end before its start, went unchecked beside a $ref for one track's url.
    if not isinstance(data, dict) or not attrs.has(cls):
        return
    if broken is None:
        # Every path at or above an error of the attempt to build the whole: what could not be built.
        broken = {key[:end] for key in found for end in range(len(key) + 1)}
    for field in attrs.fields(cls):
        path = (*prefix, field.name)
        if field.name not in data:
            continue
        if path in broken:
            _check_length_alone(field, data[field.name], path, found, firm)
            _check_inside(converter, data[field.name], field.type, path, found, firm, broken)
            continue
        try:
            with attrs.validators.disabled():
                value = converter.structure(data[field.name], field.type)
            if field.validator is not None:
                field.validator(None, field, value)
        except (TypeError, ValueError) as exc:
            _found(exc, path, found, firm)
            continue
        except Exception:  # type errors inside were already reported by the first pass
            continue
        _run_validators(value, path, found, firm)


def _check_inside(
    converter: cattrs.Converter,
    value: Any,
    kind: Any,
    path: Path,
    found: dict[Path, str],
    firm: set[Path],
    broken: Set[Path],
) -> None:
    """Check what can be checked of a value of type `kind` that could not be built whole: an
    object's fields alone, each item of a list, an object that could be built with its validators."""
    kinds = [arg for arg in typing.get_args(kind) if arg is not type(None)]
    if typing.get_origin(kind) in (types.UnionType, typing.Union) and len(kinds) == 1:
        kind = kinds[0]  # an optional field: what it holds when given
    if attrs.has(kind):
        if path in broken:
            _check_fields_alone(converter, value, kind, path, found, firm, broken)
            return
        try:
            with attrs.validators.disabled():
                built = converter.structure(value, kind)
        except Exception:  # built in the first pass: not expected, and nothing more to learn here
            return
        _run_validators(built, path, found, firm)
    elif isinstance(value, list):
        for index, (item, item_kind) in enumerate(zip(value, _item_kinds(kind, len(value)), strict=False)):
            _check_inside(converter, item, item_kind, (*path, index), found, firm, broken)
    elif isinstance(value, dict) and typing.get_origin(kind) in _MAPPINGS and len(typing.get_args(kind)) == 2:
        item_kind = typing.get_args(kind)[1]
        for key, item in value.items():
            _check_inside(converter, item, item_kind, (*path, key), found, firm, broken)


# The kinds a JSON list is read into in order, so that an error is at an item's index: a plugin's
# `tuple[Track, ...]` or `Mapping[str, Track]` is checked inside as a `list[Track]` is (up to 894458b,
# 2026-12-06, only a list or Sequence was, the objects beside a $ref in the others left to the run).
_IN_ORDER = (list, tuple, Sequence, MutableSequence)
_MAPPINGS = (dict, Mapping, MutableMapping)


def _item_kinds(kind: Any, count: int) -> list[Any]:
    """The kind of each of `count` items of a list read as `kind`; none when it is not read in order."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin not in _IN_ORDER or not args:
        return []
    if origin is tuple and args[-1] is not Ellipsis:
        return list(args)  # tuple[str, Track]: each its own (a length it lacks is the first pass's error)
    return [args[0]] * count


def _check_length_alone(
    field: attrs.Attribute[Any], value: Any, path: Path, found: dict[Path, str], firm: set[Path]
) -> None:
    # A list whose items could not be built is as long as it was sent: its length is checked, as
    # the items' errors are no reason to leave it out. Above all where they are a $ref's (None
    # where a string goes: `tracks[0].url`), which the submit sets aside: 17 tracks were stored,
    # to fail at their start.
    if path in found or not isinstance(value, list):
        return
    for length in _length_checks(field.validator):
        try:
            length(None, field, value)
        except LengthError as exc:
            _found(exc, path, found, firm)
            return


def _length_checks(validator: Any) -> Iterator[Check]:
    """The checks among `validator`'s that read its value's length alone (LengthError)."""
    if isinstance(validator, Check):
        if issubclass(validator.error, LengthError):
            yield validator
        return
    for part in getattr(validator, "_validators", ()):  # attrs.validators.and_, or a list of validators
        yield from _length_checks(part)


class FieldErrors(Exception):
    """One or more fields are invalid; `at` maps each one's path to its message, `details` each one's
    path as text (path_text). `firm`: the paths of those that no value inside the field can change (a
    list's length, LengthError), which a `$ref` inside it does not set aside (taskd.refs.SetAside)."""

    def __init__(self, at: dict[Path, str], firm: Set[Path] = frozenset()) -> None:
        self.at = at
        self.firm = frozenset(firm)
        self.details = {path_text(path): message for path, message in at.items()}
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.details.items()))


@attrs.frozen
class Check:
    """An attrs validator: raises `message` when `predicate(value)` is false; None always passes.

    `schema` is the same rule as JSON Schema keywords, which the OpenAPI document publishes
    for the field (empty when JSON Schema cannot say it); `error`, what it raises (LengthError for a
    check that reads the value's length alone).
    """

    predicate: Callable[[Any], bool]
    message: str
    schema: Mapping[str, Any] = attrs.field(factory=dict)
    error: type[ValueError] = ValueError

    def __call__(self, _: Any, __: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not self.predicate(value):
            raise self.error(self.message)


def check(predicate: Callable[[Any], bool], message: str, schema: Mapping[str, Any] | None = None) -> Check:
    """An attrs validator that raises `message` when `predicate(value)` is false; None always passes."""
    return Check(predicate, message, schema or {})


def between(low: float, high: float, message: str) -> Check:
    """Value is a finite number in [low, high]."""
    return check(lambda v: math.isfinite(v) and low <= v <= high, message, {"minimum": low, "maximum": high})


def one_of(choices: Sequence[str], what: str) -> Check:
    """Value is one of `choices`."""
    return check(
        lambda v: v in choices, f"{what} must be one of: {', '.join(choices)}", {"enum": list(choices)}
    )


def not_blank(message: str) -> Check:
    """Value is a string with something other than whitespace, controls and zero-width characters."""
    # str.strip() leaves U+200B and its kind, so "\u200b" passed for a prompt: a provider was asked
    # (and paid) to voice or draw nothing.
    return check(lambda v: not shows_nothing(v), message, {"minLength": 1})


def max_length(limit: int, what: str, unit: str = "characters") -> Check:
    """A string or list no longer than `limit`."""
    # Published as maxLength; the OpenAPI document makes it maxItems on a list field (openapi._merge),
    # so a generated client knows a list's bound as it knows a string's.
    # A LengthError: a list's length is the caller's whatever a `$ref` in one of its items brings,
    # so the submit refuses it (taskd.submit.submission.input_problems).
    return Check(
        lambda v: len(v) <= limit,
        f"{what} must have at most {limit} {unit}",
        {"maxLength": limit},
        LengthError,
    )


_RESOLUTION = re.compile(r"^([1-9][0-9]{1,4})x([1-9][0-9]{1,4})$")
# A `WxH` resolution's sides: named where a field's description says them, as its pattern cannot.
MIN_SIDE = 16
MAX_SIDE = 7680


def resolution(max_side: int = MAX_SIDE) -> Check:
    """A `WIDTHxHEIGHT` string with each side from MIN_SIDE to `max_side`."""

    def ok(value: str) -> bool:
        match = _RESOLUTION.match(value)
        return match is not None and all(MIN_SIDE <= int(side) <= max_side for side in match.groups())

    return check(
        ok,
        f"Resolution must look like 1920x1080, each side between {MIN_SIDE} and {max_side}",
        {"pattern": _RESOLUTION.pattern},
    )


_AUTHORITY = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)")
_MAX_HOST = 253
# The host as written may be an IPv6 address in brackets, and be followed by a port.
_MAX_HOST_AND_PORT = _MAX_HOST + len("[]:65535")


def url_problem(url: str) -> str | None:
    """Why `url` cannot be requested as it is written, or None: yarl's reason for refusing it, or a host
    or port that no connection could use."""
    # yarl encodes a non-ASCII host with Python's IDNA codec, ~3 µs a character: a submit of 16
    # 30,000-character hosts held the event loop 1.5 s to be told that a label is too long. No host
    # name is longer than 253 characters (IDNA's encoding is no shorter than the name), so a longer
    # one is refused before it is parsed.
    authority = _AUTHORITY.match(url)
    if authority is not None and len(authority.group(1).rpartition("@")[2]) > _MAX_HOST_AND_PORT:
        return f"its host name is longer than {_MAX_HOST} characters"
    try:
        parsed = URL(url)
        # Decoding an IDNA host (`xn--…`) is done lazily by yarl, by the client at connect time: a
        # host that does not decode would fail the run with a UnicodeError.
        parsed.host  # noqa: B018
    except UnicodeError:
        # Python's IDNA codec, encoding a name (a label over 63 characters) or decoding one (`xn--`):
        # its words differ from one Python to the next, and name bytes of no use to the caller.
        return "its host is not a valid internationalized domain name"
    except ValueError as exc:  # yarl's reason ("Port out of range 0-65535")
        return str(exc)
    # The port as written: before yarl 1.17.2, `port` read an explicit 0 as the scheme's default.
    # taskd's own client went to port 80, aiohttp's to port 0.
    if parsed.explicit_port == 0:
        return "port 0 cannot be connected to"
    # yarl keeps an ASCII host as written: a NUL in it made the address check raise ValueError, and
    # other control characters reach the resolver.
    if any(char <= " " or char == "\x7f" for char in parsed.raw_host or ""):
        return "its host holds a control character"
    return None


def latin1_credentials(url: URL) -> bool:
    """True when HTTP Basic authentication can send the URL's user name and password (Latin-1)."""
    try:
        (url.user or "").encode("latin-1")
        (url.password or "").encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


_HTTP_URL = re.compile(r"^https?://[^\s/]+")


@attrs.frozen
class HttpUrl:
    """An attrs validator: an absolute http(s) URL that a download can request; None always passes.

    Checked at submit as the download will use it, so that a URL that could never be fetched is a
    400 naming the field, not a run that fails on a library's error (a NUL or an `xn--` host, a
    password Basic authentication cannot send).
    """

    what: str
    # What the OpenAPI document publishes of it: a URL a generated client or a request validator
    # can tell is not http(s) ("" or "ftp://…") is one it need not send to be told so.
    schema: Mapping[str, Any] = attrs.field(factory=lambda: {"pattern": _HTTP_URL.pattern}, init=False)

    def __call__(self, _: Any, __: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        if not _HTTP_URL.match(value):
            raise ValueError(f"{self.what} must be an http(s) URL")
        problem = unrequestable(self.what, value)
        if problem is not None:
            raise ValueError(problem)


def unrequestable(what: str, url: str) -> str | None:
    """Why `what`, the http(s) URL `url`, cannot be requested as written (a field error), or None."""
    problem = url_problem(url)
    if problem is not None:
        return f"{what} is not a valid URL: {problem}"
    if not latin1_credentials(URL(url)):
        return (
            f"{what}'s user name and password must be Latin-1 text: HTTP Basic authentication sends them so"
        )
    return None


def http_url(what: str) -> HttpUrl:
    """An absolute http(s) URL that can be requested as written."""
    return HttpUrl(what)
