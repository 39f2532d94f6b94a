"""The fast server over time: timeouts for clients that stall, a cap on connections, a graceful drain at
shutdown (requests in flight finish, idle connections close, WebSockets are told), and the requests it
hands to the aiohttp app, recorded there once."""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
import pytest

from gateway.datapath.fast.limits import Limits
from tests.fastpath.conftest import parse_responses, raw_connection, read_response, send_raw


@pytest.fixture
async def backend(start_backend):
    return await start_backend("kerniegen")


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the gateway sent before it closed the connection (within `seconds`)."""
    return await asyncio.wait_for(reader.read(-1), seconds)


async def test_stalled_clients_are_closed(backend, start_fast) -> None:
    limits = Limits(client_head_seconds=0.2, keepalive_seconds=0.2, client_body_seconds=0.2)
    gateway = await start_fast({"kerniegen": backend.url}, limits=limits)
    async with raw_connection(gateway.url) as (reader, writer):
        writer.write(b"GET /slowloris HTTP/1.1\r\nHost: gw\r\n")  # a head that never ends
        assert await closed_within(reader, 2) == b""
    async with raw_connection(gateway.url) as (reader, writer):
        writer.write(b"POST /upload/image HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")  # a body that stops
        assert await closed_within(reader, 2) == b""
    async with raw_connection(gateway.url) as (reader, writer):
        writer.write(b"GET /idle HTTP/1.1\r\nHost: gw\r\n\r\n")  # answered, then left idle
        assert (await closed_within(reader, 2)).startswith(b"HTTP/1.1 200")


async def test_a_client_that_reads_nothing_is_dropped(backend, start_fast) -> None:
    gateway = await start_fast({"kerniegen": backend.url}, limits=Limits(send_seconds=0.3))
    async with raw_connection(gateway.url) as (reader, writer):
        writer.transport.pause_reading()  # type: ignore[attr-defined]
        writer.write(b"GET /big/64 HTTP/1.1\r\nHost: gw\r\n\r\n")
        await asyncio.sleep(1.5)
        writer.transport.resume_reading()  # type: ignore[attr-defined]
        received = 0
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(1 << 20), 5):
                received += len(chunk)
    assert received < 64 * 1024 * 1024  # cut short
    assert (await send_raw(gateway.url, b"GET /ok HTTP/1.1\r\nConnection: close\r\n\r\n")).startswith(b"HTTP/1.1 200")


async def test_connections_past_the_cap_are_closed_at_once(backend, start_fast) -> None:
    gateway = await start_fast({"kerniegen": backend.url}, limits=Limits(max_client_connections=2))
    async with raw_connection(gateway.url), raw_connection(gateway.url):
        await asyncio.sleep(0.05)
        async with raw_connection(gateway.url) as (reader, writer):
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            with contextlib.suppress(ConnectionError):
                assert await closed_within(reader, 2) == b""
    assert (await send_raw(gateway.url, b"GET /ok HTTP/1.1\r\nConnection: close\r\n\r\n")).startswith(b"HTTP/1.1 200")


async def test_graceful_drain(backend, start_fast) -> None:
    gateway = await start_fast({"kerniegen": backend.url})
    async with aiohttp.ClientSession() as http, raw_connection(gateway.url) as (idle_reader, idle_writer):
        idle_writer.write(b"GET /warm HTTP/1.1\r\nHost: gw\r\n\r\n")
        await read_response(idle_reader)  # answered, now idle and kept alive
        ws = await http.ws_connect(f"{gateway.url}/ws?clientId=d")
        assert (await ws.receive_json(timeout=5))["type"] == "status"
        in_flight = asyncio.create_task(http.get(f"{gateway.url}/slow?seconds=0.5"))
        await asyncio.sleep(0.1)
        closing = asyncio.create_task(gateway.close())
        await asyncio.sleep(0.1)
        with pytest.raises(OSError):  # no new connections once the drain began
            async with raw_connection(gateway.url):
                pass
        assert await closed_within(idle_reader, 2) == b""  # the idle one was closed
        message = await ws.receive(timeout=5)
        assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1001  # the socket was told
        await ws.close()
        response = await asyncio.wait_for(in_flight, 5)  # the one in flight finished
        assert response.status == 200 and (await response.json()) == {"slow": True}
        response.release()
        await asyncio.wait_for(closing, 5)


async def test_the_aiohttp_app_answers_and_records_what_it_is_handed(backend, start_backend, start_fast) -> None:
    other = await start_backend("comfyui")
    gateway = await start_fast({"kerniegen": backend.url, "comfyui": other.url})
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/gateway/backends") as r:
            assert r.status == 200 and (await r.json())["default"] == "kerniegen"
        for name, pid in (("kerniegen", "on-k"), ("comfyui", "on-c")):
            async with http.post(
                f"{gateway.url}/prompt", json={"prompt": {}, "prompt_id": pid}, headers={"X-Comfy-Backend": name}
            ):
                pass
        # a delete naming prompts on both backends: split by the app, forwarded with the client's address
        async with http.post(
            f"{gateway.url}/queue", json={"delete": ["on-k", "on-c"]}, headers={"X-Forwarded-For": "10.1.1.1"}
        ) as r:
            assert r.status == 200 and set(r.headers["X-Comfy-Backend"].split(",")) == {"kerniegen", "comfyui"}
        seen = backend.last("/queue")
        assert json.loads(seen.body) == {"delete": ["on-k"]}
        assert seen.headers["X-Forwarded-For"] == "10.1.1.1, 127.0.0.1"
        async with http.get(f"{gateway.url}/queue") as r:  # no selection: merged by the app
            assert r.headers["X-Comfy-Route"] == "merged"
        async with http.get(f"{gateway.url}/metrics") as r:
            text = await r.text()
    merged = [
        line for line in text.splitlines() if line.startswith("comfy_gateway_requests_total") and "merged" in line
    ]
    assert any('endpoint="/queue"' in line and line.endswith(" 1.0") for line in merged)  # recorded once, by the app
    prompts = [
        line
        for line in text.splitlines()
        if line.startswith("comfy_gateway_requests_total") and 'endpoint="/prompt"' in line
    ]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in prompts) == 2  # recorded once, by the fast path


async def test_a_websocket_tunnel_carries_large_frames_and_closes_with_its_code(backend, start_fast) -> None:
    gateway = await start_fast({"kerniegen": backend.url})
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{gateway.url}/ws?clientId=big", max_msg_size=0) as ws:
            await ws.receive_json(timeout=5)
            blob = bytes(range(256)) * 16_384  # 4 MiB (a client message may be that long), several reads per hop
            await ws.send_bytes(blob)
            echoed = await ws.receive(timeout=10)
            assert echoed.data == b"echo:" + blob
            await ws.ping(b"are you there")
            await ws.send_str("close-4001")
            closing = await ws.receive(timeout=5)
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4001
    data = await send_raw(gateway.url, b"GET /after HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert parse_responses(data)[0].status == 200


async def test_unknown_backend_on_a_websocket_is_a_400(backend, start_fast) -> None:
    gateway = await start_fast({"kerniegen": backend.url})
    data = await send_raw(
        gateway.url,
        b"GET /ws?backend=nope HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    (response,) = parse_responses(data)
    assert response.status == 400 and json.loads(response.body)["error"]["type"] == "unknown_backend"


async def test_decisions_run_inline_under_the_default_settings(start_backend, start_fast) -> None:
    """The default store (SQLite behind the lookup cache) never waits, so the fast path decides without a task."""
    backend = await start_backend("comfyui")
    gateway = await start_fast({"comfyui": backend.url})
    assert gateway.server.dispatcher._answers_inline is True
