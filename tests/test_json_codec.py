"""json_codec.dumps writes what json.loads reads back as the same value, 64-bit seeds and beyond included."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest

from gateway import json_codec

BODIES = [
    b'{"a": 1, "b": [true, false, null], "c": {"d": "e"}, "e": []}',
    b'{"seed": 18446744073709551615, "negative": -9223372036854775808}',  # ComfyUI's seed range, exactly
    b'{"big": 123456789012345678901234567890, "x": [1]}',  # beyond 64 bits: json writes it
    '{"text": "caf\u00e9 \\u2028 \\ud83d\\ude00 \\"quoted\\" \\\\"}'.encode(),
    b"[1.5, -0.0, 1e300, 0.1]",
]


@pytest.mark.parametrize("body", BODIES)
def test_dumps_round_trips_exactly(body: bytes) -> None:
    value = json.loads(body)
    written = json_codec.dumps(value)
    assert isinstance(written, bytes)
    assert json.dumps(json.loads(written)) == json.dumps(value)


def test_dumps_writes_non_finite_floats_as_null() -> None:
    assert json.loads(json_codec.dumps({"x": math.nan, "y": math.inf})) == {"x": None, "y": None}


@pytest.mark.parametrize("body", BODIES[:2] + BODIES[3:] + [b'{"x": NaN, "y": -Infinity}', b'[1e400]'])
def test_loads_for_reading_reads_as_json_does_within_64_bits(body: bytes) -> None:
    assert json.dumps(json_codec.loads_for_reading(body)) == json.dumps(json.loads(body))


NOT_JSON = [b'{"a": ', b"\xff{}", b'{"a": 1} trailing', b"", b"{'single': 1}", b"[12345678901234567890"]


@pytest.mark.parametrize("read", [json_codec.loads_for_reading, json_codec.loads_exact], ids=["for-reading", "exact"])
@pytest.mark.parametrize("body", NOT_JSON)
def test_readers_refuse_what_json_refuses_with_json_s_error(read: Callable[[bytes], Any], body: bytes) -> None:
    with pytest.raises(ValueError) as expected:
        json.loads(body)
    with pytest.raises(ValueError) as got:
        read(body)
    assert type(got.value) is type(expected.value) and str(got.value) == str(expected.value)


EXACT_BODIES = BODIES + [
    b'{"seed": 18446744073709551616, "low": -9223372036854775809}',  # just beyond 64 bits either way
    b'{"seed": 9223372036854775807}',  # 19 digits: read by json, as every run that long is
    b"[0.1000000000000000055511151231257827, 1.00000000000000011102230246251565404]",  # longer than a double
    b'{"dup": 1, "dup": 2, "n": [1234567890123456789012]}',
    b'{"x": NaN, "y": -Infinity}',
    "\ufeff".encode() + b'{"bom": 1}',  # json.loads reads a UTF-8 byte order mark; orjson does not
    b'"\xed\xa0\x80"',  # a lone surrogate encoded as UTF-8, which json reads (surrogatepass)
]


@pytest.mark.parametrize("body", EXACT_BODIES)
def test_loads_exact_reads_the_values_json_reads(body: bytes) -> None:
    got, expected = json_codec.loads_exact(body), json.loads(body)
    assert repr(got) == repr(expected)  # repr: an int read as a float, or -0.0 as 0, would show
