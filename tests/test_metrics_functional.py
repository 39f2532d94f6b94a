"""GET /metrics of a real gateway after real traffic: exact counter values and labels for every family, label
cardinality under a thousand prompt ids and users, in-flight and WebSocket gauges while things are open, and
prompt outcomes read from a backend's history (a small ComfyUI-shaped backend, then a real KernieGen)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from prometheus_client.parser import text_string_to_metric_families

from gateway.datapath.aio.keys import HEALTH
from gateway.kerniegen.config import KernieGenConfig
from gateway.kerniegen.server import start_kerniegen
from gateway.observe.pollers import HISTORY_WINDOW
from tests.ports import free_port


class ComfyShapedBackend:
    """Answers like ComfyUI where the metrics look (POST/GET /prompt, /history with max_items, /queue, /ws), plus
    routes that fail on purpose: /fail (a 500), /broken (cut mid-body), /slow."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.url = ""
        self.history: dict[str, dict] = {}  # insertion order = completion order, as in ComfyUI
        self.queue_remaining = 0
        self.history_windows: list[int] = []  # max_items of every GET /history the gateway's poller sent
        self.requests: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.removeprefix("/api")
        self.requests.append(f"{request.method} {path}")
        if path == "/ws":
            return await self.websocket(request)
        if request.method == "POST" and path == "/prompt":
            body = await request.json()
            return web.json_response({"prompt_id": body["prompt_id"], "number": 1, "node_errors": {}})
        if path == "/prompt":
            return web.json_response({"exec_info": {"queue_remaining": self.queue_remaining}})
        if path == "/history":
            entries = list(self.history.items())
            if "max_items" in request.query:
                window = int(request.query["max_items"])
                self.history_windows.append(window)
                entries = entries[-window:]
            return web.json_response(dict(entries))
        if path.startswith("/history/"):
            pid = path.removeprefix("/history/")
            return web.json_response({pid: self.history[pid]} if pid in self.history else {})
        if path == "/queue":
            return web.json_response({"queue_running": [], "queue_pending": []})
        if path == "/fail":
            return web.json_response({"error": "boom"}, status=500)
        if path == "/slow":
            await asyncio.sleep(float(request.query.get("seconds", "1")))
            return web.json_response({"slow": True})
        if path == "/broken":
            response = web.StreamResponse()
            response.content_length = 1000
            await response.prepare(request)
            await response.write(b"x" * 10)
            assert request.transport is not None
            request.transport.close()
            return response
        if path.startswith("/upload/"):
            size = len(await request.read())
            return web.json_response({"received": size})
        return web.json_response({"backend": self.name, "path": path})

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}})
        async for msg in ws:
            if msg.type == WSMsgType.TEXT and msg.data == "bye":
                await ws.close(code=4001)
            elif msg.type == WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws


def finished_entry(prompt_id: str, *, ok: bool = True, started_ms: int = 1_000_000, took_ms: int = 1500) -> dict:
    end = "execution_success" if ok else "execution_error"
    return {
        "prompt": [0, prompt_id, {}, {}, []],
        "outputs": {},
        "status": {
            "status_str": "success" if ok else "error",
            "completed": ok,
            "messages": [
                ["execution_start", {"prompt_id": prompt_id, "timestamp": started_ms}],
                [end, {"prompt_id": prompt_id, "timestamp": started_ms + took_ms}],
            ],
        },
    }


@pytest.fixture
def start_comfy(start_backend) -> Any:
    async def start(name: str) -> ComfyShapedBackend:
        return await start_backend(name, ComfyShapedBackend)

    return start


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


class Scrape:
    """One GET /metrics, parsed; `_created` samples left out."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [
            s for f in text_string_to_metric_families(text) for s in f.samples if not s.name.endswith("_created")
        ]

    def value(self, name: str, **labels: str) -> float | None:
        found = [s.value for s in self.samples if s.name == name and s.labels == labels]
        return found[0] if found else None

    def nonzero(self, name: str, label_names: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        return {
            tuple(s.labels[n] for n in label_names): s.value for s in self.samples if s.name == name and s.value
        }


async def scrape(http: aiohttp.ClientSession, gateway_url: str) -> Scrape:
    async with http.get(gateway_url + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=")
        return Scrape(await r.text())


async def wait_for(condition: Callable[[], Any], *, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# --- every request family, exact -----------------------------------------------------------------------------


async def until_health_checked(gateway: Any, backend: str) -> None:
    """The background health check of `backend` has run (so merges know whether it is up)."""
    async def checked() -> bool:
        return gateway.app[HEALTH].statuses[backend].up is not None

    await wait_for(checked)


async def test_exact_counters_and_labels_after_real_traffic(start_comfy, start_gateway, http) -> None:
    kg, comfy = await start_comfy("kerniegen"), await start_comfy("comfyui")
    comfy.history["known-elsewhere"] = finished_entry("known-elsewhere")
    gateway = await start_gateway(
        {
            "kerniegen": kg.url,
            "comfyui": {"url": comfy.url, "timeouts": {"read_seconds": 0.2}},
            "gone": closed_port_url(),
        },
        queue_poll_interval_seconds=60,
    )
    g = gateway.url

    async def get(path: str, **kwargs: Any) -> tuple[int, bytes]:
        async with http.get(g + path, **kwargs) as r:
            return r.status, await r.read()

    comfy_header = {"X-Comfy-Backend": "comfyui"}
    status, object_info = await get("/object_info")
    assert status == 200
    assert (await get("/object_info", headers=comfy_header))[0] == 200
    assert (await get("/api/object_info?backend=comfyui"))[0] == 200
    async with http.put(g + "/gateway/preferences/ana", json={"backend": "comfyui"}) as r:
        assert r.status == 200
    assert (await get("/system_stats", headers={"comfy-user": "ana"}))[0] == 200
    assert (await get("/queue", headers={"X-Comfy-Backend": "nope"}))[0] == 400
    prompt = b'{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}}}'
    async with http.post(g + "/prompt", data=prompt) as r:
        assert r.status == 200
        prompt_id = (await r.json())["prompt_id"]
    assert (await get(f"/history/{prompt_id}"))[0] == 200  # affinity: hit
    assert (await get("/history/known-elsewhere"))[0] == 200  # affinity: probe finds it on comfyui
    assert (await get("/history/nowhere"))[0] == 200  # affinity: miss, then the default backend
    await until_health_checked(gateway, "gone")
    assert (await get("/queue"))[0] == 200  # merged; "gone" is left out unasked: the health check found it down
    assert (await get("/fail", headers=comfy_header))[0] == 500
    assert (await get("/object_info", headers={"X-Comfy-Backend": "gone"}))[0] == 502
    assert (await get("/slow?seconds=0.5", headers=comfy_header))[0] == 504
    with pytest.raises(aiohttp.ClientPayloadError):
        await get("/broken")
    upload = bytes(100_000)
    async with http.post(g + "/upload/image", data=upload, headers=comfy_header) as r:
        assert r.status == 200

    m = await scrape(http, g)
    assert m.nonzero("comfy_gateway_requests_total", ("backend", "endpoint", "method", "code")) == {
        ("kerniegen", "/object_info", "GET", "200"): 1,
        ("comfyui", "/object_info", "GET", "200"): 2,
        ("none", "/gateway/preferences/{user}", "PUT", "200"): 1,
        ("comfyui", "/system_stats", "GET", "200"): 1,
        ("none", "/queue", "GET", "400"): 1,
        ("kerniegen", "/prompt", "POST", "200"): 1,
        ("kerniegen", "/history/{prompt_id}", "GET", "200"): 2,
        ("comfyui", "/history/{prompt_id}", "GET", "200"): 1,
        ("merged", "/queue", "GET", "200"): 1,
        ("comfyui", "other", "GET", "500"): 1,
        ("gone", "/object_info", "GET", "502"): 1,
        ("comfyui", "other", "GET", "504"): 1,
        ("kerniegen", "other", "GET", "200"): 1,
        ("comfyui", "/upload/image", "POST", "200"): 1,
    }
    assert m.nonzero("comfy_gateway_request_duration_seconds_count", ("backend", "endpoint", "method")) == {
        ("kerniegen", "/object_info", "GET"): 1,
        ("comfyui", "/object_info", "GET"): 2,
        ("none", "/gateway/preferences/{user}", "PUT"): 1,
        ("comfyui", "/system_stats", "GET"): 1,
        ("none", "/queue", "GET"): 1,
        ("kerniegen", "/prompt", "POST"): 1,
        ("kerniegen", "/history/{prompt_id}", "GET"): 2,
        ("comfyui", "/history/{prompt_id}", "GET"): 1,
        ("merged", "/queue", "GET"): 1,
        ("comfyui", "other", "GET"): 2,
        ("gone", "/object_info", "GET"): 1,
        ("kerniegen", "other", "GET"): 1,
        ("comfyui", "/upload/image", "POST"): 1,
    }
    slow = m.value("comfy_gateway_request_duration_seconds_bucket", backend="comfyui", endpoint="other",
                   method="GET", le="0.1")
    assert slow == 1  # the 500 was fast; the 504 waited 0.2 s for its read timeout
    assert m.nonzero("comfy_gateway_selections_total", ("backend", "source")) == {
        ("kerniegen", "default"): 4,  # /object_info, /prompt, /history/nowhere (held by no backend), /broken
        ("comfyui", "header"): 4,  # /object_info, /fail, /slow, /upload/image
        ("comfyui", "query"): 1,
        ("comfyui", "preference"): 1,
        ("kerniegen", "affinity"): 1,
        ("comfyui", "affinity"): 1,
        ("merged", "merged"): 1,
        ("gone", "header"): 1,
    }
    assert m.value("comfy_gateway_unknown_backend_rejections_total") == 1
    assert m.nonzero("comfy_gateway_upstream_errors_total", ("backend", "kind")) == {
        ("gone", "connect"): 1,  # chosen by header; the merged /queue left it out unasked
        ("comfyui", "5xx"): 1,
        ("comfyui", "timeout"): 1,
        ("kerniegen", "protocol"): 1,  # /broken: cut after the status line
    }
    assert m.nonzero("comfy_gateway_affinity_lookups_total", ("result",)) == {("hit",): 1, ("probe",): 1,
                                                                              ("miss",): 1}
    assert m.nonzero("comfy_gateway_prompts_submitted_total", ("backend",)) == {("kerniegen",): 1}
    assert m.value("comfy_gateway_request_bytes_total", backend="comfyui", endpoint="/upload/image") == 100_000
    assert m.value("comfy_gateway_request_bytes_total", backend="kerniegen", endpoint="/prompt") == len(prompt)
    assert m.value("comfy_gateway_response_bytes_total", backend="kerniegen", endpoint="/object_info") == len(
        object_info
    )
    assert m.nonzero("comfy_gateway_backend_up", ("backend",)) == {("kerniegen",): 1, ("comfyui",): 1}
    assert m.value("comfy_gateway_backend_up", backend="gone") == 0
    assert m.nonzero("comfy_gateway_in_flight_requests", ("backend",)) == {}


# --- gauges while something is open ---------------------------------------------------------------------------


async def test_in_flight_counts_a_request_while_the_backend_works_on_it(start_comfy, start_gateway, http) -> None:
    kg = await start_comfy("kerniegen")
    gateway = await start_gateway({"kerniegen": kg.url}, queue_poll_interval_seconds=60)
    slow = asyncio.create_task(http.get(gateway.url + "/slow?seconds=0.3"))
    await wait_for(lambda: asyncio.sleep(0, "GET /slow" in kg.requests))
    during = await scrape(http, gateway.url)
    (await slow).release()
    after = await scrape(http, gateway.url)
    assert during.value("comfy_gateway_in_flight_requests", backend="kerniegen") == 1
    assert after.value("comfy_gateway_in_flight_requests", backend="kerniegen") == 0


async def test_websocket_sockets_messages_and_who_closed(start_comfy, start_gateway, http) -> None:
    kg = await start_comfy("kerniegen")
    gateway = await start_gateway({"kerniegen": kg.url}, queue_poll_interval_seconds=60)
    async with http.ws_connect(gateway.url + "/ws?clientId=abc") as ws:
        assert (await ws.receive_json())["type"] == "status"
        await ws.send_str("hi")
        assert (await ws.receive_str()) == "echo:hi"
        await ws.send_bytes(b"\x00\x01")
        assert (await ws.receive_bytes()) == b"\x00\x01"
        during = await scrape(http, gateway.url)
    async with http.ws_connect(gateway.url + "/api/ws") as ws:
        await ws.receive_json()
        await ws.send_str("bye")  # the backend closes this one
        closing = await ws.receive()
        assert closing.type == WSMsgType.CLOSE and closing.data == 4001

    async def both_closed() -> bool:
        m = await scrape(http, gateway.url)
        return sum(m.nonzero("comfy_gateway_websocket_closed_total", ("backend", "closed_by")).values()) == 2

    await wait_for(both_closed)
    after = await scrape(http, gateway.url)
    assert during.nonzero("comfy_gateway_websocket_connections", ("backend", "side")) == {
        ("kerniegen", "client"): 1,
        ("kerniegen", "upstream"): 1,
    }
    assert after.nonzero("comfy_gateway_websocket_connections", ("backend", "side")) == {}
    assert after.nonzero("comfy_gateway_websocket_messages_total", ("backend", "direction")) == {
        ("kerniegen", "to_client"): 4,  # status, echo, bytes; then status of the second socket
        ("kerniegen", "to_backend"): 3,  # hi, bytes, bye
    }
    assert after.nonzero("comfy_gateway_websocket_closed_total", ("backend", "closed_by")) == {
        ("kerniegen", "client"): 1,
        ("kerniegen", "backend"): 1,
    }
    assert after.nonzero("comfy_gateway_websocket_messages_dropped_total", ("backend", "direction")) == {}
    assert after.value("comfy_gateway_requests_total", backend="kerniegen", endpoint="/ws", method="GET",
                       code="101") == 2


# --- cardinality ----------------------------------------------------------------------------------------------


async def test_a_thousand_prompt_ids_and_users_add_no_series(start_comfy, start_gateway, http) -> None:
    kg, comfy = await start_comfy("kerniegen"), await start_comfy("comfyui")
    gateway = await start_gateway({"kerniegen": kg.url, "comfyui": comfy.url}, queue_poll_interval_seconds=60)
    limit = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with limit:
            user = {"comfy-user": f"user-{uuid.uuid4()}"}
            async with http.post(gateway.url + "/prompt", json={"prompt": {}, "prompt_id": f"pid-{i}",
                                                                 "client_id": f"client-{i}"}, headers=user) as r:
                assert r.status == 200
            async with http.get(f"{gateway.url}/history/pid-{i}", headers=user) as r:
                assert r.status == 200
            async with http.get(f"{gateway.url}/view", params={"filename": f"file-{i}.png"}) as r:
                assert r.status == 200

    await asyncio.gather(*(one(i) for i in range(3)))
    before = await scrape(http, gateway.url)
    await asyncio.gather(*(one(i) for i in range(3, 1000)))
    after = await scrape(http, gateway.url)

    series = lambda m: {(s.name, tuple(sorted(s.labels.items()))) for s in m.samples}  # noqa: E731
    # The first scrape's own request is the one new series the second scrape can show.
    new = series(after) - series(before)
    assert {name for name, _ in new} <= {
        "comfy_gateway_requests_total", "comfy_gateway_request_duration_seconds_bucket",
        "comfy_gateway_request_duration_seconds_count", "comfy_gateway_request_duration_seconds_sum",
        "comfy_gateway_response_bytes_total",
    }
    assert all(dict(labels)["endpoint"] == "/metrics" for _, labels in new)
    assert len(series(after)) < 400
    for leak in ("pid-", "user-", "client-", "file-"):
        assert leak not in after.text
    assert after.value("comfy_gateway_prompts_submitted_total", backend="kerniegen") == 1000
    assert after.value("comfy_gateway_affinity_lookups_total", result="hit") == 1000


# --- prompt outcomes from the backend's history -----------------------------------------------------------------


async def test_prompt_outcomes_and_execution_time_from_the_backends_history(start_comfy, start_gateway, http) -> None:
    kg = await start_comfy("kerniegen")
    for i in range(40):  # history written before the gateway started, and by other clients
        kg.history[f"old-{i}"] = finished_entry(f"old-{i}")
    gateway = await start_gateway({"kerniegen": kg.url}, queue_poll_interval_seconds=0.05)

    async def submit(prompt_id: str) -> None:
        async with http.post(gateway.url + "/prompt", json={"prompt": {}, "prompt_id": prompt_id}) as r:
            assert r.status == 200

    async def metrics() -> Scrape:
        return await scrape(http, gateway.url)

    for pid in ("ok-1", "ok-2", "bad-1"):
        await submit(pid)
    kg.queue_remaining = 3
    await wait_for(lambda: _value_is(metrics, "comfy_gateway_queue_depth", 3, backend="kerniegen"))
    # The first poll doubles its window over the whole history (it has no previous poll to reach back to); later
    # ones read 8 and stop. Two reads of 8 in a row mean that first poll is over, so every poll that runs after the
    # entries below are added starts afresh at 8.
    await wait_for(lambda: _settled_into_small_windows(kg))
    # They finish, with twelve prompts of other clients after them: more than one small window holds.
    mark = len(kg.history_windows)
    kg.history["ok-1"] = finished_entry("ok-1", took_ms=1500)
    kg.history["bad-1"] = finished_entry("bad-1", ok=False, took_ms=250)
    kg.history["ok-2"] = finished_entry("ok-2", took_ms=40_000)
    for i in range(12):
        kg.history[f"other-{i}"] = finished_entry(f"other-{i}")
    kg.queue_remaining = 0
    await wait_for(lambda: _value_is(metrics, "comfy_gateway_prompts_completed_total", 2, backend="kerniegen"))

    m = await metrics()
    assert m.value("comfy_gateway_prompts_failed_total", backend="kerniegen") == 1
    assert m.value("comfy_gateway_prompt_execution_seconds_count", backend="kerniegen") == 3
    assert m.value("comfy_gateway_prompt_execution_seconds_sum", backend="kerniegen") == pytest.approx(41.75)
    assert m.value("comfy_gateway_prompt_execution_seconds_bucket", backend="kerniegen", le="2.5") == 2
    # queue depth comes from its own poll, which may run just after the history poll counted the outcomes
    await wait_for(lambda: _value_is(metrics, "comfy_gateway_queue_depth", 0, backend="kerniegen"))
    # The window grew past its first 8 to reach back over the 15 new entries to the previous poll's newest,
    # and no further than one more doubling (which one it stops at depends on when the polls ran).
    windows = kg.history_windows[mark:]
    assert windows[0] == 8 and 16 <= windows[-1] <= 32 and max(windows) <= 32, windows
    # Settled prompts are not counted again, and prompts the gateway did not submit are never counted.
    windows_before = len(kg.history_windows)
    kg.history["direct"] = finished_entry("direct")
    await asyncio.sleep(0.2)
    m = await metrics()
    assert (m.value("comfy_gateway_prompts_completed_total", backend="kerniegen"),
            m.value("comfy_gateway_prompts_failed_total", backend="kerniegen")) == (2, 1)
    assert len(kg.history_windows) == windows_before  # nothing left to follow: no history reads
    assert m.value("comfy_gateway_prompts_submitted_total", backend="kerniegen") == 3
    assert m.value("comfy_gateway_affinity_prompts") == 3


async def _settled_into_small_windows(backend: ComfyShapedBackend) -> bool:
    return backend.history_windows[-2:] == [HISTORY_WINDOW, HISTORY_WINDOW]


async def _value_is(read: Callable[[], Any], name: str, expected: float, **labels: str) -> bool:
    return (await read()).value(name, **labels) == expected


async def test_a_backend_that_is_down_is_a_poll_error_and_polling_goes_on(start_gateway, http) -> None:
    gateway = await start_gateway({"gone": closed_port_url()}, queue_poll_interval_seconds=0.05)

    async def two_errors() -> bool:
        return ((await scrape(http, gateway.url)).value("comfy_gateway_backend_poll_errors_total", backend="gone")
                or 0) >= 2

    await wait_for(two_errors)


async def test_prompts_run_by_a_real_kerniegen_are_counted_with_their_execution_time(
    start_gateway, http, tmp_path
) -> None:
    kg = await start_kerniegen(KernieGenConfig(port=0, data_dir=tmp_path / "kg", step_delay_ms=5))
    try:
        gateway = await start_gateway({"kerniegen": kg.url}, queue_poll_interval_seconds=0.05)
        prompt = {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "metrics"}},
        }
        async with http.post(gateway.url + "/prompt", json={"prompt": prompt}) as r:
            assert r.status == 200, await r.text()

        async def completed() -> bool:
            m = await scrape(http, gateway.url)
            return m.value("comfy_gateway_prompts_completed_total", backend="kerniegen") == 1

        await wait_for(completed)
        m = await scrape(http, gateway.url)
        assert m.value("comfy_gateway_prompts_failed_total", backend="kerniegen") == 0
        assert m.value("comfy_gateway_prompt_execution_seconds_count", backend="kerniegen") == 1
        assert 0 < m.value("comfy_gateway_prompt_execution_seconds_sum", backend="kerniegen") < 5
    finally:
        await kg.close()
