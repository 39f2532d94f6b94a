"""A /history answer with its output refs prefixed (rewrite.prefixed_history_text, as on the aiohttp path),
its entries otherwise passed on as the backend wrote them.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.outputs import refs as rewrite
from gateway.core.errors import UpstreamError
from gateway.datapath.fast import wire
from gateway.datapath.fast.upstream import Headers


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
            return status, wire.JSON_CONTENT_TYPE, rewrite.prefixed_history_text(body, backend)
        except ValueError as exc:
            raise UpstreamError(f"backend {backend!r} answered /history with invalid JSON: {exc}", backend=backend) from exc

    return rewrite_history
