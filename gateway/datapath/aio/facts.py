"""An aiohttp request as the pipeline reads it (classify.RequestFacts), for the proxy and the gateway's own
routes alike."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiohttp import web

from gateway.datapath.aio.keys import RELAY_LISTENERS
from gateway.pipeline.classify import is_websocket_upgrade


class AioRequest:
    """An aiohttp request as the pipeline reads it (classify.RequestFacts)."""

    __slots__ = ("_request",)

    def __init__(self, request: web.Request) -> None:
        self._request = request

    @property
    def method(self) -> str:
        return self._request.method

    @property
    def path(self) -> str:
        return self._request.path

    @property
    def raw_target(self) -> str:
        return self._request.raw_path  # aiohttp's raw_path holds the query too

    @property
    def query(self) -> Mapping[str, str]:
        return self._request.query

    @property
    def websocket(self) -> bool:
        headers = self._request.headers
        return is_websocket_upgrade(
            self._request.method, headers.get("Upgrade"), headers.get("Connection"), "Sec-WebSocket-Key" in headers
        )

    @property
    def client_ip(self) -> str | None:
        return client_ip_of(self._request)

    def header(self, name: str) -> str | None:
        return self._request.headers.get(name)

    def query_value(self, name: str) -> str | None:
        return self._request.query.get(name)

    @property
    def head_key(self) -> None:
        return None  # aiohttp's request is not kept by its head: its decisions are made whole every time


def client_ip_of(request: web.Request) -> str | None:
    """Where the client connected from. On the app's private listener the client is the fast path, which has
    appended the address its own client connected from to X-Forwarded-For: that last entry is the one to
    trust (anything before it is what the client claimed). The private listener is a unix socket (its peers
    have no address) or, on a platform without them, a loopback port in RELAY_LISTENERS: there the peer's
    address is the fast path's own, and taking it would make every client look local."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and peer and not _on_relay_listener(request, transport):
        return str(peer[0])
    forwarded = request.headers.get("X-Forwarded-For")
    return forwarded.rsplit(",", 1)[-1].strip() if forwarded else None


def _on_relay_listener(request: web.Request, transport: asyncio.BaseTransport | None) -> bool:
    relays = request.app.get(RELAY_LISTENERS)
    if not relays or transport is None:
        return False
    local = transport.get_extra_info("sockname")
    return isinstance(local, tuple) and (str(local[0]), int(local[1])) in relays
