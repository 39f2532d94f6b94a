"""The WebSocket byte-moving step: relay one client socket to one backend socket, both directions.

The backend socket is opened first, so a backend that is down or refuses the upgrade gives the client a plain
HTTP error instead of a socket that opens and dies. Both pumps run until either side ends; the other is then
cancelled, never left running, and the close code is passed on. A RelayMeter counts the sockets open, the
messages relayed or dropped, and which side ended the session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, MutableSet

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web
from multidict import CIMultiDict

from gateway.backends.table import Backend
from gateway.core.errors import UpstreamError, UpstreamRefused, UpstreamTimeout
from gateway.core.redact import shown_url
from gateway.observe.metrics import RelayMeter

log = logging.getLogger("comfy_gateway.websocket")

# The handshake headers aiohttp generates itself for the backend socket.
_HANDSHAKE_HEADERS = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol"}
)
# Binary frames from SaveImageWebsocket are full-resolution images: no message-size limit on either side.
_NO_SIZE_LIMIT = 0

TextRewrite = Callable[[str], str]


async def relay_websocket(
    request: web.Request,
    session: aiohttp.ClientSession,
    backend: Backend,
    target: str,
    headers: CIMultiDict[str],
    *,
    rewrite_downstream_text: TextRewrite,
    response_headers: Mapping[str, str],
    open_sockets: MutableSet[web.WebSocketResponse],
    meter: RelayMeter,
    heartbeat_seconds: float | None = None,
) -> web.WebSocketResponse:
    """Open the backend socket, upgrade the client, pump frames both ways until one side closes."""
    send_headers = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _HANDSHAKE_HEADERS)
    protocols = tuple(p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip())
    try:
        upstream = await session.ws_connect(
            backend.target(target),
            headers=send_headers,
            protocols=protocols,
            max_msg_size=_NO_SIZE_LIMIT,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
            autoping=True,
            heartbeat=heartbeat_seconds,
        )
    except aiohttp.WSServerHandshakeError as exc:
        raise UpstreamRefused(
            f"backend {backend.name!r} refused the WebSocket upgrade on {target} with {exc.status}",
            status=exc.status,
            backend=backend.name,
        ) from exc
    except TimeoutError as exc:
        raise UpstreamTimeout(
            f"backend {backend.name!r} did not accept the WebSocket in time", backend=backend.name
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        connect = isinstance(exc, (aiohttp.ClientConnectorError, ConnectionRefusedError))
        raise UpstreamError(
            f"backend {backend.name!r} at {shown_url(backend.url)} is unreachable for WebSocket: {exc}",
            backend=backend.name,
            kind="connect" if connect else "protocol",
        ) from exc

    client = web.WebSocketResponse(
        protocols=(upstream.protocol,) if upstream.protocol else (),
        max_msg_size=_NO_SIZE_LIMIT,
        autoping=True,
        heartbeat=heartbeat_seconds,
    )
    client.headers.update(response_headers)
    meter.upstream_sockets.inc()
    try:
        try:
            await client.prepare(request)
        except Exception:
            await upstream.close()
            raise
        open_sockets.add(client)
        meter.client_sockets.inc()
        try:
            await _pump_both(client, upstream, rewrite_downstream_text, backend.name, meter)
        finally:
            meter.client_sockets.dec()
            open_sockets.discard(client)
            if not upstream.closed:
                await upstream.close()
    finally:
        meter.upstream_sockets.dec()
    return client


async def _pump_both(
    client: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    rewrite_downstream_text: TextRewrite,
    backend_name: str,
    meter: RelayMeter,
) -> None:
    to_backend = asyncio.create_task(_client_to_backend(client, upstream, meter), name=f"ws->{backend_name}")
    to_client = asyncio.create_task(
        _backend_to_client(upstream, client, rewrite_downstream_text, meter), name=f"ws<-{backend_name}"
    )
    try:
        done, pending = await asyncio.wait({to_backend, to_client}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        to_backend.cancel()
        to_client.cancel()
        await asyncio.gather(to_backend, to_client, return_exceptions=True)
        raise
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.warning("ws relay with backend %s ended with %r", backend_name, task.exception())
    (meter.closed_by_backend if to_client in done else meter.closed_by_client).inc()
    # Pass the close on: whichever side ended first decides the code the other side sees.
    if to_client in done and not client.closed:
        code = upstream.close_code or WSCloseCode.GOING_AWAY
        await client.close(code=code, message=b"backend closed")
    if to_backend in done and not upstream.closed:
        await upstream.close(code=client.close_code or WSCloseCode.OK)


async def _client_to_backend(
    client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse, meter: RelayMeter
) -> None:
    relayed, dropped = meter.to_backend, meter.dropped_to_backend
    async for msg in client:
        try:
            if msg.type == WSMsgType.TEXT:
                await upstream.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await upstream.send_bytes(msg.data)
            elif msg.type == WSMsgType.ERROR:
                break
            else:
                continue
        except ConnectionResetError:  # the backend's socket is closing: this message cannot reach it
            dropped.inc()
            log.debug("ws message to the backend dropped: its socket is closing")
            return
        relayed.inc()


async def _backend_to_client(
    upstream: aiohttp.ClientWebSocketResponse, client: web.WebSocketResponse, rewrite: TextRewrite, meter: RelayMeter
) -> None:
    relayed, dropped = meter.to_client, meter.dropped_to_client
    async for msg in upstream:
        try:
            if msg.type == WSMsgType.TEXT:
                await client.send_str(rewrite(msg.data))
            elif msg.type == WSMsgType.BINARY:
                await client.send_bytes(msg.data)
            elif msg.type == WSMsgType.ERROR:
                break
            else:
                continue
        except ConnectionResetError:  # the client's socket is closing: this message cannot reach it
            dropped.inc()
            log.debug("ws message to the client dropped: its socket is closing")
            return
        relayed.inc()
