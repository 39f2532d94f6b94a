"""Loops on real sockets: a backend that leads back to the gateway through a TCP forwarder (which no start-up
check can see) gets 508 Loop Detected naming the backend, on both data paths, for plain requests and WebSocket
upgrades, after one hop; every upstream request carries the gateway's instance id, a client's forged one never
passes, and a chain of two gateways (another instance's id) is served."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.core.headers import INSTANCE_HEADER
from gateway.datapath.aio.keys import RUNTIME
from tests.recording_backend import RecordingBackend

LOOP_PATH = "/api/userdata/loop-probe.json"


class Forwarder:
    """Relays every TCP connection to `target_port` on 127.0.0.1 (set once the gateway listens) and keeps the
    bytes sent towards it, to count the requests that went round."""

    def __init__(self) -> None:
        self.target_port = 0
        self.sent = bytearray()
        self.server: asyncio.Server | None = None
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_writer, keep=True), self._pump(up_reader, writer, keep=False))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, keep: bool) -> None:
        try:
            while data := await reader.read(65536):
                if keep:
                    self.sent += data
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def requests_for(self, request_line_part: str) -> int:
        return bytes(self.sent).count(request_line_part.encode())

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


@pytest.fixture
async def forwarder() -> AsyncIterator[Forwarder]:
    relay = Forwarder()
    await relay.start()
    yield relay
    await relay.close()


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


async def looping_gateway(start_gateway: Any, start_backend: Any, forwarder: Forwarder, interval: float = 60) -> Any:
    direct = await start_backend("direct")
    gateway = await start_gateway(
        {"direct": direct.url, "loop": f"http://127.0.0.1:{forwarder.port}"},
        health_check_interval_seconds=interval,
    )
    forwarder.target_port = int(gateway.url.rsplit(":", 1)[1])
    return gateway


async def test_a_plain_request_that_comes_back_is_508_naming_the_backend_after_one_hop(
    start_gateway, start_backend, forwarder, http
) -> None:
    gateway = await looping_gateway(start_gateway, start_backend, forwarder)

    async with http.get(gateway.url + LOOP_PATH, headers={"X-Comfy-Backend": "loop"}) as r:
        status, body = r.status, await r.json()
        served_by = r.headers.get("X-Comfy-Backend")

    assert status == 508 and served_by == "loop"
    error = body["error"]
    assert error["type"] == "loop_detected" and error["extra_info"] == {"backend": "loop"}
    assert "backend 'loop' reaches the gateway itself" in error["message"]
    assert forwarder.requests_for(f"GET {LOOP_PATH} ") == 1  # one hop: the request that came back was not sent again


async def test_a_prompt_submission_that_comes_back_is_508(start_gateway, start_backend, forwarder, http) -> None:
    gateway = await looping_gateway(start_gateway, start_backend, forwarder)
    prompt = {"prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}}}

    async with http.post(gateway.url + "/prompt", json=prompt, headers={"X-Comfy-Backend": "loop"}) as r:
        assert r.status == 508
        assert (await r.json())["error"]["type"] == "loop_detected"
    assert forwarder.requests_for("POST /prompt HTTP/1.1") == 1


async def test_a_websocket_upgrade_that_comes_back_is_508(start_gateway, start_backend, forwarder, http) -> None:
    gateway = await looping_gateway(start_gateway, start_backend, forwarder)

    with pytest.raises(aiohttp.WSServerHandshakeError) as excinfo:
        await http.ws_connect(gateway.url + "/ws?clientId=loop-test", headers={"X-Comfy-Backend": "loop"})

    assert excinfo.value.status == 508
    assert forwarder.requests_for("GET /ws?clientId=loop-test ") == 1


async def test_the_health_check_of_a_looping_backend_says_it_loops(start_gateway, start_backend, forwarder, http):
    gateway = await looping_gateway(start_gateway, start_backend, forwarder, interval=0.05)

    deadline = asyncio.get_running_loop().time() + 10
    while True:  # the first check may have run before the forwarder knew the gateway's port
        async with http.get(gateway.url + "/gateway/ready") as r:
            state = (await r.json())["backends"]["loop"]
        if "508" in (state["last_error"] or "") or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)

    assert state["up"] is False and state["ready"] is False
    assert "came back to this gateway (508 Loop Detected)" in state["last_error"]


class HeaderWitness:
    """A backend that keeps every value of the instance header each request brought (all of them, not a dict's
    last), by path."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.url = ""
        self.instance_values: dict[str, list[list[str]]] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        agent = request.headers.get("User-Agent", "")
        if "health-check" not in agent and "inventory" not in agent:  # the gateway's own background reads
            self.instance_values.setdefault(request.path, []).append(request.headers.getall(INSTANCE_HEADER, []))
        if request.path == "/ws":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.close()
            return ws
        if request.path == "/history":
            return web.json_response({})
        return web.json_response({"ok": True})


async def test_every_upstream_request_carries_the_instance_id_and_a_forged_one_never_passes(
    start_gateway, start_backend, http
) -> None:
    backend: HeaderWitness = await start_backend("only", HeaderWitness)
    gateway = await start_gateway({"only": backend.url})
    instance_id = gateway.app[RUNTIME].instance_id
    assert len(instance_id) == 32
    forged = {INSTANCE_HEADER: "forged-by-a-client; backend=only"}

    async with http.get(gateway.url + "/object_info", headers=forged) as r:  # streamed
        assert r.status == 200
    async with http.get(gateway.url + "/history", headers=forged) as r:  # a merge of one: BackendCalls
        assert r.status == 200
    async with http.ws_connect(gateway.url + "/ws?clientId=c", headers=forged) as ws:  # an upgrade
        await ws.receive()

    ours = [f"{instance_id}; backend=only"]
    assert backend.instance_values["/object_info"] == [ours]
    assert backend.instance_values["/history"] == [ours]
    assert backend.instance_values["/ws"] == [ours]


async def test_a_chain_of_two_gateways_is_served(start_gateway, start_backend, http) -> None:
    backend: RecordingBackend = await start_backend("gpu")
    inner = await start_gateway({"gpu": backend.url})
    outer = await start_gateway({"inner": inner.url})

    async with http.get(outer.url + "/object_info") as r:
        assert r.status == 200
        # one set of the gateway's headers, the outer's: the inner gateway's own are not passed on beside them
        assert r.headers.getall("X-Comfy-Backend") == ["inner"]
        assert r.headers.getall("X-Comfy-Route") == ["default"]

    seen = backend.last("/object_info")
    inner_id = inner.app[RUNTIME].instance_id
    assert seen.headers[INSTANCE_HEADER] == f"{inner_id}; backend=gpu"
    assert outer.app[RUNTIME].instance_id != inner_id
