"""A client's WebSocket on /ws is given to the in-process app whole (datapath/fast/handover.py): the app's fan-in
writes to the client's own connection, with no hop in between. On real sockets: the socket works as before
(greeting, events, pings, what the client sent with its upgrade), counts against the cap on client connections
while it is open and not after, a refused upgrade still ends its connection, an answer still being written
before the upgrade keeps the connection on the fast path, and a drain still tells the socket it is going away."""

from __future__ import annotations

import asyncio
import json
import os
import socket

import aiohttp
import pytest

from gateway.datapath.fast.limits import Limits
from tests.fastpath.conftest import raw_connection, read_response

UPGRADE = (
    b"GET /ws?clientId=%s HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


@pytest.fixture
async def backend(start_backend):
    return await start_backend("kerniegen")


def masked(opcode: int, payload: bytes) -> bytes:
    """A client's frame (RFC 6455 §5.2: FIN set, masked), payloads under 126 bytes."""
    assert len(payload) < 126
    mask = os.urandom(4)
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader, timeout: float = 5.0) -> tuple[int, bytes]:
    """One unmasked frame from the server: (opcode, payload)."""
    first, second = await asyncio.wait_for(reader.readexactly(2), timeout)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return first & 0x0F, await asyncio.wait_for(reader.readexactly(length), timeout)


async def wait_until(condition, seconds: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    assert condition()


async def test_a_client_socket_is_served_by_the_app_on_its_own_connection(backend, start_fast) -> None:
    gateway = await start_fast({"kerniegen": backend.url})
    server = gateway.server
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{gateway.url}/ws?clientId=own")
        assert (await ws.receive_json(timeout=5))["type"] == "status"
        assert server.adopted == 1 and not server.connections  # no fast-path connection holds it
        await ws.send_str("executed:sub")
        message = await ws.receive_json(timeout=5)
        assert message["type"] == "executed"
        assert message["data"]["output"]["images"][0]["subfolder"] == "kerniegen/sub"  # the fan-in rewrote it
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=5) == "echo:hello"
        await ws.close()
    await wait_until(lambda: server.adopted == 0)


async def test_the_apps_101_names_no_server_as_no_other_answer_of_the_gateway_does(backend, start_fast) -> None:
    gateway = await start_fast({"kerniegen": backend.url})
    async with raw_connection(gateway.url) as (reader, writer):
        writer.write(b"GET /queue HTTP/1.1\r\nHost: gw\r\n\r\n")
        answer = (await read_response(reader)).lower()
        assert answer.startswith(b"http/1.1 200") and b"\r\nserver:" not in answer  # the backend's is dropped
    async with raw_connection(gateway.url) as (reader, writer):
        writer.write(UPGRADE % b"named")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        assert b"\r\nserver:" not in head.lower() and b"x-comfy-backend: kerniegen" in head.lower()


async def test_what_a_client_sends_with_its_upgrade_reaches_the_app(backend, start_fast) -> None:
    gateway = await start_fast({"kerniegen": backend.url})
    async with raw_connection(gateway.url) as (reader, writer):
        # a ping and a message in the upgrade's own segment
        writer.write(UPGRADE % b"early" + masked(0x9, b"are you there") + masked(0x1, b"hello"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        seen = [await read_frame(reader) for _ in range(3)]  # the greeting, the pong and the echo
        assert (0xA, b"are you there") in seen and (0x1, b"echo:hello") in seen
        assert any(op == 0x1 and data.startswith(b"{") and json.loads(data)["type"] == "status" for op, data in seen)
        writer.write(masked(0x8, (1000).to_bytes(2, "big")))
        assert (await read_frame(reader))[0] == 0x8
        assert await asyncio.wait_for(reader.read(-1), 5) == b""  # closed cleanly, not reset


async def test_given_sockets_count_against_the_cap_on_connections_while_open(backend, start_fast) -> None:
    gateway = await start_fast({"kerniegen": backend.url}, limits=Limits(max_client_connections=2))
    async with aiohttp.ClientSession() as http:
        held = [await http.ws_connect(f"{gateway.url}/ws?clientId=cap{i}") for i in range(2)]
        for ws in held:
            assert (await ws.receive_json(timeout=5))["type"] == "status"
        assert gateway.server.adopted == 2
        async with raw_connection(gateway.url) as (reader, writer):
            writer.write(b"GET /queue HTTP/1.1\r\nHost: gw\r\n\r\n")
            assert await asyncio.wait_for(reader.read(-1), 5) == b""  # the third connection: closed at once
        for ws in held:
            await ws.close()
        await wait_until(lambda: gateway.server.adopted == 0)
        async with http.get(f"{gateway.url}/queue") as r:
            assert r.status == 200  # room again


async def test_a_refused_upgrade_ends_its_connection(backend, start_fast) -> None:
    gateway = await start_fast({"kerniegen": backend.url})
    async with raw_connection(gateway.url) as (reader, writer):
        writer.write(UPGRADE.replace(b"clientId=%s", b"backend=nope") + b"GET /queue HTTP/1.1\r\nHost: gw\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(-1), 5)
    assert answer.startswith(b"HTTP/1.1 400") and answer.count(b"HTTP/1.1") == 1  # nothing after it is HTTP
    await wait_until(lambda: gateway.server.adopted == 0)


async def test_an_upgrade_after_an_answer_still_being_written_stays_on_the_fast_path(backend, start_fast) -> None:
    """A client with a small receive window asks for an image and, pipelined behind it, an upgrade, and reads
    nothing for a while: the image waits in the gateway's buffer, so the connection cannot be given whole; the
    socket is served through the app's socket, and the client still gets the whole image, the 101 and events."""
    image = os.urandom(200 * 1024)
    backend.files[("output", "", "big.png")] = image
    gateway = await start_fast({"kerniegen": backend.url})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window stays small
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gateway.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        await wait_until(lambda: len(gateway.server.connections) == 1)
        (connection,) = gateway.server.connections
        own = connection.transport.get_extra_info("socket")
        own.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the kernel holds little of the answer
        writer.write(b"GET /view?filename=big.png&type=output HTTP/1.1\r\nHost: gw\r\n\r\n" + UPGRADE % b"late")
        await asyncio.sleep(0.3)  # the image is all in the gateway's buffer now, the client's window full
        assert gateway.server.adopted == 0  # the upgrade came after it: not given away
        for end in (sock, own):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF if end is sock else socket.SO_SNDBUF, 1 << 20)
        answer = await read_response(reader, timeout=20)
        assert answer.startswith(b"HTTP/1.1 200") and answer.split(b"\r\n\r\n", 1)[1] == image
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        opcode, data = await read_frame(reader)
        assert opcode == 0x1 and json.loads(data)["type"] == "status"
        assert gateway.server.adopted == 0 and gateway.server.connections  # served through the app's socket
    finally:
        writer.close()


async def test_a_drain_tells_given_sockets_at_once(backend, start_fast) -> None:
    gateway = await start_fast({"kerniegen": backend.url})
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{gateway.url}/ws?clientId=drained")
        assert (await ws.receive_json(timeout=5))["type"] == "status"
        in_flight = asyncio.create_task(http.get(f"{gateway.url}/slow?seconds=1.0"))
        await asyncio.sleep(0.1)
        closing = asyncio.create_task(gateway.close())
        message = await ws.receive(timeout=0.8)  # before the request in flight is answered
        assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1001
        assert not in_flight.done()
        response = await asyncio.wait_for(in_flight, 5)
        assert response.status == 200
        response.release()
        await asyncio.wait_for(closing, 5)
