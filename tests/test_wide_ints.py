"""Which integer literals orjson would not keep exactly, found in a JSON text."""

from __future__ import annotations

import sys

import orjson
import pytest

from taskd.wide_ints import wide_integer


@pytest.mark.parametrize("literal", ["18446744073709551616", "-9223372036854775809", "1" + "0" * 30])
def test_an_integer_past_the_range_orjson_keeps_is_named(literal):
    assert wide_integer(b'{"a": [1, %s]}' % literal.encode()) == literal


@pytest.mark.parametrize("literal", ["18446744073709551615", "-9223372036854775808"])
def test_an_integer_at_an_end_of_the_range_is_not_named(literal):
    text = b'{"a": %s}' % literal.encode()

    assert wide_integer(text) is None
    assert orjson.dumps(orjson.loads(text)) == b'{"a":%s}' % literal.encode()


def test_a_float_of_many_digits_is_not_named():
    # A float is kept as the float it reads as, as any JSON reader does.
    assert wide_integer(b'{"a": 12345678901234567890.5}') is None


def test_digits_inside_a_string_are_not_a_number():
    assert wide_integer(b'{"id": "184467440737095516161844674407370955161"}') is None


def test_looking_for_a_wide_integer_calls_no_python_code_per_number():
    # A caller chooses the body: a Python call per number made a 1 MiB body of small numbers and
    # one long digit run cost some 30 times orjson's parse, on the event loop, on every submit.
    text = b'{"id": "1234567890123456789", "values": [%s]}' % b",".join([b"1", b"2.5"] * 1000)
    calls = []

    def count(frame, event, arg):
        if event == "call":
            calls.append(frame.f_code.co_name)

    sys.setprofile(count)
    try:
        found = wide_integer(text)
    finally:
        sys.setprofile(None)

    assert found is None
    assert len(calls) < 20, calls[:20]


@pytest.mark.parametrize(
    "text",
    [
        b"[1, 2, {}, -9223372036854775809]",
        b'{"a": [1, {"b": -9223372036854775809}], "c": 2}',
        b"[[1], [2, [3, -9223372036854775809, 4]], 5]",
    ],
)
def test_an_integer_past_the_range_is_found_wherever_it_is_nested(text):
    assert wide_integer(text) == "-9223372036854775809"


def test_the_first_of_several_integers_past_the_range_is_named():
    text = b'{"a": [1, {"b": 18446744073709551617}], "c": 18446744073709551616}'

    assert wide_integer(text) == "18446744073709551617"
