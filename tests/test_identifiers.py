"""Ids and names from clients at the boundary (pipeline/identifiers.py): what is refused, how a user header
that is not UTF-8 is read, and that an id can never add a header or a line to an answer."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.pipeline.identifiers import header_text, id_problem, user_name

MAX = 256


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "is empty"),
        ("x" * (MAX + 1), "is longer than 256 characters"),
        ("\ud800", "holds a control character or text that is not valid Unicode"),
        ("rt\r\nX-Injected: 1", "holds a control character or text that is not valid Unicode"),
        ("a\x00b", "holds a control character or text that is not valid Unicode"),
        ("a\x85b", "holds a control character or text that is not valid Unicode"),  # C1 NEL
    ],
    ids=["empty", "too-long", "lone-surrogate", "crlf", "nul", "c1"],
)
def test_refused_ids_say_why(value: str, problem: str) -> None:
    assert id_problem(value, MAX) == problem


@pytest.mark.parametrize(
    "value", ["6c1e0c3e-9f0b-4c55-8a53-1a1d2b3c4d5e", "中文", "🎨 render #7", "x" * MAX, "99999999999999999999"]
)
def test_taken_ids(value: str) -> None:
    assert id_problem(value, MAX) is None


@given(st.text(max_size=300))
def test_an_id_taken_is_text_every_store_and_log_can_hold(value: str) -> None:
    if id_problem(value, MAX) is None:
        value.encode("utf-8")  # SQLite, Redis and the log all write UTF-8
        assert 0 < len(value) <= MAX and "\r" not in value and "\n" not in value


@given(st.text(max_size=300) | st.text(st.characters(max_codepoint=0x7F), max_size=300))
@example("\x7f")
@example("a b")
def test_an_id_is_refused_exactly_when_it_holds_a_control_character_or_a_surrogate(value: str) -> None:
    unsafe = any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF for c in value)
    assert (id_problem(value, MAX) is not None) == (not value or len(value) > MAX or unsafe)


@given(st.text())
def test_header_text_is_one_printable_ascii_line_that_decodes_back(value: str) -> None:
    shown = header_text(value)
    assert shown.isascii() and shown.isprintable()  # no CR, LF or other control: no header or line added
    assert unquote(shown, errors="surrogatepass") == value


@pytest.mark.parametrize(
    ("sent", "user"),
    [
        ("José".encode(), "José"),  # UTF-8, as aiohttp decodes it
        ("José".encode("latin-1"), "José"),  # Latin-1: its one byte é is not UTF-8
        (b"ana", "ana"),
    ],
    ids=["utf8", "latin1", "ascii"],
)
def test_user_headers_are_utf8_else_latin1(sent: bytes, user: str) -> None:
    decoded = sent.decode("utf-8", "surrogateescape")  # what both data paths hand the pipeline
    assert user_name(decoded) == user


@given(st.binary(max_size=64))
@example(b"\x01\xc3\xa9")  # valid UTF-8 holding a control character stays UTF-8
def test_any_header_bytes_give_their_utf8_or_latin1_text(sent: bytes) -> None:
    name = user_name(sent.decode("utf-8", "surrogateescape"))
    try:
        expected = sent.decode("utf-8")
    except UnicodeDecodeError:
        expected = sent.decode("latin-1")
    assert name == expected
