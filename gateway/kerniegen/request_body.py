"""Reading a JSON request body the way ComfyUI's handlers do (`await request.json()`): whatever the
Content-Type says, with the app-wide size cap (413) applied while reading."""

from __future__ import annotations

import json
from typing import Any, Final

from aiohttp import web

from gateway.kerniegen.responses import empty, server_error


class _NotJson:
    def __repr__(self) -> str:
        return "NOT_JSON"


NOT_JSON: Final = _NotJson()  # the body was empty, not text in its charset, or not JSON


async def read_json(request: web.Request) -> Any:
    """The parsed body, or NOT_JSON. Raises HTTPRequestEntityTooLarge past client_max_size."""
    try:
        text = await request.text()
        return json.loads(text)
    except (ValueError, LookupError):  # bad JSON, bad bytes for the charset, unknown charset
        return NOT_JSON


def answer_for_non_object(body: Any, keys: tuple[str, ...]) -> web.Response:
    """ComfyUI's `"clear" in body` on a body that is not an object: harmless for a list or string
    without the key (200), a raised TypeError (500) for anything else."""
    if body is NOT_JSON or not isinstance(body, (list, str)) or any(key in body for key in keys):
        return server_error()
    return empty()
