"""Property-based attacks on a running gateway (KernieGen behind it), on both data paths: arbitrary prompt
bodies, ids, user and selection header bytes, /view refs and query strings. Whatever the input, the gateway
never answers with a 500 of its own, never hangs, never lets a value add a header or a line, and the next
ordinary submission still succeeds (no wedge).

Hypothesis drives plain sockets from the test's thread; the gateway and KernieGen run on an event loop of
their own in a background thread, started once per data path.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.config.settings import BackendSettings, Settings, StoreSettings
from gateway.kerniegen.config import KernieGenConfig
from gateway.kerniegen.server import start_kerniegen

ANSWER_SECONDS = 10.0  # far above any honest answer here: past it the gateway hung
# Header names the gateway or KernieGen may send; anything else in an answer came from a client's bytes.
KNOWN_HEADERS = {
    "content-type", "content-length", "date", "server", "connection", "keep-alive", "transfer-encoding",
    "x-comfy-backend", "x-comfy-route", "x-comfy-prompt-id", "x-comfy-unavailable-backends", "x-comfy-guardrails",
    "www-authenticate",
    "retry-after", "content-disposition", "cache-control", "last-modified", "etag", "accept-ranges",
    "content-range", "vary", "access-control-allow-origin", "access-control-allow-credentials",
    "access-control-expose-headers", "content-encoding", "allow", "location", "x-content-type-options",
}


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Target:
    host: str
    port: int

    def send(self, raw: bytes) -> Answer:
        """One request as raw bytes (Connection: close), its whole answer read; AssertionError on a hang. An
        answer with a Content-Length is read to its end, not to the close: a server may linger first, reading
        what is left of a body it refused."""
        with socket.create_connection((self.host, self.port), timeout=ANSWER_SECONDS) as sock:
            sock.sendall(raw)
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
                    if answered_whole(data):
                        break
            except TimeoutError:
                raise AssertionError(f"no answer within {ANSWER_SECONDS}s to {raw[:200]!r}") from None
            except ConnectionResetError:
                pass  # refused mid-body: what was written before the reset still counts
        return parse_answer(data, raw)

    def request(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> Answer:
        head = [method.encode() + b" " + target + b" HTTP/1.1", f"Host: {self.host}:{self.port}".encode()]
        head += [name + b": " + value for name, value in headers]
        head += [f"Content-Length: {len(body)}".encode(), b"Connection: close"]
        return self.send(b"\r\n".join(head) + b"\r\n\r\n" + body)


def answered_whole(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def parse_answer(data: bytes, raw: bytes) -> Answer:
    assert data, f"the connection closed with no answer to {raw[:200]!r}"
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return Answer(status, headers, body)


def check(answer: Answer, raw: Any) -> None:
    """The properties every answer has, whatever was sent."""
    names = {name for name, _ in answer.headers}
    assert names <= KNOWN_HEADERS, f"unexpected headers {names - KNOWN_HEADERS} answering {raw!r}"
    for _, value in answer.headers:
        assert "\r" not in value and "\n" not in value
    if answer.status >= 500:
        # A backend's own 5xx is passed on, named; a 500 of the gateway's own is a bug.
        try:
            error = json.loads(answer.body).get("error", {})
        except ValueError:
            error = {}
        assert error.get("type") != "gateway_error", f"the gateway failed on {raw!r}: {answer.body[:300]!r}"
        assert answer.status != 500 or dict(answer.headers).get("x-comfy-backend"), f"500 answering {raw!r}"


def still_submits(target: Target) -> None:
    body = json.dumps({"prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}}}).encode()
    answer = target.request("POST", b"/prompt", [(b"Content-Type", b"application/json")], body)
    # KernieGen judges the workflow (a 400 with node_errors for this one); what matters is a prompt answer.
    assert answer.status in (200, 400), answer
    assert b"node_errors" in answer.body or b"prompt_id" in answer.body


class BackgroundGateway:
    """A gateway (and what stands behind it) on an event loop of its own in a background thread, for tests that
    drive it with blocking sockets from the test's thread. A subclass's `_start` brings it up."""

    def __init__(self, tmp: Path, data_path: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.tmp = tmp
        self.data_path = data_path
        self._closers: list[Any] = []
        self.target: Target = self._call(self._start())

    async def _start(self) -> Target:
        raise NotImplementedError

    def _call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout=30)

    def closing(self, close: Any) -> None:
        """`close()` is awaited when this gateway closes, last first."""
        self._closers.append(close)

    async def serve(self, settings: Settings) -> Target:
        """The gateway of `settings`, on this gateway's data path and a free port."""
        app = create_app(settings)
        if self.data_path == "fast":
            from gateway.serve import start_fast_gateway

            gateway = await start_fast_gateway(app, settings, host="127.0.0.1", port=0)
            self.closing(gateway.close)
            return Target("127.0.0.1", gateway.port)
        from aiohttp import web

        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.closing(runner.cleanup)
        return Target("127.0.0.1", runner.addresses[0][1])

    def close(self) -> None:
        async def close_all() -> None:
            for close in reversed(self._closers):
                await close()

        self._call(close_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()  # else its selector and self-pipe sockets are left for the garbage collector to warn about


class GatewayThread(BackgroundGateway):
    """KernieGen and a gateway in front of it."""

    async def _start(self) -> Target:
        kerniegen = await start_kerniegen(
            KernieGenConfig(port=0, data_dir=self.tmp / "kerniegen", step_delay_ms=0, frontend_dir=None)
        )
        self.closing(kerniegen.close)
        return await self.serve(
            Settings(
                backends={
                    "kerniegen": BackendSettings(url=kerniegen.url),
                    "other": BackendSettings(url="http://127.0.0.1:9"),  # nothing listens: a backend that is down
                },
                default_backend="kerniegen",
                state_dir=self.tmp / "state",
                store=StoreSettings(path=self.tmp / "state" / "gateway.sqlite3"),
                data_path=self.data_path,
                log_level="WARNING",
            )
        )


@pytest.fixture(scope="module", params=["fast", "aiohttp"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    running = GatewayThread(tmp_path_factory.mktemp(f"fuzz-{request.param}"), request.param)
    yield running.target
    running.close()


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
header_bytes = st.binary(max_size=80).filter(lambda b: b"\r" not in b and b"\n" not in b)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
ids = st.one_of(
    st.text(max_size=300),
    st.integers(),
    st.sampled_from(["\ud800", "rt\r\nX-Injected: 1", "中文", "😀", "99999999999999999999", "", " ", "%0d%0a"]),
)


@FUZZ
@given(prompt_id=ids, client_id=ids, extra=json_values)
def test_any_prompt_body_is_answered_without_a_gateway_failure(target: Target, prompt_id, client_id, extra) -> None:
    body = json.dumps({"prompt": extra, "prompt_id": prompt_id, "client_id": client_id}).encode()
    answer = target.request("POST", b"/prompt", [(b"Content-Type", b"application/json")], body)
    check(answer, body)
    still_submits(target)


@FUZZ
@given(body=st.binary(max_size=400))
def test_any_bytes_as_a_prompt_body(target: Target, body: bytes) -> None:
    check(target.request("POST", b"/prompt", [], body), body)
    still_submits(target)


@FUZZ
@given(user=header_bytes, backend=header_bytes, path=st.sampled_from([b"/queue", b"/prompt", b"/history", b"/ws"]))
def test_any_user_and_selection_header_bytes(target: Target, user: bytes, backend: bytes, path: bytes) -> None:
    headers = [(b"comfy-user", user), (b"X-Comfy-Backend", backend)]
    answer = target.request("GET", path, headers)
    check(answer, headers)
    assert answer.status in (200, 400, 403, 502, 503), (answer.status, headers)  # 502: the backend that is down
    still_submits(target)


@FUZZ
@given(
    filename=st.text(max_size=60),
    subfolder=st.text(max_size=60),
    kind=st.sampled_from(["output", "input", "temp", "x"]),
)
def test_any_view_ref(target: Target, filename: str, subfolder: str, kind: str) -> None:
    from urllib.parse import urlencode

    query = urlencode({"filename": filename, "subfolder": subfolder, "type": kind}, errors="surrogatepass")
    answer = target.request("GET", b"/view?" + query.encode(), [])
    check(answer, query)
    assert answer.status in (200, 400, 403, 404), (answer.status, query)


@FUZZ
@given(query=st.binary(max_size=120).filter(lambda b: not set(b) & set(b" \r\n\t\x00#")))
def test_any_query_string(target: Target, query: bytes) -> None:
    for path in (b"/history", b"/history/x", b"/queue", b"/view", b"/gateway/prompts/x"):
        answer = target.request("GET", path + b"?" + query, [])
        check(answer, path + b"?" + query)
    still_submits(target)


@pytest.mark.parametrize(
    "head",
    [
        b"GET http://127.0.0.1:{port}/queue HTTP/1.1",  # absolute-form, for a forward proxy
        b"GET http://127.0.0.1:{port}/gateway/backends HTTP/1.1",
        b"OPTIONS * HTTP/1.1",
        b"GET //evil.example/queue HTTP/1.1",
    ],
)
def test_a_target_that_is_not_origin_form_is_a_400(target: Target, head: bytes) -> None:
    raw = head.replace(b"{port}", str(target.port).encode()) + b"\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = target.send(raw)
    check(answer, raw)
    assert answer.status in (400, 404), answer  # `//evil.example/queue` is a path on the gateway, not a host
    still_submits(target)


def test_a_declared_body_over_the_limit_is_refused_at_once(target: Target) -> None:
    answer = target.send(b"POST /prompt HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n{")
    assert answer.status == 413 and b"body_too_large" in answer.body
    still_submits(target)


@FUZZ
@given(prompt_id=st.binary(max_size=60).filter(lambda b: not set(b) & set(b" \r\n\t\x00#?")))
def test_any_prompt_id_in_a_path(target: Target, prompt_id: bytes) -> None:
    for path in (b"/history/", b"/api/history/", b"/gateway/prompts/"):
        check(target.request("GET", path + prompt_id, []), path + prompt_id)
