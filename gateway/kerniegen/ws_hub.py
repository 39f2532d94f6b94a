"""Connected WebSocket clients and delivery to them: the sid -> socket map (the newest socket for a
clientId wins), one bounded outbox and sender task per socket, ComfyUI's targeting (one sid or
everyone), and what a reconnecting client is told about the running prompt."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, web

from gateway.kerniegen.run_events import Frame, ImageFrame, NodeRunning, RunEvent
from gateway.kerniegen.ws_frames import encode_message, encode_preview_image, encode_preview_with_metadata

log = logging.getLogger(__name__)


class Outbox:
    """Frames waiting to be sent to one socket, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._frames: deque[str | bytes] = deque()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._ready = asyncio.Event()
        self.closed = False
        self.overflowed = False

    def put(self, frame: str | bytes) -> None:
        if self.closed:
            return
        size = len(frame)
        # One frame larger than the bound still goes out alone; a client that falls behind is cut off.
        if self._frames and self._bytes + size > self._max_bytes:
            self.overflowed = True
            self.close()
            self._frames.clear()
            return
        self._frames.append(frame)
        self._bytes += size
        self._ready.set()

    async def next(self) -> str | bytes | None:
        """The next frame, or None once the outbox is closed and empty."""
        while not self._frames:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        frame = self._frames.popleft()
        self._bytes -= len(frame)
        return frame

    def close(self) -> None:
        self.closed = True
        self._ready.set()


@dataclass(eq=False)
class WsClient:
    sid: str
    ws: web.WebSocketResponse
    outbox: Outbox
    feature_flags: dict[str, Any] = field(default_factory=dict)
    sender: asyncio.Task[None] | None = None


class WsHub:
    """All sockets of one KernieGen. Every method runs on the event loop."""

    def __init__(self, outbox_bytes: int) -> None:
        self._outbox_bytes = outbox_bytes
        self._by_sid: dict[str, WsClient] = {}
        self._open: set[WsClient] = set()  # includes sockets replaced by a newer one with the same sid
        self.running_client_id: Any = None  # ComfyUI's server.client_id: who submitted the running prompt
        self.running_node_id: str | None = None  # ComfyUI's server.last_node_id

    # -- connections --------------------------------------------------------------------------------
    def connect(self, sid: str, ws: web.WebSocketResponse) -> WsClient:
        client = WsClient(sid=sid, ws=ws, outbox=Outbox(self._outbox_bytes))
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
        await asyncio.gather(
            *(client.ws.close(code=WSCloseCode.GOING_AWAY, message=b"Server shutdown") for client in clients),
            return_exceptions=True,
        )

    def count(self) -> int:
        return len(self._by_sid)

    # -- delivery -----------------------------------------------------------------------------------
    def send_to(self, client: WsClient, payload: str | bytes) -> None:
        client.outbox.put(payload)

    def send(self, payload: str | bytes, target: Any) -> None:
        """To the socket registered as `target`, or to every socket when `target` is None."""
        if target is None:
            for client in self._by_sid.values():
                client.outbox.put(payload)
            return
        found = self._by_sid.get(target) if isinstance(target, str) else None
        if found is not None:
            found.outbox.put(payload)

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
        if client.outbox.overflowed:
            log.warning("kerniegen: closing websocket %s, it fell %d bytes behind", client.sid, self._outbox_bytes)
            await client.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"send queue full")
