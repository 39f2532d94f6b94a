"""HTTP/1.1 heads as bytes: the header policy of core/headers.py applied to raw header lists, in both
directions, plus the gateway's own answers (the pipeline's Answers, rewritten /history bodies).

The sets of dropped headers are derived from headers.REQUEST_DROP / RESPONSE_DROP, so the two data paths
cannot disagree on what crosses the gateway; what is added (Host, Origin, X-Forwarded-*) follows
headers.upstream_request_headers line for line.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus

from yarl import URL

from gateway.core.headers import (
    BACKEND_HEADER,
    INSTANCE_HEADER,
    REQUEST_DROP,
    RESPONSE_DROP,
    ROUTE_HEADER,
    instance_value,
    origin_of,
)
from gateway.datapath.fast.request import RequestHead, connection_tokens
from gateway.pipeline.decision import Answer

Headers = list[tuple[bytes, bytes, bytes]]  # (lower-cased name, name, value) as a backend sent them

CRLF = b"\r\n"
# The fast server answers `Expect: 100-continue` itself, when it starts reading the body.
REQUEST_DROP_BYTES = frozenset(name.encode() for name in REQUEST_DROP) | {b"expect"}
# Handshake headers for the backend socket: extensions are not offered, so no frame arrives compressed and the
# relay can read the `executed` frames it must rewrite (the aiohttp path does not offer them either).
WEBSOCKET_DROP_BYTES = REQUEST_DROP_BYTES | {b"sec-websocket-extensions"}
READ_WHOLE_DROP_BYTES = REQUEST_DROP_BYTES | {b"accept-encoding"}
RESPONSE_DROP_BYTES = frozenset(name.encode() for name in RESPONSE_DROP)
# The gateway's own app answers with X-Comfy-Backend and X-Comfy-Route that are the gateway's to say: kept.
APP_RESPONSE_DROP_BYTES = RESPONSE_DROP_BYTES - {BACKEND_HEADER.lower().encode(), ROUTE_HEADER.lower().encode()}
UPGRADE_LINES = b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
JSON_CONTENT_TYPE = b"application/json; charset=utf-8"  # what aiohttp's json_response sends
NO_BODY_STATUSES = frozenset({204, 304})

_status_lines: dict[tuple[int, bytes], bytes] = {}


def status_line(status: int, reason: bytes | None = None) -> bytes:
    """`HTTP/1.1 200 OK\\r\\n`, with the backend's own reason phrase when it gave one."""
    key = (status, reason or b"")
    line = _status_lines.get(key)
    if line is None:
        if not reason:
            try:
                reason = HTTPStatus(status).phrase.encode()
            except ValueError:
                reason = b"Unknown"
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        if len(_status_lines) < 256:
            _status_lines[key] = line
    return line


class DateHeader:
    """The Date line, formatted once a second rather than once a response."""

    __slots__ = ("_second", "_line")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"Date: " + formatdate(now, usegmt=True).encode() + CRLF
        return self._line


DATE = DateHeader()


class BackendWire:
    """What every request to one backend carries, computed once: Host, Origin, the URL's path prefix, the
    Basic credentials of a URL like http://user:password@host (as aiohttp's client sends them), and the
    gateway's instance line (core/headers.py INSTANCE_HEADER)."""

    __slots__ = ("name", "host", "port", "ssl", "host_header", "origin", "path_prefix", "authorization", "instance")

    def __init__(self, name: str, url: URL, instance_id: str = "") -> None:
        self.name = name
        self.host = url.raw_host or ""
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl = url.scheme == "https"
        host = f"[{self.host}]" if ":" in self.host else self.host
        if not url.is_default_port():
            host = f"{host}:{url.port}"
        self.host_header = host.encode("latin-1")
        self.origin = origin_of(url).encode("latin-1")
        self.path_prefix = url.raw_path.rstrip("/").encode("latin-1")
        self.authorization = b""
        if url.user is not None:
            credentials = f"{url.user}:{url.password or ''}".encode("latin-1")
            self.authorization = b"Authorization: Basic " + base64.b64encode(credentials) + CRLF
        self.instance = (
            f"{INSTANCE_HEADER}: {instance_value(instance_id, name)}\r\n".encode("latin-1") if instance_id else b""
        )


def forwarded_lines(head: RequestHead, client_ip: bytes | None) -> bytes:
    """X-Forwarded-For/Proto/Host exactly as headers.upstream_request_headers builds them."""
    index = head.index
    forwarded_for = index.get(b"x-forwarded-for")
    if client_ip:
        forwarded_for = forwarded_for + b", " + client_ip if forwarded_for else client_ip
    lines = b"X-Forwarded-For: " + forwarded_for + CRLF if forwarded_for else b""
    lines += b"X-Forwarded-Proto: " + index.get(b"x-forwarded-proto", b"http") + CRLF
    host = index.get(b"host")
    if host is not None:
        lines += b"X-Forwarded-Host: " + index.get(b"x-forwarded-host", host) + CRLF
    return lines


def body_framing(head: RequestHead, body: bytes | None) -> bytes:
    """How the forwarded request's body is delimited: as read, as declared, or re-chunked."""
    if body is not None:
        return b"Content-Length: %d\r\n" % len(body)
    if head.content_length is not None:
        return b"Content-Length: %d\r\n" % head.content_length
    if head.chunked:
        return b"Transfer-Encoding: chunked\r\n"
    return b""


def backend_request_head(
    head: RequestHead,
    wire: BackendWire,
    target: bytes,
    *,
    client_ip: bytes | None,
    drop_headers: frozenset[bytes],
    body: bytes | None = None,
    read_whole: bool = False,
) -> bytes:
    """The request line and headers for a backend: policy applied, Host/Origin made to agree, X-Forwarded-*.
    An answer the gateway reads whole to rewrite (`read_whole`) is asked for uncompressed."""
    websocket = head.websocket
    drop = WEBSOCKET_DROP_BYTES if websocket else READ_WHOLE_DROP_BYTES if read_whole else REQUEST_DROP_BYTES
    listed = connection_tokens(head.index[b"connection"]) if b"connection" in head.index else ()
    parts = [head.method.encode(), b" ", wire.path_prefix, target, b" HTTP/1.1\r\nHost: ", wire.host_header, CRLF]
    for lower, name, value in head.headers:
        if lower in drop or lower in drop_headers or lower in listed:
            continue
        if lower == b"origin":
            value = wire.origin
        elif lower == b"authorization" and wire.authorization:
            continue  # the backend's own credentials, from its URL, go instead
        parts += (name, b": ", value, CRLF)
    parts.append(wire.authorization)
    parts.append(wire.instance)
    if read_whole:
        parts.append(b"Accept-Encoding: identity\r\n")
    parts.append(forwarded_lines(head, client_ip))
    if websocket:
        parts.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
    else:
        parts.append(body_framing(head, body))
    parts.append(CRLF)
    return b"".join(parts)


def app_request_head(head: RequestHead, *, client_ip: bytes | None, last: bool = False) -> bytes:
    """The request for the in-process aiohttp app, which answers the gateway's own routes: as the client sent
    it, hop-by-hop headers removed, X-Forwarded-* added as for a backend. HTTP/1.1 requires a Host, which an
    HTTP/1.0 client may not have sent. A WebSocket upgrade (/ws, which the app's fan-in serves) stays one, its
    extensions not offered, as to a backend. `last`: the app closes the connection after its answer unless it
    switched protocols (nothing a client sends after an upgrade is HTTP)."""
    websocket = head.websocket
    drop = WEBSOCKET_DROP_BYTES if websocket else REQUEST_DROP_BYTES
    listed = connection_tokens(head.index[b"connection"]) if b"connection" in head.index else ()
    parts = [head.method.encode(), b" ", head.target, b" HTTP/1.1\r\n"]
    if b"host" not in head.index:
        parts.append(b"Host: localhost\r\n")
    for lower, name, value in head.headers:
        if lower in drop and lower != b"host" or lower in listed:
            continue
        parts += (name, b": ", value, CRLF)
    parts.append(forwarded_lines(head, client_ip))
    if websocket:
        parts.append(b"Connection: Upgrade, close\r\nUpgrade: websocket\r\n" if last else UPGRADE_LINES)
    else:
        parts.append(body_framing(head, None))
    parts.append(CRLF)
    return b"".join(parts)


def response_headers(upstream: Headers, drop: frozenset[bytes] = RESPONSE_DROP_BYTES) -> bytes:
    """Backend header lines the client may see: hop-by-hop and what this server sets itself removed."""
    lines = []
    listed = b""
    for lower, name, value in upstream:
        if lower in drop:
            if lower == b"connection":
                listed += b"," + value
            continue
        lines.append((lower, name + b": " + value + CRLF))
    if listed:  # headers the backend named in Connection are hop-by-hop too (RFC 9110 §7.6.1)
        tokens = connection_tokens(listed)
        return b"".join(line for lower, line in lines if lower not in tokens)
    return b"".join(line for _, line in lines)


def routing_lines(backend: str | None, source: str | None, extra: Mapping[str, str] | None = None) -> bytes:
    """X-Comfy-Backend and X-Comfy-Route (and any other gateway header) as header lines."""
    lines = b""
    if backend:
        lines += f"{BACKEND_HEADER}: {backend}\r\n".encode("latin-1")
    if source:
        lines += f"{ROUTE_HEADER}: {source}\r\n".encode("latin-1")
    return lines + header_lines(extra or {})


def header_lines(headers: Mapping[str, str]) -> bytes:
    return b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items())


def connection_line(*, keep_alive: bool, http10: bool) -> bytes:
    if not keep_alive:
        return b"Connection: close\r\n"
    return b"Connection: keep-alive\r\n" if http10 else b""


def answer_bytes(
    status: int,
    body: bytes,
    *,
    content_type: bytes,
    lines: bytes = b"",
    keep_alive: bool,
    http10: bool,
    head_only: bool = False,
) -> bytes:
    """A whole answer the gateway makes itself (JSON, errors, rewritten history)."""
    return b"".join(
        (
            status_line(status),
            b"Content-Type: ",
            content_type,
            CRLF,
            lines,
            DATE.line(),
            b"Content-Length: %d\r\n" % len(body),
            connection_line(keep_alive=keep_alive, http10=http10),
            CRLF,
            b"" if head_only else body,
        )
    )


def header_value(headers: Headers, lower: bytes) -> str:
    """The first value of one header of a backend's answer ("" when it is absent)."""
    for name, _, value in headers:
        if name == lower:
            return value.decode("latin-1")
    return ""


def whole_answer(
    status: int,
    reason: bytes,
    upstream: Headers,
    body: bytes,
    *,
    content_type: bytes | None,
    lines: bytes,
    keep_alive: bool,
    http10: bool,
    head_only: bool = False,
    drop: frozenset[bytes] = RESPONSE_DROP_BYTES,
) -> bytes:
    """A backend's answer read whole, sent on with its own headers (the policy applied: a redirect keeps its
    Location); `content_type` replaces the backend's when the gateway rewrote the body."""
    if content_type is not None:
        upstream = [h for h in upstream if h[0] != b"content-type"]
        typed = b"Content-Type: " + content_type + CRLF
    else:
        typed = b""
    length = b"" if status in NO_BODY_STATUSES else b"Content-Length: %d\r\n" % len(body)
    return b"".join(
        (
            status_line(status, reason),
            response_headers(upstream, drop),
            typed,
            lines,
            DATE.line(),
            length,
            connection_line(keep_alive=keep_alive, http10=http10),
            CRLF,
            b"" if head_only else body,
        )
    )


def answer_of(answer: Answer, *, keep_alive: bool, http10: bool, head_only: bool = False) -> bytes:
    """An Answer of the pipeline's (an error, a merged or fanned-out result) as bytes."""
    return answer_bytes(
        answer.status,
        answer.body,
        content_type=answer.content_type.encode("latin-1"),
        lines=header_lines(answer.headers),
        keep_alive=keep_alive,
        http10=http10,
        head_only=head_only,
    )


def chunk(data: bytes) -> tuple[bytes, bytes, bytes]:
    """One chunk of a chunked body, as three buffers for writelines (the data itself is not copied)."""
    return (b"%x\r\n" % len(data), data, CRLF)


LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
