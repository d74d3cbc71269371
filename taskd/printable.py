"""Text a caller wrote, made safe to show on a terminal: its control characters written out."""

from __future__ import annotations

import re

# What a terminal acts on rather than shows: C0 controls (escape sequences, carriage returns), DEL and C1.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROLS_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(value: object, *, lines: bool = False) -> str:
    """`value` as text whose control characters are written as \\xNN, line breaks and tabs too
    unless `lines`: it can neither move a terminal's cursor nor pass for a line of its own."""
    pattern = _CONTROLS_BUT_LINES if lines else _CONTROLS
    return pattern.sub(lambda found: f"\\x{ord(found.group()):02x}", str(value))
