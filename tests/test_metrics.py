"""GatewayMetrics as a plain object: what one finished Exchange adds to each family, the bounded label sets,
series at 0 from the start, prompt outcomes read from real ComfyUI history entries, failure kinds, secrets kept
out of log lines, and prometheus-client's multiprocess mode across real processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from gateway.backends.table import Backend
from gateway.core.errors import BadRequest, UpstreamError, UpstreamRefused, UpstreamTimeout
from gateway.core.exchange import Exchange
from gateway.core.redact import redact_secrets, shown_url
from gateway.datapath.aio.forward import Forwarder
from gateway.observe.bound import counter_add, gauge_add, histogram_observe
from gateway.observe.logs import JsonFormatter, TextFormatter
from gateway.observe.metrics import GatewayMetrics
from gateway.observe.prompt_outcomes import FinishedPrompt, SubmittedPrompts, read_finished

FIXTURES = Path(__file__).parent / "fixtures" / "comfyui"
BACKENDS = ("kerniegen", "comfyui")


@pytest.fixture
def metrics() -> GatewayMetrics:
    return GatewayMetrics(BACKENDS)


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def exchange(method: str = "GET", endpoint: str = "/object_info", **fields: object) -> Exchange:
    ex = Exchange(method=method, path=endpoint, endpoint=endpoint)
    for key, val in fields.items():
        setattr(ex, key, val)
    ex.finish()
    return ex


# --- one exchange, every family it touches -----------------------------------------------------------------


def test_a_served_request_counts_once_in_each_family(metrics: GatewayMetrics) -> None:
    metrics.observe_exchange(
        exchange("GET", "/history/{prompt_id}", backend="comfyui", source="affinity", status=200, bytes_in=0,
                 bytes_out=2048, prompt_id="p1", user="ana")
    )
    labels = {"backend": "comfyui", "endpoint": "/history/{prompt_id}"}
    assert value(metrics, "comfy_gateway_requests_total", **labels, method="GET", code="200") == 1
    assert value(metrics, "comfy_gateway_request_duration_seconds_count", **labels, method="GET") == 1
    assert value(metrics, "comfy_gateway_response_bytes_total", **labels) == 2048
    assert value(metrics, "comfy_gateway_request_bytes_total", **labels) is None  # no body, no series
    assert value(metrics, "comfy_gateway_selections_total", backend="comfyui", source="affinity") == 1
    assert value(metrics, "comfy_gateway_selections_total", backend="kerniegen", source="affinity") == 0


@pytest.mark.parametrize(
    ("backend", "source", "expected"),
    [
        (None, None, "none"),
        ("kerniegen", "default", "kerniegen"),
        ("kerniegen,comfyui", "merged", "merged"),
        ("kerniegen", "merged", "merged"),  # a merge only one backend answered is still a merged answer
        ("kerniegen,comfyui", "affinity", "merged"),  # a delete fanned out to the backends holding the ids
    ],
    ids=["gateway-answered", "one-backend", "merged", "merged-one-answered", "fanned-out"],
)
def test_backend_label_is_a_configured_name_none_or_merged(metrics, backend, source, expected) -> None:
    metrics.observe_exchange(exchange(backend=backend, source=source, status=200))
    assert value(metrics, "comfy_gateway_requests_total", backend=expected, endpoint="/object_info",
                 method="GET", code="200") == 1


def test_unusual_methods_are_labelled_other(metrics: GatewayMetrics) -> None:
    metrics.observe_exchange(exchange("PROPFIND", "other", backend="kerniegen", source="default", status=405))
    assert value(metrics, "comfy_gateway_requests_total", backend="kerniegen", endpoint="other", method="other",
                 code="405") == 1


def test_unknown_backend_is_a_rejection_not_a_selection(metrics: GatewayMetrics) -> None:
    metrics.observe_exchange(exchange(status=400, error="unknown_backend"))
    assert value(metrics, "comfy_gateway_unknown_backend_rejections_total") == 1
    assert value(metrics, "comfy_gateway_requests_total", backend="none", endpoint="/object_info", method="GET",
                 code="400") == 1
    selections = [s for s in samples(metrics, "comfy_gateway_selections") if s.value]
    assert selections == []


def test_a_backends_own_5xx_and_a_failed_call_are_upstream_errors_counted_once(metrics: GatewayMetrics) -> None:
    metrics.observe_exchange(exchange(backend="comfyui", source="header", status=500))  # its own answer
    metrics.observe_exchange(
        exchange(backend="comfyui", source="header", status=502, error="backend_unavailable",
                 upstream_errors=(("comfyui", "connect"),))
    )
    metrics.observe_exchange(exchange(status=500, error="gateway_error"))  # the gateway's own bug: not upstream
    assert value(metrics, "comfy_gateway_upstream_errors_total", backend="comfyui", kind="5xx") == 1
    assert value(metrics, "comfy_gateway_upstream_errors_total", backend="comfyui", kind="connect") == 1
    assert value(metrics, "comfy_gateway_upstream_errors_total", backend="kerniegen", kind="5xx") == 0


def test_an_accepted_prompt_is_counted_and_followed_a_rejected_one_is_not(metrics: GatewayMetrics) -> None:
    metrics.observe_exchange(
        exchange("POST", "/prompt", backend="kerniegen", source="default", status=200, prompt_id="good")
    )
    metrics.observe_exchange(
        exchange("POST", "/prompt", backend="kerniegen", source="default", status=400, prompt_id="bad")
    )
    assert value(metrics, "comfy_gateway_prompts_submitted_total", backend="kerniegen") == 1
    assert list(metrics.submitted.waiting("kerniegen")) == ["good"]


def test_a_websocket_session_is_not_a_latency_sample(metrics: GatewayMetrics) -> None:
    metrics.observe_exchange(exchange("GET", "/ws", backend="kerniegen", source="default", status=101))
    assert value(metrics, "comfy_gateway_requests_total", backend="kerniegen", endpoint="/ws", method="GET",
                 code="101") == 1
    assert value(metrics, "comfy_gateway_request_duration_seconds_count", backend="kerniegen", endpoint="/ws",
                 method="GET") is None


# --- series from the start, registries, label bounds -------------------------------------------------------


def samples(metrics: GatewayMetrics, family: str) -> list:
    text = metrics.exposition()[0].decode()
    return [s for f in text_string_to_metric_families(text) if f.name == family for s in f.samples
            if not s.name.endswith("_created")]


@pytest.mark.parametrize(
    ("family", "extra"),
    [
        ("comfy_gateway_backend_up", {}),
        ("comfy_gateway_in_flight_requests", {}),
        ("comfy_gateway_queue_depth", {}),
        ("comfy_gateway_prompts_submitted", {}),
        ("comfy_gateway_prompts_completed", {}),
        ("comfy_gateway_prompts_failed", {}),
        ("comfy_gateway_backend_poll_errors", {}),
        ("comfy_gateway_upstream_errors", {"kind": {"connect", "timeout", "protocol", "5xx"}}),
        ("comfy_gateway_selections",
         {"source": {"header", "query", "preference", "affinity", "default", "model", "fallback"}}),
        ("comfy_gateway_guardrail_actions", {"action": {"seed_normalized", "alias_applied", "placed_by_model",
                                                       "refused_model", "refused_node_class", "skipped"}}),
        ("comfy_gateway_websocket_connections", {"side": {"client", "upstream"}}),
        ("comfy_gateway_websocket_messages", {"direction": {"to_client", "to_backend"}}),
        ("comfy_gateway_websocket_messages_dropped", {"direction": {"to_client", "to_backend"}}),
        ("comfy_gateway_websocket_closed", {"closed_by": {"client", "backend"}}),
        ("comfy_gateway_backend_circuit_transitions", {"to": {"closed", "open", "half_open"}}),
        ("comfy_gateway_upstream_retries", {"reason": {"connect", "closed"}}),
    ],
)
def test_series_of_configured_backends_exist_at_zero_from_the_start(metrics, family, extra) -> None:
    found = samples(metrics, family)
    assert found and all(s.value == 0 for s in found)
    per_backend = {s.labels["backend"] for s in found} - {"merged"}
    assert per_backend == set(BACKENDS)
    for label, values in extra.items():
        assert {s.labels[label] for s in found if s.labels["backend"] != "merged"} == values


def test_build_info_names_the_version(metrics: GatewayMetrics) -> None:
    from gateway import __version__

    (info,) = samples(metrics, "comfy_gateway_build_info")
    assert info.value == 1 and info.labels["version"] == __version__
    assert info.labels["compiled"] == ("true" if os.environ.get("EXPECT_COMPILED_BUILD") == "1" else "false")


def test_every_app_gets_its_own_registry_and_the_global_one_stays_clean() -> None:
    first, second = GatewayMetrics(BACKENDS), GatewayMetrics(BACKENDS)  # would raise on a shared registry
    first.observe_exchange(exchange(backend="kerniegen", source="default", status=200))
    assert second.registry.get_sample_value(
        "comfy_gateway_requests_total",
        {"backend": "kerniegen", "endpoint": "/object_info", "method": "GET", "code": "200"},
    ) is None
    assert not [name for name in REGISTRY._names_to_collectors if name.startswith("comfy_gateway")]
    given = CollectorRegistry()
    assert GatewayMetrics(BACKENDS, registry=given).registry is given


def test_label_values_stay_bounded_whatever_the_requests_carry(metrics: GatewayMetrics) -> None:
    for i in range(1000):
        metrics.observe_exchange(
            exchange("GET", "/history/{prompt_id}", backend="comfyui", source="affinity", status=200,
                     prompt_id=f"prompt-{i}", user=f"user-{i}", bytes_out=10)
        )
        metrics.observe_exchange(
            exchange("POST", "/prompt", backend="kerniegen", source="preference", status=200,
                     prompt_id=f"submitted-{i}", user=f"user-{i}")
        )
    text = metrics.exposition()[0].decode()
    assert "prompt-" not in text and "user-" not in text and "submitted-" not in text
    assert value(metrics, "comfy_gateway_requests_total", backend="comfyui", endpoint="/history/{prompt_id}",
                 method="GET", code="200") == 1000


# --- prompt outcomes from real ComfyUI history entries ------------------------------------------------------


def recorded_history() -> dict:
    """34 entries a real ComfyUI 0.3.64 wrote: 29 successes, 2 errors, 3 interrupted."""
    transcript = json.loads((FIXTURES / "03_history_get.json").read_text())
    return transcript["exchanges"][0]["response"]["body"]["json"]


def timestamps(entry: dict) -> dict[str, int]:
    return {event: data["timestamp"] for event, data in entry["status"]["messages"] if "timestamp" in data}


def test_outcomes_and_execution_times_of_real_comfyui_history_entries() -> None:
    outcomes = {"completed": 0, "failed": 0}
    for entry in recorded_history().values():
        finished = read_finished(entry)
        assert finished is not None
        outcomes[finished.outcome] += 1
        stamps = timestamps(entry)
        end = next(stamps[e] for e in ("execution_success", "execution_error", "execution_interrupted") if e in stamps)
        assert finished.execution_seconds == pytest.approx((end - stamps["execution_start"]) / 1000)
    assert outcomes == {"completed": 29, "failed": 5}


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"status": {"status_str": "success", "messages": []}}, FinishedPrompt("completed", None)),
        ({"status": {"status_str": "error", "messages": [["execution_error", {"timestamp": 5}]]}},
         FinishedPrompt("failed", None)),
        ({"status": {"status_str": "success", "messages": [["execution_start", {"timestamp": 9}],
                                                           ["execution_success", {"timestamp": 4}]]}},
         FinishedPrompt("completed", None)),
        ({"status": {"status_str": "success", "messages": [["execution_start", {"timestamp": True}], "junk",
                                                           ["execution_success", {"timestamp": 4}]]}},
         FinishedPrompt("completed", None)),
        ({"status": None}, None),
        ({"status": {"status_str": "running"}}, None),
        ("not an entry", None),
    ],
    ids=["no-messages", "no-start", "end-before-start", "bad-timestamps", "no-status", "unknown-status", "junk"],
)
def test_odd_history_entries_give_no_made_up_numbers(entry, expected) -> None:
    assert read_finished(entry) == expected


def test_followed_prompts_are_bounded_in_number_and_age() -> None:
    followed = SubmittedPrompts(["a"], max_per_backend=3, max_age_seconds=10)
    for i, pid in enumerate(["p1", "p2", "p3", "p4"]):
        followed.add("a", pid, now=float(i))
    followed.add("nope", "x", now=0.0)  # not a configured backend: ignored
    assert list(followed.waiting("a")) == ["p2", "p3", "p4"]
    followed.add("a", "p2", now=5.0)  # submitted again: now the youngest
    assert followed.forget_older_than_max_age("a", now=13.5) == 2  # p3 (2.0) and p4 (3.0)
    assert list(followed.waiting("a")) == ["p2"]
    assert followed.take("a", "p2") and not followed.take("a", "p2")


# --- failure kinds -----------------------------------------------------------------------------------------


async def connector_error() -> aiohttp.ClientConnectorError:
    async with aiohttp.ClientSession() as session:
        try:
            await session.get("http://127.0.0.1:1/")
        except aiohttp.ClientConnectorError as exc:
            return exc
    raise AssertionError("port 1 answered")


async def test_failure_kinds_of_client_errors() -> None:
    backend = Backend("a", URL("http://127.0.0.1:1"))
    assert Forwarder._map_error(backend, "/x", await connector_error()).failure_kind == "connect"
    assert Forwarder._map_error(backend, "/x", ConnectionRefusedError()).failure_kind == "connect"
    assert Forwarder._map_error(backend, "/x", TimeoutError()).failure_kind == "timeout"
    assert Forwarder._map_error(backend, "/x", aiohttp.ServerDisconnectedError()).failure_kind == "protocol"


def test_failure_kinds_of_gateway_errors() -> None:
    assert UpstreamTimeout("x", backend="a").failure_kind == "timeout"
    assert UpstreamError("answer too large", backend="a").failure_kind == "protocol"
    assert UpstreamError("refused", backend="a", kind="connect").failure_kind == "connect"
    assert UpstreamRefused("x", status=503, backend="a").failure_kind == "5xx"
    assert UpstreamRefused("x", status=403, backend="a").failure_kind is None
    assert BadRequest("x").failure_kind is None


# --- no secrets in logs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://alice:s3cret@gpu-box:8188", "http://***@gpu-box:8188"),
        ("redis://:s3cret@redis:6379/0", "redis://***@redis:6379/0"),
        ("rediss://default:s3cret@redis:6380/1?ssl_cert_reqs=none", "rediss://***@redis:6380/1?ssl_cert_reqs=none"),
        ("redis://redis:6379/0?password=s3cret&db=2", "redis://redis:6379/0?password=***&db=2"),
        ("http://127.0.0.1:8188", "http://127.0.0.1:8188"),
    ],
    ids=["http-userinfo", "redis-password", "rediss-user-password", "password-param", "no-secret"],
)
def test_urls_are_shown_without_credentials(url: str, shown: str) -> None:
    assert shown_url(url) == shown
    assert redact_secrets(f"could not reach {url}: refused") == f"could not reach {shown}: refused"


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_both_log_formats_mask_a_secret_that_slips_into_a_message(formatter) -> None:
    import logging

    record = logging.LogRecord("comfy_gateway.x", logging.ERROR, __file__, 1, "store at %s is down",
                               ("redis://:hunter2@redis:6379/0",), None)
    line = formatter.format(record)
    assert "hunter2" not in line and "redis://***@redis:6379/0" in line


# --- several worker processes ------------------------------------------------------------------------------

_WORKER = textwrap.dedent(
    """
    import sys
    from gateway.core.exchange import Exchange
    from gateway.observe.metrics import GatewayMetrics

    metrics = GatewayMetrics(["kerniegen", "comfyui"], multiprocess_dir=sys.argv[1])
    for _ in range(int(sys.argv[2])):
        ex = Exchange(method="GET", path="/queue", endpoint="/queue")
        ex.backend, ex.source, ex.status = "kerniegen", "default", 200
        ex.finish()
        metrics.observe_exchange(ex)
    metrics.in_flight_gauges()["kerniegen"].inc()
    metrics.observe_health("kerniegen", True, 0.01)
    """
)


def test_multiprocess_mode_adds_up_every_worker(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for requests in (3, 4):
        subprocess.run([sys.executable, "-c", _WORKER, str(tmp_path), str(requests)], env=env, check=True, timeout=60)
    reader = GatewayMetrics(BACKENDS, multiprocess_dir=str(tmp_path))
    families = {f.name: f for f in text_string_to_metric_families(reader.exposition()[0].decode())}

    def sample(family: str, name: str, **labels: str) -> float:
        return next(s.value for s in families[family].samples if s.name == name and labels.items() <= s.labels.items())

    requests = {"backend": "kerniegen", "endpoint": "/queue", "method": "GET", "code": "200"}
    assert sample("comfy_gateway_requests", "comfy_gateway_requests_total", **requests) == 7
    assert sample("comfy_gateway_request_duration_seconds", "comfy_gateway_request_duration_seconds_count",
                  backend="kerniegen") == 7
    # Both workers have exited: live-worker gauges are dropped once mark_process_dead runs; here they are
    # still on disk, so in-flight sums the two and backend_up takes the max.
    assert sample("comfy_gateway_in_flight_requests", "comfy_gateway_in_flight_requests", backend="kerniegen") == 2
    assert sample("comfy_gateway_backend_up", "comfy_gateway_backend_up", backend="kerniegen") == 1


# --- WebSocket messages that cannot be delivered ----------------------------------------------------------------


class _ClosingClient:
    """The client side, closing after the first write: as ClientSocket.send_many then, ConnectionResetError with
    nothing written."""

    def __init__(self) -> None:
        self.received: list[str | bytes] = []

    async def send_many(self, messages: list[str | bytes]) -> None:
        if self.received:
            raise ConnectionResetError("the client's socket is closing")
        self.received += messages


async def test_messages_the_closing_side_cannot_take_are_counted_as_dropped(metrics: GatewayMetrics) -> None:
    from gateway.datapath.aio.fanin import Outgoing, SendQueue, send_queued

    client = _ClosingClient()
    senders: list[asyncio.Task[None]] = []
    meter = metrics.fan_in_meter()
    queue = SendQueue(8, 1 << 20, lambda kind: None,
                      lambda: senders.append(asyncio.create_task(send_queued(queue, client, meter))))  # type: ignore[arg-type]
    queue.put(Outgoing("status", "one", "comfyui"))
    for _ in range(100):
        if client.received:
            break
        await asyncio.sleep(0.01)
    await asyncio.wait_for(senders[0], 5)  # its queue empty, the sender stops
    for text in ("two", "three"):  # queued together: one sender, one write, which fails
        queue.put(Outgoing("status", text, "comfyui"))
    assert len(senders) == 2
    await asyncio.wait_for(senders[1], 5)
    assert client.received == ["one"]
    assert value(metrics, "comfy_gateway_websocket_messages_total", backend="comfyui", direction="to_client") == 1
    assert value(metrics, "comfy_gateway_websocket_message_types_total", direction="to_client", type="status") == 1
    assert value(metrics, "comfy_gateway_websocket_messages_dropped_total", backend="comfyui",
                 direction="to_client") == 2


class _ReadingClient:
    def __init__(self) -> None:
        self.received: list[str | bytes] = []
        self.writes = 0

    async def send_many(self, messages: list[str | bytes]) -> None:
        self.received += messages
        self.writes += 1


async def test_messages_sent_are_counted_once_the_queue_is_empty_while_the_socket_stays(
    metrics: GatewayMetrics,
) -> None:
    """The sender tallies what it sends and tells the metrics when it has nothing left (or every few hundred
    messages): a scrape during a quiet moment sees every message sent, with the socket still open."""
    from gateway.datapath.aio.fanin import Outgoing, SendQueue, send_queued

    client = _ReadingClient()
    senders: list[asyncio.Task[None]] = []
    meter = metrics.fan_in_meter()
    queue = SendQueue(1000, 1 << 20, lambda kind: None,
                      lambda: senders.append(asyncio.create_task(send_queued(queue, client, meter))))  # type: ignore[arg-type]
    for i in range(600):
        queue.put(Outgoing("progress", f"p{i}", "comfyui" if i % 3 else "kerniegen"))
    queue.put(Outgoing("executed", "done", "comfyui", essential=True))
    (sender,) = senders
    try:
        await asyncio.wait_for(sender, 5)  # all sent, the queue empty: the sender stops, the socket stays open
        assert len(client.received) == 601
        total = "comfy_gateway_websocket_messages_total"
        assert value(metrics, total, backend="comfyui", direction="to_client") == 401
        assert value(metrics, total, backend="kerniegen", direction="to_client") == 200
        types = "comfy_gateway_websocket_message_types_total"
        assert value(metrics, types, direction="to_client", type="progress") == 600
        assert value(metrics, types, direction="to_client", type="executed") == 1
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


def test_bound_updates_record_what_the_children_methods_record() -> None:
    """observe/bound.py updates a child's values directly: the exposition must be the one inc() and observe()
    make, every bucket boundary included."""
    def exposition(bound: bool) -> bytes:
        registry = CollectorRegistry()
        counter = Counter("c", "c", ["l"], registry=registry).labels("x")
        histogram = Histogram("h", "h", ["l"], registry=registry, buckets=(0.001, 0.01, 1.0)).labels("x")
        gauge = Gauge("g", "g", ["l"], registry=registry).labels("x")
        add = counter_add(counter) if bound else counter.inc
        observe = histogram_observe(histogram) if bound else histogram.observe
        move = gauge_add(gauge) if bound else gauge.inc
        for amount in (0, 0.0005, 0.001, 0.0011, 0.01, 0.5, 1.0, 7.0, 1e9):
            add(amount)
            observe(amount)
            move(amount)
            move(-amount / 2)
        return b"\n".join(line for line in generate_latest(registry).splitlines() if b"_created" not in line)

    assert exposition(bound=True) == exposition(bound=False)
