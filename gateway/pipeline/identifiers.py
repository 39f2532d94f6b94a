"""Ids and names from clients, checked at the boundary, before they reach the store, a log line or a header.

A prompt id, client id or user name is any text ComfyUI would take, within bounds: 1 to max_id_chars
characters, valid Unicode (JSON can spell a lone surrogate, which UTF-8, SQLite and Redis cannot hold), and no
control character (CR LF would split a response header, others forge log lines). A user header that is not
UTF-8 is read as Latin-1, which loses nothing: its bytes map one to one.
"""

from __future__ import annotations

import re
import string
from urllib.parse import quote

_SURROGATES = f"{chr(0xD800)}-{chr(0xDFFF)}"  # written so: the compiled build takes no surrogate in a literal
_UNSAFE = re.compile(f"[\x00-\x1f\x7f-\x9f{_SURROGATES}]")
_SURROGATE = re.compile(f"[{_SURROGATES}]")
_HEADER_SAFE = "".join(c for c in string.printable if c not in "%\t\n\r\x0b\x0c")


def id_problem(value: str, max_chars: int) -> str | None:
    """What is wrong with `value` as an id or name, or None when nothing is."""
    if not value:
        return "is empty"
    if len(value) > max_chars:
        return f"is longer than {max_chars} characters"
    # ASCII text (every minted id) is checked in C without the pattern: for it, printable is exactly the
    # pattern's complement.
    if (value.isprintable() if value.isascii() else _UNSAFE.search(value) is None):
        return None
    return "holds a control character or text that is not valid Unicode"


def user_name(header_value: str) -> str:
    """A user header's value as text: UTF-8, else Latin-1 (aiohttp, and the fast path as it, decode header
    bytes as UTF-8 with surrogateescape: a byte that is not UTF-8 becomes a lone surrogate)."""
    if _SURROGATE.search(header_value) is None:
        return header_value
    try:
        return header_value.encode("utf-8", "surrogateescape").decode("latin-1")
    except UnicodeEncodeError:  # a surrogate that did not come from a byte: not header text at all
        return header_value


def header_text(value: str) -> str:
    """`value` as a response header may carry it: printable ASCII as it is, anything else percent-encoded
    (as UTF-8), so a client's id can never add a header or a line."""
    if value.isascii() and value.isprintable() and "%" not in value:
        return value
    return quote(value, safe=_HEADER_SAFE, errors="surrogatepass")
