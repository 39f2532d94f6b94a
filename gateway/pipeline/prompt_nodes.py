"""The nodes of a POST /prompt body as the guardrails read them, and new values spliced into the body.

`read_nodes` reads, in one msgspec pass, each node's class_type and its inputs as their own JSON text (a view of
the body), building nothing below them: a 20 KB prompt costs a small fraction of json.loads. It answers None
for a body it cannot read so (not an object, no `prompt` object, a node with no string class_type, NaN, ...):
the backend then judges the body, as it would with no gateway.

`value_spans` finds where chosen inputs' values sit in the body's text, walking only the objects on the way
to them (json's own C scanner reads each key and skips each other value), and `splice` writes new values
there: every other byte reaches the backend as the client wrote it (64-bit seeds, spacing, key order).
A repeated key counts as json.loads counts it: its last value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping

import msgspec

Raw = msgspec.Raw


class PromptNode(msgspec.Struct):
    class_type: str
    inputs: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict)


class _Body(msgspec.Struct):
    prompt: dict[str, PromptNode]


_BODY = msgspec.json.Decoder(_Body)
_INTEGER = re.compile(rb"-?(?:0|[1-9][0-9]*)\Z")
_STRING = msgspec.json.Decoder(str)
_NOT_READ = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def read_nodes(body: bytes) -> dict[str, PromptNode] | None:
    """node id → its class_type and raw inputs; None when the body is not read so (the backend judges it)."""
    try:
        return _BODY.decode(body).prompt
    except _NOT_READ:
        return None


def integer_value(raw: Raw) -> int | None:
    """The integer an input's JSON text spells exactly (`-1`, `18446744073709551615`), else None: floats,
    booleans, strings and links are not integers here, and no value goes through a float."""
    text = bytes(raw)
    return int(text) if _INTEGER.match(text) else None


def string_value(raw: Raw) -> str | None:
    """The string an input's JSON text spells, else None (a link, a number, ...)."""
    text = bytes(raw)
    if not text.startswith(b'"'):
        return None
    try:
        return _STRING.decode(text)
    except _NOT_READ:
        return None


# --- where values are, and new ones in their place -------------------------------------------------------------

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]

Span = tuple[int, int]  # [start, end) in the body's text


class NotWalked(ValueError):
    """The body's text is not JSON of the expected shape where the walk went."""


def value_spans(text: str, wanted: Mapping[str, Iterable[str]]) -> dict[tuple[str, str], Span]:
    """(node id, input name) → where that input's value is in `text` (the body, decoded), for the inputs
    `wanted` names (node id → input names). Raises NotWalked for text that is not a JSON object."""
    names = {node: frozenset(inputs) for node, inputs in wanted.items()}
    spans: dict[tuple[str, str], Span] = {}

    def in_inputs(node_id: str) -> Callable[[str, int], int]:
        def member(name: str, start: int) -> int:
            end = _skip(text, start)
            if name in names[node_id]:
                spans[(node_id, name)] = (start, end)
            return end

        return member

    def in_node(node_id: str) -> Callable[[str, int], int]:
        def member(key: str, start: int) -> int:
            if key != "inputs" or text[start] != "{":
                return _skip(text, start)
            _forget(spans, node_id)  # a repeated "inputs": the last one counts
            return _walk_object(text, start, in_inputs(node_id))

        return member

    def in_prompt(node_id: str, start: int) -> int:
        if node_id not in names or text[start] != "{":
            return _skip(text, start)
        _forget(spans, node_id)  # a repeated node id: the last one counts
        return _walk_object(text, start, in_node(node_id))

    def at_top(key: str, start: int) -> int:
        if key != "prompt" or text[start] != "{":
            return _skip(text, start)
        spans.clear()  # a repeated "prompt": the last one counts
        return _walk_object(text, start, in_prompt)

    try:
        _walk_object(text, _after_whitespace(text, 0), at_top)
    except (ValueError, IndexError, RecursionError) as exc:
        raise NotWalked(str(exc)) from None
    return spans


def splice(text: str, values: Mapping[Span, str]) -> str:
    """`text` with each span's bytes replaced by its new JSON text; the spans do not overlap."""
    parts: list[str] = []
    position = 0
    for (start, end), value in sorted(values.items()):
        parts += (text[position:start], value)
        position = end
    parts.append(text[position:])
    return "".join(parts)


def _forget(spans: dict[tuple[str, str], Span], node_id: str) -> None:
    for key in [key for key in spans if key[0] == node_id]:
        del spans[key]


def _after_whitespace(text: str, position: int) -> int:
    match = _WHITESPACE.match(text, position)
    return match.end() if match else position


def _skip(text: str, start: int) -> int:
    return _DECODER.raw_decode(text, start)[1]


def _walk_object(text: str, position: int, member: Callable[[str, int], int]) -> int:
    """Walk the object at `position`: `member(key, value_start)` reads each value and says where it ends.
    Returns where the object ends."""
    if text[position] != "{":
        raise NotWalked(f"no object at {position}")
    position = _after_whitespace(text, position + 1)
    if text[position] == "}":
        return position + 1
    while True:
        if text[position] != '"':
            raise NotWalked(f"no key at {position}")
        key, position = _scanstring(text, position + 1)
        position = _after_whitespace(text, position)
        if text[position] != ":":
            raise NotWalked(f"no colon at {position}")
        position = _after_whitespace(text, member(key, _after_whitespace(text, position + 1)))
        if text[position] == "}":
            return position + 1
        if text[position] != ",":
            raise NotWalked(f"no comma at {position}")
        position = _after_whitespace(text, position + 1)
