"""`{"$ref": "<task_id>#/<JSON pointer>"}` in task_data: a part of a dependency's result, filled in
just before the task runs.

A submit finds every $ref (`find`) and checks its form and that its task is in `depends_on`; the
executor replaces them (`substitute`) with what the pointer (RFC 6901) reaches in that task's
result, then checks the data against the task type as a submit does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs
import orjson

from taskd.validation import Path, path_text

REF = "$ref"
# `<task_id>#` and then a JSON pointer: empty (the whole result) or `/`-separated tokens.
_TASK_ID, _POINTER = r"[^#\s]+", r"(/[^/]*)*"
_REF = re.compile(rf"(?P<task_id>{_TASK_ID})#(?P<pointer>{_POINTER})")
# The same form as a JSON Schema pattern for /openapi.json: ECMA-262 has no `(?P<name>`, and a
# pattern matches anywhere unless anchored.
PATTERN = rf"^{_TASK_ID}#{_POINTER}$"
_INDEX = re.compile(r"0|[1-9][0-9]*")
MALFORMED = 'A $ref must be "<task_id>#/<JSON pointer>"'


@attrs.frozen
class Ref:
    """One $ref: the task it reads from and the pointer's tokens, unescaped."""

    text: str
    task_id: str
    tokens: tuple[str, ...]


class Unresolved(LookupError):
    """A $ref whose pointer reaches nothing in its task's result."""

    def __init__(self, text: str, path: Path) -> None:
        super().__init__(f"$ref '{text}' at {path_text(path)} resolves to nothing in that task's result")


class TooLarge(ValueError):
    """task_data whose $refs, filled in, would make it larger than its limit."""

    def __init__(self, size: int, limit: int, why: str) -> None:
        super().__init__(
            f"task_data with its $refs filled in would be {size} bytes as JSON, over its limit of {limit} ({why})"
        )


def is_ref(value: Any) -> bool:
    """Whether `value` is a $ref object (an object whose only key is `$ref`)."""
    return isinstance(value, dict) and len(value) == 1 and REF in value


def parse(value: Any) -> Ref | None:
    """The $ref a `$ref` value names, or None when it is not of the form `<task_id>#/<pointer>`."""
    match = _REF.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    pointer = match["pointer"]
    tokens = pointer.split("/")[1:] if pointer else []
    # RFC 6901: ~1 is "/", ~0 is "~", in that order.
    return Ref(
        value, match["task_id"], tuple(token.replace("~1", "/").replace("~0", "~") for token in tokens)
    )


def find(data: Any, path: Path = ("task_data",)) -> Iterator[tuple[Path, Any]]:
    """Every $ref object in `data`: its field path and its `$ref` value (not yet checked)."""
    if is_ref(data):
        yield path, data[REF]
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from find(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from find(value, (*path, index))


def _list_index(token: str, length: int) -> int | None:
    """The item of a list of `length` items that `token` names (digits, no leading zero), or None."""
    # No int() of more digits than `length` has: past 4,300 it raises ValueError (each run ended
    # in a traceback, the task never did), and any such index is past the end anyway.
    if not _INDEX.fullmatch(token) or len(token) > len(str(length)):
        return None
    position = int(token)
    return position if position < length else None


def _resolve(document: Any, ref: Ref, path: Path) -> Any:
    for token in ref.tokens:
        if isinstance(document, dict) and token in document:
            document = document[token]
        elif isinstance(document, list) and (position := _list_index(token, len(document))) is not None:
            document = document[position]
        else:
            raise Unresolved(ref.text, path)
    return document


def substitute(data: Any, results: Mapping[str, Any], path: Path = ("task_data",)) -> Any:
    """`data` with each $ref replaced by what it points to in `results` (task id -> result).

    Raises Unresolved for a $ref that is malformed, names a task not in `results`, or points at nothing.
    """
    if is_ref(data):
        ref = parse(data[REF])
        if ref is None or ref.task_id not in results:
            raise Unresolved(str(data[REF]), path)
        return _resolve(results[ref.task_id], ref, path)
    if isinstance(data, dict):
        return {key: substitute(value, results, (*path, key)) for key, value in data.items()}
    if isinstance(data, list):
        return [substitute(value, results, (*path, index)) for index, value in enumerate(data)]
    return data


def filled_size(data: Any, results: Mapping[str, Any]) -> int:
    """About how many bytes `data` takes as JSON once `substitute` has filled in its $refs: the data
    around them once, and what each $ref reaches once for each $ref. Many $refs to one large value
    cost little in memory until the data is sent as JSON (to a job process), where each is a copy;
    so each counts. A $ref that reaches nothing counts nothing: `substitute` refuses it."""
    sizes: dict[int, int] = {}  # by the reached value's identity: each is serialized once here
    total = len(orjson.dumps(blank(data)))
    for path, text in find(data):
        ref = parse(text)
        if ref is None or ref.task_id not in results:
            continue
        try:
            reached = _resolve(results[ref.task_id], ref, path)
        except Unresolved:
            continue
        if id(reached) not in sizes:
            sizes[id(reached)] = len(orjson.dumps(reached))
        total += sizes[id(reached)]
    return total


def rename(data: Any, ids: Mapping[str, str]) -> Any:
    """`data` with the task id of each $ref found in `ids` replaced by what it maps to (a batch's
    "@<index>" by the id of that task)."""
    if is_ref(data):
        ref = parse(data[REF])
        if ref is None or ref.task_id not in ids:
            return data
        return {REF: ids[ref.task_id] + data[REF][len(ref.task_id) :]}
    if isinstance(data, dict):
        return {key: rename(value, ids) for key, value in data.items()}
    if isinstance(data, list):
        return [rename(value, ids) for value in data]
    return data


def blank(data: Any) -> Any:
    """`data` with each $ref object replaced by None: what a submit checks against the task type, its
    errors at a $ref's path set aside (`SetAside`), since what the $ref brings is known only at run time."""
    if is_ref(data):
        return None
    if isinstance(data, dict):
        return {key: blank(value) for key, value in data.items()}
    if isinstance(data, list):
        return [blank(value) for value in data]
    return data


class SetAside:
    """Which validation errors the $refs at some field paths may be about: an error at a $ref's
    field or inside it, or at an object or list that holds it, whose check reads the $ref's value
    with the others (generate_video's dialogue lines, each with a start before its end or neither:
    a $ref for one line's start made the line "without a start" at submit).

    By their keys, not their text: a key holding "." or "[" ("tracks[0]", next to "tracks") names as
    text what a nested field does, and its $ref set aside the errors of that field.

    Each error is looked up in sets, in steps of its path's length: compared with each $ref, 4,998
    $refs (a 1 MB body) held the API's event loop for seconds. A list's length is refused all the
    same (taskd.validation.FieldErrors.firm): no item's value changes it.
    """

    def __init__(self, ref_paths: Iterable[Path]) -> None:
        self._refs = frozenset(ref_paths)
        # The $refs' own fields and every object or list that holds one.
        self._holders = frozenset(path[:end] for path in self._refs for end in range(1, len(path) + 1))

    def covers(self, field_path: Path) -> bool:
        """Whether an error at `field_path` may be about a $ref's value."""
        return field_path in self._holders or any(
            field_path[:end] in self._refs for end in range(1, len(field_path))
        )


def filled_in(error_paths: Iterable[Path], data: Any) -> str:
    """A run's error's tail naming the $refs of `data` (task_data as stored) that errors at
    `error_paths`, found once they were filled in, may be about: `; filled in by $ref:
    task_data.dialogue[0].start = '<$ref>'` ("" for none)."""
    # The relation is the same both ways: an error at a $ref's field, inside or around it.
    errors = SetAside(error_paths)
    named = [f"{path_text(path)} = '{text}'" for path, text in find(data) if errors.covers(path)]
    return f"; filled in by $ref: {', '.join(named)}" if named else ""
