"""One connection to an upstream (a backend, or the in-process aiohttp app): it writes a request and parses
the answer with httptools for whoever sent it (a Relay): heads and chunked bodies through the parser, bodies
of declared length straight through without it. After a 101 it carries raw bytes for a tunnel.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol, cast

import httptools

from gateway.core.errors import FailureKind
from gateway.datapath.fast.deadlines import NEVER
from gateway.datapath.fast.limits import Limits
from gateway.datapath.fast.outbox import Outbox

log = logging.getLogger("comfy_gateway.fastpath")

Headers = list[tuple[bytes, bytes, bytes]]  # (lower-cased name, name, value) as a backend sent them


class ResponseListener(Protocol):
    """What an UpstreamConnection reports to the relay whose request it carries."""

    def response_interim(self, status: int, reason: bytes, headers: Headers) -> None: ...

    def response_head(
        self, status: int, reason: bytes, headers: Headers, length: int | None, chunked: bool
    ) -> None: ...

    def response_body(self, data: bytes) -> None: ...

    def response_end(self, reusable: bool) -> None: ...

    def response_switched(self, headers: Headers, rest: bytes) -> None: ...

    def upstream_failed(self, reason: str, kind: FailureKind) -> None: ...

    def upstream_writable(self, writable: bool) -> None: ...

    def flush(self) -> None: ...


# What an UpstreamConnection is reading.
_HEAD, _BODY, _PASS, _DONE = range(4)  # a response head; a body via the parser; a declared body without it; none


class Pool(Protocol):
    """What a connection tells the pool that counts it (pool.py)."""

    limits: Limits
    outbox: Outbox

    def lost(self, connection: UpstreamConnection) -> None: ...


class TunnelEnd(Protocol):
    """Where an upstream's bytes go after a 101."""

    def from_backend(self, data: bytes) -> None: ...

    def backend_writable(self, writable: bool) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One connection to an upstream; carries one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._outbox = pool.outbox
        self._held: bytes | None = None  # a request written when the loop's turn ends (outbox.py)
        self.transport: asyncio.Transport | None = None
        self.listener: ResponseListener | None = None
        self.served = 0  # answers read in full: > 0 means it is being reused
        self.deadline = NEVER  # idle expiry, while pooled
        self.closed = False
        self._parser: httptools.HttpResponseParser | None = None
        self._parser_at_rest = False  # it read the last answer to its end: it can read the next one
        self._state = _DONE
        self._head_request = False
        self._interim = False
        self._keep_alive = False
        self._chunked = False
        self._length: int | None = None
        self._left = 0  # declared body bytes still to pass through
        self._reason = b""
        self._headers: Headers = []
        self._got_bytes = False  # any byte of an answer arrived for the current request
        self._tunnel: TunnelEnd | None = None  # after a 101: raw bytes go here

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport: uvloop's are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        limits = self.pool.limits
        self.transport.set_write_buffer_limits(high=limits.write_high_water_bytes, low=limits.write_low_water_bytes)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.lost(self)
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is not None:
            tunnel.from_backend(b"")
            return
        listener, self.listener = self.listener, None
        if listener is None:
            return
        if self._state == _BODY and self._length is None and not self._chunked:
            listener.response_end(False)  # a body delimited by the close of the connection: this is its end
            return
        why = f"{exc.__class__.__name__}: {exc}" if exc else "the connection was closed"
        listener.upstream_failed(why if self._got_bytes else f"{why} before any answer", "protocol")

    def eof_received(self) -> bool | None:
        return None  # close: an upstream that stops sending is done with this connection

    def expire(self, now: float) -> None:
        """Pooled and unused for Limits.upstream_idle_seconds."""
        if self.listener is None and self._tunnel is None:
            self.close()

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    @property
    def reused(self) -> bool:
        return self.served > 0

    @property
    def got_bytes(self) -> bool:
        return self._got_bytes

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # --- one exchange ------------------------------------------------------------------------------------------

    def send(self, listener: ResponseListener, parts: list[bytes], *, head_request: bool) -> None:
        """Write a request (head and whatever body is ready) and read its answer for `listener`."""
        self.listener = listener
        if not self._parser_at_rest or self._parser is None:
            self._parser = httptools.HttpResponseParser(self)
        self._parser_at_rest = False
        self._state = _HEAD
        self._head_request = head_request
        self._interim = False
        self._headers = []
        self._reason = b""
        self._length = None
        self._chunked = False
        self._got_bytes = False
        self.deadline = NEVER
        if len(parts) == 1:
            self._hold(parts[0])
        elif len(parts[1]) <= 64 * 1024:
            self._hold(b"".join(parts))  # one segment for a small request
        else:
            self.transport.writelines(parts)  # type: ignore[union-attr]

    def _hold(self, data: bytes) -> None:
        self._held = data
        self._outbox.hold(self)

    def write_held(self) -> None:
        data, self._held = self._held, None
        if data is not None and not self.closed:
            self.transport.write(data)  # type: ignore[union-attr]

    def write(self, data: bytes) -> None:
        if self._held is not None:
            self.write_held()  # what follows a held head goes after it
        if not self.closed:
            self.transport.write(data)  # type: ignore[union-attr]

    def writelines(self, parts: tuple[bytes, ...] | list[bytes]) -> None:
        if self._held is not None:
            self.write_held()
        if not self.closed:
            self.transport.writelines(parts)  # type: ignore[union-attr]

    def pause_reading(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.resume_reading()

    def tunnel(self, end: TunnelEnd) -> None:
        """After a 101: every byte from now on goes to `end`; b"" means the upstream closed."""
        self._tunnel = end
        self.listener = None
        self._parser = None
        self._headers, self._reason = [], b""  # the 101's, passed on already

    def pause_writing(self) -> None:
        if self._tunnel is not None:
            self._tunnel.backend_writable(False)
        elif self.listener is not None:
            self.listener.upstream_writable(False)

    def resume_writing(self) -> None:
        if self._tunnel is not None:
            self._tunnel.backend_writable(True)
        elif self.listener is not None:
            self.listener.upstream_writable(True)

    def data_received(self, data: bytes) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.from_backend(data)
            return
        listener = self.listener
        if listener is None:  # bytes nobody asked for on an idle connection: it cannot be trusted again
            self.abort()
            return
        self._got_bytes = True
        if self._state == _PASS:
            left, size = self._left, len(data)
            if size < left:
                self._left = left - size
                listener.response_body(data)
                listener.flush()
                return
            if size > left:  # more than the backend declared: pass what it declared, drop the connection
                data = data[:left]
                self._keep_alive = False
            self._left = 0
            listener.response_body(data)
            self._finish(listener)
            return
        try:
            self._parser.feed_data(data)  # type: ignore[union-attr]
        except httptools.HttpParserUpgrade as upgrade:
            self.listener = None
            listener.response_switched(self._headers, data[upgrade.args[0] :])
            return
        except httptools.HttpParserError as exc:
            self.listener = None
            self.abort()
            listener.upstream_failed(f"answered with malformed HTTP: {exc}", "protocol")
            return
        if self._state == _DONE or self._state == _PASS and self._left == 0:
            self._finish(listener)
        else:
            listener.flush()

    def _finish(self, listener: ResponseListener) -> None:
        reusable = self._keep_alive and self._state != _BODY and not self.closed
        self._state = _DONE
        self.listener = None
        if not reusable:
            self._parser, self._parser_at_rest = None, False
        if reusable:
            self.served += 1
        listener.response_end(reusable)

    # --- httptools callbacks -----------------------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), name, value))

    def on_headers_complete(self) -> None:
        parser, listener = self._parser, self.listener
        assert parser is not None and listener is not None
        status = parser.get_status_code()
        headers, reason = self._headers, self._reason
        if status == 101:
            return  # the parser raises HttpParserUpgrade next, with the offset of the tunnelled bytes
        if status < 200:
            self._interim = True
            self._headers, self._reason = [], b""
            listener.response_interim(status, reason, headers)
            return
        for lower, _, value in headers:
            if lower == b"content-length":
                self._length = int(value)
            elif lower == b"transfer-encoding":
                self._chunked = value.rstrip().lower().endswith(b"chunked")
        self._keep_alive = parser.should_keep_alive()
        listener.response_head(status, reason, headers, self._length, self._chunked)
        if self._head_request or status == 204 or status == 304:
            self._state = _DONE  # no body follows, whatever the headers declare
        elif self._length is not None and not self._chunked:
            # Read by the parser for the rest of this read, then passed through without it.
            self._state, self._left = _PASS, self._length
        else:
            self._state = _BODY

    def on_body(self, data: bytes) -> None:
        if self._state == _DONE:  # a body after a HEAD, 204 or 304 answer: dropped, and so is the connection
            self._keep_alive = False
            return
        if self._state == _PASS:
            self._left -= len(data)
        if self.listener is not None:
            self.listener.response_body(data)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False  # the end of a 1xx: the real answer follows on the same parser
            return
        self._state = _DONE
        self._parser_at_rest = True
