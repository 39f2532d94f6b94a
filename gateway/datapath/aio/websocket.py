"""The client's side of a WebSocket on /ws: open the backend it selected, upgrade the client, then hand both to
the fan-in (fanin.py), which follows the client's prompts on every backend until one side ends it.

The backend socket is opened first, so a backend that is down or refuses the upgrade gives the client a plain
HTTP error instead of a socket that opens and dies.

A client's message past max_message_bytes closes its socket with 1009, a frame it may not send with 1002, and
the backends' sockets get the same code: aiohttp's reader checks every rule of RFC 6455 §5 but masking, which
client_socket.py adds. Messages from backends have no size limit (full-size images).
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from aiohttp import WSCloseCode, web

from gateway.backends.table import Backend, BackendTable
from gateway.config.settings import WebSocketSettings
from gateway.datapath.aio.client_socket import ClientSocket
from gateway.datapath.aio.fanin import FanIn, HeadersFor, open_upstream
from gateway.datapath.aio.keys import OPEN_SOCKETS
from gateway.observe.metrics import FanInMeter
from gateway.state.followers import Followers


async def serve_websocket(
    request: web.Request,
    session: aiohttp.ClientSession,
    backend: Backend,
    backends: BackendTable,
    target: str,
    client_id: str,
    headers_for: HeadersFor,
    *,
    response_headers: Mapping[str, str],
    open_sockets: set[web.WebSocketResponse],
    settings: WebSocketSettings,
    followers: Followers,
    meter: FanInMeter,
    max_message_bytes: int,
    also_follow: tuple[str, ...] = (),
) -> web.WebSocketResponse:
    """Open the selected backend's socket, upgrade the client, follow its prompts until one side closes; a
    client's message may be up to `max_message_bytes` long (settings.limits.max_ws_message_bytes)."""
    protocols = tuple(p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip())
    heartbeat = settings.heartbeat_seconds or None
    upstream = await open_upstream(session, backend, target, headers_for(backend), protocols, heartbeat)
    client = ClientSocket(
        protocols=(upstream.protocol,) if upstream.protocol else (),
        # aiohttp refuses a message of max_msg_size bytes already; the fast path, only a longer one.
        max_msg_size=max_message_bytes + 1,
        autoping=True,
        heartbeat=heartbeat,
    )
    client.headers.update(response_headers)
    try:
        await client.prepare(request)
    except Exception:
        await upstream.close()
        raise
    fan_in = FanIn(
        client,
        upstream,
        client_id=client_id,
        primary=backend,
        backends=backends,
        session=session,
        target=target,
        headers_for=headers_for,
        protocols=protocols,
        settings=settings,
        followers=followers,
        meter=meter,
        peer=request.remote,
        also_follow=also_follow,
    )
    client_sockets = meter.relay(backend.name).client_sockets
    open_sockets.add(client)
    client_sockets.inc()
    try:
        await fan_in.run()
    finally:
        client_sockets.dec()
        open_sockets.discard(client)
    return client


async def close_websockets(app: web.Application) -> None:
    """Tell every client socket the gateway is going away (1001), so each can open again elsewhere."""
    open_sockets: set[web.WebSocketResponse] = app[OPEN_SOCKETS]
    for ws in list(open_sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway shutting down")
