"""The request side of one client connection: bytes parsed by httptools into IncomingRequests, under the
limits on target, header count, head size and body size. The connection is told of each step; it decides
what is answered when, and what a broken request gets.
"""

from __future__ import annotations

import time
from typing import Protocol

import httptools

from gateway.core.errors import BadRequest, BodyTooLarge, GatewayError, HeadersTooLarge, TargetTooLong
from gateway.datapath.fast.limits import Limits
from gateway.datapath.fast.request import IncomingRequest, RequestHead

# Headers whose repeats are joined, so that a second copy cannot hide from the framing checks.
_JOINED = frozenset({b"connection", b"content-length", b"transfer-encoding"})


class ReaderEvents(Protocol):
    """What the connection hears from its reader."""

    @property
    def accepting(self) -> bool:
        """False once no further request will be answered."""
        ...

    def head_started(self) -> None: ...

    def request_parsed(self, request: IncomingRequest) -> None: ...

    def body_received(self, request: IncomingRequest) -> None: ...

    def message_done(self) -> None: ...


class NotAccepted(GatewayError):
    """Raised from a parser callback to stop at a request that will not be answered."""


class RequestReader:
    def __init__(self, events: ReaderEvents, limits: Limits) -> None:
        self._events = events
        self._limits = limits
        self._parser = httptools.HttpRequestParser(self)
        self.in_head = False  # between the first byte of a request and the end of its head
        self.receiving: IncomingRequest | None = None  # the request whose body is being read
        self._last: IncomingRequest | None = None  # the request whose head was parsed last
        self._head_bytes = 0  # the head's size as written plainly (see on_message_begin)
        self._raw_bytes = 0  # bytes read while in the head, from the read after the one it began in
        self._target = b""
        self._headers: list[tuple[bytes, bytes, bytes]] = []
        self._index: dict[bytes, bytes] = {}

    def feed(self, data: bytes) -> bytes | None:
        """Parse `data`. Returns what follows a WebSocket upgrade (the tunnel's first bytes), else None; raises
        GatewayError when the bytes are not a request the gateway will serve (the parser cannot go on)."""
        if self.in_head:
            self._raw_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            rest = data[upgrade.args[0] :]
            if self._websocket_upgrade:
                return rest
            # Any other Upgrade is ignored (it has no body, see on_headers_complete): parse on as HTTP.
            self._parser = httptools.HttpRequestParser(self)
            return self.feed(rest) if rest else None
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            raise cause if isinstance(cause, GatewayError) else BadRequest(f"malformed HTTP request: {exc}") from None
        except httptools.HttpParserError as exc:
            raise BadRequest(f"malformed HTTP request: {exc}") from None
        # httptools holds a header's bytes until its line ends: this bounds what a head not yet parsed can hold.
        if self.in_head and self._raw_bytes > self._limits.max_head_bytes:
            raise HeadersTooLarge(f"request head larger than {self._limits.max_head_bytes} bytes")
        return None

    def release(self) -> None:
        """The connection became a tunnel: no request will be parsed again."""
        self._last = self.receiving = None
        self._headers, self._index, self._target = [], {}, b""

    @property
    def _websocket_upgrade(self) -> bool:
        return self._last is not None and self._last.head.websocket

    # --- httptools callbacks -----------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self._events.accepting:
            raise NotAccepted("not accepting requests on this connection")
        self.in_head = True
        # Counted from what was parsed, not from the reads, so that how the head was split cannot change the
        # answer, and so that the aiohttp path, which sees only the parsed head, can count it the same way:
        # `METHOD SP target SP HTTP/1.1 CRLF`, `name: value CRLF` per header, the closing CRLF.
        self._head_bytes = 14
        self._raw_bytes = 0
        self._target = b""
        self._headers = []
        self._index = {}
        self._last = None
        self._events.head_started()

    def on_url(self, url: bytes) -> None:
        if not self._target:
            self._head_bytes += len(self._parser.get_method())
        self._target += url
        self._head_bytes += len(url)
        limits = self._limits
        if len(self._target) > limits.max_target_bytes:
            raise TargetTooLong(f"request-target longer than {limits.max_target_bytes} bytes")
        if self._head_bytes > limits.max_head_bytes:
            raise HeadersTooLarge(f"request head larger than {limits.max_head_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            return  # a chunked body's trailer fields: read and dropped (RFC 9110 §6.5.1 allows discarding)
        headers = self._headers
        lower = name.lower()
        headers.append((lower, name, value))
        self._head_bytes += len(name) + len(value) + 4
        limits = self._limits
        if len(headers) > limits.max_header_count:
            raise HeadersTooLarge(f"more than {limits.max_header_count} request headers")
        if self._head_bytes > limits.max_head_bytes:
            raise HeadersTooLarge(f"request head larger than {limits.max_head_bytes} bytes")
        index = self._index
        if lower not in index:
            index[lower] = value
        elif lower in _JOINED:
            index[lower] += b", " + value

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self._parser
        target = self._target
        if not target.startswith(b"/"):
            raise BadRequest("only origin-form request targets (/path?query) are served", details="target")
        upgrade = parser.should_upgrade()
        head = RequestHead(
            parser.get_method().decode("latin-1"),
            target,
            self._headers,
            self._index,
            http10=parser.get_http_version() == "1.0",
            keep_alive=parser.should_keep_alive(),
            upgrade=upgrade,
            keyed=self._head_bytes <= self._limits.max_kept_head_bytes,
        )
        if upgrade and not head.websocket and head.has_body:
            raise BadRequest("an Upgrade other than websocket cannot carry a body here", details="headers")
        request = IncomingRequest(head, time.perf_counter())
        limit = self._limits.max_body_bytes
        if head.content_length is not None and head.content_length > limit:
            # Refused in its turn, before a byte of the body is read; the body is dropped as it comes.
            request.refusal = BodyTooLarge(f"Maximum request body size {limit} exceeded.")
        self.receiving = self._last = request
        self._events.request_parsed(request)

    def on_body(self, data: bytes) -> None:
        request = self.receiving
        if request is not None:
            request.receive(data, self._limits.max_body_bytes)
            self._events.body_received(request)

    def on_message_complete(self) -> None:
        request, self.receiving = self.receiving, None
        if request is not None:
            request.end()
        self._events.message_done()
