"""The WebSocket byte-moving step: relay one client socket to one backend socket, both directions.

The backend socket is opened first, so a backend that is down or refuses the upgrade gives the client a plain
HTTP error instead of a socket that opens and dies. Both pumps run until either side ends; the other is then
cancelled, never left running, and the close code is passed on. A RelayMeter counts the sockets open, the
messages relayed or dropped, and which side ended the session.

A client's message past max_message_bytes closes its socket with 1009, a frame it may not send with 1002, and
the backend's socket gets the same code: aiohttp's reader checks every rule of RFC 6455 §5 but masking, which
_MaskedFramesOnly adds. Messages from the backend have no size limit (full-size images).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, MutableSet
from typing import Any

import aiohttp
from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web
from aiohttp.http import WebSocketWriter
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
# Binary frames from SaveImageWebsocket are full-resolution images: no message-size limit from the backend.
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
    max_message_bytes: int,
) -> web.WebSocketResponse:
    """Open the backend socket, upgrade the client, pump frames both ways until one side closes; a client's
    message may be up to `max_message_bytes` long (settings.limits.max_ws_message_bytes)."""
    send_headers = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _HANDSHAKE_HEADERS)
    protocols = tuple(p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip())
    try:
        # The upgrade is an API call (connect, then its answer's first byte); once switched, a socket may stay
        # silent as long as nothing runs.
        timeouts = backend.timeouts
        upstream = await asyncio.wait_for(
            session.ws_connect(
                backend.target(target),
                headers=send_headers,
                protocols=protocols,
                max_msg_size=_NO_SIZE_LIMIT,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
                autoping=True,
                heartbeat=heartbeat_seconds,
            ),
            timeouts.connect_seconds + timeouts.first_byte("api"),
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

    client = _ClientSocket(
        protocols=(upstream.protocol,) if upstream.protocol else (),
        # aiohttp refuses a message of max_msg_size bytes already; the fast path, only a longer one.
        max_msg_size=max_message_bytes + 1,
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
            await _pump_both(client, upstream, rewrite_downstream_text, backend.name, meter, request.remote)
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
    peer: str | None,
) -> None:
    to_backend = asyncio.create_task(_client_to_backend(client, upstream, meter, peer), name=f"ws->{backend_name}")
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
        # A client that broke the protocol or the size limit: aiohttp's close_code then says 1006, not why.
        failed = to_backend.result() if not to_backend.cancelled() and to_backend.exception() is None else None
        await upstream.close(code=failed or client.close_code or WSCloseCode.OK)


async def _client_to_backend(
    client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse, meter: RelayMeter, peer: str | None
) -> int | None:
    """Relay until the client's socket ends; the close code it was failed with, if it was."""
    relayed, dropped = meter.to_backend, meter.dropped_to_backend
    async for msg in client:
        try:
            if msg.type == WSMsgType.TEXT:
                await upstream.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await upstream.send_bytes(msg.data)
            elif msg.type == WSMsgType.ERROR:
                # aiohttp has closed the client's socket with the error's code; the backend's gets it too.
                if isinstance(msg.data, WebSocketError):
                    log.info("closing a WebSocket from %s with %d: %s", peer or "?", msg.data.code, msg.data)
                    return int(msg.data.code)
                break
            else:
                continue
        except ConnectionResetError:  # the backend's socket is closing: this message cannot reach it
            dropped.inc()
            log.debug("ws message to the backend dropped: its socket is closing")
            return None
        relayed.inc()
    return None


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


class _ClientSocket(web.WebSocketResponse):
    """The client's socket, its frames checked for a mask before aiohttp's reader reads them."""

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: WebSocketWriter) -> None:
        handler = request.protocol
        # Bytes that came right after the handshake are fed to the reader as it is set: held back to be checked.
        early, handler._message_tail = handler._message_tail, b""
        super()._post_start(request, protocol, writer)
        assert self._reader is not None
        checked = _MaskedFramesOnly(handler._payload_parser, self._reader)
        handler._payload_parser = checked
        if early and checked.feed_data(early)[0]:
            handler.close()


class _MaskedFramesOnly:
    """In front of aiohttp's WebSocketReader: the first frame that is not masked (RFC 6455 §5.1) fails the socket
    with 1002, as aiohttp fails it for what it checks itself; the frames before it are read as usual. Only
    frame headers are read here."""

    __slots__ = ("_reader", "_queue", "_skip", "_partial", "_failed")

    def __init__(self, reader: Any, queue: Any) -> None:
        self._reader = reader
        self._queue = queue
        self._skip = 0  # payload bytes of the current frame still to come
        self._partial = b""  # the start of a frame header split across reads
        self._failed = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._failed:
            return True, b""
        at = self._unmasked_at(data)
        if at < 0:
            result: tuple[bool, bytes] = self._reader.feed_data(data)
            return result
        if at:
            eof, tail = self._reader.feed_data(data[:at])
            if eof:
                return eof, tail
        self._failed = True
        self._queue.set_exception(WebSocketError(WSCloseCode.PROTOCOL_ERROR, "an unmasked frame"))
        return True, b""

    def feed_eof(self) -> None:
        self._reader.feed_eof()

    def _unmasked_at(self, data: bytes) -> int:
        """Where in `data` the first unmasked frame starts (0 too when its header began in an earlier read); -1:
        none."""
        pos, end = 0, len(data)
        if self._skip:
            if end <= self._skip:
                self._skip -= end
                return -1
            pos, self._skip = self._skip, 0
        shift = 0
        if self._partial:
            shift = len(self._partial) - pos
            data, end = self._partial + data[pos:], len(self._partial) + end - pos
            pos, self._partial = 0, b""
        while pos < end:
            if end - pos < 2:
                self._partial = data[pos:end]
                break
            second = data[pos + 1]
            if not second & 0x80:
                return max(pos - shift, 0)
            length, header = second & 0x7F, 6
            if length == 126:
                length, header = int.from_bytes(data[pos + 2 : pos + 4], "big"), 8
            elif length == 127:
                length, header = int.from_bytes(data[pos + 2 : pos + 10], "big"), 14
            if end - pos < header - 4:  # the extended length is not all here yet
                self._partial = data[pos:end]
                break
            pos += header + length
            if pos > end:
                self._skip = pos - end
                break
        return -1
