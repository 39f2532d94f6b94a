"""Connections to one upstream (a backend, or the in-process aiohttp app) and the pool that keeps them.

UpstreamConnection parses responses with httptools and hands them to whoever sent the request (a Relay):
heads and chunked bodies through the parser, bodies of declared length straight through without it. The
pool reuses idle keep-alive connections (most recent first), caps how many are open, queues requests past
the cap, closes connections idle too long, and skips, before writing a byte, any the upstream has closed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import httptools

from gateway.fastpath.deadlines import NEVER, Deadlines
from gateway.fastpath.limits import Limits

log = logging.getLogger("comfy_gateway.fastpath")

Headers = list[tuple[bytes, bytes, bytes]]  # (lower-cased name, name, value) as a backend sent them


class ResponseListener(Protocol):
    """What an UpstreamConnection reports to the relay whose request it carries."""

    def response_interim(self, status: int, reason: bytes, headers: Headers) -> None: ...

    def response_head(self, status: int, reason: bytes, headers: Headers, length: int | None, chunked: bool) -> None: ...

    def response_body(self, data: bytes) -> None: ...

    def response_end(self, reusable: bool) -> None: ...

    def response_switched(self, headers: Headers, rest: bytes) -> None: ...

    def upstream_failed(self, reason: str, kind: str) -> None: ...

    def upstream_writable(self, writable: bool) -> None: ...

    def flush(self) -> None: ...


# What an UpstreamConnection is reading.
_HEAD, _BODY, _PASS, _DONE = range(4)  # a response head; a body via the parser; a declared body without it; none


class TunnelEnd(Protocol):
    """Where an upstream's bytes go after a 101."""

    def from_backend(self, data: bytes) -> None: ...

    def backend_writable(self, writable: bool) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One connection to an upstream; carries one request at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
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
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport
        limits = self.pool.limits
        transport.set_write_buffer_limits(high=limits.write_high_water_bytes, low=limits.write_low_water_bytes)

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
            self.transport.write(parts[0])  # type: ignore[union-attr]
        elif len(parts[1]) <= 64 * 1024:
            self.transport.write(b"".join(parts))  # type: ignore[union-attr]  # one segment for a small request
        else:
            self.transport.writelines(parts)  # type: ignore[union-attr]

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)  # type: ignore[union-attr]

    def writelines(self, parts: tuple[bytes, ...] | list[bytes]) -> None:
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


Connector = Callable[[Callable[[], UpstreamConnection]], Awaitable[tuple[asyncio.BaseTransport, UpstreamConnection]]]


class Waiter(Protocol):
    """A request waiting for a connection (a Relay)."""

    waiting: bool

    def attach(self, connection: UpstreamConnection) -> None: ...

    def upstream_failed(self, reason: str, kind: str) -> None: ...


class UpstreamPool:
    """Keep-alive connections to one upstream: at most `max_connections_per_backend` open at once."""

    def __init__(
        self,
        name: str,
        connector: Connector,
        *,
        limits: Limits,
        connect_seconds: float,
        deadlines: Deadlines,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.name = name
        self.limits = limits
        self._connector = connector
        self._connect_seconds = connect_seconds
        self._deadlines = deadlines
        self._loop = loop
        self._idle: list[UpstreamConnection] = []
        self._open = 0  # connecting, busy or idle: what the cap counts
        self._waiting: deque[Waiter] = deque()
        self._connecting: set[asyncio.Task] = set()
        self.closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    def acquire(self, waiter: Waiter) -> None:
        """Give `waiter` a connection now (idle), soon (connecting), or when one is released (queued)."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            self._deadlines.forget(connection)
            if connection.usable:
                waiter.attach(connection)
                return
            connection.close()  # closed by the upstream while idle: never a byte was written to it
        if self.closed:
            waiter.upstream_failed("the gateway is shutting down", "connect")
        elif self._open < self.limits.max_connections_per_backend:
            self._connect(waiter)
        elif len(self._waiting) < self.limits.max_waiting_per_backend:
            self._waiting.append(waiter)
        else:
            waiter.upstream_failed(
                f"{len(self._waiting)} requests already wait for one of its "
                f"{self.limits.max_connections_per_backend} connections",
                "connect",
            )

    def release(self, connection: UpstreamConnection, reusable: bool) -> None:
        """A request is done with `connection`: reuse it, pool it, or close it."""
        if not reusable or not connection.usable or self.closed:
            connection.close()
            return
        while self._waiting:
            waiter = self._waiting.popleft()
            if waiter.waiting:
                waiter.attach(connection)
                return
        if len(self._idle) >= self.limits.max_idle_per_backend:
            connection.close()
            return
        connection.idle_since = self._loop.time()
        connection.deadline = connection.idle_since + self.limits.upstream_idle_seconds
        self._idle.append(connection)
        self._deadlines.watch(connection)

    def detach(self, connection: UpstreamConnection) -> None:
        """A WebSocket took `connection` over: it no longer counts against the cap."""
        self._open -= 1
        connection.pool = _DETACHED
        self._start_waiting()

    def lost(self, connection: UpstreamConnection) -> None:
        """Called once when a connection closes, whoever closed it."""
        if connection in self._idle:
            self._idle.remove(connection)
        self._deadlines.forget(connection)
        self._open -= 1
        self._start_waiting()

    def _start_waiting(self) -> None:
        while self._waiting and self._open < self.limits.max_connections_per_backend and not self.closed:
            waiter = self._waiting.popleft()
            if waiter.waiting:
                self._connect(waiter)

    def _connect(self, waiter: Waiter) -> None:
        self._open += 1
        task = self._loop.create_task(self._open_connection(waiter))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _open_connection(self, waiter: Waiter) -> None:
        connection = UpstreamConnection(self)
        try:
            await asyncio.wait_for(self._connector(lambda: connection), self._connect_seconds)
        except BaseException as exc:
            if connection.transport is None:
                self._open -= 1  # never connected, so lost() will not count it out
            else:
                connection.abort()
            if isinstance(exc, asyncio.TimeoutError):
                self._fail(waiter, f"did not accept a connection within {self._connect_seconds:g} s", "timeout")
            elif isinstance(exc, (OSError, ssl.SSLError)):
                self._fail(waiter, f"{exc.__class__.__name__}: {exc}", "connect")
            else:
                self._fail(waiter, "the gateway is shutting down", "connect")
                raise
        else:
            if waiter.waiting and not self.closed:
                waiter.attach(connection)
            else:
                self.release(connection, True)

    def _fail(self, waiter: Waiter, reason: str, kind: str) -> None:
        if waiter.waiting:
            waiter.upstream_failed(reason, kind)
        self._start_waiting()

    async def close(self) -> None:
        self.closed = True
        for task in list(self._connecting):
            task.cancel()
        for connection in list(self._idle):
            connection.close()
        self._idle.clear()
        while self._waiting:
            waiter = self._waiting.popleft()
            if waiter.waiting:
                waiter.upstream_failed("the gateway is shutting down", "connect")


class _Detached:
    """The pool of a connection a WebSocket took over: nothing to give back."""

    limits = Limits()

    def lost(self, connection: UpstreamConnection) -> None:
        pass


_DETACHED = _Detached()
