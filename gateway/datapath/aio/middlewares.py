"""The middleware chain, written once as data: open the Exchange, render errors (pipeline/outcome.py), then
finish the exchange (metrics and the access line); guard the gateway's own routes (pipeline/guard.py)."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.core.errors import Forbidden, GatewayError, Unauthorized
from gateway.core.exchange import Exchange
from gateway.datapath.aio.facts import AioRequest
from gateway.datapath.aio.keys import EXCHANGE, METRICS, RUNTIME
from gateway.observe.metrics import METRICS_PATH
from gateway.pipeline import guard, outcome
from gateway.pipeline.classify import OTHER
from gateway.pipeline.decision import Answer


def respond(answer: Answer) -> web.Response:
    """An Answer of the pipeline's, as aiohttp sends it."""
    return web.Response(
        status=answer.status, body=answer.body, headers={"Content-Type": answer.content_type, **answer.headers}
    )


def route_template(request: web.Request) -> str:
    """The gateway's own routes name themselves (`/gateway/preferences/{user}`); the proxy sets ComfyUI's."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else OTHER


def _body_size(response: web.StreamResponse, exchange: Exchange) -> int:
    """Body bytes: counted by whoever streamed an answer already sent (forward.py); the body's size for answers
    aiohttp has yet to send. Headers are not counted either way (aiohttp's body_length would count them)."""
    if response.prepared:
        return exchange.bytes_out
    body = getattr(response, "body", None)
    return len(body) if isinstance(body, (bytes, bytearray)) else 0


@web.middleware
async def exchange_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request gets an Exchange; every gateway error becomes its answer; nothing leaks a traceback."""
    exchange = Exchange(method=request.method, path=request.path, endpoint=route_template(request))
    request[EXCHANGE] = exchange
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
    except GatewayError as err:
        response = respond(outcome.error_answer(err, exchange))
    except web.HTTPException as exc:
        exchange.status = exc.status
        raise
    except asyncio.CancelledError:
        exchange.status = 499  # the client went away first
        raise
    except Exception as exc:
        response = respond(outcome.unexpected_answer(exc, exchange, request.method, request.path))
    finally:
        # Every byte of the body the client sent that reached us, read by the pipeline or streamed on.
        exchange.bytes_in = request.content.total_bytes
        if response is not None:
            exchange.status = response.status
            exchange.bytes_out = _body_size(response, exchange)
        rt = request.app.get(RUNTIME)
        outcome.finish_exchange(request.app[METRICS], exchange, rt.breakers if rt is not None else None)
    return response


# Probes and scrapers call these with whatever Host their platform uses (a pod's IP): no host or rate check.
_UNGUARDED = frozenset({"/gateway/health", "/gateway/ready", METRICS_PATH})
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


@web.middleware
async def gateway_api_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The gateway's own routes (/gateway/..., /metrics) pass the pipeline's guard rules (pipeline/guard.py):
    host, origin, caller, rate, and who may write or see owners. Every other path goes to the proxy, whose
    decide() runs the same guard."""
    path = request.path
    if not path.startswith("/gateway/") or path in _UNGUARDED:
        return await handler(request)
    rt = request.app[RUNTIME]
    facts = AioRequest(request)
    guard.check_target(facts)
    guard.check_host(facts, rt.access)
    guard.cross_origin(facts, rt.access)
    caller = guard.identify(facts, rt, token_required=False)
    request[EXCHANGE].user = caller.user
    guard.check_rate(rt, caller, submission=False)
    own_user = request.match_info.get("user") if path.startswith("/gateway/preferences/") else None
    why = guard.admin_refusal_reason(
        rt,
        facts,
        caller,
        write=request.method not in _READS,
        reveals_owners=guard.reveals_owners(path),
        own_user=own_user,
    )
    if why is not None:
        if rt.access.admin_token is not None and guard.presented_token(facts, rt.access)[0] is None:
            raise Unauthorized(why)
        raise Forbidden(why)
    return await handler(request)


MIDDLEWARES = (exchange_middleware, gateway_api_guard)
