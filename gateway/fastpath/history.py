"""A /history answer with its output refs prefixed, its entries otherwise passed on as the backend wrote them.

rewrite.prefix_history decides what changes (it runs on parsed JSON, as on the aiohttp path), but only on each
entry's `outputs`: the body is read two levels deep (json_codec.history_entries), every entry as its members'
own text, and only `outputs` is read and written again. The prompt graph, the bulk of an entry, is never
built: 5.7 µs for the benchmark's 2 KB answer, where reading it whole (orjson) and splicing the changed refs
into the backend's bytes took 17 µs, and dumping it whole again more. A body that reader cannot vouch for
is read by json and written again whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from gateway import json_codec, rewrite
from gateway.errors import UpstreamError
from gateway.fastpath import wire
from gateway.fastpath.upstream import Headers


def history_rewriter(backend: str) -> Callable[[int, Headers, bytes], tuple[int, bytes, bytes]]:
    """proxy.fetch_rewritten_history on bytes: a JSON 200 gets its output refs prefixed; anything else is
    passed on with its Content-Type."""

    def rewrite_history(status: int, headers: Headers, body: bytes) -> tuple[int, bytes, bytes]:
        content_type = next((v for lower, _, v in headers if lower == b"content-type"), b"")
        if status != 200 or not content_type.startswith(b"application/json"):
            return status, content_type, body
        if b'"filename"' not in body and b"\\u" not in body:
            return status, wire.JSON_CONTENT_TYPE, body  # no output ref in it: nothing to rewrite, nothing to read
        try:
            return status, wire.JSON_CONTENT_TYPE, prefixed_history(body, backend)
        except ValueError as exc:
            raise UpstreamError(f"backend {backend!r} answered /history with invalid JSON: {exc}", backend=backend) from exc

    return rewrite_history


def prefixed_history(body: bytes, backend: str) -> bytes:
    """`body` with rewrite.prefix_history applied. Raises ValueError (json's own) when it is not JSON."""
    entries = json_codec.history_entries(body)
    if entries is None:  # not entries of members (or not JSON): json reads it, and it is written again whole
        return wire.json_body(rewrite.prefix_history(json.loads(body), backend))
    for members in entries.values():
        outputs = members.get("outputs")
        if outputs is not None:
            prefixed = rewrite.prefix_entry({"outputs": json_codec.loads_exact(outputs)}, backend)["outputs"]
            members["outputs"] = json_codec.raw(json_codec.dumps(prefixed))
    return json_codec.dumps_raw(entries)
