"""Text a caller wrote, made safe to show on a terminal: its control characters written out."""

from __future__ import annotations

import re

# What a terminal acts on rather than shows: C0 controls (escape sequences, carriage returns), DEL,
# C1; and what reorders or hides text (bidirectional overrides, isolates and marks, the Arabic letter
# mark among them, zero-width characters, the byte order mark, interlinear annotations, the tag
# characters that spell text no one sees) or breaks a line of its own (the Unicode line and
# paragraph separators).
_UNSEEN = (
    "\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff\ufff9-\ufffb\U000e0000-\U000e007f"
)
_CONTROLS = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f{_UNSEEN}]")
_CONTROLS_BUT_LINES = re.compile(f"[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f{_UNSEEN}]")
# Text that shows nothing at all: whitespace, controls and the characters above.
_NOTHING_SHOWN = re.compile(f"[\\s\\x00-\\x1f\\x7f-\\x9f{_UNSEEN}]*")
# What JSON leaves as it is inside a string (it escapes only C0, the quote and the backslash).
_JSON_LEAVES = re.compile(f"[\\x7f-\\x9f{_UNSEEN}]")


def _written_out(found: re.Match[str]) -> str:
    code = ord(found.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(value: object, *, lines: bool = False) -> str:
    """`value` as text whose control characters are written as \\xNN (\\uNNNN past U+00FF,
    \\UNNNNNNNN past U+FFFF), line breaks and tabs too unless `lines`: it can neither move a
    terminal's cursor, nor reorder or hide what is shown around it, nor pass for a line of its own."""
    pattern = _CONTROLS_BUT_LINES if lines else _CONTROLS
    return pattern.sub(_written_out, str(value))


def _json_escape(found: re.Match[str]) -> str:
    code = ord(found.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    # JSON writes a character past U+FFFF as its UTF-16 surrogate pair.
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def printable_json(text: str) -> str:
    """JSON text (orjson's, which writes C0 controls as escapes but DEL, C1, bidirectional
    overrides and line separators as they are) with those written as \\uNNNN escapes too: the same
    JSON to a parser, and nothing a terminal acts on or a line splitter breaks at."""
    # The characters escaped can only stand inside a string in JSON, so an escape is always valid.
    if text.isascii() and "\x7f" not in text:
        return text
    return _JSON_LEAVES.sub(_json_escape, text)


def shows_nothing(text: str) -> bool:
    """True when `text` holds only whitespace, control characters and characters that reorder or
    hide text (zero-width, bidirectional, tag characters): what a person would read as blank."""
    return _NOTHING_SHOWN.fullmatch(text) is not None
