"""The middleware chain, written once as data: open the Exchange, render gateway errors, log the line."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.errors import GatewayError
from gateway.exchange import Exchange
from gateway.headers import BACKEND_HEADER, ROUTE_HEADER
from gateway.keys import EXCHANGE
from gateway.logs import log_exchange

log = logging.getLogger("comfy_gateway.errors")


def error_response(err: GatewayError, exchange: Exchange) -> web.Response:
    exchange.error = err.code
    headers = {}
    if err.backend:
        headers[BACKEND_HEADER] = err.backend
        exchange.backend = exchange.backend or err.backend
    if exchange.source:
        headers[ROUTE_HEADER] = exchange.source
    return web.json_response(err.body(), status=err.status, headers=headers)


def _body_size(response: web.StreamResponse) -> int:
    """Bytes sent for streamed answers; the body's size for answers aiohttp has yet to send."""
    if response.prepared:
        return response.body_length
    body = getattr(response, "body", None)
    return len(body) if isinstance(body, (bytes, bytearray)) else 0


@web.middleware
async def exchange_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request gets an Exchange; every gateway error becomes a JSON answer; nothing leaks a traceback."""
    exchange = Exchange(method=request.method, path=request.path, endpoint="other")
    request[EXCHANGE] = exchange
    try:
        response = await handler(request)
        exchange.status = response.status
        exchange.bytes_out = _body_size(response)
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
        log_exchange(exchange)


MIDDLEWARES = (exchange_middleware,)
