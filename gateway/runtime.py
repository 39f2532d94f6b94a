"""The live state of a running gateway, built once by create_app and read by the pipeline and both data paths."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gateway.backends.calls import BackendCalls
from gateway.backends.table import BackendTable
from gateway.merge.cache import MergeCache
from gateway.merge.history_parts import HistoryParts
from gateway.observe.metrics import GatewayMetrics
from gateway.state.store import StateStore


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    """The request-facing knobs of selection, taken from settings once."""

    backend_header: str = "X-Comfy-Backend"
    backend_query_param: str = "backend"
    user_headers: tuple[str, ...] = ("comfy-user",)
    merge_timeout_seconds: float = 10.0  # a backend slower than this is left out of a merged answer
    probe_timeout_seconds: float = 5.0  # per backend, when looking for a prompt the gateway never saw
    max_id_chars: int = 256  # a longer prompt id, client id or user name is refused


def _none_down() -> Mapping[str, str]:
    return {}


@dataclass(slots=True)
class Runtime:
    backends: BackendTable
    store: StateStore
    calls: BackendCalls  # every whole-answer call to a backend (merges, probes, fan-outs)
    policy: RoutingPolicy
    metrics: GatewayMetrics
    merge_cache: MergeCache = field(default_factory=lambda: MergeCache(0))
    history_parts: HistoryParts = field(default_factory=lambda: HistoryParts(0))
    # Backends the health checks found down, name → why (observe/health.py): merges leave them out at once.
    known_down: Callable[[], Mapping[str, str]] = _none_down
