"""A relayed WebSocket after the 101: bytes spliced both ways, frames never decoded and re-encoded.

Client to backend, bytes go on as they came, their frame headers checked (ClientFrames): a frame a client
may not send closes the socket with 1002, a message past Limits.max_ws_message_bytes with 1009, each side
told with a close frame where it sits between two frames. Backend to client, FrameRewriter passes them on
too, rewriting just the `executed` messages whose output refs need the backend's prefix; that direction has
no size limit (previews and SaveImageWebsocket images are large). Close frames and codes otherwise reach
each side exactly as the other sent them. Flow control pauses the reading side when the writing side's
buffer is full; a graceful shutdown sends the client a close frame (1001, going away). A client socket on /ws
whose connection cannot be given to the in-process aiohttp app whole (handover.py) is tunnelled the same way to
the app, whose fan-in follows the client's prompts on every backend; nothing is rewritten or counted here then
(the app does both).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.datapath.fast import wire
from gateway.datapath.fast.request import IncomingRequest
from gateway.datapath.fast.upstream import Headers, UpstreamConnection
from gateway.datapath.fast.wsframes import ClientFrames, FrameRewriter, client_close_frame, close_frame
from gateway.observe.metrics import RelayMeter
from gateway.outputs import refs

if TYPE_CHECKING:
    from gateway.datapath.fast.connection import ClientConnection
    from gateway.datapath.fast.relay import Relay

log = logging.getLogger("comfy_gateway.fastpath")

GOING_AWAY = 1001


def payload_rewriter(backend: str) -> Callable[[bytes], bytes | None]:
    """refs.rewrite_ws_text on a frame's payload bytes: the new payload, or None when nothing changed."""

    def rewrite_payload(payload: bytes) -> bytes | None:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            return None
        new = refs.rewrite_ws_text(text, backend)
        return None if new is text else new.encode("utf-8")

    return rewrite_payload


class Tunnel:
    def __init__(
        self,
        client: ClientConnection,
        upstream: UpstreamConnection,
        request: IncomingRequest,
        *,
        backend: str | None,
        meter: RelayMeter | None,
        extensions: tuple[str, ...] = (),
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.request = request
        self.meter = meter
        rewrite = payload_rewriter(backend) if backend is not None else None
        self.to_client = FrameRewriter(rewrite, client.limits.max_rewrite_frame_bytes)
        self.to_backend = ClientFrames(client.limits.max_ws_message_bytes, extensions=bool(extensions))
        self._closed_by: str | None = None  # the side whose close frame (or, lacking one, close) came first
        self._going_away = False  # we sent the client our own close frame: the backend's frames stop here
        self._ended = False
        if meter is not None:
            meter.upstream_sockets.inc()
            meter.client_sockets.inc()

    # --- client -> backend -------------------------------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        if self._ended:
            return
        upstream = self.upstream
        if not data:  # the client shut its sending side: pass that on, keep relaying the other way
            transport = upstream.transport
            if transport is not None and transport.can_write_eof() and not upstream.closed:
                transport.write_eof()
            else:
                self._end("client")
            return
        frames = self.to_backend
        counted = frames.feed(data)
        meter = self.meter
        if counted and meter is not None:
            meter.to_backend.inc(counted)
        if frames.error is not None:
            self._refuse_client(data[: frames.cut], *frames.error)
            return
        if frames.closed and self._closed_by is None:
            self._closed_by = "client"
        if upstream.closed:
            if counted and meter is not None:
                meter.dropped_to_backend.inc(counted)
            return
        upstream.write(data)

    def client_paused(self) -> None:
        self.upstream.pause_reading()

    def client_resumed(self) -> None:
        self.upstream.resume_reading()

    def client_gone(self) -> None:
        self._end("client")

    # --- backend -> client -------------------------------------------------------------------------------------

    def from_backend(self, data: bytes) -> None:
        if self._ended:
            return
        if not data:
            self._end("backend")
            return
        before = self.to_client.messages
        pieces = self.to_client.feed(data)
        relayed = self.to_client.messages - before
        if self.to_client.closed and self._closed_by is None:
            self._closed_by = "backend"
        meter = self.meter
        if self._going_away:
            if relayed and meter is not None:
                meter.dropped_to_client.inc(relayed)
            return
        if relayed and meter is not None:
            meter.to_client.inc(relayed)
        self.client.writelines(pieces)
        if self.client.draining_tunnel and self.to_client.at_boundary:
            self.going_away()

    def backend_writable(self, writable: bool) -> None:
        self.client.upstream_writable(writable)

    # --- ends --------------------------------------------------------------------------------------------------

    def going_away(self) -> None:
        """Graceful shutdown: tell the client, between two frames, that the gateway is going away. Its answering
        close frame reaches the backend through the tunnel, and the backend's close ends it."""
        if self._going_away or self._ended:
            return
        self.client.draining_tunnel = True
        if not self.to_client.at_boundary:
            return  # sent after the frame being relayed (from_backend)
        self._going_away = True
        self._closed_by = self._closed_by or "backend"
        self.client.write(close_frame(GOING_AWAY, b"gateway shutting down"))

    def _refuse_client(self, before: bytes, code: int, why: str) -> None:
        """The client sent what it may not: what came before the offending frame goes on, then each side gets
        a close frame with `code` where it sits between two frames (else its socket is just closed)."""
        client, upstream = self.client, self.upstream
        log.info("closing a WebSocket from %s with %d: %s", (client.client_ip or b"?").decode(), code, why)
        if not upstream.closed:
            if before:
                upstream.write(before)
            if self.to_backend.cut_at_boundary:
                upstream.write(client_close_frame(code))
        if self.to_client.at_boundary and not self._going_away:
            client.write(close_frame(code))
        self._closed_by = "client"
        # The client may still be sending the rest of what was refused: read and dropped for a while, so that
        # closing with bytes unread does not reset the connection before the close frame is read.
        self._end("client", linger=True)

    def _end(self, side: str, *, linger: bool = False) -> None:
        if self._ended:
            return
        self._ended = True
        meter = self.meter
        if meter is not None:
            closed_by = self._closed_by or side
            (meter.closed_by_client if closed_by == "client" else meter.closed_by_backend).inc()
            meter.client_sockets.dec()
            meter.upstream_sockets.dec()
        self.upstream.close()
        self.client.request_done(self.request, 101, 0, keep_alive=False, linger=linger)


def extensions(headers: Headers) -> tuple[str, ...]:
    """The extensions the backend accepted in its 101 (Sec-WebSocket-Extensions), by name, lower-cased."""
    names = []
    for lower, _, value in headers:
        if lower == b"sec-websocket-extensions":
            for offer in value.split(b","):
                name = offer.split(b";", 1)[0].strip().lower()
                if name:
                    names.append(name.decode("latin-1"))
    return tuple(names)


def switch_to_tunnel(
    backend: str | None, meter: RelayMeter | None
) -> Callable[[Relay, UpstreamConnection, Headers, bytes], None]:
    """What a relay does when the backend accepts the upgrade: pass the 101 on and splice the two sockets.
    Towards the aiohttp app (`backend` None), which follows the client's prompts on every backend itself
    (datapath/aio/fanin.py): frames pass unchanged and uncounted, the app counts them."""

    def switch(relay: Relay, upstream: UpstreamConnection, headers: Headers, rest: bytes) -> None:
        client = relay.client
        relay.dest.pool.detach(upstream)
        client.write(
            b"".join(
                (
                    wire.status_line(101, b"Switching Protocols"),
                    b"Upgrade: websocket\r\nConnection: Upgrade\r\n",
                    wire.response_headers(headers, relay.route.response_drop),
                    relay.route.lines,
                    wire.DATE.line(),
                    wire.CRLF,
                )
            )
        )
        tunnel = Tunnel(client, upstream, relay.request, backend=backend, meter=meter, extensions=extensions(headers))
        upstream.tunnel(tunnel)
        client.become_tunnel(tunnel)
        if rest:
            tunnel.from_backend(rest)

    return switch
