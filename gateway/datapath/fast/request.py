"""One parsed request head on the fast path (as the pipeline reads it: classify.RequestFacts), and the
framing checks it must pass before anything is forwarded.

Header names and values stay bytes as the wire gave them; the few the pipeline reads are decoded on demand
exactly as aiohttp decodes them (UTF-8, surrogateescape), and path and query are decoded by yarl, as
aiohttp's request.path and request.query are, so both data paths make the same decisions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

from multidict import MultiDictProxy
from yarl import URL

from gateway.core.errors import BadRequest, BodyTooLarge, GatewayError
from gateway.core.exchange import Exchange
from gateway.pipeline.classify import is_websocket_upgrade

_LOWER_NAMES: dict[str, bytes] = {}
_LF: Final = b"\n"  # what joins a head key's parts


class RequestHead:
    """Method, target and headers of one request, as received."""

    __slots__ = (
        "method",
        "target",
        "raw_path",
        "query_string",
        "http10",
        "headers",
        "index",
        "keep_alive",
        "content_length",
        "chunked",
        "has_body",
        "expect_continue",
        "upgrade",
        "websocket",
        "client_ip",
        "_keyed",
        "_key",
        "_path",
        "_query",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes, bytes]],
        index: dict[bytes, bytes],
        *,
        http10: bool,
        keep_alive: bool,
        upgrade: bool,
        keyed: bool = False,
    ) -> None:
        """`keyed`: the head is small enough to be kept by its key (head_key)."""
        self.method = method
        self.target = target
        path, _, query = target.partition(b"?")
        self.raw_path = path.decode("latin-1")
        self.query_string = query.decode("latin-1")
        self.http10 = http10
        self.headers = headers  # (lower-cased name, name, value), in order
        self.index = index  # lower-cased name -> first value (repeats of a few joined, see connection.py)
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.client_ip: str | None = None  # set by the dispatcher from its connection, before head_key is asked
        self._keyed = keyed
        self._key: bytes | tuple[object, ...] | None = None
        self._path: str | None = None
        self._query: MultiDictProxy[str] | None = None
        self.content_length, self.chunked = framing_of(index)
        self.has_body = self.chunked or bool(self.content_length)
        self.expect_continue = index.get(b"expect", b"").lower() == b"100-continue"
        self.websocket = upgrade and is_websocket_upgrade(
            method, self.get("Upgrade"), self.get("Connection"), b"sec-websocket-key" in index
        )

    def get(self, name: str, default: str | None = None) -> str | None:
        """A header value by case-insensitive name, decoded as aiohttp decodes it (first one wins)."""
        key = _LOWER_NAMES.get(name)
        if key is None:
            key = name.lower().encode("latin-1")
            if len(_LOWER_NAMES) < 64:  # the few names the pipeline asks for
                _LOWER_NAMES[name] = key
        value = self.index.get(key)
        return default if value is None else value.decode("utf-8", "surrogateescape")

    def header(self, name: str) -> str | None:
        """The name the pipeline's RequestFacts reads by."""
        return self.get(name)

    def release(self) -> None:
        """A WebSocket's head, once the socket is open: nothing reads its headers again, so they are let go."""
        self.headers, self.index = [], {}
        self._key = self._query = None
        self._keyed = False  # no key made from what is left

    @property
    def head_key(self) -> bytes | tuple[object, ...] | None:
        """RequestFacts.head_key: the method, the target and every header as parsed (names in the client's
        case), and the address; None for a head too large to keep.

        One bytes object, its parts joined by LF, which none of them can hold (the parser refuses it in a
        method, a target and a header, and an address has none): its hash is worked out once and kept by the
        object, where a tuple's is worked out again over every part each time a kept head is looked up (three
        times a request). A part holding LF after all would be kept apart by a tuple instead."""
        if not self._keyed:
            return None
        key = self._key
        if key is None:  # asked by the guard and again by the forward: made once
            parts = [self.method.encode("latin-1"), self.target,
                     b"\x00" if self.client_ip is None else self.client_ip.encode("latin-1")]
            for _, name, value in self.headers:
                parts.append(name)
                parts.append(value)
            joined = _LF.join(parts)
            if joined.count(_LF) == len(parts) - 1:
                key = self._key = joined
            else:
                key = self._key = (self.method, self.target, self.client_ip, tuple(self.headers))
        return key

    @property
    def raw_target(self) -> str:
        return self.target.decode("latin-1")

    @property
    def path(self) -> str:
        """The percent-decoded path, as aiohttp's `request.path` (what classify() and the log see)."""
        if self._path is None:
            raw = self.raw_path
            self._path = URL.build(path=raw, encoded=True).path if "%" in raw else raw
        return self._path

    @property
    def query(self) -> MultiDictProxy[str]:
        """The decoded query, as aiohttp's `request.query` (`+` is a space)."""
        if self._query is None:
            self._query = URL.build(query_string=self.query_string, encoded=True).query
        return self._query

    def query_value(self, name: str) -> str | None:
        """The first value of one query parameter, without decoding the whole query when it is absent."""
        if name not in self.query_string:
            return None
        return self.query.get(name)


def framing_of(index: dict[bytes, bytes]) -> tuple[int | None, bool]:
    """(Content-Length, chunked) of a request, refusing what could be read two ways (request smuggling).

    llhttp already rejects both headers together and a repeated Content-Length; this is the second line, and
    the place that turns a transfer coding the gateway cannot relay into a clear 400.
    """
    length = index.get(b"content-length")
    coding = index.get(b"transfer-encoding")
    if length is not None and coding is not None:
        raise BadRequest("a request may not carry both Content-Length and Transfer-Encoding", details="headers")
    if coding is not None:
        if coding.strip().lower() != b"chunked":
            raise BadRequest(f"unsupported Transfer-Encoding {coding.decode('latin-1')!r}", details="headers")
        return None, True
    if length is None:
        return None, False
    if not length.isdigit() or len(length) > 18:
        raise BadRequest("Content-Length is not a non-negative integer", details="headers")
    return int(length), False


def connection_tokens(value: bytes) -> frozenset[bytes]:
    return frozenset(token.strip().lower() for token in value.split(b",") if token.strip())


class BodySink(Protocol):
    """Where a request body goes once its request is being served (a relay to a backend or the app)."""

    def client_body(self, data: bytes) -> None: ...

    def client_body_end(self) -> None: ...


class IncomingRequest:
    """A request on a client connection: its head, its body as it arrives, and the record of the exchange.

    Body bytes that arrive before anything can take them (the backend connection is not ready yet, or the
    request waits behind a pipelined one) are held in `parts`; the connection stops reading past
    Limits.max_early_body_bytes. A request whose body must be read whole (POST /prompt) holds all of it.
    """

    __slots__ = (
        "head",
        "started",
        "exchange",
        "sink",
        "parts",
        "held",
        "received",
        "complete",
        "whole",
        "continued",
        "refusal",
    )

    def __init__(self, head: RequestHead, started: float) -> None:
        self.head = head
        self.started = started  # time.perf_counter() when the head was complete
        self.exchange: Exchange | None = None  # None for requests the aiohttp app records itself
        self.sink: BodySink | None = None
        self.parts: list[bytes] = []
        self.held = 0  # bytes in parts
        self.received = 0  # body bytes received so far
        self.complete = not head.has_body  # the whole body has been received
        self.whole: Callable[[bytes], None] | None = None  # called with the body once complete
        self.continued = False  # a 100 Continue was sent
        self.refusal: GatewayError | None = None  # answered with this, unread body dropped as it arrives

    def receive(self, data: bytes, limit: int) -> None:
        self.received += len(data)
        if self.refusal is not None:
            return
        if self.received > limit:
            raise BodyTooLarge(f"Maximum request body size {limit} exceeded.")
        if self.sink is not None:
            self.sink.client_body(data)
        else:
            self.parts.append(data)
            self.held += len(data)

    def end(self) -> None:
        self.complete = True
        if self.sink is not None:
            self.sink.client_body_end()
        elif self.whole is not None:
            whole, self.whole = self.whole, None
            whole(self.take())

    def take(self) -> bytes:
        body = b"".join(self.parts)
        self.parts, self.held = [], 0
        return body

    def attach(self, sink: BodySink) -> None:
        """From now on the body goes to `sink`, starting with what was held."""
        parts, self.parts, self.held = self.parts, [], 0
        for part in parts:
            sink.client_body(part)
        self.sink = sink
        if self.complete and self.head.has_body:
            sink.client_body_end()

    def read_whole(self, then: Callable[[bytes], None]) -> None:
        """Call `then(body)` once the whole body is in (at once if it already is)."""
        if self.complete:
            then(self.take())
        else:
            self.whole = then
