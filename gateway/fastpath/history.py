"""A /history answer with its output refs prefixed, changed in place in the backend's own bytes.

rewrite.prefix_history decides what changes (it runs on the parsed body, as on the aiohttp path); only the
serialisation differs: instead of dumping the whole body again (17 µs for 2 KB, most of the cost), each
changed ref is replaced where it stands in the original bytes. That is exact only if every changed ref
appears in the bytes exactly as json.dumps writes it, and nowhere else; both are checked by counting, and
any doubt falls back to dumping the whole body.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from gateway import rewrite
from gateway.errors import UpstreamError
from gateway.fastpath import wire
from gateway.fastpath.upstream import Headers

_string = encode_basestring_ascii  # C; raises TypeError on anything but str

# A ref is replaced by its new serialisation: (old bytes, new bytes) -> how many refs changed this way.
Changes = dict[tuple[bytes, bytes], int]


def history_rewriter(backend: str) -> Callable[[int, Headers, bytes], tuple[int, bytes, bytes]]:
    """proxy.fetch_rewritten_history on bytes: a JSON 200 gets its output refs prefixed; anything else is
    passed on with its Content-Type."""

    def rewrite_history(status: int, headers: Headers, body: bytes) -> tuple[int, bytes, bytes]:
        content_type = next((v for n, v in headers if n.lower() == b"content-type"), b"")
        if status != 200 or not content_type.startswith(b"application/json"):
            return status, content_type, body
        if b'"filename"' not in body:
            return status, wire.JSON_CONTENT_TYPE, body  # no output ref in it: nothing to rewrite, nothing to parse
        try:
            parsed = json.loads(body)
        except ValueError as exc:
            raise UpstreamError(f"backend {backend!r} answered /history with invalid JSON: {exc}", backend=backend) from exc
        return status, wire.JSON_CONTENT_TYPE, prefixed_history(body, parsed, backend)

    return rewrite_history


def prefixed_history(body: bytes, parsed: Any, backend: str) -> bytes:
    """`body` with rewrite.prefix_history applied; `parsed` is json.loads(body) and is changed in place."""
    candidates = [(ref, _dumps(ref)) for ref in _ref_candidates(parsed)]
    rewrite.prefix_history(parsed, backend)
    changes: Changes = {}
    for ref, before in candidates:
        after = _dumps(ref)
        if after != before:
            key = (before.encode(), after.encode())
            changes[key] = changes.get(key, 0) + 1
    if not all(body.count(old) == count for (old, _), count in changes.items()):
        return wire.json_body(parsed)  # written some other way, or also found elsewhere: dump it all
    if len(changes) > 1 and any(old in new for old, _ in changes for _, new in changes):
        return wire.json_body(parsed)  # one replacement would make another's text: not worth sorting out
    for old, new in changes:
        body = body.replace(old, new)
    return body


def _dumps(ref: dict[str, Any]) -> str:
    """json.dumps(ref) for the usual flat ref of strings, at a fifth of its cost (no encoder built per call)."""
    try:
        return "{" + ", ".join(f"{_string(key)}: {_string(value)}" for key, value in ref.items()) + "}"
    except TypeError:  # a value that is not a string: let json write it
        return json.dumps(ref)


def _ref_candidates(body: Any) -> list[dict[str, Any]]:
    """Every dict in a list under a node's output: a superset of what prefix_history may change (it decides)."""
    found: list[dict[str, Any]] = []
    if not isinstance(body, dict):
        return found
    for entry in body.values():
        outputs = entry.get("outputs") if isinstance(entry, dict) else None
        if not isinstance(outputs, dict):
            continue
        for node_output in outputs.values():
            if not isinstance(node_output, dict):
                continue
            for items in node_output.values():
                if isinstance(items, list):
                    found += (item for item in items if isinstance(item, dict))
    return found
