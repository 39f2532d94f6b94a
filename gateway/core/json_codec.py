"""JSON the gateway writes in bulk (merged answers) or reads on every request (/history bodies, POST /prompt):
read and written so that every value comes out as json.loads reads it, at a fraction of json's cost.

Reading without building (msgspec.Raw): `object_members` and `history_entries` read an object's members, or
a /history body's entries' members, as their values' own JSON text (a view of the body), building nothing
below them. The gateway looks at the few members it needs and passes the others on as the client or the
backend wrote them, far faster than orjson or json build the whole value, for a POST /prompt's members
and a /history's entries alike.

Reading whole: `loads_exact` (msgspec) keeps every integer an integer and rounds every float as json does,
so it reads bodies that are written out again. It leaves to json.loads what msgspec refuses and json reads
(NaN, Infinity, a UTF-8 byte order mark, an escaped lone surrogate), so every value and every error is json's.
`string_value` and `integer_value` read one member's text as a string or an exact integer, or say it is not one.

Depth: `check_depth` refuses (JsonTooDeep, a ValueError) a body whose arrays and objects nest deeper than a
bound, without building anything, in a few C-speed passes over the bytes; `loads_within_depth` is json.loads
behind it.

Writing: `dumps` (msgspec, as fast as orjson here, and it writes integers beyond 64 bits) and `dumps_raw`
for answers made of member texts. Like orjson, msgspec writes a float NaN or infinity as null, where json
writes NaN (not JSON, refused by a browser's JSON.parse): that difference is kept on purpose. Output has
no spaces after separators; no client reads JSON by its spacing.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import msgspec

Raw = msgspec.Raw  # one member's value, as its own JSON text (a view of the body it was read from)

_VALUE = msgspec.json.Decoder()
_READ_TEXT: Final = msgspec.json.Decoder(str).decode  # bound once: a method looked up by name costs more
_INTEGER = re.compile(rb"-?(?:0|[1-9][0-9]*)\Z")
_MEMBERS = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ENTRIES = msgspec.json.Decoder(dict[str, dict[str, msgspec.Raw]])
_ENCODER = msgspec.json.Encoder()
# RecursionError: a value nested about as deep as the interpreter's recursion limit, where json.loads fails too.
_NOT_READ = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


class JsonTooDeep(ValueError):
    """JSON whose arrays and objects nest deeper than the bound the gateway reads."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(f"JSON nested deeper than {max_depth} levels")
        self.max_depth = max_depth


# Every byte but the quote and the brackets, dropped; `{` and `}` read as `[` and `]` (depth is all that counts).
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(set(range(256)) - set(b'"[]{}'))
# With backslashes: each one's escape letter is kept too (as `a`, unless it is one of \\ or \"), so that escapes
# pair up as in the body.
_WITH_ESCAPES = bytes.maketrans(b"{}bfnrtu/", b"[]aaaaaaa")
_NOT_ESCAPE_STRUCTURE = bytes(set(range(256)) - set(b'"[]{}\\bfnrtu/'))
# Bytes looked for with `in` as ints: with a bytes needle, `in` first tries it as an int and formats the TypeError.
BACKSLASH: Final = ord("\\")
QUOTE: Final = ord('"')
_STRING = re.compile(rb'"[^"]*"')


def check_depth(body: bytes, max_depth: int) -> None:
    """Raise JsonTooDeep when the arrays and objects of the JSON text `body` nest deeper than `max_depth`
    (`[]` is 1 deep, `{"a": [1]}` 2); brackets inside strings do not count. Text that is not JSON may pass or
    be called too deep: whoever reads it then refuses it anyway.

    No byte is looked at in Python, and nothing is built: bytes methods, each a pass in C, keep the quotes and
    brackets, drop the strings, then delete every innermost `[]` per pass, so what is left after `max_depth`
    passes was deeper. A ComfyUI workflow (about 6 deep) is gone after 6 passes over a fraction of its size.
    """
    if BACKSLASH in body:
        # An escaped quote would end a string early: escapes go first, paired from the left as JSON reads them
        # and as replace() finds them.
        structure = body.translate(_WITH_ESCAPES, _NOT_ESCAPE_STRUCTURE)
        structure = structure.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, b"a\\")
    else:
        structure = body.translate(_BRACKETS, _NOT_STRUCTURE)
    if len(structure) <= max_depth:
        return
    if QUOTE in structure:
        if structure.count(b'""') * 2 == structure.count(b'"'):
            # Every string's quotes are side by side, so no string holds a bracket: dropping every quote leaves
            # the brackets as they nest. (Found left to right, the first quote can only pair with the next one,
            # and so on: with a bracket in any string, some quote is left without a neighbour.)
            structure = structure.translate(None, b'"')
        else:
            # Side-by-side quotes enclose no bracket: most strings go in this pass, the regex gets the rest.
            structure = _STRING.sub(b"", structure.replace(b'""', b""))
    for level in range(min(max_depth, _PASSES)):
        left = max_depth - level  # how much deeper what is left may still be
        if len(structure) <= 2 * left:
            return
        if b"[" * (left + 1) in structure:  # a run of openings is nesting: found at once in bodies built to cost
            raise JsonTooDeep(max_depth)
        shorter = structure.replace(b"[]", b"")
        if len(shorter) == len(structure):
            return  # brackets that do not pair: not JSON, which its reader refuses
        if len(shorter) > len(structure) // 4 * 3 and len(shorter) > _SMALL:
            _check_runs(shorter, left - 1, max_depth)
            return
        structure = shorter
    if structure:
        _check_runs(structure, max_depth - min(max_depth, _PASSES), max_depth)


# Each pass costs a scan of what is left. Past this many passes (deeper than a workflow), or when a pass took off
# less than a quarter (a body built of many nests just under the bound), what is left is read run by run, once.
_PASSES = 8
_SMALL = 4096
_RUN = re.compile(rb"\[+|\]+")


def _check_runs(structure: bytes, left: int, max_depth: int) -> None:
    depth = 0
    for run in _RUN.finditer(structure):
        size = run.end() - run.start()
        if structure[run.start()] == 0x5B:  # [
            depth += size
            if depth > left:
                raise JsonTooDeep(max_depth)
        else:
            depth -= size


def loads_within_depth(body: bytes, max_depth: int) -> Any:
    """json.loads(body) for a body nested at most `max_depth` deep; JsonTooDeep (a ValueError) for a deeper one,
    json's own ValueError (or UnicodeDecodeError, also one) for what is not JSON. Never a RecursionError."""
    check_depth(body, max_depth)
    try:
        return json.loads(body)
    except RecursionError:  # past the interpreter's recursion limit, only below a bound above ~900
        raise JsonTooDeep(max_depth) from None


def loads_exact(text: bytes | Raw) -> Any:
    """The value json.loads reads from `text` (a body, or a member's text from object_members or
    history_entries). Raises ValueError (json's own) for what json refuses."""
    try:
        return _VALUE.decode(text)
    except _NOT_READ:
        # a body is not copied again (msgspec's stub calls Raw a bytes, but at run time it is not one)
        return json.loads(bytes(text) if isinstance(text, msgspec.Raw) else text)


def object_members(body: bytes) -> dict[str, Raw] | None:
    """The members of the JSON object `body`, each as its value's JSON text, keyed and ordered as json.loads
    keys the object (keys decoded, a repeated key's last value in its first place); None where this reader
    cannot vouch for that and json.loads must decide: not an object, NaN or Infinity, an escaped lone
    surrogate, a byte order mark or an encoding other than UTF-8, bytes that are not UTF-8 (msgspec checks
    only the strings it decodes), not JSON. Within a few levels of the recursion limit the two readers may
    differ (msgspec reads ~4 levels deeper); a body nested that deep is refused by a json.loads backend."""
    if not is_utf8(body):
        return None
    try:
        return _MEMBERS.decode(body)
    except _NOT_READ:
        return None


def history_entries(body: bytes) -> dict[str, dict[str, Raw]] | None:
    """A /history body (`{prompt_id: {member: value}}`) read two levels deep, on the terms of object_members;
    None also when an entry is not an object (json.loads then reads it, and the merge decides)."""
    if not is_utf8(body):
        return None
    try:
        return _ENTRIES.decode(body)
    except _NOT_READ:
        return None


def string_value(raw: Raw) -> str | None:
    """The string a value's JSON text spells, else None (a link, a number, ...)."""
    try:
        return _READ_TEXT(raw)  # read from the text in place: a copy and bytes' own tests cost more
    except _NOT_READ:
        return None


def integer_value(raw: Raw) -> int | None:
    """The integer a value's JSON text spells exactly (`-1`, `18446744073709551615`), else None: floats,
    booleans, strings and links are not integers here, and no value goes through a float."""
    text = bytes(raw)
    return int(text) if _INTEGER.match(text) else None


def dumps(value: Any) -> bytes:
    """UTF-8 JSON of a value made of what json.loads returns (dicts with str keys, lists, str, numbers, None)."""
    try:
        return _ENCODER.encode(value)
    except UnicodeEncodeError:  # a lone surrogate (json reads "\ud800" so), which UTF-8 cannot hold: json escapes it
        return json.dumps(value).encode()


def raw(text: bytes) -> Raw:
    """JSON text to stand as a value in what `dumps_raw` writes."""
    return msgspec.Raw(text)


def dumps_raw(value: dict[str, Any]) -> bytes:
    """UTF-8 JSON of a mapping whose values are Raw or mappings of Raw (each written as its text, not read
    again): cheap even for a merged /history answer of two backends' whole histories."""
    try:
        return _ENCODER.encode(value)
    except UnicodeEncodeError:  # a key holding a lone surrogate, which UTF-8 cannot hold: json escapes it
        return _dumps_raw_escaped(value)


def _dumps_raw_escaped(value: dict[str, Any] | Raw) -> bytes:
    if isinstance(value, msgspec.Raw):
        return bytes(value)
    members = (json.dumps(key).encode() + b":" + _dumps_raw_escaped(item) for key, item in value.items())
    return b"{" + b",".join(members) + b"}"


def is_utf8(body: bytes) -> bool:
    """Whether `body` is UTF-8 (msgspec checks only the strings it decodes, not the text it passes over)."""
    if body.isascii():  # what ComfyUI and json.dumps write: a cheap check, no decode
        return True
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
