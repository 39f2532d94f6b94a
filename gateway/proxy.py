"""The catch-all handler: every ComfyUI route, known or not, bare or under /api, reads top to bottom as

    classify → select → prepare → forward | relay | merge → rewrite → remember → respond

Decisions are made here from plain functions (comfy_api, selection, affinity, rewrite); bytes move only in
forward.py and websocket.py.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from urllib.parse import urlencode

from aiohttp import web
from multidict import CIMultiDict

from gateway import rewrite
from gateway.affinity import locate_prompt, locate_prompts
from gateway.backends import Backend
from gateway.comfy_api import Endpoint, Routing, classify, prompt_ids_in_body
from gateway.errors import BadPromptBody, BadRequest, ForbiddenOrigin
from gateway.exchange import Exchange
from gateway.headers import (
    BACKEND_HEADER,
    PROMPT_ID_HEADER,
    ROUTE_HEADER,
    origin_allowed,
    upstream_request_headers,
)
from gateway.keys import EXCHANGE, RUNTIME
from gateway.merge import respond_merged
from gateway.runtime import Runtime
from gateway.selection import Selection, Source, select_backend
from gateway.store import PromptRecord
from gateway.websocket import relay_websocket

log = logging.getLogger("comfy_gateway.proxy")


async def handle(request: web.Request) -> web.StreamResponse:
    rt = request.app[RUNTIME]
    exchange = request[EXCHANGE]
    endpoint = classify(request.method, request.path)
    exchange.endpoint = endpoint.template
    if not origin_allowed(request.headers.get("Host"), request.headers.get("Origin")):
        raise ForbiddenOrigin(
            f"Origin {request.headers.get('Origin')!r} does not match Host {request.headers.get('Host')!r}"
        )
    exchange.user = user_of(request, rt)
    explicit = explicit_selection(request, rt)

    match endpoint.routing:
        case Routing.WEBSOCKET if request.headers.get("Upgrade", "").lower() == "websocket":
            return await relay(request, rt, exchange, explicit or await base_selection(rt, exchange.user))
        case Routing.SUBMIT:
            return await submit_prompt(request, rt, exchange, explicit)
        case Routing.HISTORY:
            return await history_of_prompt(request, rt, exchange, endpoint, explicit)
        case Routing.PROMPT_SCOPED:
            return await prompt_scoped_call(request, rt, exchange, endpoint, explicit)
        case Routing.MERGEABLE:
            selection = explicit or await preference_selection(rt, exchange.user)
            if selection is None:
                return await respond_merged(request, rt, exchange, endpoint.template, target_of(request, rt))
            if endpoint.template == "/history":
                return await fetch_rewritten_history(request, rt, exchange, selection)
            return await forward(request, rt, exchange, selection)
        case Routing.VIEW:
            return await view(request, rt, exchange, explicit)
        case _:
            return await forward(request, rt, exchange, explicit or await base_selection(rt, exchange.user))


# --- select -------------------------------------------------------------------------------------------------


def user_of(request: web.Request, rt: Runtime) -> str | None:
    for header in rt.policy.user_headers:
        value = request.headers.get(header)
        if value:
            return value
    return None


def explicit_selection(request: web.Request, rt: Runtime) -> Selection | None:
    """Header or query choice for this request; an unknown name is an error, never a fallback."""
    header = request.headers.get(rt.policy.backend_header)
    query = request.query.get(rt.policy.backend_query_param)
    if not header and not query:
        return None
    return select_backend(
        header=header,
        query=query,
        preference=None,
        default=rt.backends.default,
        backends=rt.backends,
        header_name=rt.policy.backend_header,
    )


async def preference_selection(rt: Runtime, user: str | None) -> Selection | None:
    if user is None:
        return None
    preference = await rt.store.get_preference(user)
    if preference is None:
        return None
    return select_backend(
        header=None, query=None, preference=preference, default=rt.backends.default, backends=rt.backends, user=user
    )


async def base_selection(rt: Runtime, user: str | None) -> Selection:
    """Preference, else the default (the caller has already tried header and query)."""
    return await preference_selection(rt, user) or Selection(rt.backends.default, Source.DEFAULT)


# --- prepare ------------------------------------------------------------------------------------------------


def target_of(request: web.Request, rt: Runtime, *, query: str | None = None) -> str:
    """The raw path (still percent-encoded, so `%2F` inside a segment survives) plus the query, minus our own
    `backend` parameter, which is for the gateway and not the backend."""
    raw = request.raw_path
    path, sep, raw_query = raw.partition("?")
    if query is not None:
        return f"{path}?{query}" if query else path
    if not sep:
        return path
    param = rt.policy.backend_query_param
    if param + "=" not in raw_query and raw_query != param:
        return raw
    kept = [p for p in raw_query.split("&") if p.split("=", 1)[0] != param]
    return f"{path}?{'&'.join(kept)}" if kept else path


def headers_for(request: web.Request, rt: Runtime, backend: Backend) -> CIMultiDict[str]:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return upstream_request_headers(
        request.headers,
        backend_url=backend.url,
        client_ip=peer[0] if peer else None,
        scheme=request.scheme,
        drop=(rt.policy.backend_header,),
    )


def routing_headers(exchange: Exchange, selection: Selection) -> dict[str, str]:
    exchange.backend = selection.backend
    exchange.source = selection.source.value
    return {BACKEND_HEADER: selection.backend, ROUTE_HEADER: selection.source.value}


# --- forward | relay ----------------------------------------------------------------------------------------


async def forward(
    request: web.Request,
    rt: Runtime,
    exchange: Exchange,
    selection: Selection,
    *,
    body: bytes | None = None,
    target: str | None = None,
    extra_headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    backend = rt.backends[selection.backend]
    response_headers = routing_headers(exchange, selection) | (extra_headers or {})
    return await rt.forwarder.stream(
        request,
        backend,
        target if target is not None else target_of(request, rt),
        headers_for(request, rt, backend),
        body=body,
        extra_response_headers=response_headers,
    )


async def relay(request: web.Request, rt: Runtime, exchange: Exchange, selection: Selection) -> web.StreamResponse:
    backend = rt.backends[selection.backend]
    name = backend.name
    return await relay_websocket(
        request,
        rt.forwarder.session,
        backend,
        target_of(request, rt),
        headers_for(request, rt, backend),
        rewrite_downstream_text=lambda text: rewrite.rewrite_ws_text(text, name),
        response_headers=routing_headers(exchange, selection),
        open_sockets=rt.open_sockets,
        meter=rt.metrics.relay_meter(name),
    )


# --- POST /prompt: mint, remember, forward, forget on rejection ---------------------------------------------


async def submit_prompt(
    request: web.Request, rt: Runtime, exchange: Exchange, explicit: Selection | None
) -> web.StreamResponse:
    body = await request.read()
    exchange.bytes_in = len(body)
    payload = parse_json_object(body)
    selection = explicit or await base_selection(rt, exchange.user)
    prompt_id, body = ensure_prompt_id(payload, body)
    exchange.prompt_id = prompt_id
    client_id = payload.get("client_id")
    # Remember before forwarding: once the backend has the prompt, its WebSocket events can race our answer,
    # and nothing may sit between the backend's answer and ours (CLIENTS.md, first item).
    await rt.store.record_prompt(
        PromptRecord(
            prompt_id=prompt_id,
            backend=selection.backend,
            user=exchange.user,
            client_id=client_id if isinstance(client_id, str) else None,
            submitted_at=time.time(),
        )
    )
    try:
        response = await forward(
            request, rt, exchange, selection, body=body, extra_headers={PROMPT_ID_HEADER: prompt_id}
        )
    except BaseException:
        await rt.store.forget_prompt(prompt_id)
        raise
    if response.status != 200:
        await rt.store.forget_prompt(prompt_id)
        log.info("prompt %s rejected by backend %s (%d); affinity forgotten", prompt_id, selection.backend, response.status)
    else:
        log.info("prompt %s recorded on backend %s (%s)", prompt_id, selection.backend, selection.source.value)
    return response


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
    minted = str(uuid.uuid4())
    if "prompt_id" in payload or not payload:
        payload = {**payload, "prompt_id": minted}
        return minted, json.dumps(payload).encode()
    start = body.index(b"{")
    return minted, body[: start + 1] + b'"prompt_id": "' + minted.encode() + b'", ' + body[start + 1 :]


# --- prompt-scoped calls: affinity ---------------------------------------------------------------------------


async def history_of_prompt(
    request: web.Request, rt: Runtime, exchange: Exchange, endpoint: Endpoint, explicit: Selection | None
) -> web.StreamResponse:
    prompt_id = endpoint.prompt_id or ""
    exchange.prompt_id = prompt_id
    holder = await locate_prompt(rt, prompt_id)
    if holder is not None:
        selection = Selection(holder, Source.AFFINITY)
    else:
        selection = explicit or await base_selection(rt, exchange.user)
    return await fetch_rewritten_history(request, rt, exchange, selection)


async def prompt_scoped_call(
    request: web.Request, rt: Runtime, exchange: Exchange, endpoint: Endpoint, explicit: Selection | None
) -> web.StreamResponse:
    """POST /queue, /history, /interrupt: ids named in the body go to the backends that hold them."""
    body = await request.read()
    exchange.bytes_in = len(body)
    try:
        payload = json.loads(body) if body.strip() else None
    except (UnicodeDecodeError, ValueError):
        payload = None  # not ours to judge: the backend answers malformed bodies in its own way
    ids = prompt_ids_in_body(endpoint.template, payload)
    if not ids:
        return await forward(request, rt, exchange, explicit or await base_selection(rt, exchange.user), body=body)
    exchange.prompt_id = ids[0]
    groups, unknown = await locate_prompts(rt, ids)
    fallback = explicit or await base_selection(rt, exchange.user)
    if unknown:
        groups.setdefault(fallback.backend, []).extend(unknown)
    if len(groups) == 1:
        (backend,) = groups
        source = Source.AFFINITY if not unknown or backend != fallback.backend else fallback.source
        return await forward(request, rt, exchange, Selection(backend, source), body=body)
    return await fan_out_prompt_call(request, rt, exchange, endpoint, payload, groups)


async def fan_out_prompt_call(
    request: web.Request,
    rt: Runtime,
    exchange: Exchange,
    endpoint: Endpoint,
    payload: dict,
    groups: dict[str, list[str]],
) -> web.StreamResponse:
    """A delete naming prompts on several backends: each backend gets the part it holds."""
    key = "prompt_id" if endpoint.template == "/interrupt" else "delete"
    statuses: list[int] = []
    for name, ids in groups.items():
        part = {**payload, key: ids[0] if key == "prompt_id" else ids}
        backend = rt.backends[name]
        reply = await rt.forwarder.fetch(
            backend, request.method, target_of(request, rt), headers_for(request, rt, backend), body=json.dumps(part).encode()
        )
        statuses.append(reply.status)
    exchange.backend = ",".join(groups)
    exchange.source = Source.AFFINITY.value
    status = max(statuses)
    return web.Response(
        status=status, headers={BACKEND_HEADER: exchange.backend, ROUTE_HEADER: Source.AFFINITY.value}
    )


# --- rewrite: output refs in history -------------------------------------------------------------------------


async def fetch_rewritten_history(
    request: web.Request, rt: Runtime, exchange: Exchange, selection: Selection
) -> web.StreamResponse:
    backend = rt.backends[selection.backend]
    reply = await rt.forwarder.fetch(
        backend, "GET", target_of(request, rt), headers_for(request, rt, backend)
    )
    headers = routing_headers(exchange, selection)
    content_type = reply.headers.get("Content-Type", "")
    if reply.status != 200 or not content_type.startswith("application/json"):
        return web.Response(status=reply.status, body=reply.body, headers={**headers, "Content-Type": content_type})
    body = rewrite.prefix_history(json.loads(reply.body), backend.name)
    return web.json_response(body, headers=headers)


# --- /view: the subfolder names the backend ------------------------------------------------------------------


async def view(
    request: web.Request, rt: Runtime, exchange: Exchange, explicit: Selection | None
) -> web.StreamResponse:
    try:
        ref = rewrite.parse_view_ref(request.query.get("filename", ""), request.query.get("subfolder", ""), rt.backends)
    except ValueError as exc:
        raise BadRequest(f"invalid /view reference: {exc}", details="subfolder") from exc
    if ref.backend is None:
        return await forward(request, rt, exchange, explicit or await base_selection(rt, exchange.user))
    query = [
        (k, ref.subfolder if k == "subfolder" else v)
        for k, v in request.query.items()
        if k != rt.policy.backend_query_param
    ]
    return await forward(
        request,
        rt,
        exchange,
        Selection(ref.backend, Source.AFFINITY),
        target=target_of(request, rt, query=urlencode(query)),
    )
