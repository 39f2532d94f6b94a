"""One function per kind of measurement, each run against one target and returning named samples.

A sample carries either a value or the problem that forbids reporting one (an error, a wrong length).
CPU and memory are read from /proc for the target's own process tree (direct: the upstream itself).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import processes
import workload
from load import HeldSockets, run_curl, run_wrk, run_ws
from targets import Target


@dataclass(frozen=True)
class Plan:
    """How hard and how long to push; --smoke shrinks everything so a run takes seconds."""

    wrk_seconds: int
    latency_seconds: int
    large_bytes: int
    large_downloads: int
    ws_connections: int
    ws_burst: int
    wrk_script: Path
    prompt_file: Path
    load_cpu: int | None
    held_sockets: int = 2000
    held_idle_seconds: float = 20.0  # one gateway heartbeat period, so every held socket is pinged once
    http_connections: int = 32
    view_connections: int = 8
    slow_client_bytes_per_second: int = 25_000_000
    rss_sample_seconds: float = 0.01
    # A fresh process of the named target, for as long as the context lasts (lineup.Lineup.fresh); None: the
    # measures that want one use the live target.
    fresh_target: Callable[[str], AbstractAsyncContextManager[Target]] | None = None


@dataclass(frozen=True)
class Sample:
    key: str
    value: float | None
    problem: str | None = None


Measurement = Callable[[Target, Plan], Awaitable[list[Sample]]]

def http_request(endpoint: str, backend: str) -> tuple[str, str, int]:
    """(path, method, smallest correct answer in bytes) for one benchmarked endpoint."""
    if endpoint == "history":
        prompt_id = workload.history_prompt_id(backend)
        return f"/history/{prompt_id}", "GET", len(workload.history_body(prompt_id, backend))
    if endpoint == "queue":
        return "/queue", "GET", len(workload.queue_body())
    return "/prompt", "POST", len('{"prompt_id": "", "number": 1, "node_errors": {}}')


def view_url(target: Target, filename: str) -> str:
    query = urlencode({"filename": filename, "subfolder": workload.VIEW_SUBFOLDER, "type": "output"})
    return f"{target.load_route.base_url}/view?{query}"


def http_endpoint(endpoint: str) -> Measurement:
    """req/s, p50, p99 and the target's CPU µs per request for one endpoint under wrk."""
    async def measure(target: Target, plan: Plan) -> list[Sample]:
        path, method, min_bytes = http_request(endpoint, target.load_route.backend)
        pids = target.process.tree()
        upstream = target.upstream
        upstream_pids = upstream.tree() if upstream is not None else []
        cpu_before = target.process.cpu_seconds(pids)
        upstream_before = upstream.cpu_seconds(upstream_pids) if upstream is not None else 0.0
        result = await run_wrk(target.load_route.base_url + path, script=plan.wrk_script,
                               seconds=plan.wrk_seconds, connections=plan.http_connections,
                               backend=target.load_route.backend, min_body_bytes=min_bytes, method=method,
                               body_file=plan.prompt_file if method == "POST" else None, cpu=plan.load_cpu)
        cpu_seconds = target.process.cpu_seconds(pids) - cpu_before
        upstream_seconds = upstream.cpu_seconds(upstream_pids) - upstream_before if upstream is not None else None
        if result.problem:
            return [Sample(f"{endpoint}_{kind}", None, result.problem) for kind in ("rps", "p50_ms", "p99_ms",
                                                                                     "cpu_us", "upstream_cpu_us")]
        return [Sample(f"{endpoint}_rps", result.requests_per_second),
                Sample(f"{endpoint}_p50_ms", result.p50_ms),
                Sample(f"{endpoint}_p99_ms", result.p99_ms),
                Sample(f"{endpoint}_cpu_us", cpu_seconds * 1e6 / result.requests),
                Sample(f"{endpoint}_upstream_cpu_us",
                       None if upstream_seconds is None else upstream_seconds * 1e6 / result.requests)]

    measure.__name__ = f"http_{endpoint}"
    return measure


async def prompt_latency(target: Target, plan: Plan) -> list[Sample]:
    """POST /prompt one at a time over one connection: the p50 is latency without queueing."""
    path, method, min_bytes = http_request("prompt", target.load_route.backend)
    result = await run_wrk(target.load_route.base_url + path, script=plan.wrk_script,
                           seconds=plan.latency_seconds, connections=1, backend=target.load_route.backend,
                           min_body_bytes=min_bytes, method=method, body_file=plan.prompt_file,
                           cpu=plan.load_cpu)
    return [Sample("prompt_serial_p50_ms", None if result.problem else result.p50_ms, result.problem)]


async def view_small(target: Target, plan: Plan) -> list[Sample]:
    result = await run_wrk(view_url(target, workload.SMALL_VIEW_FILENAME), script=plan.wrk_script,
                           seconds=plan.wrk_seconds, connections=plan.view_connections,
                           backend=target.load_route.backend, min_body_bytes=workload.SMALL_VIEW_BYTES,
                           cpu=plan.load_cpu)
    return [Sample("view_small_mibps", None if result.problem else result.mib_per_second, result.problem)]


async def view_large(target: Target, plan: Plan) -> list[Sample]:
    """Single downloads at full speed; the median of plan.large_downloads of them."""
    speeds = []
    for _ in range(plan.large_downloads):
        result = await run_curl(view_url(target, workload.LARGE_VIEW_FILENAME), backend=target.load_route.backend,
                                expected_bytes=plan.large_bytes, cpu=plan.load_cpu)
        if result.problem:
            return [Sample("view_large_mibps", None, result.problem)]
        speeds.append(result.mib_per_second)
    speeds.sort()
    return [Sample("view_large_mibps", speeds[len(speeds) // 2])]


async def websocket(target: Target, plan: Plan) -> list[Sample]:
    """Messages/s as the client sees them, and the target's CPU per relayed message. One aiohttp client
    process tops out near the rate of a fast relay, so the CPU figure is what tells fast relays apart."""
    url = target.load_route.base_url.replace("http://", "ws://", 1) + f"/ws?clientId={workload.WS_CLIENT_ID}"
    pids = target.process.tree()
    cpu_before = target.process.cpu_seconds(pids)
    result = await run_ws(url, backend=target.load_route.backend, connections=plan.ws_connections,
                          burst=plan.ws_burst, cpu=plan.load_cpu)
    cpu_seconds = target.process.cpu_seconds(pids) - cpu_before
    if result.problem:
        return [Sample(key, None, result.problem) for key in ("ws_msgps", "ws_cpu_us")]
    return [Sample("ws_msgps", result.messages_per_second),
            Sample("ws_cpu_us", cpu_seconds * 1e6 / result.messages)]


async def slow_client_rss(target: Target, plan: Plan) -> list[Sample]:
    """Peak resident memory growth of the target while it streams the large file to a rate-limited client."""
    pids = target.process.tree()
    exact_peak = processes.reset_peak_rss(pids)
    baseline = processes.rss_kib(pids)
    download = asyncio.create_task(run_curl(
        view_url(target, workload.LARGE_VIEW_FILENAME), backend=target.load_route.backend,
        expected_bytes=plan.large_bytes, limit_rate=plan.slow_client_bytes_per_second, cpu=plan.load_cpu))
    peak = baseline
    while not download.done():
        peak = max(peak, processes.rss_kib(pids))
        await asyncio.sleep(plan.rss_sample_seconds)
    if exact_peak:
        peak = max(peak, processes.peak_rss_kib(pids))
    result = download.result()
    if result.problem:
        return [Sample("slow_client_rss_mib", None, result.problem)]
    return [Sample("slow_client_rss_mib", max(0, peak - baseline) / 1024)]


async def held_websockets(target: Target, plan: Plan) -> list[Sample]:
    """plan.held_sockets idle client WebSockets held through a fresh process of the target (each with its
    upstream socket): its resident memory per held socket, and its CPU per second while they idle (heartbeats
    included). Fresh, because a process that served the other measures has memory it freed but kept, which new
    sockets reuse: its growth would say nearly nothing."""
    if plan.fresh_target is None:
        return await _held_websockets(target, plan)
    async with plan.fresh_target(target.name) as fresh:
        return await _held_websockets(fresh, plan)


async def _held_websockets(target: Target, plan: Plan) -> list[Sample]:
    url = target.load_route.base_url.replace("http://", "ws://", 1) + "/ws"
    keys = ("held_ws_rss_kib", "held_ws_idle_cpu_ms")
    pids = target.process.tree()
    before = processes.rss_kib(pids)
    async with HeldSockets(url, backend=target.load_route.backend, count=plan.held_sockets, cpu=plan.load_cpu,
                           open_seconds=120) as held:
        if held.open and held.problem is None:
            pids = target.process.tree()
            rss = processes.rss_kib(pids)
            cpu_before = target.process.cpu_seconds(pids)
            await asyncio.sleep(plan.held_idle_seconds)
            idle_cpu_seconds = target.process.cpu_seconds(pids) - cpu_before
            rss = max(rss, processes.rss_kib(pids))
    if held.problem:
        return [Sample(key, None, held.problem) for key in keys]
    return [Sample("held_ws_rss_kib", max(0, rss - before) / plan.held_sockets),
            Sample("held_ws_idle_cpu_ms", idle_cpu_seconds * 1000 / plan.held_idle_seconds)]


MEASUREMENTS: tuple[Measurement, ...] = (
    http_endpoint("history"), http_endpoint("queue"), http_endpoint("prompt"), prompt_latency,
    view_small, view_large, websocket, slow_client_rss, held_websockets,
)
# The gateway's variants are there for what one setting changes; the held sockets compare the gateway with
# nginx (a heartbeat period of idling each). A target and measurement not named here: every measurement.
ONLY_ON = {"held_websockets": frozenset({"nginx", "gateway"})}
VARIANT_MEASUREMENTS = {
    "gateway-redis": frozenset({"http_history", "http_queue", "http_prompt"}),
    "gateway-2w": frozenset({"http_history", "http_queue", "http_prompt", "websocket"}),
}


def applies(measurement: Measurement, target: str) -> bool:
    name = measurement.__name__
    if target in VARIANT_MEASUREMENTS:
        return name in VARIANT_MEASUREMENTS[target]
    return target in ONLY_ON.get(name, frozenset({target}))
