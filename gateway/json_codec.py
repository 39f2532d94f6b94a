"""JSON the gateway writes in bulk (merged answers) or reads on every request (/history bodies): orjson
where it gives what json would, json where it does not.

orjson serialises ~7× faster than json (a 14 MB /history: json.dumps 312 ms, orjson 43 ms). Where it differs:
  - it cannot write integers beyond 64 bits: `dumps` then writes with json.dumps, which can;
  - it writes a float NaN or infinity as null, where json writes NaN (not JSON, and refused by a browser's
    JSON.parse): that difference is kept on purpose;
  - its output has no spaces after separators; no client reads JSON by its spacing.
Reading: orjson turns an integer beyond 64 bits into a float, silently (a seed would change).
`loads_for_reading` is for bodies that are only looked at (3× faster on a 2 KB /history; on 14 MB, where
building the objects dominates, only ~1.3×). `loads_exact` is for bodies written out again: orjson only
where the text holds no run of 19 or more digits, the only place where the two could read different values
(an integer beyond 64 bits, a float with a mantissa longer than a double holds), json.loads otherwise.

Reading without building: `object_members` and `history_entries` (msgspec) read an object's members, or a
/history body's entries' members, as their values' own JSON text (msgspec.Raw, a view of the body), building
no object below them: a 20 KB POST /prompt in ~17 µs where orjson takes ~80 and json ~190; a 14 MB /history
in ~19 ms where orjson takes ~120. The gateway looks at the few members it needs and passes the others on
as the backend or client wrote them, so no value below them is ever read differently.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import orjson


def loads_for_reading(body: bytes) -> Any:
    """json.loads(body), except that an integer beyond 64 bits may come back as a float: for finding things in
    a body, never for writing it out again. Raises ValueError (json's own) for what json refuses."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)  # NaN, Infinity, an integer too large even for a float, or not JSON: json decides


# Digits to "0", every other byte to " ": a run of 19 digits anywhere becomes one search for _LONG_DIGITS.
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
# 19 digits: the shortest integer beyond orjson's 64-bit range is -9223372036854775809.
_LONG_DIGITS = b"0" * 19


def loads_exact(body: bytes) -> Any:
    """The value json.loads(body) reads, read by orjson where that gives the same value (14 MB of /history:
    ~100 ms against ~140 ms; the check for long digit runs costs ~12 ms of that). Raises ValueError
    (json's own) for what json refuses."""
    if _LONG_DIGITS in body.translate(_DIGITS_AS_ZERO):
        return json.loads(body)  # a 64-bit seed or longer: only json reads it exactly
    return loads_for_reading(body)


def dumps(value: Any) -> bytes:
    """UTF-8 JSON of a value made of what json.loads returns (dicts with str keys, lists, str, numbers, None)."""
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer beyond 64 bits
        return json.dumps(value, ensure_ascii=False).encode()


Raw = msgspec.Raw  # one member's value, as its own JSON text (a view of the body it was read from)

_MEMBERS = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ENTRIES = msgspec.json.Decoder(dict[str, dict[str, msgspec.Raw]])
_ENCODER = msgspec.json.Encoder()
# RecursionError: a value nested about as deep as the interpreter's recursion limit, where json.loads fails too.
_NOT_READ = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def object_members(body: bytes) -> dict[str, Raw] | None:
    """The members of the JSON object `body`, each as its value's JSON text, keyed and ordered as json.loads
    keys the object (keys decoded, a repeated key's last value in its first place); None where this reader
    cannot vouch for that and json.loads must decide: not an object, NaN or Infinity, an escaped lone
    surrogate, a byte-order mark or other encodings than UTF-8, bytes that are not UTF-8 (msgspec checks only
    the strings it decodes), not JSON. Within a few levels of the recursion limit the two readers may differ
    (msgspec reads ~4 levels deeper); a body nested that deep is refused by a json.loads backend regardless."""
    if not _utf8(body):
        return None
    try:
        return _MEMBERS.decode(body)
    except _NOT_READ:
        return None


def history_entries(body: bytes) -> dict[str, dict[str, Raw]] | None:
    """A /history body (`{prompt_id: {member: value}}`) read two levels deep, on the terms of object_members;
    None also when an entry is not an object (json.loads then reads it, and the merge decides)."""
    if not _utf8(body):
        return None
    try:
        return _ENTRIES.decode(body)
    except _NOT_READ:
        return None


def raw(text: bytes) -> Raw:
    """JSON text to stand as a value in what `dumps_raw` writes."""
    return msgspec.Raw(text)


def dumps_raw(value: dict[str, Any]) -> bytes:
    """UTF-8 JSON of a mapping whose values are Raw or mappings of Raw (each written as its text, not read
    again): a merged /history answer of 2 × 14 MB in a few milliseconds."""
    return _ENCODER.encode(value)


def _utf8(body: bytes) -> bool:
    if body.isascii():  # what ComfyUI and json.dumps write: ~1 µs for 20 KB
        return True
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
