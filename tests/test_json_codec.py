"""json_codec reads every value as json.loads reads it and writes what json.loads reads back as the same value,
64-bit seeds and beyond included."""

from __future__ import annotations

import json
import math
import random

import pytest

from gateway.core import json_codec

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


NOT_JSON = [b'{"a": ', b"\xff{}", b'{"a": 1} trailing', b"", b"{'single': 1}", b"[12345678901234567890", b'["\xff"]']


@pytest.mark.parametrize("body", NOT_JSON)
def test_loads_exact_refuses_what_json_refuses_with_json_s_error(body: bytes) -> None:
    with pytest.raises(ValueError) as expected:
        json.loads(body)
    with pytest.raises(ValueError) as got:
        json_codec.loads_exact(body)
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


def test_loads_exact_reads_numbers_as_json_does() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        kind = rng.randrange(4)
        if kind == 0:  # long mantissas and exponents at both ends of a double's range
            text = (
                f"{rng.randint(0, 10 ** rng.randint(1, 40))}.{rng.randint(0, 10 ** rng.randint(1, 40))}"
                f"e{rng.randint(-340, 320)}"
            )
        elif kind == 1:
            text = repr(rng.uniform(-1, 1) * 10.0 ** rng.randint(-300, 300))
        elif kind == 2:
            text = str(rng.randint(-(10**30), 10**30))
        else:
            text = f"-0.{'0' * rng.randint(0, 330)}{rng.randint(1, 10 ** rng.randint(1, 25))}"
        body = f'{{"n": [{text}]}}'.encode()
        assert repr(json_codec.loads_exact(body)) == repr(json.loads(body)), text


MEMBER_BODIES = [
    b' {"prompt": {"3": {"seed": 18446744073709551617}}, "client_id": "c\\u00e9", "n": [1.5, null]} ',
    b'{"a": 1, "b": 2, "a": {"x": [3]}}',  # a repeated key: the last value, in the first place
    '{"t\\u0065xt": "café"}'.encode(),
]


@pytest.mark.parametrize("body", MEMBER_BODIES)
def test_object_members_are_the_members_json_reads_as_their_own_text(body: bytes) -> None:
    members = json_codec.object_members(body)
    assert members is not None
    expected = json.loads(body)
    assert list(members) == list(expected)
    assert {key: json.loads(bytes(text)) for key, text in members.items()} == expected
    assert {key: json_codec.loads_exact(text) for key, text in members.items()} == expected


@pytest.mark.parametrize("body", [b"[1]", b'{"a": NaN}', b'{"a": "\\ud800"}', b'{"a": ["\xff"]}',
                                  "\ufeff".encode() + b'{"a": 1}', '{"a": 1}'.encode("utf-16"), b'{"a": 1',
                                  b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}"])
def test_object_members_leave_to_json_what_they_cannot_vouch_for(body: bytes) -> None:
    assert json_codec.object_members(body) is None
    assert json_codec.history_entries(body) is None


def test_history_entries_leave_entries_that_are_not_objects_to_json() -> None:
    assert json_codec.history_entries(b'{"a": {"x": 1}, "b": [2]}') is None
    entries = json_codec.history_entries(b'{"a": {"x": [1, 2]}, "b": {}}')
    assert entries is not None and {k: {m: bytes(t) for m, t in v.items()} for k, v in entries.items()} == {
        "a": {"x": b"[1, 2]"}, "b": {}}


def test_dumps_raw_writes_member_texts_as_they_are_and_escapes_what_utf8_cannot_hold() -> None:
    answer = {"p1": {"prompt": json_codec.raw(b"[1, 18446744073709551617]")}, "\ud800": json_codec.raw(b'{"x": 0.1}')}
    written = json_codec.dumps_raw(answer)
    assert json.loads(written) == {"p1": {"prompt": [1, 18446744073709551617]}, "\ud800": {"x": 0.1}}
    assert json.loads(json_codec.dumps_raw({"p1": answer["p1"]})) == {"p1": {"prompt": [1, 18446744073709551617]}}


def test_dumps_escapes_a_lone_surrogate_as_json_does() -> None:
    assert json.loads(json_codec.dumps({"\ud800": ["\udfff"]})) == {"\ud800": ["\udfff"]}
