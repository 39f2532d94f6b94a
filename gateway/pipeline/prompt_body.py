"""What a POST /prompt body carries for the gateway: is it a JSON object, which prompt_id (the client's, or
one minted and spliced in), which client_id, and its nodes for the guardrails. Both data paths read it here.

json.loads builds the whole prompt graph as Python objects to answer these questions, the largest single
cost of a submission. Three cheaper readers answer instead, each only where it reads the body as json.loads
does, and each saying where it declines:

    typed     a body of ComfyUI's API format (prompt_nodes.Submitted): one msgspec pass gives the ids' text
              and every node's class_type and inputs, and the depth of the whole body from the few pieces
              it did not read below (most are too short to nest deeply)
    members   any other JSON object: json_codec.object_members reads its top-level members as text, after
              json_codec.check_depth has passed over the whole body
    json      what neither reads: json.loads decides, so every error is json's own

The one difference left is a body nested within a few levels of the recursion limit, which msgspec may read
and a json.loads backend refuses. The two ids are read from their members' text (json_codec.loads_exact).

A body nested deeper than max_depth (settings.limits.max_json_depth) is refused before a reader builds
anything from it, so that neither the gateway nor a backend meets it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.core import json_codec
from gateway.core.errors import BadPromptBody
from gateway.pipeline.prompt_nodes import PromptNode, Submitted, read_submitted


@dataclass(frozen=True, slots=True)
class Submission:
    prompt_id: str  # the client's, as ComfyUI reads it, or minted here
    body: bytes  # what the backend gets: the client's bytes, with a minted prompt_id spliced in
    client_id: str | None
    nodes: Mapping[str, PromptNode] | None = None  # the body's nodes when the typed reader read them, else unread


DEFAULT_MAX_DEPTH = 64  # settings.limits.max_json_depth's default
# The typed reader's fixed nesting: the body, its prompt, a node, the node's inputs.
_INPUTS_LEVEL = 4


def read_submission(body: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> Submission:
    """Raise BadPromptBody unless `body` is a JSON object nested at most `max_depth` deep; otherwise say what it
    submits."""
    try:
        typed = _read_typed(body, max_depth)
        if typed is not None:
            return typed
        json_codec.check_depth(body, max_depth)
    except json_codec.JsonTooDeep as exc:
        raise BadPromptBody(f"request body is {exc}", details="body") from None
    probed = _probe(body)
    if probed is None:
        payload = parse_json_object(body)
        prompt_id, sent = ensure_prompt_id(payload, body)
        client_id = payload.get("client_id")
        return Submission(prompt_id, sent, client_id if isinstance(client_id, str) else None)
    given, client_id = probed
    if given is not None:
        return Submission(given, body, client_id)
    minted = mint_prompt_id()
    return Submission(minted, splice_prompt_id(body, minted), client_id)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """POST /prompt arrives with no, octet-stream or form-urlencoded Content-Type: read it as JSON regardless."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadPromptBody(f"request body is not valid JSON: {exc}", details="body") from exc
    except RecursionError:
        raise BadPromptBody("request body is nested too deeply to read", details="body") from None
    if not isinstance(payload, dict):
        raise BadPromptBody(
            f"request body must be a JSON object with a 'prompt' key, got {type(payload).__name__}", details="body"
        )
    return payload


def ensure_prompt_id(payload: dict[str, Any], body: bytes) -> tuple[str, bytes]:
    """Use the client's prompt_id (ComfyUI takes it verbatim, as a string) or mint one and add it to the body.

    The body is spliced rather than re-serialised: the prompt's other bytes, 64-bit seeds included, reach the
    backend exactly as the client wrote them.
    """
    given = payload.get("prompt_id")
    if given is not None:
        return str(given), body
    minted = mint_prompt_id()
    if "prompt_id" in payload or not payload:
        payload = {**payload, "prompt_id": minted}
        return minted, json.dumps(payload).encode()
    return minted, splice_prompt_id(body, minted)


class _RandomBytes:
    """os.urandom read 4 KiB at a time: one getrandom call per 256 prompt ids instead of one per id."""

    def __init__(self) -> None:
        self._pool = b""
        self._position = 0
        # A forked child must not hand out the ids its parent will.
        os.register_at_fork(after_in_child=self.discard)

    def take16(self) -> bytearray:
        position = self._position
        if position + 16 > len(self._pool):
            self._pool, position = os.urandom(4096), 0
        self._position = position + 16
        return bytearray(self._pool[position : position + 16])

    def discard(self) -> None:
        self._pool, self._position = b"", 0


_random = _RandomBytes()


def mint_prompt_id() -> str:
    """A random (version 4) UUID, as str(uuid.uuid4()) writes it: ComfyUI mints its prompt ids so, and clients
    may parse them. From the same source as uuid4 (os.urandom), read in bulk, so that most ids cost no system
    call: cheaper than uuid4, which makes one per id."""
    raw = _random.take16()
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    digits = raw.hex()
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def splice_prompt_id(body: bytes, prompt_id: str) -> bytes:
    """`{"prompt_id": "<id>", ...the rest as sent}` for a non-empty object without one."""
    start = body.index(b"{") + 1
    return b"".join((body[:start], b'"prompt_id": "', prompt_id.encode(), b'", ', body[start:]))


def _read_typed(body: bytes, max_depth: int) -> Submission | None:
    """The submission, read by the typed reader; None where it declines (and the next reader decides). Raises
    JsonTooDeep for a body it read that nests deeper than `max_depth`."""
    if not json_codec.is_utf8(body):
        return None
    read = read_submitted(body)
    if read is None:
        return None
    _check_depths(read, max_depth)
    given = _string_member(read.prompt_id)
    client_id = _string_member(read.client_id)
    if given is None and len(read.prompt_id):
        return None  # null, a number or an object: the json reader decides (and writes the body again)
    if given is not None:
        return Submission(given, body, client_id, read.prompt)
    minted = mint_prompt_id()
    return Submission(minted, splice_prompt_id(body, minted), client_id, read.prompt)


def _check_depths(read: Submitted, max_depth: int) -> None:
    """JsonTooDeep unless every member and node value held as text nests within what is left of `max_depth`
    at its level: the body's depth is that of its deepest piece plus the levels above it. A text can nest no
    deeper than half its length, so most are passed by their length alone."""
    for member in (read.prompt_id, read.client_id, read.extra_data, read.front, read.number,
                   read.partial_execution_targets):
        _check_piece(member, max_depth - 1, max_depth)
    meta_left, inputs_left = max_depth - _INPUTS_LEVEL + 1, max_depth - _INPUTS_LEVEL
    meta_passed, inputs_passed = 2 * meta_left, 2 * inputs_left
    for node in read.prompt.values():
        meta = node.meta
        if len(meta) > meta_passed:
            _check_piece(meta, meta_left, max_depth)
        for value in node.inputs.values():
            if len(value) > inputs_passed:
                _check_piece(value, inputs_left, max_depth)


def _check_piece(text: json_codec.Raw, left: int, max_depth: int) -> None:
    if len(text) <= 2 * left:
        return
    try:
        json_codec.check_depth(bytes(text), left)
    except json_codec.JsonTooDeep:
        raise json_codec.JsonTooDeep(max_depth) from None


def _string_member(text: json_codec.Raw) -> str | None:
    """The string a member's text spells; None for an absent member or any other value."""
    if not len(text):
        return None
    value = json_codec.loads_exact(text)
    return value if isinstance(value, str) else None


def _probe(body: bytes) -> tuple[str | None, str | None] | None:
    """(prompt_id or None, client_id or None) when object_members may answer for json.loads; None when it may not."""
    members = json_codec.object_members(body)
    if not members:
        return None  # not read (json.loads decides), or {} (which gets a re-serialised body, as on that path)
    given = members.get("prompt_id")
    prompt_id = None if given is None else json_codec.loads_exact(given)
    if given is not None and not isinstance(prompt_id, str):
        return None  # null, a number or an object: json.loads's reading decides (and writes the body again)
    client = members.get("client_id")
    client_id = None if client is None else json_codec.loads_exact(client)
    return prompt_id, client_id if isinstance(client_id, str) else None
