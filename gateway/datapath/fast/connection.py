"""One client connection of the fast server: its requests (parsed by reader.py) answered in order
(pipelining), the connection kept alive or closed, flow control, timeouts, and after a WebSocket upgrade the
hand-over to a tunnel.

Callbacks only: no task or coroutine per request. Requests are parsed ahead of the one being answered (up
to Limits.max_pipelined_requests) with reading paused meanwhile; an error answered before the request body
was read ends the connection with a lingering close, so the client reads the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import deque
from typing import TYPE_CHECKING, Protocol, cast

from gateway.core.errors import GatewayError
from gateway.datapath.fast import wire
from gateway.datapath.fast.deadlines import NEVER
from gateway.datapath.fast.reader import NotAccepted, RequestReader
from gateway.datapath.fast.request import IncomingRequest
from gateway.pipeline import outcome
from gateway.pipeline.decision import Answer

if TYPE_CHECKING:
    from gateway.datapath.fast.server import FastServer

log = logging.getLogger("comfy_gateway.fastpath")

# Why reading from the client is paused (a bit each; reading resumes when none is left).
PIPELINE, EARLY_BODY, UPSTREAM, UPGRADE = 1, 2, 4, 8


class Responder(Protocol):
    """What answers the current request (a Relay, or a tunnel after a 101)."""

    def client_paused(self) -> None: ...

    def client_resumed(self) -> None: ...

    def client_gone(self) -> None: ...

    def abort_request(self, err: GatewayError) -> None: ...


class Tunnel(Protocol):
    def from_client(self, data: bytes) -> None: ...

    def client_paused(self) -> None: ...

    def client_resumed(self) -> None: ...

    def client_gone(self) -> None: ...

    def going_away(self) -> None: ...


class ClientConnection(asyncio.Protocol):
    def __init__(self, server: FastServer) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.client_ip: bytes | None = None
        self.deadline = NEVER
        self.responder: Responder | None = None
        self.current: IncomingRequest | None = None
        self.write_paused = False
        self._reader = RequestReader(self, self.limits)
        self._pending: deque[IncomingRequest] = deque()
        self._paused = 0
        self._read_deadline = NEVER
        self._closing = False  # no request after the ones already parsed
        self._final_error: GatewayError | None = None  # answered after the ones before it, then closed
        self._peer_eof = False
        self._lingering = False
        self._gone = False
        self._advancing = False
        self._tunnel: Tunnel | None = None
        self._upgrade_rest = b""
        self._dead = False  # the parser stopped: nothing more from this client is HTTP we will answer
        self.draining_tunnel = False  # shutting down: the tunnel sends its close frame at the next boundary

    # --- connection lifecycle ----------------------------------------------------------------------------------

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # A stream transport: uvloop's are not asyncio.Transport subclasses, but have its methods.
        transport = self.transport = cast(asyncio.Transport, base)
        server = self.server
        if server.open_connections() >= self.limits.max_client_connections or server.draining:
            transport.abort()
            self._gone = True
            return
        server.connections.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.client_ip = str(peer[0]).encode("latin-1")
        transport.set_write_buffer_limits(
            high=self.limits.write_high_water_bytes, low=self.limits.write_low_water_bytes
        )
        self._idle()
        server.deadlines.watch(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone = True
        self.server.connections.discard(self)
        self.server.deadlines.forget(self)
        self._pending.clear()
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is not None:
            tunnel.client_gone()
        responder, self.responder = self.responder, None
        if responder is not None:
            responder.client_gone()

    def eof_received(self) -> bool:
        """The client shut its sending side: answer what it asked, then close (a half-closed socket)."""
        self._peer_eof = True
        if self._lingering:  # the client read our answer and is done: nothing more to drain
            self._abort_transport()
            return True
        if self._tunnel is not None:
            self._tunnel.from_client(b"")
            return True
        receiving = self._reader.receiving
        if self._reader.in_head or receiving is not None and not receiving.complete:
            self._abort("the client closed its side in the middle of a request")
            return True
        if self.current is None and not self._pending:
            self._close()
        return True

    def expire(self, now: float) -> None:
        if self._lingering:
            self._abort_transport()
        elif self.write_paused:
            self._abort(f"the client read nothing for {self.limits.send_seconds:g} s")
        elif self._reader.in_head:
            self._abort(f"request head not complete within {self.limits.client_head_seconds:g} s")
        elif self.current is None and not self._pending:
            self._close()  # idle keep-alive connection
        else:
            self._abort(f"request body stalled for {self.limits.client_body_seconds:g} s")

    def drain(self) -> None:
        """Graceful shutdown: finish what was asked, then close; idle connections close now."""
        self._closing = True
        if self._tunnel is not None:
            self._tunnel.going_away()
        elif self.current is None and not self._pending and not self._reader.in_head:
            self._close()

    # --- reading -----------------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.from_client(data)
            return
        if self._lingering or self._gone or self._dead:
            return
        if self._paused & UPGRADE:  # the tunnel's first bytes, while the backend answers the upgrade
            self._upgrade_rest += data
            return
        try:
            rest = self._reader.feed(data)
        except GatewayError as err:
            self._bad_input(err)
        else:
            if rest is not None:  # nothing after a WebSocket upgrade is HTTP: held for the tunnel
                self._closing = True
                self._upgrade_rest = rest
                self._pause(UPGRADE)
        self._advance()

    # --- what the reader says ------------------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return not self._closing

    def head_started(self) -> None:
        self._read_deadline = self.deadline = self.loop.time() + self.limits.client_head_seconds

    def request_parsed(self, request: IncomingRequest) -> None:
        self._pending.append(request)
        if len(self._pending) >= self.limits.max_pipelined_requests:
            self._closing = True  # no more: answer these, then close
        if not request.complete:
            self._read_deadline = self.deadline = self.loop.time() + self.limits.client_body_seconds

    def body_received(self, request: IncomingRequest) -> None:
        if request.sink is None and request.whole is None and request.held > self.limits.max_early_body_bytes:
            self._pause(EARLY_BODY)
        self._read_deadline = self.deadline = self.loop.time() + self.limits.client_body_seconds

    def message_done(self) -> None:
        self._read_deadline = NEVER
        if not self.write_paused:
            self.deadline = NEVER

    def _bad_input(self, err: GatewayError) -> None:
        """The parser cannot go on: answer the broken request in its turn, then close."""
        self._dead = True
        if isinstance(err, NotAccepted):
            return
        self._closing = True
        reader = self._reader
        reader.in_head = False
        broken, reader.receiving = reader.receiving, None
        if broken is not None and broken is self.current:
            if self.responder is not None:
                self.responder.abort_request(err)
            else:
                self.answer_error(broken, err)
            return
        if broken is not None and broken in self._pending:
            self._pending.remove(broken)
        log.info("refusing a request from %s: %s", (self.client_ip or b"?").decode(), err.message)
        self._final_error = err

    # --- answering, in order -----------------------------------------------------------------------------------

    def _advance(self) -> None:
        """Start the next parsed request when none is being answered; close when nothing is left."""
        if self._advancing or self._gone:
            return
        self._advancing = True
        try:
            while self.current is None and self._pending and not self._lingering:
                request = self._pending.popleft()
                self.current = request
                self.server.dispatcher.start(self, request)
            # start() may have ended the connection (mypy still sees `_gone` as narrowed by the check above)
            if self._gone or self._lingering:  # type: ignore[redundant-expr]
                return
            if self.current is None and not self._pending:
                if self._final_error is not None:
                    err, self._final_error = self._final_error, None
                    self.write(wire.answer_of(outcome.error_answer(err, None), keep_alive=False, http10=False))
                    self._linger()
                elif self._peer_eof or self._closing and not self._reader.in_head:
                    self._close()
                elif not self._reader.in_head:
                    self._idle()
            if self._pending:
                self._pause(PIPELINE)
            else:
                self._resume(PIPELINE)
        finally:
            self._advancing = False

    def will_keep_alive(self, request: IncomingRequest) -> bool:
        """Whether the answer being started may promise to keep the connection open."""
        return (
            request.head.keep_alive
            and request.complete
            and request.refusal is None  # its body may be huge: not worth reading to keep the connection
            and not self._peer_eof
            and not (self._closing and not self._pending)
            and not self.server.draining
        )

    def request_done(
        self,
        request: IncomingRequest,
        status: int,
        bytes_out: int,
        *,
        keep_alive: bool,
        cut: bool = False,
        linger: bool = False,
    ) -> None:
        """The answer to `request` is written (or cut): record it, then go on with the next one or close
        (`linger`: with a lingering close, for a client that may still be sending)."""
        exchange = request.exchange
        if exchange is not None:
            exchange.status = status
            exchange.bytes_out = bytes_out
            exchange.bytes_in = request.received
            self.server.record(exchange)
        if request is not self.current:
            return
        self.current = None
        self.responder = None
        if self._gone:
            return
        if cut:
            self._abort_transport()
        elif linger or not request.complete:
            self._linger()  # answered before its body was read: drain what still comes, then close
        elif not keep_alive or not request.head.keep_alive:
            self._close()
        else:
            self._advance()

    def answer(self, request: IncomingRequest, data: bytes, status: int, bytes_out: int) -> None:
        """A whole answer the gateway made itself."""
        self.write(data)
        self.request_done(request, status, bytes_out, keep_alive=self.will_keep_alive(request))

    def answer_error(self, request: IncomingRequest, err: GatewayError) -> None:
        """A gateway error, rendered and recorded as on the aiohttp path (pipeline/outcome.py)."""
        self.answer_with(request, outcome.error_answer(err, request.exchange))

    def answer_with(self, request: IncomingRequest, answer: Answer) -> None:
        """An Answer of the pipeline's, sent whole."""
        keep_alive = self.will_keep_alive(request)
        head = request.head
        head_only = head.method == "HEAD"
        self.write(wire.answer_of(answer, keep_alive=keep_alive, http10=head.http10, head_only=head_only))
        self.request_done(request, answer.status, 0 if head_only else len(answer.body), keep_alive=keep_alive)

    def body_flowing(self) -> None:
        """The current request's body now goes straight on: read again if it was held back."""
        self._resume(EARLY_BODY)

    # --- writing and flow control ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self._gone:
            transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        transport = self.transport
        if transport is not None and not self._gone:
            transport.writelines(parts)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.deadline = self.loop.time() + self.limits.send_seconds
        target = self._tunnel or self.responder
        if target is not None:
            target.client_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.deadline = self._read_deadline
        target = self._tunnel or self.responder
        if target is not None:
            target.client_resumed()

    def upstream_writable(self, writable: bool) -> None:
        if writable:
            self._resume(UPSTREAM)
        else:
            self._pause(UPSTREAM)

    def _pause(self, reason: int) -> None:
        if not self._paused and self.transport is not None and not self._gone:
            self.transport.pause_reading()
            self._read_deadline = NEVER  # the client is not slow, we are not reading
            if not self.write_paused:
                self.deadline = NEVER
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if not self._paused & reason:
            return
        self._paused &= ~reason
        if not self._paused and self.transport is not None and not self._gone:
            self.transport.resume_reading()
            receiving = self._reader.receiving
            if receiving is not None and not receiving.complete:
                self._read_deadline = self.loop.time() + self.limits.client_body_seconds
                if not self.write_paused:
                    self.deadline = self._read_deadline

    # --- the WebSocket tunnel ----------------------------------------------------------------------------------

    def become_tunnel(self, tunnel: Tunnel) -> None:
        """After the 101: every byte from the client goes to `tunnel`, starting with those held."""
        self._tunnel = tunnel
        self.responder = None
        self.deadline = self._read_deadline = NEVER
        # Nothing from this client is parsed again: what the parser and the upgrade's head hold is let go (a
        # UI holds its socket for hours, and a gateway holds thousands).
        self._reader.release()
        if self.current is not None:
            self.current.head.release()
        rest, self._upgrade_rest = self._upgrade_rest, b""
        self._paused &= ~UPGRADE
        if rest:
            tunnel.from_client(rest)
        if not self._paused and self.transport is not None:
            self.transport.resume_reading()
        if self._peer_eof:
            tunnel.from_client(b"")

    def let_go(self) -> tuple[socket.socket, bytes] | None:
        """Give up the client's connection (a WebSocket the app serves itself, handover.py): the same
        connection on a socket of its own, and what the client sent after the current request's head. None (and
        nothing changed) where it cannot go whole: something is still being written to the client, or read."""
        transport = self.transport
        if transport is None or self._gone or self._peer_eof or self._pending or transport.get_write_buffer_size():
            return None
        own = transport.get_extra_info("socket")
        if own is None:
            return None
        try:
            sock = socket.socket(fileno=os.dup(own.fileno()))
        except OSError:
            return None
        rest, self._upgrade_rest = self._upgrade_rest, b""
        self._gone = True
        self.server.connections.discard(self)
        self.server.deadlines.forget(self)
        transport.abort()  # the connection stays open: `sock` holds it
        return sock, rest

    # --- closing -----------------------------------------------------------------------------------------------

    def _idle(self) -> None:
        self._read_deadline = NEVER
        self.deadline = self.loop.time() + self.limits.keepalive_seconds

    def _close(self) -> None:
        """Close once everything written is sent."""
        self._closing = True
        if self.transport is not None and not self._gone:
            self.transport.close()

    def _linger(self) -> None:
        """Send what is written and a FIN, then read and drop what the client still sends for a while: closing
        with unread bytes would make the kernel send a reset that can destroy the answer in flight."""
        self._closing = True
        self._lingering = True
        transport = self.transport
        if transport is None or self._gone:
            return
        self.deadline = self.loop.time() + self.limits.linger_seconds
        if self._paused:
            self._paused = 0
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()

    def _abort(self, why: str) -> None:
        log.info("closing the connection from %s: %s", (self.client_ip or b"?").decode(), why)
        responder, self.responder = self.responder, None
        self._closing = True
        if responder is not None:
            responder.client_gone()
        self._abort_transport()

    def _abort_transport(self) -> None:
        self._closing = True
        if self.transport is not None and not self._gone:
            self.transport.abort()
