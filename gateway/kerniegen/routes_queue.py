"""Handlers for submitting and steering work: POST/GET /prompt, GET/POST /queue, POST /interrupt
and POST /free, answering with ComfyUI's status codes and shapes."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.kerniegen.prompt_queue import QueueFull
from gateway.kerniegen.request_body import NOT_JSON, answer_for_non_object, read_json
from gateway.kerniegen.responses import empty, server_error
from gateway.kerniegen.state import STATE, KernieGenState
from gateway.kerniegen.submission import Accepted, decide
from gateway.kerniegen.validation import ValidationResult, validate_prompt


async def get_prompt(request: web.Request) -> web.Response:
    queue = request.app[STATE].queue
    return web.json_response({"exec_info": {"queue_remaining": queue.remaining()}})


async def post_prompt(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await read_json(request)
    if body is NOT_JSON:
        return server_error()
    decision = decide(body, state.queue, lambda prompt, targets: _validate(state, prompt, targets))
    if not isinstance(decision, Accepted):
        return server_error() if decision.body is None else web.json_response(decision.body, status=decision.status)
    try:
        state.queue.put(decision.item)
    except QueueFull as full:
        error = {"type": "queue_full", "message": "KernieGen's queue is full", "details": str(full), "extra_info": {}}
        return web.json_response({"error": error, "node_errors": {}}, status=503)
    return web.json_response(decision.body())


def _validate(state: KernieGenState, prompt: Any, targets: Any) -> ValidationResult:
    dirs = state.dirs
    return validate_prompt(prompt, state.config.inventory, dirs.input, targets,
                           output_dir=dirs.output, temp_dir=dirs.temp)


async def get_queue(request: web.Request) -> web.Response:
    queue = request.app[STATE].queue
    running = [] if queue.running is None else [queue.running.as_list()]
    return web.json_response(
        {"queue_running": running, "queue_pending": [item.as_list() for item in queue.pending_items()]}
    )


async def post_queue(request: web.Request) -> web.Response:
    queue = request.app[STATE].queue
    body = await read_json(request)
    if not isinstance(body, dict):
        return answer_for_non_object(body, ("clear", "delete"))
    if "clear" in body and body["clear"]:
        queue.clear()
    if "delete" in body:
        try:
            for prompt_id in body["delete"]:  # ComfyUI iterates whatever it got: a string by characters
                queue.delete(prompt_id)
        except TypeError:
            return server_error()
    return empty()


async def post_interrupt(request: web.Request) -> web.Response:
    body = await read_json(request)
    if body is NOT_JSON:
        body = {}  # an empty body (no Content-Type at all) is a global interrupt
    if not isinstance(body, dict):
        return server_error()
    request.app[STATE].worker.interrupt(body.get("prompt_id"))
    return empty()


async def post_free(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        return server_error()
    request.app[STATE].worker.request_free(bool(body.get("free_memory", False)))
    return empty()

