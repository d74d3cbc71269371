"""Which integer literals orjson would not keep exactly, found in a JSON text."""

from __future__ import annotations

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
