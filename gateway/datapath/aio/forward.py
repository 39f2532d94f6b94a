"""Requests to backends on aiohttp's client: a client's request streamed to one backend and its answer
streamed back (`stream`, the aiohttp data path's Forward), and whole answers read for the pipeline
(`fetch`, the BackendCalls seam every merge, probe, fan-out and check uses, on both data paths).

Error mapping happens here, in one place: connect failures → UpstreamError (502, kind connect), timeouts →
UpstreamTimeout (504), anything else the backend broke → UpstreamError (502, kind protocol), each naming
the backend.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway.backends.calls import Reply
from gateway.backends.retry import RetryBudget
from gateway.backends.table import Backend, CallKind
from gateway.core.errors import BodyTooLarge, UpstreamError, UpstreamTimeout
from gateway.core.headers import INSTANCE_HEADER, client_response_headers, instance_value
from gateway.core.redact import shown_url
from gateway.datapath.aio.backend_socket import BackendSocket
from gateway.datapath.aio.keys import EXCHANGE

log = logging.getLogger("comfy_gateway.forward")

CHUNK_BYTES = 64 * 1024
LARGE_BYTES_BODY = 1024 * 1024
# aiohttp adds these unless told not to; a forwarded request must carry only what the client sent.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def create_client_session(*, limit_per_host: int = 100) -> aiohttp.ClientSession:
    """One pooled session for every backend: no cookie jar (clients' cookies are theirs), no decompression
    (compressed bodies pass through as sent), redirects never followed (done per request). Its WebSockets have
    their frames split as they come (backend_socket.py)."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=limit_per_host, enable_cleanup_closed=True)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None),
        ws_response_class=BackendSocket,
    )


async def _capped(stream: aiohttp.StreamReader, limit: int) -> AsyncIterator[bytes]:
    """Stream a request body on, refusing it once it passes `limit` bytes (chunked bodies have no length up front)."""
    seen = 0
    async for chunk in stream.iter_chunked(CHUNK_BYTES):
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge(f"Maximum request body size {limit} exceeded.")
        yield chunk


def client_timeout(backend: Backend, kind: CallKind, total_seconds: float | None = None) -> aiohttp.ClientTimeout:
    """aiohttp's part of a backend's timeouts: connect, the silence allowed between bytes (sock_read, which
    also runs while the head is awaited) and the total; `_UpstreamCall` bounds the wait for the head itself.
    `total_seconds` caps the call below the backend's own total."""
    timeouts = backend.timeouts
    totals = [t for t in (timeouts.total_seconds, total_seconds) if t is not None]
    return aiohttp.ClientTimeout(
        total=min(totals) if totals else None,
        sock_connect=timeouts.connect_seconds,
        sock_read=timeouts.idle(kind),
    )


class InFlight(Protocol):
    def inc(self) -> None: ...

    def dec(self) -> None: ...


class Forwarder:
    """Owns the pooled ClientSession; the one narrow I/O seam of the HTTP data path.

    `in_flight` maps a backend name to the gauge of calls to it now in progress (GatewayMetrics.in_flight_gauges).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        max_body_bytes: int,
        max_ws_message_bytes: int,
        in_flight: Mapping[str, InFlight] | None = None,
        instance_id: str = "",
        retries: RetryBudget | None = None,
        socket_session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.session = session
        self.socket_session = socket_session if socket_session is not None else session  # backend WebSockets
        self.instance_id = instance_id  # sent on every whole-answer call, as the data paths send it (INSTANCE_HEADER)
        # A call whose connection was refused goes again within this budget (backends/retry.py); one closed
        # before any answer byte is aiohttp's own to repeat, once and only when idempotent (RFC 9112 9.3.1).
        self.retries = retries if retries is not None else RetryBudget()
        self.max_body_bytes = max_body_bytes
        self.max_ws_message_bytes = max_ws_message_bytes  # one WebSocket message from a client
        self.in_flight: Mapping[str, InFlight] = in_flight if in_flight is not None else {}

    def request_body(self, request: web.Request, body: bytes | None) -> bytes | AsyncIterator[bytes] | None:
        """The body to send: bytes the pipeline already read, else the client's stream (capped), else none."""
        if body is not None:
            return body
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise BodyTooLarge(f"Maximum request body size {self.max_body_bytes} exceeded.")
        if request.body_exists:
            return _capped(request.content, self.max_body_bytes)
        return None

    async def stream(
        self,
        request: web.Request,
        backend: Backend,
        target: str,
        headers: CIMultiDict[str],
        *,
        body: bytes | None,
        extra_response_headers: Mapping[str, str],
        kind: CallKind = "api",
    ) -> web.StreamResponse:
        """Forward and stream the answer to the client as it arrives; nothing is buffered whole."""
        data = self.request_body(request, body)
        if isinstance(body, bytes):
            headers["Content-Length"] = str(len(body))
        elif request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
        async with self._send(backend, request.method, target, headers, data, kind=kind) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            response.headers.extend(client_response_headers(upstream.headers))
            response.headers.update(extra_response_headers)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            exchange = request.get(EXCHANGE)  # body bytes sent, and a backend that broke off, are its facts
            if request.method != "HEAD":
                sent = 0
                try:
                    async for chunk in upstream.content.iter_chunked(CHUNK_BYTES):
                        await response.write(chunk)
                        sent += len(chunk)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    # The status line is already out: the only honest signal left is a cut connection.
                    log.warning("backend %s broke off %s %s mid-body: %r", backend.name, request.method, target, exc)
                    client_gone = request.transport is None or request.transport.is_closing()
                    if exchange is not None:
                        exchange.bytes_out = sent
                        if not client_gone:
                            failure = "timeout" if isinstance(exc, asyncio.TimeoutError) else "protocol"
                            exchange.upstream_errors += ((backend.name, failure),)
                    if request.transport is not None:
                        request.transport.close()
                    return response
                if exchange is not None:
                    exchange.bytes_out = sent
            await response.write_eof()
            return response

    async def fetch(
        self,
        backend: Backend,
        method: str,
        target: str,
        headers: Mapping[str, str] | None = None,
        *,
        body: bytes | None = None,
        max_bytes: int | None = None,
        timeout_seconds: float | None = None,
        kind: CallKind = "api",
        retry: bool = True,
    ) -> Reply:
        """Send and read the whole answer (bounded by `max_bytes`), for bodies the gateway must parse."""
        limit = max_bytes if max_bytes is not None else self.max_body_bytes
        send_headers = CIMultiDict(headers or {})
        # A body we must parse cannot be compressed.
        send_headers["Accept-Encoding"] = "identity"
        if self.instance_id:
            send_headers[INSTANCE_HEADER] = instance_value(self.instance_id, backend.name)
        if body is not None:
            send_headers["Content-Length"] = str(len(body))
        async with self._send(
            backend, method, target, send_headers, body, kind=kind, total_seconds=timeout_seconds, retry=retry
        ) as upstream:
            if upstream.content_length is not None and upstream.content_length > limit:
                raise UpstreamError(
                    f"backend {backend.name!r} answered {target} with {upstream.content_length} bytes, "
                    f"over the {limit}-byte limit for bodies the gateway rewrites",
                    backend=backend.name,
                    kind="protocol",
                )
            try:
                payload = await upstream.content.read(limit + 1)
                while len(payload) <= limit and not upstream.content.at_eof():
                    more = await upstream.content.read(limit + 1 - len(payload))
                    if not more:
                        break
                    payload += more
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise self._map_error(backend, target, exc) from exc
            if len(payload) > limit:
                raise UpstreamError(
                    f"backend {backend.name!r} answered {target} with more than {limit} bytes",
                    backend=backend.name,
                    kind="protocol",
                )
            return Reply(upstream.status, upstream.reason or "", upstream.headers, payload)

    def _send(
        self,
        backend: Backend,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        data: bytes | AsyncIterator[bytes] | None,
        *,
        kind: CallKind = "api",
        total_seconds: float | None = None,
        retry: bool = True,
    ) -> _UpstreamCall:
        timeout = client_timeout(backend, kind, total_seconds)
        first_byte = backend.timeouts.first_byte(kind)
        return _UpstreamCall(self, backend, method, target, headers, data, timeout, first_byte, retry=retry)

    @staticmethod
    def _map_error(backend: Backend, target: str, exc: BaseException) -> UpstreamError:
        if isinstance(exc, asyncio.TimeoutError):
            return UpstreamTimeout(
                f"backend {backend.name!r} at {shown_url(backend.url)} did not answer {target} in time",
                backend=backend.name,
            )
        connect = isinstance(exc, (aiohttp.ClientConnectorError, ConnectionRefusedError))
        return UpstreamError(
            f"backend {backend.name!r} at {shown_url(backend.url)} failed on {target}: {exc.__class__.__name__}: {exc}",
            backend=backend.name,
            kind="connect" if connect else "protocol",
        )


def _cause_of_type(exc: BaseException, kind: type[BodyTooLarge]) -> BodyTooLarge | None:
    """aiohttp wraps an error raised while streaming the request body; find ours in the chain."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class _UpstreamCall:
    """`async with` around one upstream request, mapping client errors to the gateway's error tree."""

    def __init__(
        self,
        forwarder: Forwarder,
        backend: Backend,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        data: bytes | AsyncIterator[bytes] | None,
        timeout: aiohttp.ClientTimeout,
        first_byte_seconds: float,
        *,
        retry: bool = True,
    ) -> None:
        self._f, self._backend, self._method, self._target = forwarder, backend, method, target
        self._headers, self._data, self._timeout = headers, data, timeout
        self._first_byte_seconds = first_byte_seconds
        self._retry = retry
        self._response: aiohttp.ClientResponse | None = None
        self._in_flight = forwarder.in_flight.get(backend.name)

    async def __aenter__(self) -> aiohttp.ClientResponse:
        data: bytes | io.BytesIO | AsyncIterator[bytes] | None = self._data
        if isinstance(data, bytes) and len(data) > LARGE_BYTES_BODY:
            data = io.BytesIO(data)  # aiohttp writes large bytes bodies in one blocking call otherwise
        if self._in_flight is not None:
            self._in_flight.inc()
        if self._retry:
            self._f.retries.called(self._backend.name)
        try:
            return await self._request(data)
        except BaseException:
            if self._in_flight is not None:
                self._in_flight.dec()
            raise

    async def _request(self, data: bytes | io.BytesIO | AsyncIterator[bytes] | None) -> aiohttp.ClientResponse:
        """The request, sent again after a jittered backoff while its connection is refused and the retry
        budget allows (nothing of it was sent, so nothing can run twice)."""
        in_hand = isinstance(data, (bytes, io.BytesIO)) or data is None
        attempt = 0
        while True:
            try:
                return await self._request_once(data)
            except UpstreamError as err:
                refused = err.kind == "connect" and isinstance(err.__cause__, aiohttp.ClientConnectorError)
                if not self._retry or not refused:
                    raise
                attempt += 1
                wait = self._f.retries.retry_after(self._backend.name, self._method, in_hand, "connect", attempt)
                if wait is None:
                    raise
                log.info(
                    "retrying %s %s on backend %s in %.0f ms: %s",
                    self._method, self._target, self._backend.name, wait * 1000, err.message,
                )
                await asyncio.sleep(wait)

    async def _request_once(self, data: bytes | io.BytesIO | AsyncIterator[bytes] | None) -> aiohttp.ClientResponse:
        """Connect, send, and wait for the answer's head: its first byte may take first_byte_seconds from the
        request's last byte (for a streamed body, from its end, however long the client takes to send it)."""
        loop = asyncio.get_running_loop()
        connect_seconds = self._backend.timeouts.connect_seconds
        try:
            async with asyncio.timeout(None) as head:
                if isinstance(data, (bytes, io.BytesIO)) or data is None:
                    head.reschedule(loop.time() + connect_seconds + self._first_byte_seconds)
                else:
                    data = self._then_first_byte(data, head)
                self._response = await self._f.session.request(
                    self._method,
                    self._backend.target(self._target),
                    headers=self._headers,
                    data=data,
                    allow_redirects=False,
                    skip_auto_headers=_SKIP_AUTO_HEADERS,
                    timeout=self._timeout,
                    compress=None,
                )
        except BodyTooLarge:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            too_large = _cause_of_type(exc, BodyTooLarge)
            if too_large is not None:
                raise too_large from None
            raise Forwarder._map_error(self._backend, self._target, exc) from exc
        return self._response

    async def _then_first_byte(self, body: AsyncIterator[bytes], head: asyncio.Timeout) -> AsyncIterator[bytes]:
        async for chunk in body:
            yield chunk
        head.reschedule(asyncio.get_running_loop().time() + self._first_byte_seconds)

    async def __aexit__(self, *exc_info: object) -> None:
        if self._in_flight is not None:
            self._in_flight.dec()
        if self._response is not None:
            self._response.release()
