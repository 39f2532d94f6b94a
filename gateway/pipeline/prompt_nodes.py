"""The nodes of a POST /prompt body as the guardrails read them, and new values spliced into the body.

`read_nodes` reads, in one msgspec pass, each node's class_type and its inputs as their own JSON text (a view of
the body), building nothing below them: a 20 KB prompt costs a small fraction of json.loads. It answers None
for a body it cannot read so (not an object, no `prompt` object, a node with no string class_type, NaN, ...):
the backend then judges the body, as it would with no gateway.

`value_spans` finds where chosen inputs' values sit in the body's bytes, and `splice` writes new values there:
every other byte reaches the backend as the client wrote it (64-bit seeds, spacing, key order). A repeated
key counts as json.loads counts it: its last value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping

import msgspec

Raw = msgspec.Raw


class PromptNode(msgspec.Struct, gc=False):
    class_type: str
    inputs: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict)


class _Body(msgspec.Struct, gc=False):
    prompt: dict[str, PromptNode]


_BODY = msgspec.json.Decoder(_Body)
_NOTHING = msgspec.Raw(b"")  # a member the body does not have


class SubmittedNode(PromptNode, forbid_unknown_fields=True):
    """A node with no member but those of ComfyUI's API format: nothing of it is passed over unread."""

    meta: msgspec.Raw = msgspec.field(default=_NOTHING, name="_meta")


class Submitted(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A POST /prompt body with no member but those ComfyUI reads, each held as its own text (empty when
    absent) but the prompt, read as nodes: every byte of the body is in a member held or a node read."""

    prompt: dict[str, SubmittedNode]
    prompt_id: msgspec.Raw = _NOTHING
    client_id: msgspec.Raw = _NOTHING
    extra_data: msgspec.Raw = _NOTHING
    front: msgspec.Raw = _NOTHING
    number: msgspec.Raw = _NOTHING
    partial_execution_targets: msgspec.Raw = _NOTHING


_SUBMITTED = msgspec.json.Decoder(Submitted)
_NOT_READ = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def read_nodes(body: bytes) -> dict[str, PromptNode] | None:
    """node id → its class_type and raw inputs; None when the body is not read so (the backend judges it)."""
    try:
        return _BODY.decode(body).prompt
    except _NOT_READ:
        return None


def read_submitted(body: bytes) -> Submitted | None:
    """The body as Submitted, in one pass; None when it is not one (another member, a node of another shape, not
    JSON msgspec reads: the caller reads it another way). The members are not read below their text, and a
    body's bytes outside the strings msgspec decodes are not checked to be UTF-8: the caller checks."""
    try:
        return _SUBMITTED.decode(body)
    except _NOT_READ:
        return None


# --- where values are, and new ones in their place -------------------------------------------------------------

_MEMBERS = msgspec.json.Decoder(dict[str, msgspec.Raw])
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]

Span = tuple[int, int]  # [start, end) in the body's bytes


class NotWalked(ValueError):
    """The body is not JSON of the expected shape where the search went."""


def value_spans(body: bytes, wanted: Mapping[str, Iterable[str]]) -> dict[tuple[str, str], Span]:
    """(node id, input name) → where that input's value is in `body`, for the inputs `wanted` names (node id →
    input names) that the body has. Raises NotWalked for a body that is not a JSON object of prompt nodes.

    Each wanted node is found as its own text, which msgspec reads as a view of the body: when that text is
    in the prompt's text once, that is where the node is, found by a search in C, every other node passed
    over unread. Only a node written twice alike (or a repeated key) needs the walk through every member."""
    try:
        return _found(body, wanted)
    except (NotWalked, *_NOT_READ, ValueError, IndexError):
        pass
    try:
        text = body.decode("utf-8")
        spans = _walked(text, wanted)
    except (ValueError, IndexError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise NotWalked(str(exc)) from None
    if body.isascii():
        return spans
    return {key: (_byte_offset(text, start), _byte_offset(text, end)) for key, (start, end) in spans.items()}


def splice(body: bytes, values: Mapping[Span, bytes]) -> bytes:
    """`body` with each span's bytes replaced by its new JSON text; the spans do not overlap."""
    parts: list[bytes] = []
    position = 0
    for (start, end), value in sorted(values.items()):
        parts += (body[position:start], value)
        position = end
    parts.append(body[position:])
    return b"".join(parts)


def _found(body: bytes, wanted: Mapping[str, Iterable[str]]) -> dict[tuple[str, str], Span]:
    prompt = _MEMBERS.decode(body).get("prompt")
    if prompt is None:
        raise NotWalked("no prompt")
    prompt_at = _once(body, prompt, 0, len(body))
    nodes = _MEMBERS.decode(prompt)
    spans: dict[tuple[str, str], Span] = {}
    for node_id, names in wanted.items():
        node = nodes.get(node_id)
        if node is None:
            continue
        node_at = _once(body, node, prompt_at, prompt_at + len(prompt))
        inputs = _MEMBERS.decode(node).get("inputs")
        if inputs is None:
            continue
        inputs_at = _once(body, inputs, node_at, node_at + len(node))
        values = _MEMBERS.decode(inputs)
        for name in names:
            value = values.get(name)
            if value is not None:
                at = _value_at(body, name, value, inputs_at, inputs_at + len(inputs))
                spans[(node_id, name)] = (at, at + len(value))
    return spans


_PREFIX_BYTES = 64
_MAX_CANDIDATES = 16


def _once(body: bytes, part: Raw, start: int, end: int) -> int:
    """Where `part`'s text is in body[start:end], when it is there exactly once. Searched by its first bytes,
    then compared whole: finding a long text by itself costs a pass over it before the search begins."""
    view = memoryview(part)  # msgspec.Raw is a buffer
    prefix = view[:_PREFIX_BYTES]
    at = body.find(prefix, start, end)
    for _ in range(_MAX_CANDIDATES):
        if at < 0:
            break
        if body.startswith(view, at):
            # A JSON value's text cannot overlap another copy of itself: a second copy starts after the first
            # ends, if there is room for one.
            after = at + len(view)
            if end - after >= len(view) and body.find(view, after, end) >= 0:
                break
            return at
        at = body.find(prefix, at + 1, end)
    raise NotWalked("not found once")


def _value_at(body: bytes, name: str, value: Raw, start: int, end: int) -> int:
    """Where the value of the member `name` of the inputs object at body[start:end] begins. `"name":` can only
    be a key in JSON text (inside a string its quotes would be escaped); when it is there once, this is it."""
    key = re.compile(re.escape(json.dumps(name).encode()) + rb"[ \t\n\r]*:[ \t\n\r]*")
    found = [match.end() for match in key.finditer(body, start, end)]
    if len(found) != 1 or not body.startswith(memoryview(value), found[0]):
        raise NotWalked("input not found once")
    return found[0]


def _byte_offset(text: str, position: int) -> int:
    return position if text.isascii() else len(text[:position].encode("utf-8"))


def _walked(text: str, wanted: Mapping[str, Iterable[str]]) -> dict[tuple[str, str], Span]:
    """value_spans by a walk through every member on the way, json's C scanner reading keys and values."""
    names = {node: frozenset(inputs) for node, inputs in wanted.items()}
    spans: dict[tuple[str, str], Span] = {}

    def in_node(node_id: str) -> Callable[[str, int], int]:
        def member(key: str, start: int) -> int:
            if key != "inputs" or text[start] != "{":
                return _skip(text, start)
            _forget(spans, node_id)  # a repeated "inputs": the last one counts
            found: dict[tuple[str, str], Span] = {}

            def input_member(name: str, value_start: int) -> int:
                end = _skip(text, value_start)
                if name in names[node_id]:
                    found[(node_id, name)] = (value_start, end)
                return end

            end = _walk_object(text, start, input_member)
            spans.update(found)
            return end

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

    _walk_object(text, _after_whitespace(text, 0), at_top)
    return spans


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
