"""The aiohttp data path's catch-all handler: every ComfyUI route, known or not, bare or under /api.

    classify → read the body if routing needs it → decide (gateway.pipeline) → carry the decision out

It decides nothing itself: a Forward is streamed (forward.py), read and rewritten (/history) or relayed as a
WebSocket (websocket.py, fanin.py); a Merge or FanOut is answered by pipeline/merged.py; an Answer is sent as it is.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from multidict import CIMultiDict

from gateway.backends.table import Backend
from gateway.core.errors import BodyTooLarge, UpstreamError
from gateway.core.exchange import Exchange
from gateway.core.headers import (
    BACKEND_HEADER,
    PROMPT_ID_HEADER,
    ROUTE_HEADER,
    client_response_headers,
    instance_value,
    upstream_request_headers,
)
from gateway.datapath.aio.facts import AioRequest
from gateway.datapath.aio.forward import Forwarder
from gateway.datapath.aio.keys import EXCHANGE, FORWARDER, OPEN_SOCKETS, RUNTIME, WEBSOCKETS
from gateway.datapath.aio.middlewares import respond
from gateway.datapath.aio.websocket import serve_websocket
from gateway.pipeline import outcome
from gateway.pipeline.classify import Endpoint, classify, needs_body
from gateway.pipeline.decide import decide, forward_target
from gateway.pipeline.decision import JSON_CONTENT_TYPE, FanOut, Forward, Merge
from gateway.pipeline.identifiers import header_text
from gateway.pipeline.merged import answer_fan_out, answer_merge
from gateway.runtime import Runtime


async def handle(request: web.Request) -> web.StreamResponse:
    rt = request.app[RUNTIME]
    exchange = request[EXCHANGE]
    endpoint = classify(request.method, request.path)
    exchange.endpoint = endpoint.template
    body = await _body_if_needed(request, endpoint)
    decision = await decide(rt, AioRequest(request), endpoint, exchange, body)
    if isinstance(decision, Forward):
        return await carry_out(request, rt, exchange, decision)
    if isinstance(decision, Merge):
        return respond(await answer_merge(rt, decision, exchange))
    if isinstance(decision, FanOut):
        return respond(await answer_fan_out(rt, decision, exchange, lambda b: headers_for(request, rt, b)))
    return respond(decision)


async def _body_if_needed(request: web.Request, endpoint: Endpoint) -> bytes | None:
    """The body, read whole where routing needs it; a body over max_body_bytes is refused before anything is
    decided, as the fast path's reader refuses it."""
    limit = request.app[FORWARDER].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"Maximum request body size {limit} exceeded.")
    if not needs_body(endpoint):
        return None
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"Maximum request body size {limit} exceeded.") from None


async def carry_out(request: web.Request, rt: Runtime, exchange: Exchange, forward: Forward) -> web.StreamResponse:
    prompt_id = forward.prompt_id
    if prompt_id is None:
        return await _send(request, rt, exchange, forward)
    status = 0
    try:
        try:
            response = await _send(request, rt, exchange, forward)
        except UpstreamError as err:
            if err.kind != "connect" or forward.fallback is None:  # "connect": nothing of the prompt was sent
                raise
            forward = await outcome.fail_over_refused(rt, forward, exchange, err.message)
            response = await _send(request, rt, exchange, forward)
        status = response.status
        return response
    finally:
        selection = forward.selection
        await outcome.settle_submission(rt, prompt_id, selection.backend, selection.source.value, status)


async def _send(request: web.Request, rt: Runtime, exchange: Exchange, forward: Forward) -> web.StreamResponse:
    backend = rt.backends[forward.selection.backend]
    forwarder = request.app[FORWARDER]
    target = (
        forward.target
        if forward.target is not None
        else forward_target(request.raw_path, rt.policy.gateway_query_params)
    )
    lines = {BACKEND_HEADER: backend.name, ROUTE_HEADER: forward.selection.source.value, **forward.headers}
    if forward.prompt_id is not None:
        lines[PROMPT_ID_HEADER] = header_text(forward.prompt_id)
    if forward.websocket:
        assert forward.client_id is not None  # decide() gives every /ws socket its clientId
        return await serve_websocket(
            request,
            forwarder.socket_session,
            backend,
            rt.backends,
            target,
            forward.client_id,
            lambda b: headers_for(request, rt, b),
            response_headers=lines,
            open_sockets=request.app[OPEN_SOCKETS],
            settings=request.app[WEBSOCKETS],
            followers=rt.followers,
            meter=rt.metrics.fan_in_meter(),
            max_message_bytes=forwarder.max_ws_message_bytes,
            also_follow=forward.also_follow,
        )
    if forward.rewrite_history:
        return await _rewritten_history(request, forwarder, backend, target, headers_for(request, rt, backend), lines)
    return await forwarder.stream(
        request,
        backend,
        target,
        headers_for(request, rt, backend),
        body=forward.body,
        extra_response_headers=lines,
        kind=forward.kind,
    )


async def _rewritten_history(
    request: web.Request,
    forwarder: Forwarder,
    backend: Backend,
    target: str,
    headers: CIMultiDict[str],
    lines: Mapping[str, str],
) -> web.StreamResponse:
    reply = await forwarder.fetch(backend, request.method, target, headers)
    passed = client_response_headers(reply.headers)
    body = outcome.history_body(
        reply.status,
        reply.headers.get("Content-Type", ""),
        reply.headers.get("Content-Encoding"),
        reply.body,
        backend.name,
    )
    if body is None:
        passed.update(lines)
        return web.Response(status=reply.status, reason=reply.reason or None, body=reply.body, headers=passed)
    passed.popall("Content-Type", None)
    passed.update(lines)
    passed["Content-Type"] = JSON_CONTENT_TYPE
    return web.Response(status=reply.status, body=body, headers=passed)


def headers_for(request: web.Request, rt: Runtime, backend: Backend) -> CIMultiDict[str]:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return upstream_request_headers(
        request.headers,
        backend_url=backend.url,
        client_ip=peer[0] if peer else None,
        scheme=request.scheme,
        drop=rt.policy.gateway_headers,
        instance=instance_value(rt.instance_id, backend.name) if rt.instance_id else None,
    )
