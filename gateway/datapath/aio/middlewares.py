"""The middleware chain, written once as data: open the Exchange, render gateway errors, then log the line and
observe the metrics, both from the finished Exchange."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.pipeline.classify import OTHER
from gateway.core.errors import GatewayError
from gateway.core.exchange import Exchange
from gateway.datapath.aio.forward import failure_kind
from gateway.core.headers import BACKEND_HEADER, ROUTE_HEADER
from gateway.datapath.aio.keys import EXCHANGE, METRICS
from gateway.observe.logs import log_exchange

log = logging.getLogger("comfy_gateway.errors")


def error_response(err: GatewayError, exchange: Exchange) -> web.Response:
    exchange.error = err.code
    headers = {}
    if err.backend:
        headers[BACKEND_HEADER] = err.backend
        exchange.backend = exchange.backend or err.backend
        kind = failure_kind(err)
        if kind is not None:
            exchange.upstream_errors += ((err.backend, kind),)
    if exchange.source:
        headers[ROUTE_HEADER] = exchange.source
    return web.json_response(err.body(), status=err.status, headers=headers)


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
    """Every request gets an Exchange; every gateway error becomes a JSON answer; nothing leaks a traceback."""
    exchange = Exchange(method=request.method, path=request.path, endpoint=route_template(request))
    request[EXCHANGE] = exchange
    try:
        response = await handler(request)
        exchange.status = response.status
        exchange.bytes_out = _body_size(response, exchange)
        return response
    except GatewayError as err:
        if err.status >= 500:
            log.warning("%s %s: %s", request.method, request.path, err.message)
        response = error_response(err, exchange)
        exchange.status = response.status
        return response
    except web.HTTPException as exc:
        exchange.status = exc.status
        raise
    except asyncio.CancelledError:
        exchange.status = 499  # the client went away first
        raise
    except Exception:
        log.exception("unexpected error on %s %s (backend %s)", request.method, request.path, exchange.backend)
        err = GatewayError("the gateway failed to handle this request; see its log", backend=exchange.backend)
        response = error_response(err, exchange)
        exchange.status = response.status
        return response
    finally:
        # Every byte of the body the client sent that reached us, read by the pipeline or streamed on.
        exchange.bytes_in = request.content.total_bytes
        finish_exchange(request.app, exchange)


def finish_exchange(app: web.Application, exchange: Exchange) -> None:
    """The end of every request, on either data path: the duration fixed, the metrics observed, the line logged."""
    exchange.finish()
    app[METRICS].observe_exchange(exchange)
    log_exchange(exchange)


MIDDLEWARES = (exchange_middleware,)
