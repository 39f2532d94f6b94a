"""Prometheus metrics: every family the gateway exports, on a registry the app owns, and GET /metrics.

Per-request facts are read once, from the finished Exchange (`observe_exchange`, called by the middleware).
What no single request carries is set where it changes: WebSocket sockets and frames (RelayMeter), backend
health (HealthMonitor), upstream calls in flight (Forwarder), affinity lookups, queue depth and prompt outcomes
(metrics_pollers). Labels come from bounded sets only: configured backend names plus "none" and "merged",
endpoint templates, a fixed method set, status codes, selection sources. The families themselves (names, help,
labels, buckets) are declared in metrics_families; their labelled children are cached in dicts keyed by label
tuples, so an observation costs a dict lookup and an increment.

Several worker processes (`serve --workers N`, gateway/workers.py): every worker runs with the same
PROMETHEUS_MULTIPROC_DIR, which the parent creates (or empties) before start-up and where it marks dead
workers. prometheus-client then keeps values in per-process files and GET /metrics merges them (counters and
histograms summed, gauges as metrics_families says). Each worker follows only the prompts it submitted, so no
prompt is counted twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.backends.breaker import BREAKER_STATES
from gateway.core.exchange import Exchange
from gateway.core.guardrail_actions import GUARDRAIL_ACTIONS
from gateway.core.selection import Source
from gateway.observe.bound import BoundUpdates, Update, counter_add, gauge_add, histogram_observe
from gateway.observe.metric_families import create_families
from gateway.observe.prompt_outcomes import FinishedPrompt, SubmittedPrompts

METRICS_PATH = "/metrics"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

NONE = "none"  # the gateway answered before choosing a backend (bad input, its own endpoints)
MERGED = "merged"  # one answer built from several backends
OTHER = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
SOURCES = tuple(source.value for source in Source)
UPSTREAM_ERROR_KINDS = ("connect", "timeout", "protocol", "5xx")
AFFINITY_RESULTS = ("hit", "probe", "miss")  # found in the store, found by asking every backend, found nowhere
# WebSocket message types by name (ComfyUI's); any other is counted as "other", a binary frame as "binary".
WS_MESSAGE_TYPES = frozenset(
    {
        "status", "feature_flags", "execution_start", "execution_cached", "executing", "progress", "progress_state",
        "executed", "execution_success", "execution_error", "execution_interrupted",
        "logs", "binary",
    }
)
HOLD_RELEASES = ("answered", "timeout", "overflow")
UPSTREAM_EVENTS = ("dropped", "reopened")
RETRY_REASONS = ("connect", "closed")  # a refused connection; one closed before any answer byte


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


@dataclass(frozen=True, slots=True)
class FanInMeter:
    """What the WebSocket fan-in counts besides each backend's RelayMeter (datapath/aio/fanin.py)."""

    relay: Callable[[str], RelayMeter]
    message: Callable[[str, str, int], None]  # direction, message type, how many
    held: Counter
    released: Callable[[str], Counter]  # reason
    queue_dropped: Callable[[str], None]  # message type
    upstream_event: Callable[[str, str], None]  # backend, event


class GatewayMetrics:
    def __init__(
        self,
        backends: Iterable[str],
        *,
        registry: CollectorRegistry | None = None,
        multiprocess_dir: str | None = None,
        unconfigured: Iterable[str] = (),
        members: Mapping[str, tuple[str, int]] | None = None,
    ) -> None:
        """`members`: each pool member's server name -> (its pool, its number), for comfy_gateway_pool_member."""
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.backends = tuple(backends)
        self.multiprocess_dir = multiprocess_dir
        self.submitted = SubmittedPrompts(self.backends)
        self.queue_depths: dict[str, int] = {}  # each backend's queue depth at the last poll that read it
        self._backend_label = {name: name for name in self.backends}
        self._families = f = create_families(self.registry, multiprocess=multiprocess_dir is not None)
        # What observe_exchange records for every request, bound once per label set (observe/bound.py).
        self._count_request = BoundUpdates(f.requests, counter_add)
        self._observe_duration = BoundUpdates(f.duration, histogram_observe)
        self._add_request_bytes = BoundUpdates(f.request_bytes, counter_add)
        self._add_response_bytes = BoundUpdates(f.response_bytes, counter_add)
        self._count_selection = BoundUpdates(f.selections, counter_add)
        self._count_lookup = BoundUpdates(f.affinity_lookups, counter_add)
        self._relay_meters = {name: self._make_relay_meter(name) for name in self.backends}
        self._fan_in_meter = self._make_fan_in_meter()  # one for every client socket: nothing in it is a socket's
        self._initialise_series()
        left_alone = set(unconfigured)
        for name in self.backends:
            self._families.backend_configured[(name,)].set(0 if name in left_alone else 1)
        for name, (pool, number) in (members or {}).items():
            self._families.pool_member[(name, pool, number)].set(1)

    def _initialise_series(self) -> None:
        """Every series whose labels are known up front exists at 0, so rates and alerts work from the start."""
        for name in self.backends:
            for source in SOURCES:
                if source != MERGED:
                    self._families.selections[(name, source)]
            for kind in UPSTREAM_ERROR_KINDS:
                self._families.upstream_errors[(name, kind)]
            for action in GUARDRAIL_ACTIONS:
                self._families.guardrail_actions[(name, action)]
            f = self._families
            for family in (f.prompts_submitted, f.prompts_completed, f.prompts_failed, f.backend_up, f.check_seconds,
                           f.identity_mismatch, f.in_flight, f.execution, f.queue_depth, f.poll_errors):
                family[(name,)]
        self._families.selections[(MERGED, MERGED)]
        for reason in HOLD_RELEASES:
            self._families.ws_released[(reason,)]
        for name in self.backends:
            for event in UPSTREAM_EVENTS:
                self._families.ws_upstream_events[(name, event)]
        for result in AFFINITY_RESULTS:
            self._families.affinity_lookups[(result,)]
        for name in self.backends:
            for state in BREAKER_STATES:
                self._families.breaker_state[(name, state)].set(1 if state == "closed" else 0)
                self._families.breaker_transitions[(name, state)]
            for reason in RETRY_REASONS:
                self._families.retries[(name, reason)]

    def _make_relay_meter(self, backend: str) -> RelayMeter:
        return RelayMeter(
            client_sockets=self._families.ws_sockets[(backend, "client")],
            upstream_sockets=self._families.ws_sockets[(backend, "upstream")],
            to_client=self._families.ws_messages[(backend, "to_client")],
            to_backend=self._families.ws_messages[(backend, "to_backend")],
            dropped_to_client=self._families.ws_dropped[(backend, "to_client")],
            dropped_to_backend=self._families.ws_dropped[(backend, "to_backend")],
            closed_by_client=self._families.ws_closed[(backend, "client")],
            closed_by_backend=self._families.ws_closed[(backend, "backend")],
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
        self._count_request[(backend, endpoint, method, status)](1)
        if status != 101:  # a WebSocket session's length says nothing about latency
            self._observe_duration[(backend, endpoint, method)](ex.duration_seconds())
        if ex.bytes_in:
            self._add_request_bytes[(backend, endpoint)](ex.bytes_in)
        if ex.bytes_out:
            self._add_response_bytes[(backend, endpoint)](ex.bytes_out)
        if ex.source is not None:
            self._count_selection[(backend, ex.source)](1)
        if ex.error is not None:
            if ex.error == "unknown_backend":
                self._families.unknown_backend.inc()
        elif status >= 500 and backend in self._backend_label:
            self._families.upstream_errors[(backend, "5xx")].inc()
        for name, kind in ex.upstream_errors:
            self._families.upstream_errors[(self.backend_label(name), kind)].inc()
        for action in ex.guardrails:
            if backend in self._backend_label and action in GUARDRAIL_ACTIONS:
                self._families.guardrail_actions[(backend, action)].inc()
        if status == 200 and endpoint == "/prompt" and method == "POST" and ex.prompt_id:
            if backend in self._backend_label:
                self._families.prompts_submitted[(backend,)].inc()
                self.submitted.add(backend, ex.prompt_id)

    # --- set where they change ------------------------------------------------------------------------------

    def in_flight_updates(self) -> dict[str, Update]:
        """Backend name → what adds to its in-flight gauge (1 as a call starts, -1 as it ends), bound once for
        the fast data path (observe/bound.py)."""
        return {name: gauge_add(self._families.in_flight[(name,)]) for name in self.backends}

    def in_flight_gauges(self) -> dict[str, Gauge]:
        """Backend name → its in-flight gauge, bound once for the Forwarder's hot path."""
        return {name: self._families.in_flight[(name,)] for name in self.backends}

    def relay_meter(self, backend: str) -> RelayMeter:
        return self._relay_meters[backend]

    def fan_in_meter(self) -> FanInMeter:
        return self._fan_in_meter

    def _make_fan_in_meter(self) -> FanInMeter:
        f = self._families

        def message(direction: str, kind: str, count: int = 1) -> None:
            f.ws_types[(direction, kind if kind in WS_MESSAGE_TYPES else OTHER)].inc(count)

        def queue_dropped(kind: str) -> None:
            f.ws_queue_dropped[(kind if kind in WS_MESSAGE_TYPES else OTHER,)].inc()

        def upstream_event(backend: str, event: str) -> None:
            f.ws_upstream_events[(self.backend_label(backend), event)].inc()

        return FanInMeter(
            relay=self.relay_meter,
            message=message,
            held=f.ws_held,
            released=lambda reason: f.ws_released[(reason,)],
            queue_dropped=queue_dropped,
            upstream_event=upstream_event,
        )

    def observe_health(self, backend: str, up: bool, check_seconds: float) -> None:
        self._families.backend_up[(backend,)].set(1 if up else 0)
        self._families.check_seconds[(backend,)].set(check_seconds)

    def observe_identity(self, backend: str, mismatched: bool) -> None:
        self._families.identity_mismatch[(backend,)].set(1 if mismatched else 0)

    def breaker_transition(self, backend: str, was: str, to: str, why: str = "") -> None:
        """A backend's circuit changed state (backends/breaker.py's TransitionObserver)."""
        self._families.breaker_state[(backend, was)].set(0)
        self._families.breaker_state[(backend, to)].set(1)
        self._families.breaker_transitions[(backend, to)].inc()

    def retried(self, backend: str, reason: str) -> None:
        self._families.retries[(backend, reason)].inc()

    def affinity_lookup(self, result: str) -> None:
        self._count_lookup[(result,)](1)

    def affinity_unrecorded(self) -> None:
        self._families.affinity_unrecorded.inc()

    def set_affinity_size(self, prompts: int) -> None:
        self._families.affinity_size.set(prompts)

    def set_queue_depth(self, backend: str, depth: int) -> None:
        self.queue_depths[backend] = depth
        self._families.queue_depth[(backend,)].set(depth)

    def poll_failed(self, backend: str) -> None:
        self._families.poll_errors[(backend,)].inc()

    def prompt_finished(self, backend: str, finished: FinishedPrompt) -> None:
        outcome = self._families.prompts_completed if finished.outcome == "completed" else self._families.prompts_failed
        outcome[(backend,)].inc()
        if finished.execution_seconds is not None:
            self._families.execution[(backend,)].observe(finished.execution_seconds)

    # --- exposition -----------------------------------------------------------------------------------------

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The body and Content-Type of a scrape: Prometheus text, or OpenMetrics when `accept` asks for it."""
        encode, content_type = choose_encoder(accept)
        if self.multiprocess_dir is None:
            return encode(self.registry), content_type
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess_dir)
        return encode(merged), content_type
