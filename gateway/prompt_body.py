"""What a POST /prompt body carries for the gateway: is it a JSON object, which prompt_id (the client's, or
one minted and spliced in), which client_id. Both data paths read it here.

json.loads builds the whole prompt graph as Python objects to answer three questions: 110 µs for a 20 KB
prompt, the largest single cost of a submission. SQLite's JSON functions (C, in the standard library's
sqlite3) list the body's top-level members without building the rest, in ~22 µs. They answer only where
they provably agree with json.loads; every other body, and every body they refuse, is read by json.loads,
which then decides (so every error is json's own):

  - UTF-8 without a byte-order mark or any control byte but tab, LF and CR (SQLite stops at NUL and takes
    \v and \f for space);
  - fewer than 900 brackets (json.loads recurses, and fails past ~1000 levels where SQLite does not);
  - strict RFC 8259 validity (json_each before SQLite 3.42, json_valid after, when json_each takes JSON5);
  - a non-empty object whose prompt_id, if any, is a string. Keys come back decoded and repeated ones in
    order, so the last wins, as in json.loads.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sqlite3
from dataclasses import dataclass

from gateway.errors import BadPromptBody

_CONTROL = bytes(c for c in range(32) if c not in b"\t\n\r")
_NOT_TELLING = bytes(c for c in range(256) if c not in _CONTROL + b"{[")  # what translate drops to leave those
_EMPTY_OBJECT = re.compile(rb"\s*\{\s*\}\s*")
_MAX_BRACKETS = 900
# Past this SQLite is the slower reader (a 4.8 MB script in extra_data: 17.6 ms against json.loads' 14.6 ms).
_PROBE_MAX_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Submission:
    prompt_id: str  # the client's, as ComfyUI reads it, or minted here
    body: bytes  # what the backend gets: the client's bytes, with a minted prompt_id spliced in
    client_id: str | None


def read_submission(body: bytes) -> Submission:
    """Raise BadPromptBody unless `body` is a JSON object; otherwise say what it submits."""
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


def parse_json_object(body: bytes) -> dict:
    """POST /prompt arrives with no, octet-stream or form-urlencoded Content-Type: read it as JSON regardless."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadPromptBody(f"request body is not valid JSON: {exc}", details="body") from exc
    if not isinstance(payload, dict):
        raise BadPromptBody(
            f"request body must be a JSON object with a 'prompt' key, got {type(payload).__name__}", details="body"
        )
    return payload


def ensure_prompt_id(payload: dict, body: bytes) -> tuple[str, bytes]:
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
    may parse them. From the same source as uuid4 (os.urandom), read in bulk: ~1.3 µs instead of ~4.8."""
    raw = _random.take16()
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    digits = raw.hex()
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def splice_prompt_id(body: bytes, prompt_id: str) -> bytes:
    """`{"prompt_id": "<id>", ...the rest as sent}` for a non-empty object without one."""
    start = body.index(b"{") + 1
    return b"".join((body[:start], b'"prompt_id": "', prompt_id.encode(), b'", ', body[start:]))


def _probe(body: bytes) -> tuple[str | None, str | None] | None:
    """(prompt_id or None, client_id or None) when SQLite may answer for json.loads; None when it may not."""
    if len(body) > _PROBE_MAX_BYTES:
        return None
    telling = body.translate(None, _NOT_TELLING)  # control bytes and brackets only: short for any prompt
    if len(telling) >= _MAX_BRACKETS or telling.translate(None, b"{[") or body.startswith(b"\xef\xbb\xbf"):
        return None  # deep enough to make json.loads recurse too far, or bytes SQLite reads differently
    reader = _reader()
    if reader is None:
        return None
    db, query = reader
    try:
        rows = db.execute(query, {"b": body.decode("utf-8")}).fetchall()
    except (UnicodeDecodeError, sqlite3.Error):
        return None
    if not rows or not isinstance(rows[0][0], str) or rows[0][3] != 1:
        return None  # not an object (or an empty one: {} gets a re-serialised body, as on the json.loads path)
    prompt_id = client_id = id_kind = None
    for key, kind, atom, _ in rows:  # keys decoded, in order, repeats included: the last one wins, as in json
        if key == "prompt_id":
            id_kind, prompt_id = kind, atom
        elif key == "client_id":
            client_id = atom if kind == "text" else None
    if id_kind not in (None, "text"):
        return None  # str() of a number or an object: json.loads's reading decides
    return prompt_id, client_id


@functools.cache
def _reader() -> tuple[sqlite3.Connection, str] | None:
    """One in-memory connection for the process (made on first use, used from the event loop's thread) and the
    query that lists the top-level members of a body: json_each, plus json_valid when this SQLite's JSON
    functions also take JSON5 (3.42+: json_valid alone stays strict). None without SQLite's JSON functions."""
    db = sqlite3.connect(":memory:", check_same_thread=False)
    try:
        db.execute("SELECT key FROM json_each('[]')").fetchall()
    except sqlite3.Error:
        return None
    try:
        db.execute("SELECT key FROM json_each('{a: 1}')").fetchall()
    except sqlite3.Error:  # strict parsing everywhere: json_each alone decides validity
        return db, "SELECT key, type, atom, 1 FROM json_each(:b)"
    return db, "SELECT key, type, atom, json_valid(:b) FROM json_each(:b)"
