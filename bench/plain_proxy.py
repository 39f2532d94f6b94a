"""The benchmark's "Python peer": a plain aiohttp streaming proxy of about a hundred lines.

Selects the backend by the X-Comfy-Backend header (400 when unknown), strips hop-by-hop headers, streams
bodies both ways over keep-alive pools, relays WebSockets and counts requests with Prometheus. It is what a
competent engineer writes with aiohttp in an afternoon; the gateway must beat it.
Run: `python bench/plain_proxy.py --port 8300 --backend alpha=http://127.0.0.1:8301 --backend beta=...`
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
    "Transfer-Encoding", "Upgrade", "Host", "Content-Length"))
STREAM_CHUNK_BYTES = 64 * 1024

SESSIONS = web.AppKey("sessions", dict[str, aiohttp.ClientSession])
BACKENDS = web.AppKey("backends", dict[str, str])
REQUESTS = web.AppKey("requests", Counter)


def forward_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}


async def proxy(request: web.Request) -> web.StreamResponse:
    name = request.headers.get("X-Comfy-Backend", "")
    base = request.app[BACKENDS].get(name)
    if base is None:
        return web.json_response({"error": f"unknown backend {name!r}"}, status=400)
    session = request.app[SESSIONS][name]
    url = base + request.rel_url.raw_path_qs
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await relay_websocket(request, session, url, name)
    headers = forward_headers(request.headers)
    if request.content_length is not None:
        headers["Content-Length"] = str(request.content_length)
    body = request.content if request.can_read_body else None
    async with session.request(request.method, url, headers=headers, data=body,
                               allow_redirects=False) as upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                      headers=forward_headers(upstream.headers))
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(STREAM_CHUNK_BYTES):
            await response.write(chunk)
        await response.write_eof()
    request.app[REQUESTS].labels(name, request.method, str(upstream.status)).inc()
    return response


async def relay_websocket(request: web.Request, session: aiohttp.ClientSession, url: str,
                          name: str) -> web.WebSocketResponse:
    client = web.WebSocketResponse(compress=False, max_msg_size=16 * 1024 * 1024)
    async with session.ws_connect(url, headers=forward_headers(request.headers), compress=0,
                                  max_msg_size=16 * 1024 * 1024) as backend:
        await client.prepare(request)
        request.app[REQUESTS].labels(name, "GET", "101").inc()

        async def pump(source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                       sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
            async for message in source:
                if message.type == aiohttp.WSMsgType.TEXT:
                    await sink.send_str(message.data)
                elif message.type == aiohttp.WSMsgType.BINARY:
                    await sink.send_bytes(message.data)
            await sink.close()

        pumps = [asyncio.create_task(pump(client, backend)), asyncio.create_task(pump(backend, client))]
        _, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
    return client


def create_app(backends: dict[str, str]) -> web.Application:
    app = web.Application(client_max_size=100 * 1024 * 1024)
    app[BACKENDS] = backends
    app[REQUESTS] = Counter("plain_proxy_requests_total", "Proxied requests", ("backend", "method", "code"),
                            registry=CollectorRegistry())

    async def sessions(app: web.Application) -> AsyncIterator[None]:
        app[SESSIONS] = {
            name: aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=60),
                cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=300))
            for name in backends}
        yield
        for session in app[SESSIONS].values():
            await session.close()

    app.cleanup_ctx.append(sessions)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", action="append", required=True, metavar="NAME=URL")
    args = parser.parse_args()
    backends = dict(item.split("=", 1) for item in args.backend)
    web.run_app(create_app({k: v.rstrip("/") for k, v in backends.items()}), host=args.host, port=args.port,
                access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main()
