"""The live state of a running gateway, built once by create_app and read by every handler."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from gateway.backends.table import BackendTable
from gateway.datapath.aio.forward import Forwarder
from gateway.merge.history_parts import HistoryParts
from gateway.merge.cache import MergeCache
from gateway.observe.metrics import GatewayMetrics
from gateway.outputs.root import OutputRoot
from gateway.state.store import StateStore


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    """The request-facing knobs of selection, taken from settings once."""

    backend_header: str = "X-Comfy-Backend"
    backend_query_param: str = "backend"
    user_headers: tuple[str, ...] = ("comfy-user",)
    merge_timeout_seconds: float = 10.0  # a backend slower than this is left out of a merged answer
    probe_timeout_seconds: float = 5.0  # per backend, when looking for a prompt the gateway never saw


@dataclass(slots=True)
class Runtime:
    backends: BackendTable
    store: StateStore
    forwarder: Forwarder
    policy: RoutingPolicy
    metrics: GatewayMetrics
    output_root: OutputRoot | None = None
    merge_cache: MergeCache = field(default_factory=lambda: MergeCache(0))
    history_parts: HistoryParts = field(default_factory=lambda: HistoryParts(0))
    open_sockets: set[web.WebSocketResponse] = field(default_factory=set)
