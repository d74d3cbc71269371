"""Read JSON with orjson, refusing the integers it would not keep exactly.

orjson reads an integer literal outside -2**63 … 2**64-1 as the nearest float, without a word
(18446744073709551616 becomes 1.8446744073709552e+19, -9223372036854775809 becomes
-9.223372036854776e+18), and one too large for a float as invalid JSON. taskd stores what it parsed
and sends it back, so such a number in `task_data` or `metadata` came back changed.

Only a text with 19 digits in a row can hold one (no literal out of range has fewer), so an
ordinary body costs a count of its digits. Past that, the standard library parses the text again
(its integers are exact) and orjson writes the result back, which fails on an integer past 64 bits:
both in C, with no Python call per value, so that a body of a million small numbers and one long
digit run (a caller's choice) costs a few times orjson's parse, not a Python call per number. Only
a text that holds such an integer is searched for it, by halves, with orjson again.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

LOWEST = -(2**63)
HIGHEST = 2**64 - 1

_RUN = 19
_DIGITS = b"0123456789"
# Every digit as "0": a run of 19 digits is then a plain substring search.
_ZEROS = bytes.maketrans(_DIGITS, b"0" * len(_DIGITS))
# An integer literal, as JSON writes one, starting where orjson stopped (not in a float's digits).
_INTEGER_AT = re.compile(r"(?<![0-9.eE+-])-?(?:0|[1-9][0-9]*)(?![0-9.eE])")
_SHOWN = 40


class WideInteger(ValueError):
    """An integer literal of a JSON text outside -2**63 … 2**64-1; the message names it for a caller."""

    def __init__(self, literal: str) -> None:
        shown = literal if len(literal) <= _SHOWN else literal[:_SHOWN] + "…"
        super().__init__(
            f"{shown} is an integer outside {LOWEST} to {HIGHEST}, which taskd cannot keep exactly: "
            "send it as a string"
        )


def loads(text: bytes | str) -> Any:
    """`orjson.loads(text)`; WideInteger for an integer it would not keep exactly, and
    orjson.JSONDecodeError (with orjson's reason and place) for a text that is not JSON."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        # An integer too large for a float is where orjson stopped; a text that is not JSON is not
        # parsed again (whatever it holds further on, orjson's reason is its first problem).
        literal = _INTEGER_AT.match(exc.doc, exc.pos) if isinstance(exc.doc, str) else None
        if literal is not None and _outside(literal.group()):
            raise WideInteger(literal.group()) from None
        raise
    if (found := wide_integer(text)) is not None:
        raise WideInteger(found)
    return value


def wide_integer(text: bytes | str) -> str | None:
    """The first integer literal of `text`, JSON that orjson reads, outside -2**63 … 2**64-1, or None."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    # Counting the digits (bytes.translate, ~0.1 ns a byte) spares most bodies anything more.
    if len(raw) - len(raw.translate(None, _DIGITS)) < _RUN or b"0" * _RUN not in raw.translate(_ZEROS):
        return None
    try:
        # Floats as their length: only integers matter, and float() is the costly part of a parse.
        exact = json.loads(raw, parse_float=len)
    except (ValueError, RecursionError):
        # Nested past the standard library's recursion limit (orjson takes 1024 levels): left as
        # orjson read it. task_data and metadata are held to limits.max_task_data_depth anyway.
        return None
    try:
        orjson.dumps(exact)
    except orjson.JSONEncodeError:
        found = _first_unwritable(exact)
        return str(found) if found is not None else None
    return None


def _first_unwritable(value: Any) -> int | None:
    # The first integer (in the text's order) orjson cannot write, found by halves: each list or
    # object's values are tried a half at a time (orjson.dumps stops at the first failure), then the
    # one that fails is entered. None when what failed first was nesting past orjson's 254 levels
    # (the standard library reads some 900): such a body is not looked through further, as looking
    # at each of its values in Python is the cost a caller could choose (only a field taskd ignores
    # can be that deep, and a float in place of an integer changes nothing but the caller's own data).
    while isinstance(value, dict | list):
        items = list(value.values()) if isinstance(value, dict) else value
        low, high = 0, len(items)
        if not items:
            return None
        while high - low > 1:
            middle = (low + high) // 2
            try:
                orjson.dumps(items[low:middle])
            except orjson.JSONEncodeError:
                high = middle
            else:
                low = middle
        value = items[low]
    return value if isinstance(value, int) and not LOWEST <= value <= HIGHEST else None


def _outside(literal: str) -> bool:
    # Past 20 digits a literal is out of range whatever it says; int() is not asked to convert it
    # (Python refuses over 4300 digits, and a long one costs time).
    digits = len(literal.lstrip("-"))
    return digits > len(str(HIGHEST)) or not LOWEST <= int(literal) <= HIGHEST
