"""Find the integers of a JSON text that orjson would not keep exactly.

orjson reads an integer literal outside -2**63 … 2**64-1 as the nearest float, without a word
(18446744073709551616 becomes 1.8446744073709552e+19, -9223372036854775809 becomes
-9.223372036854776e+18), and one too large for a float as invalid JSON. taskd stores what it parsed
and sends it back, so such a number in `task_data` or `metadata` came back changed. A second parse
with the standard library, whose integers are exact, names the first such literal; it runs only
for a text with 19 digits in a row (no literal out of range has fewer), so an ordinary body costs
a count of its digits.
"""

from __future__ import annotations

import json
import re

LOWEST = -(2**63)
HIGHEST = 2**64 - 1

_RUN = 19
_DIGITS = b"0123456789"
_LONG_DIGITS = re.compile(rb"[0-9]{%d}" % _RUN)
# Past this many digits a literal is out of range whatever it says; checked before int() is asked
# to convert it (Python refuses over 4300 digits, and a long one costs time).
_MOST_DIGITS = len(str(HIGHEST))
_SHOWN = 40


class _Wide(Exception):
    pass


def _exact(literal: str) -> int:
    if len(literal.lstrip("-")) > _MOST_DIGITS or not LOWEST <= (value := int(literal)) <= HIGHEST:
        raise _Wide(literal)
    return value


def wide_integer(text: bytes | str) -> str | None:
    """The first integer literal of the JSON `text` outside -2**63 … 2**64-1 (cut to 40 characters
    and "…"), or None: when there is none, or when `text` is not JSON (the caller's parser says why)."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    # Counting the digits (bytes.translate, ~0.1 ns a byte) first spares most bodies the regular
    # expression, which costs more than orjson's whole parse of a usual submit (~3 us against ~1).
    if len(raw) - len(raw.translate(None, _DIGITS)) < _RUN or _LONG_DIGITS.search(raw) is None:
        return None
    try:
        json.loads(raw, parse_int=_exact)
    except _Wide as exc:
        literal = str(exc.args[0])
        return literal if len(literal) <= _SHOWN else literal[:_SHOWN] + "…"
    except (ValueError, RecursionError):
        # Not JSON to the standard library, or nested past its recursion limit (orjson takes 1024
        # levels): left to what orjson said. A body that deep is refused anyway (max_task_data_depth).
        return None
    return None


def wide_integer_message(literal: str) -> str:
    """What a caller is told about an integer out of range."""
    return (
        f"{literal} is an integer outside {LOWEST} to {HIGHEST}, which taskd cannot keep exactly: "
        "send it as a string"
    )
