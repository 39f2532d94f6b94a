"""Connected WebSocket clients and delivery to them: the sid -> socket map (the newest socket for a
clientId wins), one bounded outbox and sender task per socket, ComfyUI's targeting (one sid or
everyone), and what a reconnecting client is told about the running prompt.

A socket whose client stops reading is dropped (its connection aborted) as soon as its backlog, the
frames still queued plus what its transport holds unsent, would pass the configured bound, so it
neither grows KernieGen's memory nor holds up the run or the other sockets."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, web

from gateway.kerniegen.run_events import Frame, ImageFrame, NodeRunning, RunEvent
from gateway.kerniegen.ws_frames import encode_message, encode_preview_image, encode_preview_with_metadata

log = logging.getLogger(__name__)

# Shutdown asks each socket to close and waits this long (longer than the close handshake's own
# timeout) before aborting it: a client that does not read never lets the close frame out.
_SHUTDOWN_CLOSE_SECONDS = 3.0


def wire_size(frame: str | bytes) -> int:
    """The bytes a frame occupies on the wire: its UTF-8 payload and an unmasked server frame header."""
    size = len(frame) if isinstance(frame, bytes) else len(frame.encode("utf-8"))
    return size + (2 if size < 126 else 4 if size < 65536 else 10)


def _nothing_unsent() -> int:
    return 0


class Outbox:
    """Frames waiting to be sent to one socket, bounded together with what the transport holds.

    `unsent` reports the bytes the socket's transport has buffered but not yet handed to the kernel;
    a sender stuck waiting for the client to drain them keeps them there, so they count too.

    A frame larger than the bound (a big image) is still taken when the backlog before it is within
    the bound, and the bound grows by its size until the backlog is back within the bound: so what one
    socket holds never passes the bound plus one such frame, and the small messages queued around an
    image do not cut off a client that reads."""

    def __init__(self, max_bytes: int, unsent: Callable[[], int] = _nothing_unsent) -> None:
        self._frames: deque[str | bytes] = deque()
        self._sizes: deque[int] = deque()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._unsent = unsent
        self._ready = asyncio.Event()
        self.closed = False
        self.overflowed = False
        self.peak_bytes = 0  # the largest backlog this socket has had
        self._allowance = 0  # the size of an oversized frame that may still be pending

    def backlog(self) -> int:
        return self._bytes + self._unsent()

    def put(self, frame: str | bytes) -> None:
        if self.closed:
            return
        size = wire_size(frame)
        backlog = self.backlog()
        if backlog <= self._max_bytes:
            self._allowance = size if size > self._max_bytes else 0
        if backlog + size > self._max_bytes + self._allowance:
            self.overflowed = True
            self.close()
            self._frames.clear()
            self._sizes.clear()
            self._bytes = 0
            return
        self._frames.append(frame)
        self._sizes.append(size)
        self._bytes += size
        self.peak_bytes = max(self.peak_bytes, backlog + size)
        self._ready.set()

    async def next(self) -> str | bytes | None:
        """The next frame, or None once the outbox is closed and empty."""
        while not self._frames:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        self._bytes -= self._sizes.popleft()
        return self._frames.popleft()

    def close(self) -> None:
        self.closed = True
        self._ready.set()


@dataclass(eq=False)
class WsClient:
    sid: str
    ws: web.WebSocketResponse
    outbox: Outbox
    transport: asyncio.Transport | None = None
    feature_flags: dict[str, Any] = field(default_factory=dict)
    sender: asyncio.Task[None] | None = None

    def abort(self) -> None:
        """Drop the connection now, discarding whatever it still holds unsent."""
        self.outbox.close()
        if self.transport is not None:
            self.transport.abort()


def _transport_unsent(transport: asyncio.Transport | None) -> Callable[[], int]:
    if transport is None:
        return _nothing_unsent

    def unsent() -> int:
        return 0 if transport.is_closing() else transport.get_write_buffer_size()

    return unsent


class WsHub:
    """All sockets of one KernieGen. Every method runs on the event loop."""

    def __init__(self, outbox_bytes: int) -> None:
        self._outbox_bytes = outbox_bytes
        self._by_sid: dict[str, WsClient] = {}
        self._open: set[WsClient] = set()  # includes sockets replaced by a newer one with the same sid
        self.running_client_id: Any = None  # ComfyUI's server.client_id: who submitted the running prompt
        self.running_node_id: str | None = None  # ComfyUI's server.last_node_id

    # -- connections --------------------------------------------------------------------------------
    def connect(self, sid: str, ws: web.WebSocketResponse, transport: asyncio.Transport | None = None) -> WsClient:
        outbox = Outbox(self._outbox_bytes, _transport_unsent(transport))
        client = WsClient(sid=sid, ws=ws, outbox=outbox, transport=transport)
        client.sender = asyncio.create_task(self._pump(client), name=f"kerniegen-ws-{sid}")
        self._by_sid[sid] = client  # a second socket with the same clientId takes over
        self._open.add(client)
        return client

    async def disconnect(self, client: WsClient) -> None:
        # Unlike ComfyUI, closing an old socket does not unregister a newer one with the same sid.
        if self._by_sid.get(client.sid) is client:
            del self._by_sid[client.sid]
        self._open.discard(client)
        client.outbox.close()
        if client.sender is not None:
            client.sender.cancel()
            await asyncio.gather(client.sender, return_exceptions=True)

    async def close_all(self) -> None:
        """Shutdown: close every socket with GOING_AWAY."""
        clients = list(self._open)
        for client in clients:
            client.outbox.close()
        await asyncio.gather(*(self._close_going_away(client) for client in clients), return_exceptions=True)

    async def _close_going_away(self, client: WsClient) -> None:
        try:
            await asyncio.wait_for(client.ws.close(code=WSCloseCode.GOING_AWAY, message=b"Server shutdown"),
                                   _SHUTDOWN_CLOSE_SECONDS)
        except TimeoutError:
            client.abort()

    def count(self) -> int:
        return len(self._by_sid)

    def clients(self) -> list[WsClient]:
        """Every open socket, replaced ones included."""
        return list(self._open)

    # -- delivery -----------------------------------------------------------------------------------
    def send_to(self, client: WsClient, payload: str | bytes) -> None:
        outbox = client.outbox
        if outbox.closed:
            return
        outbox.put(payload)
        if outbox.overflowed:
            log.warning("kerniegen: dropping websocket %s: more than %d bytes unsent, the client is not reading",
                        client.sid, self._outbox_bytes)
            client.abort()

    def send(self, payload: str | bytes, target: Any) -> None:
        """To the socket registered as `target`, or to every socket when `target` is None."""
        if target is None:
            for client in list(self._by_sid.values()):
                self.send_to(client, payload)
            return
        found = self._by_sid.get(target) if isinstance(target, str) else None
        if found is not None:
            self.send_to(found, payload)

    def broadcast_status(self, queue_remaining: int) -> None:
        self.send(encode_message("status", {"status": {"exec_info": {"queue_remaining": queue_remaining}}}), None)

    def supports_preview_metadata(self, target: Any) -> bool:
        client = self._by_sid.get(target) if isinstance(target, str) else None
        return client is not None and client.feature_flags.get("supports_preview_metadata") is True

    def apply(self, event: RunEvent) -> None:
        """Deliver one event from a prompt run (called on the loop, in the order the run made them)."""
        if isinstance(event, Frame):
            self.send(event.payload, event.target)
        elif isinstance(event, NodeRunning):
            self.running_node_id = event.node_id
        elif isinstance(event, ImageFrame):
            self._send_image(event)

    def _send_image(self, event: ImageFrame) -> None:
        if self.supports_preview_metadata(event.target):
            self.send(encode_preview_with_metadata(event.image_format, event.image, event.metadata), event.target)
            if event.progress is not None:
                self.send(event.progress, event.target)
        else:
            if event.progress is not None:
                self.send(event.progress, event.target)
            self.send(encode_preview_image(event.image_format, event.image), event.target)

    async def _pump(self, client: WsClient) -> None:
        try:
            while (frame := await client.outbox.next()) is not None:
                if isinstance(frame, str):
                    await client.ws.send_str(frame)
                else:
                    await client.ws.send_bytes(frame)
        except (ConnectionError, RuntimeError):
            return  # the socket went away; its handler unregisters it
