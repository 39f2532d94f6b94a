"""Typed application and request keys of the aiohttp side, declared once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway.config.settings import WebSocketSettings
    from gateway.core.exchange import Exchange
    from gateway.datapath.aio.forward import Forwarder
    from gateway.observe.health import HealthMonitor
    from gateway.observe.metrics import GatewayMetrics
    from gateway.runtime import Runtime

RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")
HEALTH: web.AppKey[HealthMonitor] = web.AppKey("health")
METRICS: web.AppKey[GatewayMetrics] = web.AppKey("metrics")
FORWARDER: web.AppKey[Forwarder] = web.AppKey("forwarder")
OPEN_SOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("open_sockets")
WEBSOCKETS: web.AppKey[WebSocketSettings] = web.AppKey("websockets")
# The app's own loopback ports the fast path relays to, where a platform has no unix sockets: a connection to one
# comes from the fast path, which names its client in X-Forwarded-For (facts.client_ip_of).
RELAY_LISTENERS: web.AppKey[set[tuple[str, int]]] = web.AppKey("relay_listeners")
EXCHANGE: web.RequestKey[Exchange] = web.RequestKey("exchange")
