"""The client's side of a WebSocket on /ws: open the backend it selected, upgrade the client, then hand both to
the fan-in (fanin.py), which follows the client's prompts on every backend until one side ends it.

The backend socket is opened first, so a backend that is down or refuses the upgrade gives the client a plain
HTTP error instead of a socket that opens and dies.

A client's message past max_message_bytes closes its socket with 1009, a frame it may not send with 1002, and
the backends' sockets get the same code: aiohttp's reader checks every rule of RFC 6455 §5 but masking, which
_MaskedFramesOnly adds. Messages from backends have no size limit (full-size images).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import WebSocketError, WSCloseCode, web
from aiohttp.http import WebSocketWriter

from gateway.backends.table import Backend, BackendTable
from gateway.config.settings import WebSocketSettings
from gateway.datapath.aio.fanin import FanIn, HeadersFor, open_upstream
from gateway.datapath.aio.keys import OPEN_SOCKETS
from gateway.observe.metrics import FanInMeter
from gateway.state.followers import Followers


async def serve_websocket(
    request: web.Request,
    session: aiohttp.ClientSession,
    backend: Backend,
    backends: BackendTable,
    target: str,
    client_id: str,
    headers_for: HeadersFor,
    *,
    response_headers: Mapping[str, str],
    open_sockets: set[web.WebSocketResponse],
    settings: WebSocketSettings,
    followers: Followers,
    meter: FanInMeter,
    max_message_bytes: int,
    also_follow: tuple[str, ...] = (),
) -> web.WebSocketResponse:
    """Open the selected backend's socket, upgrade the client, follow its prompts until one side closes; a
    client's message may be up to `max_message_bytes` long (settings.limits.max_ws_message_bytes)."""
    protocols = tuple(p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip())
    heartbeat = settings.heartbeat_seconds or None
    upstream = await open_upstream(session, backend, target, headers_for(backend), protocols, heartbeat)
    client = _ClientSocket(
        protocols=(upstream.protocol,) if upstream.protocol else (),
        # aiohttp refuses a message of max_msg_size bytes already; the fast path, only a longer one.
        max_msg_size=max_message_bytes + 1,
        autoping=True,
        heartbeat=heartbeat,
    )
    client.headers.update(response_headers)
    try:
        await client.prepare(request)
    except Exception:
        await upstream.close()
        raise
    fan_in = FanIn(
        client,
        upstream,
        client_id=client_id,
        primary=backend,
        backends=backends,
        session=session,
        target=target,
        headers_for=headers_for,
        protocols=protocols,
        settings=settings,
        followers=followers,
        meter=meter,
        peer=request.remote,
        also_follow=also_follow,
    )
    client_sockets = meter.relay(backend.name).client_sockets
    open_sockets.add(client)
    client_sockets.inc()
    try:
        await fan_in.run()
    finally:
        client_sockets.dec()
        open_sockets.discard(client)
    return client


async def close_websockets(app: web.Application) -> None:
    """Tell every client socket the gateway is going away (1001), so each can open again elsewhere."""
    open_sockets: set[web.WebSocketResponse] = app[OPEN_SOCKETS]
    for ws in list(open_sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway shutting down")


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
