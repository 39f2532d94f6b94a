"""The catch-all handler: every ComfyUI route, known or not, bare or under /api, reads top to bottom as

    classify → select → prepare → forward | relay | merge → rewrite → remember → respond

Decisions are made here from plain functions (comfy_api, plan, selection, affinity, rewrite), the same ones
the fast data path (gateway/fastpath) calls; bytes move only in forward.py and websocket.py.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web
from multidict import CIMultiDict

from gateway.outputs import refs as rewrite
from gateway.pipeline import plan
from gateway.backends.table import Backend
from gateway.pipeline.classify import Endpoint, Routing, classify
from gateway.core.errors import ForbiddenOrigin
from gateway.core.exchange import Exchange
from gateway.core.headers import (
    BACKEND_HEADER,
    PROMPT_ID_HEADER,
    ROUTE_HEADER,
    origin_allowed,
    upstream_request_headers,
)
from gateway.datapath.aio.keys import EXCHANGE, RUNTIME
from gateway.merge.answer import respond_merged
from gateway.pipeline.plan import base_selection, preference_selection
from gateway.pipeline.prompt_body import read_submission
from gateway.runtime import Runtime
from gateway.pipeline.select import Selection, Source
from gateway.datapath.aio.websocket import relay_websocket

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
    return plan.user_of(request.headers, rt)


def explicit_selection(request: web.Request, rt: Runtime) -> Selection | None:
    """Header or query choice for this request; an unknown name is an error, never a fallback."""
    return plan.explicit_selection(
        request.headers.get(rt.policy.backend_header), request.query.get(rt.policy.backend_query_param), rt
    )


# --- prepare ------------------------------------------------------------------------------------------------


def target_of(request: web.Request, rt: Runtime, *, query: str | None = None) -> str:
    """The raw path and query, minus the gateway's own `backend` parameter (plan.forward_target)."""
    return plan.forward_target(request.raw_path, rt.policy.backend_query_param, query=query)


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
    submission = read_submission(body)
    selection = explicit or await base_selection(rt, exchange.user)
    prompt_id, body = submission.prompt_id, submission.body
    exchange.prompt_id = prompt_id
    # Remember before forwarding: once the backend has the prompt, its WebSocket events can race our answer,
    # and nothing may sit between the backend's answer and ours (CLIENTS.md, first item).
    await rt.store.record_prompt(plan.prompt_record(submission, selection, exchange.user))
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
    else:  # the access line says it too (prompt_id=, backend=, route=); this one is for debugging
        log.debug("prompt %s recorded on backend %s (%s)", prompt_id, selection.backend, selection.source.value)
    return response


# --- prompt-scoped calls: affinity ---------------------------------------------------------------------------


async def history_of_prompt(
    request: web.Request, rt: Runtime, exchange: Exchange, endpoint: Endpoint, explicit: Selection | None
) -> web.StreamResponse:
    prompt_id = endpoint.prompt_id or ""
    exchange.prompt_id = prompt_id
    selection = await plan.history_selection(rt, prompt_id, explicit, exchange.user)
    return await fetch_rewritten_history(request, rt, exchange, selection)


async def prompt_scoped_call(
    request: web.Request, rt: Runtime, exchange: Exchange, endpoint: Endpoint, explicit: Selection | None
) -> web.StreamResponse:
    """POST /queue, /history, /interrupt: ids named in the body go to the backends that hold them."""
    body = await request.read()
    exchange.bytes_in = len(body)
    route = await plan.route_prompt_scoped(rt, endpoint.template, body, explicit, exchange.user)
    exchange.prompt_id = route.first_prompt_id
    if route.selection is not None:
        return await forward(request, rt, exchange, route.selection, body=body)
    assert isinstance(route.payload, dict)
    return await fan_out_prompt_call(request, rt, exchange, endpoint, route.payload, route.groups)


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
    body = rewrite.prefixed_history_text(reply.body, backend.name)
    return web.Response(body=body, headers={**headers, "Content-Type": "application/json; charset=utf-8"})


# --- /view: the subfolder names the backend ------------------------------------------------------------------


async def view(
    request: web.Request, rt: Runtime, exchange: Exchange, explicit: Selection | None
) -> web.StreamResponse:
    ref = plan.view_ref(request.query, rt)
    if ref.backend is None:
        return await forward(request, rt, exchange, explicit or await base_selection(rt, exchange.user))
    query = plan.view_query(list(request.query.items()), ref, rt.policy.backend_query_param)
    return await forward(
        request, rt, exchange, Selection(ref.backend, Source.AFFINITY), target=target_of(request, rt, query=query)
    )
