"""One request relayed to one upstream, and its answer back: streamed (most routes), read whole and rewritten
(/history), or switched to a WebSocket tunnel (/ws).

Bytes move with flow control both ways: a client that stops reading pauses the upstream, an upstream that
stops accepting a body pauses the client. Whatever arrives in one read goes out in one write.
Failures before the answer started become the gateway's JSON errors (502/504, naming the backend);
after it started, the only honest signal left is a cut connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.backends.retry import EarlyFailure, RetryBudget, may_repeat
from gateway.backends.table import CALL_KINDS, CallKind, Timeouts
from gateway.core.errors import FailureKind, GatewayError, UpstreamError, UpstreamRefused, UpstreamTimeout
from gateway.datapath.fast import wire
from gateway.datapath.fast.deadlines import NEVER
from gateway.datapath.fast.pool import UpstreamPool
from gateway.datapath.fast.request import IncomingRequest
from gateway.datapath.fast.upstream import Headers, UpstreamConnection
from gateway.pipeline import outcome
from gateway.pipeline.decision import Answer

if TYPE_CHECKING:
    from gateway.datapath.fast.connection import ClientConnection

log = logging.getLogger("comfy_gateway.fastpath")

# Builds the WebSocket tunnel once the backend switched protocols: (relay, upstream connection, 101 headers, rest).
Switch = Callable[["Relay", UpstreamConnection, Headers, bytes], None]


@dataclass(frozen=True, slots=True)
class Destination:
    """Where requests go, and what never changes between them: one per backend (and one for the app)."""

    pool: UpstreamPool
    backend: str | None  # the backend's name (None: the in-process aiohttp app)
    shown_url: str  # the backend's URL as logs may show it
    timeouts: Timeouts
    in_flight: Callable[[float], None] | None = None  # adds to the backend's in-flight gauge
    retries: RetryBudget | None = None  # None: the app, whose reused connection alone is retried, once
    switch: Switch | None = None  # its WebSocket tunnel
    # Each kind of call's (first byte, idle) silences, from `timeouts`: read by every request, worked out once.
    silences: Mapping[CallKind, tuple[float, float]] = field(init=False)

    def __post_init__(self) -> None:
        silences = {kind: (self.timeouts.first_byte(kind), self.timeouts.idle(kind)) for kind in CALL_KINDS}
        object.__setattr__(self, "silences", silences)  # frozen: set once, here


class Route:
    """One request's way to its destination, and what is done with the answer. Made for every request: a plain
    class, which the compiled build makes without a call into the interpreter (a dataclass's __init__ is
    interpreted)."""

    __slots__ = ("dest", "head", "target", "lines", "body", "rewrite", "switch", "after", "kind", "refused",
                 "response_drop")

    def __init__(
        self,
        dest: Destination,
        head: bytes,
        target: str,
        lines: bytes = b"",
        body: bytes | None = None,
        rewrite: bool = False,
        switch: bool = False,
        after: Callable[[int], None] | None = None,
        kind: CallKind = "api",
        refused: Callable[[str], None] | None = None,
        response_drop: frozenset[bytes] = wire.RESPONSE_DROP_BYTES,
    ) -> None:
        self.dest = dest
        self.head = head  # the request line and headers for the upstream
        self.target = target  # for error messages
        self.lines = lines  # gateway headers added to the answer (X-Comfy-*)
        self.body = body  # a body the pipeline has read already; else the client's is streamed
        self.rewrite = rewrite  # read the answer whole and prefix its output refs (pipeline/outcome.history_body)
        self.switch = switch  # a WebSocket upgrade (dest.switch)
        self.after = after  # called with the status once the answer is sent
        self.kind = kind  # which of the destination's timeouts apply
        # A connection refused before anything was sent hands the request to this instead of failing it (with
        # why).
        self.refused = refused
        self.response_drop = response_drop  # the answer's headers the client never sees


class Relay:
    """Owns one upstream exchange on behalf of one client request."""

    def __init__(self, client: ClientConnection, request: IncomingRequest, route: Route) -> None:
        self.client = client
        self.request = request
        self.route = route
        self.dest = route.dest
        self.loop = client.loop
        self.upstream: UpstreamConnection | None = None
        self.waiting = False  # for a connection from the pool
        self.deadline = NEVER
        self._total_deadline = NEVER
        self._first_byte_seconds, self._idle_seconds = route.dest.silences[route.kind]
        self._sent = False  # the whole request is on its way to the upstream
        self._up_chunked = request.head.chunked and route.body is None
        self._started = False  # a byte of the answer went to the client
        self._ended = False
        self._attempt = 0  # retries so far
        self._retry_handle: asyncio.TimerHandle | None = None
        self._status = 0
        self._out: list[bytes] = []
        self._out_chunked = False
        self._keep_alive = True
        self._bytes_out = 0
        self._collected: list[bytes] | None = None
        self._collected_size = 0
        self._headers: Headers = []
        self._reason = b""
        self._head_only = request.head.method == "HEAD"

    # --- start: a connection, then the request -------------------------------------------------------------

    def start(self) -> None:
        now = self.loop.time()
        dest = self.dest
        total = dest.timeouts.total_seconds
        if total and not self.route.switch:  # a WebSocket has no total time
            self._total_deadline = now + total
        if dest.in_flight is not None:
            dest.in_flight(1)
        if dest.retries is not None and dest.backend is not None:
            dest.retries.called(dest.backend)
        self.client.server.deadlines.watch(self)
        self._acquire(now)

    def _acquire(self, now: float) -> None:
        self.waiting = True
        self.deadline = min(now + self.dest.timeouts.connect_seconds, self._total_deadline)
        self.dest.pool.acquire(self)

    def attach(self, upstream: UpstreamConnection) -> None:
        """The pool gave us a connection: write the request, and start streaming the body if it is not in."""
        self.waiting = False
        self.upstream = upstream
        route, request = self.route, self.request
        parts = [route.head]
        if route.body is not None:
            parts.append(route.body)
            self._sent = True
        elif not request.head.has_body:
            self._sent = True
        self._read_deadline()
        upstream.send(self, parts, head_request=self._head_only)
        if not self._sent:
            if request.head.expect_continue and not request.continued and not request.complete:
                request.continued = True
                self.client.write(wire.CONTINUE)
            request.attach(self)
            self.client.body_flowing()

    def _read_deadline(self) -> None:
        """Until the answer's head: its first byte may take first_byte (from the request's last byte, so a body
        still being sent moves it on); once it is under way, the silence allowed between its bytes."""
        seconds = self._idle_seconds if self._status else self._first_byte_seconds
        self.deadline = min(self.loop.time() + seconds, self._total_deadline)

    # --- the request body, as the client sends it ---------------------------------------------------------------

    def client_body(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is None or self._ended:
            return
        if self._up_chunked:
            if data:
                upstream.writelines(wire.chunk(data))
        else:
            upstream.write(data)
        self._read_deadline()  # an upstream reading a long upload is not a silent one

    def client_body_end(self) -> None:
        upstream = self.upstream
        if upstream is None or self._ended:
            return
        if self._up_chunked:
            upstream.write(wire.LAST_CHUNK)
        self._sent = True

    def upstream_writable(self, writable: bool) -> None:
        self.client.upstream_writable(writable)

    # --- the answer, as the upstream sends it -------------------------------------------------------------------

    def response_interim(self, status: int, reason: bytes, headers: Headers) -> None:
        """1xx before the answer: passed on to HTTP/1.1 clients (a 100 only if we have not sent our own)."""
        if self.route.rewrite or self.request.head.http10 or self.route.switch:
            return
        if status == 100 and (self.request.continued or not self.request.head.expect_continue):
            return
        drop = self.route.response_drop
        self._out.append(wire.status_line(status, reason) + wire.response_headers(headers, drop) + wire.CRLF)

    def response_head(self, status: int, reason: bytes, headers: Headers, length: int | None, chunked: bool) -> None:
        self._status = status
        if self.route.rewrite or self.route.switch:
            self._headers = headers
            self._reason = reason
            self._collected = []
            return
        request = self.request
        if length is not None and not chunked:
            framing = b"Content-Length: %d\r\n" % length
        elif self._head_only or status in wire.NO_BODY_STATUSES:
            framing = b"Transfer-Encoding: chunked\r\n" if chunked and not request.head.http10 else b""
        elif not request.head.http10:
            framing = b"Transfer-Encoding: chunked\r\n"
            self._out_chunked = True
        else:
            framing = b""  # an HTTP/1.0 client learns the end of an unsized body from the close
            self._keep_alive = False
        keep_alive = self._keep_alive and self.client.will_keep_alive(request)
        self._keep_alive = keep_alive
        self._started = True
        self._out.append(
            b"".join(
                (
                    wire.status_line(status, reason),
                    wire.response_headers(headers, self.route.response_drop),
                    self.route.lines,
                    wire.DATE.line(),
                    framing,
                    wire.connection_line(keep_alive=keep_alive, http10=request.head.http10),
                    wire.CRLF,
                )
            )
        )

    def response_body(self, data: bytes) -> None:
        collected = self._collected
        if collected is not None:
            self._collected_size += len(data)
            if self._collected_size > self.client.limits.max_rewrite_body_bytes:
                limit = self.client.limits.max_rewrite_body_bytes
                self._collected = None
                if self.upstream is not None:
                    self.upstream.abort()
                self._fail(f"answered {self.route.target} with more than {limit} bytes", "protocol")
                return
            collected.append(data)
            return
        self._bytes_out += len(data)
        if self._out_chunked:
            if data:
                self._out += wire.chunk(data)
        else:
            self._out.append(data)

    def flush(self) -> None:
        out = self._out
        if out:
            self._out = []
            # One write: a short answer's head and body leave in one segment; a big chunk is not copied.
            self.client.write(out[0] if len(out) == 1 else b"".join(out))
        if not self._ended and not self.client.write_paused:
            self._read_deadline()

    def response_end(self, reusable: bool) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            self.dest.pool.release(upstream, reusable and self._sent)
        if self._ended:
            return
        if self._collected is not None:
            self._answer_collected()
            return
        if self._out_chunked:
            self._out.append(wire.LAST_CHUNK)
        self.flush()
        self._finish(self._status, keep_alive=self._keep_alive)

    def _answer_collected(self) -> None:
        body = b"".join(self._collected or ())
        self._collected = None
        if self.route.switch and self.dest.backend is not None:  # the backend answered the upgrade without switching
            name = self.dest.backend
            self._error(
                UpstreamRefused(
                    f"backend {name!r} refused the WebSocket upgrade on {self.route.target} with {self._status}",
                    status=self._status,
                    backend=name,
                )
            )
            return
        headers = self._headers
        try:
            # The app refusing an upgrade (an unknown backend, one that is down): its answer goes on as it is.
            rewritten = None if self.route.switch else outcome.history_body(
                self._status,
                wire.header_value(headers, b"content-type"),
                wire.header_value(headers, b"content-encoding") or None,
                body,
                self.dest.backend or "",
            )
        except GatewayError as err:
            self._error(err)
            return
        except Exception as exc:
            head = self.request.head
            self._end_with(outcome.unexpected_answer(exc, self.request.exchange, head.method, head.path))
            return
        request = self.request
        keep_alive = self.client.will_keep_alive(request)
        self._started = True
        payload = body if rewritten is None else rewritten
        self._bytes_out = 0 if self._head_only else len(payload)
        self.client.write(
            wire.whole_answer(
                self._status,
                self._reason,
                headers,
                payload,
                content_type=None if rewritten is None else wire.JSON_CONTENT_TYPE,
                lines=self.route.lines,
                keep_alive=keep_alive,
                http10=request.head.http10,
                head_only=self._head_only,
                drop=self.route.response_drop,
            )
        )
        self._finish(self._status, keep_alive=keep_alive)

    def response_switched(self, headers: Headers, rest: bytes) -> None:
        upstream, self.upstream = self.upstream, None
        if not self.route.switch or self.dest.switch is None or upstream is None:  # switched unasked: not HTTP
            if upstream is not None:
                upstream.abort()
            self._fail("switched protocols unasked", "protocol")
            return
        self._status = 101
        self._started = True
        self._close_books()
        self.dest.switch(self, upstream, headers, rest)

    # --- failures ----------------------------------------------------------------------------------------------

    def upstream_failed(self, reason: str, kind: FailureKind) -> None:
        upstream = self.upstream
        if upstream is None:
            early: EarlyFailure | None = "connect" if kind == "connect" and not self.dest.pool.closed else None
        else:
            early = "closed" if kind == "protocol" and not upstream.got_bytes else None
        if early is not None and self._retry(early, reason, reused=upstream is not None and upstream.reused):
            return
        self._fail(reason, kind)

    def _retry(self, early: EarlyFailure, reason: str, *, reused: bool) -> bool:
        """Send the request again after a backoff, where backends/retry.py says it cannot do its work twice
        and the backend's budget allows; True: it will go again."""
        if self._started or self._ended:
            return False
        head = self.request.head
        in_hand = self.route.body is not None or not head.has_body
        self._attempt += 1
        budget = self.dest.retries
        if budget is None or self.dest.backend is None:  # the app: a pooled connection it had closed, at once
            wait = 0.0 if early == "closed" and reused and self._attempt == 1 and may_repeat(
                head.method, in_hand, early) else None
        else:
            wait = budget.retry_after(self.dest.backend, head.method, in_hand, early, self._attempt)
        if wait is None:
            return False
        self.upstream = None
        self.waiting = False
        now = self.loop.time()
        self.deadline = min(now + wait + self.dest.timeouts.connect_seconds, self._total_deadline)
        if wait <= 0:
            self._acquire(now)
            return True
        log.info(
            "retrying %s %s on backend %s in %.0f ms: %s",
            head.method, self.route.target, self.dest.backend, wait * 1000, reason,
        )
        self._retry_handle = self.loop.call_later(wait, self._send_again)
        return True

    def _send_again(self) -> None:
        self._retry_handle = None
        if not self._ended:
            self._acquire(self.loop.time())

    def expire(self, now: float) -> None:
        if self._ended:
            return
        if self.waiting:
            self.waiting = False
            self._fail(f"did not accept a connection within {self.dest.timeouts.connect_seconds:g} s", "timeout")
        else:
            self._fail("", "timeout")  # the answer's own silence: the message below says it all

    def _fail(self, reason: str, kind: FailureKind) -> None:
        if self._ended:
            return
        self.waiting = False
        self._abort_upstream()
        refused = self.route.refused
        if refused is not None and kind == "connect" and not self._started:
            self._close_books()  # ended without an answer, and without `after`: the request goes on elsewhere
            refused(reason)
            return
        name = self.dest.backend
        where = f"backend {name!r} at {self.dest.shown_url}" if name else "the gateway's own app"
        if self._started:
            exchange = self.request.exchange
            if exchange is not None and name is not None:  # the answer is cut: no error is rendered to count it
                exchange.upstream_errors += ((name, kind),)
            method, target = self.request.head.method, self.route.target
            log.warning("%s broke off %s %s mid-answer: %s", where, method, target, reason or "it went silent")
            self._finish(self._status, keep_alive=False, cut=True)
            return
        if kind == "timeout":
            why = f" ({reason})" if reason else ""
            self._error(UpstreamTimeout(f"{where} did not answer {self.route.target} in time{why}", backend=name))
        else:
            self._error(UpstreamError(f"{where} failed on {self.route.target}: {reason}", backend=name, kind=kind))

    def _abort_upstream(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.abort()

    def _error(self, err: GatewayError) -> None:
        self._end_with(outcome.error_answer(err, self.request.exchange))

    def _end_with(self, answer: Answer) -> None:
        """The gateway's own answer instead of the backend's (nothing of that has reached the client)."""
        self._close_books()
        self.client.answer_with(self.request, answer)
        self._after()

    # --- the client's side -------------------------------------------------------------------------------------

    def client_paused(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()
            self.deadline = self._total_deadline  # the client's own send timeout runs now

    def client_resumed(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()
            self._read_deadline()

    def client_gone(self) -> None:
        """The client closed or broke its connection before the answer was complete."""
        if self._ended:
            return
        self.waiting = False
        self._abort_upstream()
        self._finish(499 if not self._status else self._status, keep_alive=False, cut=True)

    def abort_request(self, err: GatewayError) -> None:
        """The request itself turned out bad mid-body (too large, malformed chunks): stop and say so."""
        if self._ended:
            return
        self._abort_upstream()
        self.waiting = False
        if self._started:
            self._finish(self._status, keep_alive=False, cut=True)
        else:
            self._error(err)

    # --- the end -----------------------------------------------------------------------------------------------

    def _close_books(self) -> None:
        self._ended = True
        self.deadline = NEVER
        if self._retry_handle is not None:
            self._retry_handle.cancel()
            self._retry_handle = None
        self.client.server.deadlines.forget(self)
        if self.dest.in_flight is not None:
            self.dest.in_flight(-1)

    def _finish(self, status: int, *, keep_alive: bool, cut: bool = False) -> None:
        self._close_books()
        self.client.request_done(self.request, status, self._bytes_out, keep_alive=keep_alive, cut=cut)
        self._after()

    def _after(self) -> None:
        after = self.route.after
        if after is not None:
            after(self._status if self._started else 0)
