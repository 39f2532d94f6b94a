"""Handlers for finished prompts: GET /history (max_items, offset), GET /history/{prompt_id} and
POST /history (delete, clear), with ComfyUI's answers for odd input."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from gateway.kerniegen.request_body import answer_for_non_object, read_json
from gateway.kerniegen.responses import empty, server_error
from gateway.kerniegen.state import STATE

# Serialising many entries can take a while (each holds a whole prompt); past this, off the loop.
_ENCODE_IN_THREAD_ENTRIES = 200


async def get_history(request: web.Request) -> web.Response:
    try:
        max_items = _optional_int(request.query.get("max_items"))
        offset = _optional_int(request.query.get("offset"))
    except ValueError:
        return server_error()  # ComfyUI calls int() on the raw value and lets it raise
    page = request.app[STATE].history.page(max_items, offset)
    if len(page) < _ENCODE_IN_THREAD_ENTRIES:
        return web.json_response(page)
    text = await asyncio.to_thread(json.dumps, page)
    return web.Response(text=text, content_type="application/json")


async def get_history_entry(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].history.get(request.match_info["prompt_id"]))


async def post_history(request: web.Request) -> web.Response:
    history = request.app[STATE].history
    body = await read_json(request)
    if not isinstance(body, dict):
        return answer_for_non_object(body, ("clear", "delete"))
    if "clear" in body and body["clear"]:
        history.clear()
    if "delete" in body:
        try:
            for prompt_id in body["delete"]:
                history.delete(prompt_id)
        except TypeError:  # not iterable, or an id that cannot be a dict key
            return server_error()
    return empty()


def _optional_int(raw: str | None) -> int | None:
    return None if raw is None else int(raw)
