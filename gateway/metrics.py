"""Prometheus metrics: every family the gateway exports, on a registry the app owns, and GET /metrics.

Per-request facts are read once, from the finished Exchange (`observe_exchange`, called by the middleware).
What no single request carries is set where it changes: WebSocket sockets and frames (RelayMeter), backend
health (HealthMonitor), upstream calls in flight (Forwarder), affinity lookups, queue depth and prompt outcomes
(metrics_pollers). Labels come from bounded sets only: configured backend names plus "none" and "merged",
endpoint templates, a fixed method set, status codes, selection sources. Labelled children are cached in dicts
keyed by label tuples, so an observation costs a dict lookup and an increment.

Several worker processes: start every worker with the same PROMETHEUS_MULTIPROC_DIR (an empty directory,
emptied before start-up; under gunicorn call prometheus_client.multiprocess.mark_process_dead(pid) in
child_exit). prometheus-client then keeps values in per-process files and GET /metrics merges them: counters
and histograms summed, gauges by the mode given below (in-flight and sockets summed over live workers).
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from gateway import __version__
from gateway.exchange import Exchange
from gateway.keys import METRICS
from gateway.metrics_prompts import FinishedPrompt, SubmittedPrompts
from gateway.selection import Source

NAMESPACE = "comfy_gateway"
METRICS_PATH = "/metrics"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

NONE = "none"  # the gateway answered before choosing a backend (bad input, its own endpoints)
MERGED = "merged"  # one answer built from several backends
OTHER = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
SOURCES = tuple(source.value for source in Source)
UPSTREAM_ERROR_KINDS = ("connect", "timeout", "protocol", "5xx")
AFFINITY_RESULTS = ("hit", "probe", "miss")  # found in the store, found by asking every backend, found nowhere
GUARDRAIL_ACTIONS = ("seed_normalized", "alias_applied", "rejected", "skipped")
WS_SIDES = ("client", "upstream")
WS_DIRECTIONS = ("to_client", "to_backend")
WS_CLOSERS = ("client", "backend")
PROMPT_OUTCOMES = ("completed", "failed")

# From 1 ms JSON calls to multi-second /view downloads and uploads.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# From a cached re-run (milliseconds) to an hour-long video graph.
PROMPT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

M = TypeVar("M", Counter, Gauge, Histogram)


class _Children(dict[tuple[Any, ...], M], Generic[M]):
    """A labelled metric's children by label tuple, made on first use. A hit is a plain dict lookup (no Python
    call); the label sets are bounded, so is this dict."""

    __slots__ = ("_metric",)

    def __init__(self, metric: M) -> None:
        super().__init__()
        self._metric = metric

    def __missing__(self, key: tuple[Any, ...]) -> M:
        child = self[key] = self._metric.labels(*map(str, key))
        return child


@dataclass(frozen=True, slots=True)
class RelayMeter:
    """What one relayed WebSocket touches, bound to its backend once (websocket.py increments these)."""

    client_sockets: Gauge
    upstream_sockets: Gauge
    to_client: Counter
    to_backend: Counter
    dropped_to_client: Counter
    dropped_to_backend: Counter
    closed_by_client: Counter
    closed_by_backend: Counter


class GatewayMetrics:
    def __init__(
        self,
        backends: Iterable[str],
        *,
        registry: CollectorRegistry | None = None,
        multiprocess_dir: str | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.backends = tuple(backends)
        self.multiprocess_dir = multiprocess_dir
        self.submitted = SubmittedPrompts(self.backends)
        self._backend_label = {name: name for name in self.backends}
        r = self.registry

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, namespace=NAMESPACE, registry=r)

        def gauge(name: str, doc: str, labels: tuple[str, ...], mode: str) -> Gauge:
            return Gauge(name, doc, labels, namespace=NAMESPACE, registry=r, multiprocess_mode=mode)  # type: ignore[arg-type]

        # --- requests (observed from the Exchange) ---
        self._requests = _Children(
            counter("requests", "Requests answered, by backend, endpoint template, method and status code.",
                    ("backend", "endpoint", "method", "code"))
        )
        self._duration = _Children(
            Histogram("request_duration_seconds", "Time from request received to response sent (WebSocket "
                      "sessions excluded).", ("backend", "endpoint", "method"), namespace=NAMESPACE,
                      registry=r, buckets=REQUEST_BUCKETS)
        )
        self._request_bytes = _Children(
            counter("request_bytes", "Request body bytes received from clients.", ("backend", "endpoint"))
        )
        self._response_bytes = _Children(
            counter("response_bytes", "Response body bytes sent to clients.", ("backend", "endpoint"))
        )
        self._selections = _Children(
            counter("selections", "Backend selections, by backend and why it was chosen.", ("backend", "source"))
        )
        self._unknown_backend = counter(
            "unknown_backend_rejections", "Requests refused because they named a backend that is not configured."
        )
        self._upstream_errors = _Children(
            counter("upstream_errors", "Failed backend calls while serving requests: connect, timeout, protocol "
                    "(broken or unreadable answer) or 5xx (the backend's own error answer).", ("backend", "kind"))
        )
        self._prompts_submitted = _Children(
            counter("prompts_submitted", "Prompts a backend accepted (POST /prompt answered 200).", ("backend",))
        )
        # --- set where they change ---
        self._backend_up = _Children(
            gauge("backend_up", "1 if the last health check of the backend succeeded, else 0.", ("backend",),
                  "livemax")
        )
        self._check_seconds = _Children(
            gauge("backend_check_duration_seconds", "How long the last health check of the backend took.",
                  ("backend",), "livemax")
        )
        self.in_flight = _Children(
            gauge("in_flight_requests", "Gateway requests to the backend now in progress (including its own "
                  "checks and polls).", ("backend",), "livesum")
        )
        self._prompts_finished = {
            "completed": _Children(counter("prompts_completed", "Prompts submitted through the gateway that the "
                                           "backend finished successfully.", ("backend",))),
            "failed": _Children(counter("prompts_failed", "Prompts submitted through the gateway that ended in an "
                                        "error or were interrupted.", ("backend",))),
        }
        self._execution = _Children(
            Histogram("prompt_execution_seconds", "Prompt execution time, from the backend's execution_start to "
                      "its execution_success/error event.", ("backend",), namespace=NAMESPACE, registry=r,
                      buckets=PROMPT_BUCKETS)
        )
        self._queue_depth = _Children(
            gauge("queue_depth", "Prompts running or waiting on the backend (its queue_remaining).", ("backend",),
                  "livemax")
        )
        self._poll_errors = _Children(
            counter("backend_poll_errors", "Queue and history polls of the backend that failed.", ("backend",))
        )
        self._ws_sockets = _Children(
            gauge("websocket_connections", "WebSocket connections open, client side and upstream side.",
                  ("backend", "side"), "livesum")
        )
        self._ws_messages = _Children(
            counter("websocket_messages", "WebSocket messages relayed, by direction.", ("backend", "direction"))
        )
        self._ws_dropped = _Children(
            counter("websocket_messages_dropped", "WebSocket messages that could not be relayed because the "
                    "receiving side had gone.", ("backend", "direction"))
        )
        self._ws_closed = _Children(
            counter("websocket_closed", "Relayed WebSocket sessions ended, by the side that ended them.",
                    ("backend", "closed_by"))
        )
        self._affinity_size = gauge("affinity_prompts", "Prompts in the affinity store.", (), "livemax")
        self._affinity_lookups = _Children(
            counter("affinity_lookups", "Affinity lookups: hit (in the store), probe (found by asking every "
                    "backend), miss (on no backend).", ("result",))
        )
        self._guardrails = _Children(
            counter("guardrail_actions", "What the guardrails did to requests.", ("action",))
        )
        build = gauge("build_info", "The gateway's version; always 1.", ("version", "python"), "max")
        build.labels(__version__, platform.python_version()).set(1)
        if multiprocess_dir is None:
            ProcessCollector(namespace=NAMESPACE, registry=r)
        self._relay_meters = {name: self._make_relay_meter(name) for name in self.backends}
        self._initialise_series()

    def _initialise_series(self) -> None:
        """Every series whose labels are known up front exists at 0, so rates and alerts work from the start."""
        for name in self.backends:
            for source in SOURCES:
                if source != MERGED:
                    self._selections[(name, source)]
            for kind in UPSTREAM_ERROR_KINDS:
                self._upstream_errors[(name, kind)]
            for family in (self._prompts_submitted, self._backend_up, self._check_seconds, self.in_flight,
                           self._execution, self._queue_depth, self._poll_errors, *self._prompts_finished.values()):
                family[(name,)]
        self._selections[(MERGED, MERGED)]
        for result in AFFINITY_RESULTS:
            self._affinity_lookups[(result,)]
        for action in GUARDRAIL_ACTIONS:
            self._guardrails[(action,)]

    def _make_relay_meter(self, backend: str) -> RelayMeter:
        return RelayMeter(
            client_sockets=self._ws_sockets[(backend, "client")],
            upstream_sockets=self._ws_sockets[(backend, "upstream")],
            to_client=self._ws_messages[(backend, "to_client")],
            to_backend=self._ws_messages[(backend, "to_backend")],
            dropped_to_client=self._ws_dropped[(backend, "to_client")],
            dropped_to_backend=self._ws_dropped[(backend, "to_backend")],
            closed_by_client=self._ws_closed[(backend, "client")],
            closed_by_backend=self._ws_closed[(backend, "backend")],
        )

    # --- per request ---------------------------------------------------------------------------------------

    def backend_label(self, backend: str | None) -> str:
        label = self._backend_label.get(backend)  # type: ignore[arg-type]
        if label is not None:
            return label
        return NONE if backend is None else MERGED  # several names, comma-joined

    def observe_exchange(self, ex: Exchange) -> None:
        """Everything one finished request says, observed once (the middleware calls this last)."""
        backend = MERGED if ex.source == MERGED else self.backend_label(ex.backend)
        endpoint = ex.endpoint
        method = ex.method if ex.method in METHODS else OTHER
        status = ex.status
        self._requests[(backend, endpoint, method, status)].inc()
        if status != 101:  # a WebSocket session's length says nothing about latency
            self._duration[(backend, endpoint, method)].observe(ex.duration_seconds())
        if ex.bytes_in:
            self._request_bytes[(backend, endpoint)].inc(ex.bytes_in)
        if ex.bytes_out:
            self._response_bytes[(backend, endpoint)].inc(ex.bytes_out)
        if ex.source is not None:
            self._selections[(backend, ex.source)].inc()
        if ex.error is not None:
            if ex.error == "unknown_backend":
                self._unknown_backend.inc()
        elif status >= 500 and backend in self._backend_label:
            self._upstream_errors[(backend, "5xx")].inc()
        for name, kind in ex.upstream_errors:
            self._upstream_errors[(self.backend_label(name), kind)].inc()
        if status == 200 and endpoint == "/prompt" and method == "POST" and ex.prompt_id:
            if backend in self._backend_label:
                self._prompts_submitted[(backend,)].inc()
                self.submitted.add(backend, ex.prompt_id)
        for action in ex.guardrail_actions:
            self._guardrails[(action if action in GUARDRAIL_ACTIONS else OTHER,)].inc()

    # --- set where they change ------------------------------------------------------------------------------

    def in_flight_gauges(self) -> dict[str, Gauge]:
        """Backend name → its in-flight gauge, bound once for the Forwarder's hot path."""
        return {name: self.in_flight[(name,)] for name in self.backends}

    def relay_meter(self, backend: str) -> RelayMeter:
        return self._relay_meters[backend]

    def observe_health(self, backend: str, up: bool, check_seconds: float) -> None:
        self._backend_up[(backend,)].set(1 if up else 0)
        self._check_seconds[(backend,)].set(check_seconds)

    def affinity_lookup(self, result: str) -> None:
        self._affinity_lookups[(result,)].inc()

    def set_affinity_size(self, prompts: int) -> None:
        self._affinity_size.set(prompts)

    def set_queue_depth(self, backend: str, depth: int) -> None:
        self._queue_depth[(backend,)].set(depth)

    def poll_failed(self, backend: str) -> None:
        self._poll_errors[(backend,)].inc()

    def prompt_finished(self, backend: str, finished: FinishedPrompt) -> None:
        self._prompts_finished[finished.outcome][(backend,)].inc()
        if finished.execution_seconds is not None:
            self._execution[(backend,)].observe(finished.execution_seconds)

    # --- exposition -----------------------------------------------------------------------------------------

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The body and Content-Type of a scrape: Prometheus text, or OpenMetrics when `accept` asks for it."""
        encode, content_type = choose_encoder(accept)
        if self.multiprocess_dir is None:
            return encode(self.registry), content_type
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess_dir)
        return encode(merged), content_type


async def serve_metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].exposition(request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})
