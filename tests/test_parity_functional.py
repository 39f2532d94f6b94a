"""Data-path parity: the same scenario through a fresh gateway on each data path ("fast", then "aiohttp"), each
with its own metrics registry, state store and fresh backends of the same kind, then compared: status, body
(bytes, or JSON with the values that legitimately vary put in placeholders), every X-Comfy-* header,
Content-Type and Location, the deltas of the request, upstream-error, selection and affinity metrics, and what
each backend received. Each scenario also states the behaviour both paths must have, checked on each path.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from gateway.datapath.aio.keys import HEALTH
from tests.conftest import DATA_PATHS


@pytest.fixture
def data_path() -> str:
    """Every test here starts one gateway per data path itself (start_gateway(..., data_path=...)), so it is not
    parametrized over the paths like other gateway tests (nor narrowed by GATEWAY_TEST_DATA_PATH)."""
    return DATA_PATHS[0]


# --- a ComfyUI-shaped backend with fixed answers (no ports, no request headers echoed) -----------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Received:
    method: str
    raw_path: str
    body: bytes


@dataclass
class ParityBackend:
    """Knows the prompts submitted to it (queue_pending, then history once `finish`ed), answers POST /queue and
    POST /history deletes like ComfyUI (200, empty body), serves `files` on /view, and lets a scenario replace
    any route with `routes[(method, path)]`. Background traffic (health checks, metrics polls) is not recorded."""

    name: str
    url: str = ""
    received: list[Received] = field(default_factory=list)
    history: dict[str, dict] = field(default_factory=dict)
    queue_running: list[list] = field(default_factory=list)
    queue_pending: list[list] = field(default_factory=list)
    files: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    number: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends what /slow waits for

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    def finish(self, prompt_id: str, subfolder: str = "") -> None:
        self.queue_pending = [item for item in self.queue_pending if item[1] != prompt_id]
        self.history[prompt_id] = history_entry(prompt_id, subfolder)

    def requests(self) -> list[str]:
        return [f"{r.method} {r.raw_path}" for r in self.received]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        agent = request.headers.get("User-Agent", "")
        if "health-check" not in agent and "inventory" not in agent:  # the gateway's background reads
            self.received.append(Received(request.method, request.raw_path, body))
        path = request.path.removeprefix("/api")
        custom = self.routes.get((request.method, path))
        if custom is not None:
            return await custom(request)
        if request.method == "POST" and path == "/prompt":
            pid = json.loads(body)["prompt_id"]
            self.number += 1
            self.queue_pending.append([self.number, pid, {}, {}, []])
            return web.json_response({"prompt_id": pid, "number": self.number, "node_errors": {}})
        if request.method == "GET" and path == "/prompt":
            remaining = len(self.queue_running) + len(self.queue_pending)
            return web.json_response({"exec_info": {"queue_remaining": remaining}})
        if request.method == "GET" and path == "/history":
            return web.json_response(self.history)
        if request.method == "GET" and path.startswith("/history/"):
            pid = path.removeprefix("/history/")
            return web.json_response({pid: self.history[pid]} if pid in self.history else {})
        if request.method == "GET" and path == "/queue":
            return web.json_response({"queue_running": self.queue_running, "queue_pending": self.queue_pending})
        if request.method == "POST" and path in ("/queue", "/history"):
            doomed = set(json.loads(body or b"{}").get("delete", []))
            if path == "/queue":
                self.queue_pending = [item for item in self.queue_pending if item[1] not in doomed]
            else:
                self.history = {k: v for k, v in self.history.items() if k not in doomed}
            return web.Response(status=200)
        if request.method == "GET" and path == "/system_stats":
            return web.json_response({"system": {"os": "posix", "backend": self.name}, "devices": []})
        if path == "/view":
            q = request.query
            data = self.files.get((q.get("type", "output"), q.get("subfolder", ""), q.get("filename", "")))
            if data is None:
                return web.Response(status=404)
            return web.Response(body=data, content_type="image/png")
        if path == "/slow":
            await asyncio.wait_for(self.release.wait(), 10)
            return web.json_response({"slow": True})
        return web.json_response({"backend": self.name, "method": request.method, "raw_path": request.raw_path})


def history_entry(prompt_id: str, subfolder: str = "", ts: int = 1000) -> dict:
    return {
        "prompt": [1, prompt_id, {}, {}, ["9"]],
        "outputs": {"9": {"images": [{"filename": f"{prompt_id}.png", "subfolder": subfolder, "type": "output"}]}},
        "status": {"status_str": "success", "completed": True,
                   "messages": [["execution_start", {"prompt_id": prompt_id, "timestamp": ts}]]},
        "meta": {},
    }


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# --- what one path did -------------------------------------------------------------------------------------

COMPARED_FAMILIES = (
    "comfy_gateway_requests_total",
    "comfy_gateway_upstream_errors_total",
    "comfy_gateway_affinity_lookups_total",
    "comfy_gateway_selections_total",
    "comfy_gateway_unknown_backend_rejections_total",
)
COMPARED_HEADERS = ("content-type", "location", "retry-after")


@dataclass
class Reply:
    """One response as the client saw it, normalised: the headers compared, the body as JSON when it is JSON."""

    label: str
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class Outcome:
    replies: list[Reply]
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float]  # (sample, labels) -> delta, zeros left out
    received: dict[str, list[tuple[str, str, Any]]]  # backend -> sorted (method, raw path, body)

    def reply(self, label: str) -> Reply:
        return next(r for r in self.replies if r.label == label)

    def delta(self, name: str, **labels: str) -> float:
        """The sum of the deltas of the samples of `name` that carry these labels (others free)."""
        return sum(
            v for (n, ls), v in self.metrics.items()
            if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
        )

    def got(self, backend: str, method: str | None = None, path: str | None = None) -> list[tuple[str, str, Any]]:
        return [
            r for r in self.received[backend]
            if (method is None or r[0] == method) and (path is None or r[1] == path or r[1].startswith(path + "?"))
        ]


class Run:
    """One scenario on one data path: its gateway, its backends, the client, and the placeholders for values
    that legitimately differ between two runs (ports, minted prompt ids)."""

    def __init__(self, data_path: str, gateway_url: str, backends: dict[str, ParityBackend], urls: dict[str, str],
                 http: aiohttp.ClientSession) -> None:
        self.data_path = data_path
        self.url = gateway_url
        self.backends = backends
        self.http = http
        self.replies: list[Reply] = []
        self.placeholders: dict[str, str] = {
            gateway_url: "<gateway>", gateway_url.removeprefix("http://"): "<gateway-host>"}
        for name, url in urls.items():
            self.placeholders[url] = f"<{name}-url>"
            self.placeholders[url.removeprefix("http://")] = f"<{name}-host>"

    def alias(self, value: str, placeholder: str) -> None:
        self.placeholders[value] = placeholder

    def renormalise(self) -> None:
        """Apply placeholders added since to the replies already recorded."""
        for reply in self.replies:
            reply.headers = {k: self.normalise_text(v) for k, v in reply.headers.items()}
            reply.body = (json.loads(self.normalise_text(json.dumps(reply.body))) if not isinstance(reply.body, bytes)
                          else self.normalise_body(reply.body, ""))

    def normalise_text(self, text: str) -> str:
        for value in sorted(self.placeholders, key=len, reverse=True):
            text = text.replace(value, self.placeholders[value])
        return text

    def normalise_body(self, body: bytes, content_type: str) -> Any:
        try:
            text = body.decode()
        except UnicodeDecodeError:
            return body
        text = self.normalise_text(text)
        if "json" in content_type:
            try:
                return normalise_error_cause(json.loads(text))
            except ValueError:
                pass
        return text.encode()

    def record(self, label: str, status: int, headers: Any, body: bytes) -> Reply:
        kept = {
            k.lower(): self.normalise_text(", ".join(headers.getall(k)) if hasattr(headers, "getall") else headers[k])
            for k in dict.fromkeys(headers.keys())
            if k.lower().startswith("x-comfy-") or k.lower() in COMPARED_HEADERS or k.lower().startswith("x-backend-")
        }
        reply = Reply(label, status, kept, self.normalise_body(body, kept.get("content-type", "")))
        self.replies.append(reply)
        return reply

    async def request(self, label: str, method: str, path: str, **kwargs: Any) -> Reply:
        async with self.http.request(method, self.url + path, allow_redirects=False, **kwargs) as r:
            return self.record(label, r.status, r.headers, await r.read())

    async def raw(self, label: str, request: bytes) -> Reply:
        status, headers, body = await raw_exchange(self.url, request)
        return self.record(label, status, headers, body)


class RawHeaders(dict):
    def getall(self, key: str) -> list[str]:
        return self[key]


async def raw_exchange(gateway_url: str, request: bytes, *, seconds: float = 5.0) -> tuple[int, RawHeaders, bytes]:
    """Send `request` as bytes on a new connection and read one response (Content-Length, chunked, or to EOF)."""
    url = URL(gateway_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        async with asyncio.timeout(seconds):
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = RawHeaders()
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers.setdefault(name.strip(), []).append(value.strip())
            lower = {k.lower(): v[-1] for k, v in headers.items()}
            if "content-length" in lower:
                body = await reader.readexactly(int(lower["content-length"]))
            elif "chunked" in lower.get("transfer-encoding", "").lower():
                body = b""
                while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                    body += await reader.readexactly(size)
                    await reader.readexactly(2)
                await reader.readuntil(b"\r\n")
            elif status in (101, 204, 304) or 100 <= status < 200:
                body = b""
            else:
                body = await reader.read()
            return status, headers, body
    finally:
        writer.close()


@dataclass
class Scrape:
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    @classmethod
    async def of(cls, http: aiohttp.ClientSession, gateway_url: str) -> Scrape:
        async with http.get(gateway_url + "/metrics") as r:
            assert r.status == 200
            text = await r.text()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name in COMPARED_FAMILIES
        }
        return cls(samples)

    def minus(self, before: Scrape) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        deltas = {key: value - before.samples.get(key, 0.0) for key, value in self.samples.items()}
        return {key: value for key, value in deltas.items() if value}


# --- scenarios ---------------------------------------------------------------------------------------------

Down = object()  # a backend spec: a URL nothing listens on


@dataclass
class Scenario:
    id: str
    run: Callable[[Run], Awaitable[None]]
    expect: Callable[[Outcome], None]
    # name -> Down, or what BackendSettings takes besides the url ({} or {"timeouts": ...})
    backends: dict[str, Any] = field(default_factory=lambda: {"kerniegen": {}, "comfyui": {}})
    setup: Callable[[dict[str, ParityBackend]], None] | None = None
    settings: dict[str, Any] = field(default_factory=dict)


# "backend 'x' at URL failed on /path: <cause>": the cause is the text of the HTTP client library's own
# exception (aiohttp's ClientConnectorError on one path, the OS error on the other), not the gateway's words.
_CAUSE = re.compile(r"^(backend '[^']*' at \S+ failed on \S+): .*$", re.DOTALL)


def normalise_error_cause(body: Any) -> Any:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        error["message"] = _CAUSE.sub(r"\1: <cause>", error["message"])
    return body


def error_of(reply: Reply) -> dict:
    assert isinstance(reply.body, dict) and isinstance(reply.body.get("error"), dict), reply.body
    return reply.body["error"]


# a. a 200 application/json /history/{id} answer that is not JSON (but looks like it has an output ref)

def _truncated_history(backends: dict[str, ParityBackend]) -> None:
    async def truncated(request: web.Request) -> web.Response:
        return web.Response(body=b'{"a": {"outputs": {"9": {"images": [{"filename": "x.png", "subfolder": ',
                            content_type="application/json")

    backends["comfyui"].routes[("GET", "/history/broken-1")] = truncated


async def _run_truncated_history(run: Run) -> None:
    await run.request("submit", "POST", "/prompt", json={"prompt": {}, "prompt_id": "broken-1"},
                      headers={"X-Comfy-Backend": "comfyui"})
    await run.request("history", "GET", "/history/broken-1")


def _expect_truncated_history(o: Outcome) -> None:
    reply = o.reply("history")
    assert reply.status == 502, (reply.status, reply.body)
    error = error_of(reply)
    assert error["type"] == "backend_unavailable", error
    assert "comfyui" in error["message"], error
    assert (reply.headers.get("x-comfy-backend"), reply.headers.get("x-comfy-route")) == ("comfyui", "affinity")
    assert o.delta("comfy_gateway_upstream_errors_total", backend="comfyui", kind="protocol") == 1, o.metrics
    assert o.delta("comfy_gateway_upstream_errors_total") == 1, o.metrics
    assert len(o.got("comfyui", "GET", "/history/broken-1")) == 1, o.received


# b. a WebSocket upgrade the backend refuses with a 500

def _refused_ws(backends: dict[str, ParityBackend]) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": "no sockets today"}, status=500)

    backends["kerniegen"].routes[("GET", "/ws")] = refuse


async def _run_refused_ws(run: Run) -> None:
    host = URL(run.url).authority
    await run.raw(
        "upgrade",
        f"GET /ws?clientId=x HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode(),
    )


def _expect_refused_ws(o: Outcome) -> None:
    reply = o.reply("upgrade")
    assert reply.status == 500, reply
    assert reply.headers.get("x-comfy-backend") == "kerniegen", reply.headers
    assert o.delta("comfy_gateway_upstream_errors_total", backend="kerniegen", kind="5xx") == 1, o.metrics
    assert o.delta("comfy_gateway_upstream_errors_total") == 1, o.metrics
    assert o.got("kerniegen") == [("GET", "/ws?clientId=x", b"")], o.received


# c. POST /queue {"delete"} over two backends' prompts and one no backend has

async def _run_split_delete(run: Run) -> None:
    await run.request("submit-a", "POST", "/prompt", json={"prompt": {}, "prompt_id": "id-a"})
    await run.request("submit-b", "POST", "/prompt", json={"prompt": {}, "prompt_id": "id-b"},
                      headers={"X-Comfy-Backend": "comfyui"})
    await run.request("delete", "POST", "/queue", json={"delete": ["id-a", "id-b", "unknown-id"]})


def _expect_split_delete(o: Outcome) -> None:
    assert o.reply("delete").status == 200, o.reply("delete")
    posts = {name: o.got(name, "POST", "/queue") for name in ("kerniegen", "comfyui")}
    assert [len(p) for p in posts.values()] == [1, 1], posts
    assert sorted(posts["kerniegen"][0][2]["delete"]) == ["id-a", "unknown-id"], posts
    assert posts["comfyui"][0][2] == {"delete": ["id-b"]}, posts
    probes = {name: [r[:2] for r in o.received[name] if r[0] == "GET"] for name in ("kerniegen", "comfyui")}
    for name, gets in probes.items():
        assert sorted(gets) == [("GET", "/history/unknown-id"), ("GET", "/queue")], (name, gets)
    assert o.delta("comfy_gateway_affinity_lookups_total", result="miss") == 1, o.metrics
    assert o.delta("comfy_gateway_affinity_lookups_total", result="hit") == 2, o.metrics
    assert o.delta("comfy_gateway_affinity_lookups_total", result="probe") == 0, o.metrics


# d. a redirect answered on a rewritten route

def _redirecting_history(backends: dict[str, ParityBackend]) -> None:
    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/somewhere", "X-Backend-Thing": "kept"})

    backends["kerniegen"].routes[("GET", "/history/moved-1")] = redirect


async def _run_redirecting_history(run: Run) -> None:
    await run.request("submit", "POST", "/prompt", json={"prompt": {}, "prompt_id": "moved-1"})
    await run.request("history", "GET", "/history/moved-1")


def _expect_redirecting_history(o: Outcome) -> None:
    reply = o.reply("history")
    assert reply.status == 302, (reply.status, reply.body)
    assert reply.headers.get("location") == "/somewhere", reply.headers
    assert reply.headers.get("x-backend-thing") == "kept", reply.headers
    assert reply.headers.get("x-comfy-backend") == "kerniegen", reply.headers
    assert o.delta("comfy_gateway_upstream_errors_total") == 0, o.metrics
    assert len(o.got("kerniegen", "GET", "/history/moved-1")) == 1, o.received


# e. HTTP/1.0 without a Host header

async def _run_http10_without_host(run: Run) -> None:
    run.backends["kerniegen"].queue_pending.append([1, "k-q", {}, {}, []])
    run.backends["comfyui"].queue_running.append([2, "c-q", {}, {}, []])
    await run.raw("system_stats", b"GET /system_stats HTTP/1.0\r\n\r\n")
    await run.raw("health", b"GET /gateway/health HTTP/1.0\r\n\r\n")
    await run.raw("queue", b"GET /queue HTTP/1.0\r\n\r\n")


def _expect_http10_without_host(o: Outcome) -> None:
    assert (o.reply("system_stats").status, o.reply("system_stats").body) == (
        200, {"system": {"os": "posix", "backend": "kerniegen"}, "devices": []}), o.reply("system_stats")
    assert (o.reply("health").status, o.reply("health").body) == (200, {"status": "ok"}), o.reply("health")
    assert (o.reply("queue").status, o.reply("queue").body) == (
        200, {"queue_running": [[2, "c-q", {}, {}, []]], "queue_pending": [[1, "k-q", {}, {}, []]]}), o.reply("queue")


# f. ordinary cases

async def _run_select_header(run: Run) -> None:
    await run.request("header", "GET", "/object_info", headers={"X-Comfy-Backend": "comfyui"})


def _expect_select_header(o: Outcome) -> None:
    r = o.reply("header")
    assert (r.status, r.headers["x-comfy-backend"], r.headers["x-comfy-route"]) == (200, "comfyui", "header")
    assert r.body == {"backend": "comfyui", "method": "GET", "raw_path": "/object_info"}


async def _run_select_query(run: Run) -> None:
    await run.request("query", "GET", "/api/object_info?a=1&backend=comfyui&b=2")


def _expect_select_query(o: Outcome) -> None:
    r = o.reply("query")
    assert (r.status, r.headers["x-comfy-backend"], r.headers["x-comfy-route"]) == (200, "comfyui", "query")
    assert r.body["raw_path"] == "/api/object_info?a=1&b=2"


async def _run_select_preference(run: Run) -> None:
    await run.request("put", "PUT", "/gateway/preferences/ana", json={"backend": "comfyui"})
    await run.request("ana", "GET", "/system_stats", headers={"comfy-user": "ana"})
    await run.request("bob", "GET", "/system_stats", headers={"comfy-user": "bob"})


def _expect_select_preference(o: Outcome) -> None:
    assert o.reply("put").status == 200
    ana, bob = o.reply("ana"), o.reply("bob")
    assert (ana.status, ana.headers["x-comfy-backend"], ana.headers["x-comfy-route"]) == (200, "comfyui", "preference")
    assert (bob.status, bob.headers["x-comfy-backend"], bob.headers["x-comfy-route"]) == (200, "kerniegen", "default")


async def _run_select_default(run: Run) -> None:
    await run.request("default", "GET", "/system_stats")


def _expect_select_default(o: Outcome) -> None:
    r = o.reply("default")
    assert (r.status, r.headers["x-comfy-backend"], r.headers["x-comfy-route"]) == (200, "kerniegen", "default")
    assert r.body == {"system": {"os": "posix", "backend": "kerniegen"}, "devices": []}


async def _run_unknown_backend(run: Run) -> None:
    await run.request("header", "GET", "/queue", headers={"X-Comfy-Backend": "nope"})
    await run.request("query", "GET", "/system_stats?backend=gpu9")


def _expect_unknown_backend(o: Outcome) -> None:
    for label in ("header", "query"):
        r = o.reply(label)
        assert r.status == 400 and r.headers["content-type"].startswith("application/json"), r
        error = error_of(r)
        assert error["type"] == "unknown_backend" and error["details"] == ["comfyui", "kerniegen"], error
    assert o.received == {"kerniegen": [], "comfyui": []}
    assert o.delta("comfy_gateway_unknown_backend_rejections_total") == 2, o.metrics


async def _run_affinity_history(run: Run) -> None:
    submitted = await run.request("submit", "POST", "/prompt", json={"prompt": {}},
                                  headers={"X-Comfy-Backend": "comfyui"})
    pid = submitted.body["prompt_id"]  # minted by the gateway: differs between the runs
    run.alias(pid, "<minted-prompt-id>")
    run.renormalise()
    run.backends["comfyui"].finish(pid, subfolder="sub")
    await run.request("history", "GET", f"/history/{pid}", headers={"X-Comfy-Backend": "kerniegen"})
    info = await run.request("prompt", "GET", f"/gateway/prompts/{pid}")
    if isinstance(info.body, dict) and isinstance(info.body.get("submitted_at"), float):
        info.body["submitted_at"] = "<float>"


def _expect_affinity_history(o: Outcome) -> None:
    r = o.reply("history")
    assert (r.status, r.headers["x-comfy-backend"], r.headers["x-comfy-route"]) == (200, "comfyui", "affinity")
    assert r.headers.get("x-comfy-prompt-id", "<minted-prompt-id>") == "<minted-prompt-id>", r.headers
    image = r.body["<minted-prompt-id>"]["outputs"]["9"]["images"][0]
    assert image["subfolder"] == "comfyui/sub", image
    assert o.delta("comfy_gateway_affinity_lookups_total", result="hit") >= 1, o.metrics
    assert o.delta("comfy_gateway_affinity_lookups_total", result="probe") == 0, o.metrics
    assert o.got("kerniegen") == [], o.received
    info = o.reply("prompt")
    assert info.status == 200 and info.body == {
        "prompt_id": "<minted-prompt-id>", "backend": "comfyui", "user": None, "client_id": None,
        "submitted_at": "<float>", "route": "header", "guardrails": ["skipped"], "state": "done"}, info.body


def _merge_setup(backends: dict[str, ParityBackend]) -> None:
    backends["kerniegen"].history = {"k1": history_entry("k1", ts=1000), "k2": history_entry("k2", ts=3000)}
    backends["comfyui"].history = {"c1": history_entry("c1", "sub", ts=2000)}
    backends["kerniegen"].queue_pending.append([5, "k3", {}, {}, []])
    backends["comfyui"].queue_running.append([2, "c2", {}, {}, []])


async def _run_merged(run: Run) -> None:
    await run.request("history", "GET", "/history")
    await run.request("queue", "GET", "/queue")


def _expect_merged(o: Outcome) -> None:
    history, queue = o.reply("history"), o.reply("queue")
    for r in (history, queue):
        assert r.status == 200 and r.headers["x-comfy-route"] == "merged", r
        assert set(r.headers["x-comfy-backend"].split(",")) == {"kerniegen", "comfyui"}, r.headers
    assert list(history.body) == ["k1", "c1", "k2"]
    assert history.body["c1"]["outputs"]["9"]["images"][0]["subfolder"] == "comfyui/sub"
    assert history.body["k1"]["outputs"]["9"]["images"][0]["subfolder"] == "kerniegen"
    assert queue.body == {"queue_running": [[2, "c2", {}, {}, []]], "queue_pending": [[5, "k3", {}, {}, []]]}


def _view_setup(backends: dict[str, ParityBackend]) -> None:
    backends["comfyui"].files[("output", "sub", "c1.png")] = b"\x89PNG-comfyui-sub"


async def _run_view(run: Run) -> None:
    await run.request("view", "GET", "/view?filename=c1.png&subfolder=comfyui%2Fsub&type=output")


def _expect_view(o: Outcome) -> None:
    r = o.reply("view")
    assert (r.status, r.body) == (200, b"\x89PNG-comfyui-sub"), r
    assert (r.headers["x-comfy-backend"], r.headers["x-comfy-route"]) == ("comfyui", "affinity")
    assert [g[:2] for g in o.got("comfyui")] == [("GET", "/view?filename=c1.png&subfolder=sub&type=output")]


async def _run_foreign_origin(run: Run) -> None:
    await run.request("queue", "GET", "/queue", headers={"Origin": "http://evil.example"})


def _expect_foreign_origin(o: Outcome) -> None:
    assert o.reply("queue").status == 403, o.reply("queue")
    assert o.received == {"kerniegen": [], "comfyui": []}


async def _run_too_large(run: Run) -> None:
    await run.request("upload", "POST", "/upload/image", data=b"z" * 4096,
                      headers={"Content-Type": "application/octet-stream"})


def _expect_too_large(o: Outcome) -> None:
    r = o.reply("upload")
    assert r.status == 413, r
    assert error_of(r)["type"] == "body_too_large"
    assert o.got("kerniegen", "POST") == []


async def _run_backend_down(run: Run) -> None:
    await run.request("down", "GET", "/system_stats", headers={"X-Comfy-Backend": "comfyui"})
    await run.request("up", "GET", "/system_stats")


def _expect_backend_down(o: Outcome) -> None:
    r = o.reply("down")
    assert r.status == 502, r
    error = error_of(r)
    assert error["type"] == "backend_unavailable" and "comfyui" in error["message"], error
    assert r.headers["x-comfy-backend"] == "comfyui"
    assert o.reply("up").status == 200
    assert o.delta("comfy_gateway_upstream_errors_total", backend="comfyui", kind="connect") == 1, o.metrics


async def _run_circuit_open(run: Run) -> None:
    await run.request("open", "GET", "/system_stats", headers={"X-Comfy-Backend": "comfyui"})
    await run.request("merged", "GET", "/queue")


def _expect_circuit_open(o: Outcome) -> None:
    r = o.reply("open")
    assert r.status == 503, r
    error = error_of(r)
    assert error["type"] == "backend_unavailable" and "comfyui" in error["message"], error
    assert error["details"] == {"retry_after_seconds": 30} and r.headers["retry-after"] == "30"
    assert r.headers["x-comfy-backend"] == "comfyui"
    merged = o.reply("merged")
    assert merged.status == 200 and merged.headers["x-comfy-unavailable-backends"] == "comfyui"
    assert o.delta("comfy_gateway_upstream_errors_total", backend="comfyui", kind="connect") == 0, o.metrics


async def _run_backend_timeout(run: Run) -> None:
    await run.request("slow", "GET", "/slow")


def _expect_backend_timeout(o: Outcome) -> None:
    r = o.reply("slow")
    assert r.status == 504, r
    error = error_of(r)
    assert error["type"] == "backend_timeout" and "kerniegen" in error["message"], error
    assert o.delta("comfy_gateway_upstream_errors_total", backend="kerniegen", kind="timeout") == 1, o.metrics


SCENARIOS = [
    Scenario("history-200-json-not-json", _run_truncated_history, _expect_truncated_history, setup=_truncated_history),
    Scenario("ws-upgrade-refused-500", _run_refused_ws, _expect_refused_ws, setup=_refused_ws),
    Scenario("queue-delete-split-and-unknown", _run_split_delete, _expect_split_delete),
    Scenario("history-302-passed-through", _run_redirecting_history, _expect_redirecting_history,
             setup=_redirecting_history),
    Scenario("http10-without-host", _run_http10_without_host, _expect_http10_without_host),
    Scenario("select-header", _run_select_header, _expect_select_header),
    Scenario("select-query", _run_select_query, _expect_select_query),
    Scenario("select-preference", _run_select_preference, _expect_select_preference),
    Scenario("select-default", _run_select_default, _expect_select_default),
    Scenario("unknown-backend-400", _run_unknown_backend, _expect_unknown_backend),
    Scenario("affinity-history-after-prompt", _run_affinity_history, _expect_affinity_history),
    Scenario("merged-history-and-queue", _run_merged, _expect_merged, setup=_merge_setup),
    Scenario("view-prefixed-subfolder", _run_view, _expect_view, setup=_view_setup),
    Scenario("foreign-origin-403", _run_foreign_origin, _expect_foreign_origin),
    Scenario("body-too-large-413", _run_too_large, _expect_too_large, settings={"max_body_bytes": 1024}),
    Scenario("backend-down-502", _run_backend_down, _expect_backend_down,
             backends={"kerniegen": {}, "comfyui": Down}),
    # The first health check finds comfyui down, which with consecutive_failures = 1 opens its circuit.
    Scenario("circuit-open-503", _run_circuit_open, _expect_circuit_open,
             backends={"kerniegen": {}, "comfyui": Down}, settings={"resilience": {"consecutive_failures": 1}}),
    Scenario("backend-timeout-504", _run_backend_timeout, _expect_backend_timeout,
             backends={"kerniegen": {"timeouts": {"read_seconds": 0.2}}, "comfyui": {}}),
]


# --- the harness -------------------------------------------------------------------------------------------


async def until_health_checked(app: web.Application, names: list[str], *, seconds: float = 5.0) -> None:
    """Every backend's first health check is done, so merges know who is up and no check runs mid-scenario."""
    deadline = time.monotonic() + seconds
    while any(app[HEALTH].statuses[name].up is None for name in names):
        assert time.monotonic() < deadline, "health checks did not run in time"
        await asyncio.sleep(0.01)


async def run_on(path: str, scenario: Scenario, start_backend, start_gateway, tmp_path) -> Outcome:
    backends: dict[str, ParityBackend] = {}
    urls: dict[str, str] = {}
    specs: dict[str, Any] = {}
    for name, spec in scenario.backends.items():
        if spec is Down:
            urls[name] = closed_port_url()
            specs[name] = urls[name]
        else:
            backends[name] = await start_backend(name, ParityBackend)
            urls[name] = backends[name].url
            specs[name] = {"url": backends[name].url, **spec}
    if scenario.setup is not None:
        scenario.setup(backends)
    gateway = await start_gateway(
        specs,
        state_file=tmp_path / f"{path}.sqlite3",
        data_path=path,
        queue_poll_interval_seconds=3600,
        health_check_interval_seconds=3600,
        **scenario.settings,
    )
    assert gateway.data_path == path
    try:
        await until_health_checked(gateway.app, list(specs))
        async with aiohttp.ClientSession() as http:
            run = Run(path, gateway.url, backends, urls, http)
            before = await Scrape.of(http, gateway.url)
            for backend in backends.values():
                backend.received.clear()
            await scenario.run(run)
            after = await Scrape.of(http, gateway.url)
    finally:
        for backend in backends.values():
            backend.release.set()
        await gateway.close()
    received = {
        name: sorted(
            ((r.method, run.normalise_text(r.raw_path), run.normalise_body(r.body, "json"))
             for r in backends[name].received),
            key=repr,
        )
        for name in backends
    }
    # the /metrics scrapes themselves are counted alike on both paths, but are not part of the scenario
    metrics = {
        key: value for key, value in after.minus(before).items() if dict(key[1]).get("endpoint") != "/metrics"
    }
    return Outcome(run.replies, metrics, received)


def differences(fast: Outcome, aio: Outcome) -> list[str]:
    found: list[str] = []
    labels = [r.label for r in fast.replies]
    if labels != [r.label for r in aio.replies]:
        found.append(f"replies: {labels} vs {[r.label for r in aio.replies]}")
    for a, b in zip(fast.replies, aio.replies, strict=False):  # lengths compared above
        for what in ("status", "headers", "body"):
            if getattr(a, what) != getattr(b, what):
                found.append(f"{a.label} {what}: fast={getattr(a, what)!r} aiohttp={getattr(b, what)!r}")
    for key in sorted(set(fast.metrics) | set(aio.metrics)):
        if fast.metrics.get(key, 0.0) != aio.metrics.get(key, 0.0):
            name, ls = key
            found.append(f"metric {name}{dict(ls)} delta: fast={fast.metrics.get(key, 0.0)} "
                         f"aiohttp={aio.metrics.get(key, 0.0)}")
    for name in sorted(set(fast.received) | set(aio.received)):
        if fast.received.get(name) != aio.received.get(name):
            found.append(
                f"backend {name} received: fast={fast.received.get(name)!r} aiohttp={aio.received.get(name)!r}")
    return found


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
async def test_both_data_paths_answer_alike(scenario: Scenario, start_backend, start_gateway, tmp_path) -> None:
    outcomes = {path: await run_on(path, scenario, start_backend, start_gateway, tmp_path) for path in DATA_PATHS}
    problems: list[str] = []
    for path, outcome in outcomes.items():
        try:
            scenario.expect(outcome)
        except AssertionError as exc:
            problems.append(f"[{path}] expected behaviour not met: {exc}")
    problems += [f"parity: {d}" for d in differences(outcomes["fast"], outcomes["aiohttp"])]
    assert not problems, "\n".join(problems)
