"""The answers ComfyUI gives outside its JSON shapes: aiohttp's plain-text 500 page (what a ComfyUI
handler that raised produces) and empty-bodied status replies."""

from __future__ import annotations

from aiohttp import web

SERVER_ERROR_TEXT = "500 Internal Server Error\n\nServer got itself in trouble"


def server_error() -> web.Response:
    """Exactly what ComfyUI answers when its handler raises: text/plain 500, connection closed."""
    response = web.Response(status=500, text=SERVER_ERROR_TEXT)
    response.force_close()
    return response


def empty(status: int = 200) -> web.Response:
    """ComfyUI's `web.Response(status=...)`: no body, no Content-Type."""
    return web.Response(status=status)
