"""What comfy-gateway exports, in one place: every metric family's name, help, labels, buckets and multiprocess
mode, created on a given registry. metrics.py decides when each one is observed.

Multiprocess modes (used only under PROMETHEUS_MULTIPROC_DIR): counters and histograms are summed over every
worker; gauges of things open now (in-flight calls, sockets) are summed over live workers; gauges every worker
reads alike (backend up, queue depth, store size) take the maximum over live workers.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from gateway import __version__
from gateway.core.build import compiled_modules

NAMESPACE = "comfy_gateway"

# From 1 ms JSON calls to multi-second /view downloads and uploads.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# From a cached re-run (milliseconds) to an hour-long video graph.
PROMPT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

M = TypeVar("M", Counter, Gauge, Histogram)


class Children(dict[tuple[Any, ...], M], Generic[M]):
    """A labelled metric's children by label tuple, made on first use. A hit is a plain dict lookup (no Python
    call); the label sets are bounded, so is this dict."""

    __slots__ = ("_metric",)
    _metric: M

    def __init__(self, metric: M) -> None:
        super().__init__()
        self._metric = metric

    def __missing__(self, key: tuple[Any, ...]) -> M:
        child = self[key] = self._metric.labels(*map(str, key))
        return child


@dataclass(frozen=True, slots=True)
class Families:
    # Observed once per request, from the Exchange.
    requests: Children[Counter]  # backend, endpoint, method, code
    duration: Children[Histogram]  # backend, endpoint, method
    request_bytes: Children[Counter]  # backend, endpoint
    response_bytes: Children[Counter]  # backend, endpoint
    selections: Children[Counter]  # backend, source
    unknown_backend: Counter
    upstream_errors: Children[Counter]  # backend, kind
    prompts_submitted: Children[Counter]  # backend
    guardrail_actions: Children[Counter]  # backend, action
    # Set where they change.
    backend_up: Children[Gauge]  # backend
    backend_configured: Children[Gauge]  # backend
    pool_member: Children[Gauge]  # backend, pool, member
    check_seconds: Children[Gauge]  # backend
    identity_mismatch: Children[Gauge]  # backend
    in_flight: Children[Gauge]  # backend
    prompts_completed: Children[Counter]  # backend
    prompts_failed: Children[Counter]  # backend
    execution: Children[Histogram]  # backend
    queue_depth: Children[Gauge]  # backend
    poll_errors: Children[Counter]  # backend
    ws_sockets: Children[Gauge]  # backend, side
    ws_messages: Children[Counter]  # backend, direction
    ws_dropped: Children[Counter]  # backend, direction
    ws_closed: Children[Counter]  # backend, closed_by
    ws_types: Children[Counter]  # direction, type
    ws_held: Counter
    ws_released: Children[Counter]  # reason
    ws_queue_dropped: Children[Counter]  # type
    ws_upstream_events: Children[Counter]  # backend, event
    affinity_size: Gauge
    affinity_lookups: Children[Counter]  # result
    breaker_state: Children[Gauge]  # backend, state
    breaker_transitions: Children[Counter]  # backend, to
    retries: Children[Counter]  # backend, reason
    affinity_unrecorded: Counter


def create_families(registry: CollectorRegistry, *, multiprocess: bool) -> Families:
    def counter(name: str, doc: str, *labels: str) -> Counter:
        return Counter(name, doc, labels, namespace=NAMESPACE, registry=registry)

    def gauge(name: str, doc: str, mode: str, *labels: str) -> Gauge:
        return Gauge(
            name, doc, labels, namespace=NAMESPACE, registry=registry, multiprocess_mode=mode  # type: ignore[arg-type]
        )

    def histogram(name: str, doc: str, buckets: tuple[float, ...], *labels: str) -> Histogram:
        return Histogram(name, doc, labels, namespace=NAMESPACE, registry=registry, buckets=buckets)

    build = gauge(
        "build_info", "The gateway's version, and whether its request path is compiled; always 1.", "max",
        "version", "python", "compiled")
    build.labels(__version__, platform.python_version(), "true" if compiled_modules() else "false").set(1)
    if not multiprocess:  # per-process facts have no meaning summed over workers
        ProcessCollector(namespace=NAMESPACE, registry=registry)
    return Families(
        requests=Children(counter(
            "requests", "Requests answered, by backend, endpoint template, method and status code.",
            "backend", "endpoint", "method", "code")),
        duration=Children(histogram(
            "request_duration_seconds", "Time from request received to response sent (WebSocket sessions "
            "excluded).", REQUEST_BUCKETS, "backend", "endpoint", "method")),
        request_bytes=Children(counter(
            "request_bytes", "Request body bytes received from clients.", "backend", "endpoint")),
        response_bytes=Children(counter(
            "response_bytes", "Response body bytes sent to clients.", "backend", "endpoint")),
        selections=Children(counter(
            "selections", "Backend selections, by backend and why it was chosen.", "backend", "source")),
        unknown_backend=counter(
            "unknown_backend_rejections", "Requests refused because they named a backend that is not configured."),
        upstream_errors=Children(counter(
            "upstream_errors", "Failed backend calls while serving requests: connect, timeout, protocol (broken "
            "or unreadable answer) or 5xx (the backend's own error answer).", "backend", "kind")),
        prompts_submitted=Children(counter(
            "prompts_submitted", "Prompts a backend accepted (POST /prompt answered 200).", "backend")),
        guardrail_actions=Children(counter(
            "guardrail_actions", "What the guardrails did to POST /prompt, by target backend and action: "
            "seed_normalized, alias_applied, placed_by_model, refused_model, refused_node_class, skipped (no "
            "inventory known, or a body they could not read: forwarded unchanged).", "backend", "action")),
        backend_up=Children(gauge(
            "backend_up", "1 if the last health check of the backend succeeded, else 0.", "livemax", "backend")),
        identity_mismatch=Children(gauge(
            "backend_identity_mismatch", "1 if the backend's /system_stats says it is another kind (KernieGen, "
            "ComfyUI) than its configured kind, else 0.", "livemax", "backend")),
        pool_member=Children(gauge(
            "pool_member", "1 for each member of a backend pool: its server name (backend, as every other series "
            "names it), its pool and its number in the pool; join on backend to sum a pool's series.", "max",
            "backend", "pool", "member")),
        backend_configured=Children(gauge(
            "backend_configured", "1 if the operator configured the backend (or it is the default backend), 0 for "
            "a built-in entry nobody configured; alerts watch only the configured ones.", "livemax", "backend")),
        check_seconds=Children(gauge(
            "backend_check_duration_seconds", "How long the last health check of the backend took.", "livemax",
            "backend")),
        in_flight=Children(gauge(
            "in_flight_requests", "Gateway calls to the backend now in progress (its health checks and polls "
            "included).", "livesum", "backend")),
        prompts_completed=Children(counter(
            "prompts_completed", "Prompts submitted through the gateway that the backend finished successfully.",
            "backend")),
        prompts_failed=Children(counter(
            "prompts_failed", "Prompts submitted through the gateway that ended in an error or were interrupted.",
            "backend")),
        execution=Children(histogram(
            "prompt_execution_seconds", "Prompt execution time, from the backend's execution_start to its "
            "execution_success/error event.", PROMPT_BUCKETS, "backend")),
        queue_depth=Children(gauge(
            "queue_depth", "Prompts running or waiting on the backend (its queue_remaining).", "livemax", "backend")),
        poll_errors=Children(counter(
            "backend_poll_errors", "Queue and history polls of the backend that failed.", "backend")),
        ws_sockets=Children(gauge(
            "websocket_connections", "WebSocket connections open, client side and upstream side.", "livesum",
            "backend", "side")),
        ws_messages=Children(counter(
            "websocket_messages", "WebSocket messages relayed, by direction.", "backend", "direction")),
        ws_dropped=Children(counter(
            "websocket_messages_dropped", "WebSocket messages that could not be relayed because the receiving "
            "side had gone.", "backend", "direction")),
        ws_closed=Children(counter(
            "websocket_closed", "Relayed WebSocket sessions ended, by the side that ended them.", "backend",
            "closed_by")),
        ws_types=Children(counter(
            "websocket_message_types", "WebSocket messages relayed, by direction and message type (binary: a "
            "binary frame; other: a type the gateway does not know).", "direction", "type")),
        ws_held=counter(
            "websocket_messages_held", "Prompt events held back until the POST /prompt answer naming the prompt "
            "was sent."),
        ws_released=Children(counter(
            "websocket_holds_released", "Held prompt events released, by why: the answer was sent (answered), "
            "the hold timed out (timeout) or held too many (overflow).", "reason")),
        ws_queue_dropped=Children(counter(
            "websocket_send_queue_dropped", "Messages dropped because a client's send queue was full, by message "
            "type.", "type")),
        ws_upstream_events=Children(counter(
            "websocket_upstream_reconnects", "Backend sockets of connected clients that dropped (dropped) and were "
            "opened again (reopened).", "backend", "event")),
        affinity_size=gauge("affinity_prompts", "Prompts in the affinity store.", "livemax"),
        affinity_lookups=Children(counter(
            "affinity_lookups", "Affinity lookups: hit (in the store), probe (found by asking every backend), "
            "miss (on no backend).", "result")),
        breaker_state=Children(gauge(
            "backend_circuit_state", "1 for the state the backend's circuit breaker is in (closed, open, "
            "half_open), 0 for the others.", "livemax", "backend", "state")),
        breaker_transitions=Children(counter(
            "backend_circuit_transitions", "Changes of a backend's circuit breaker, by the state entered.",
            "backend", "to")),
        retries=Children(counter(
            "upstream_retries", "Calls to a backend sent again: its connection was refused (connect) or closed "
            "before any answer byte (closed, idempotent calls only).", "backend", "reason")),
        affinity_unrecorded=counter(
            "affinity_unrecorded", "Prompts forwarded while the state store could not record them (store.on_outage = "
            "\"degrade\"); later calls about them find them by asking every backend."),
    )
