"""The client's socket on /ws (datapath/aio/client_socket.py) on real sockets: a burst written at once arrives
as the same messages, in order, whatever their size and kind; compressed sockets are written frame by frame;
a closing socket takes nothing; and the sender writes a burst queued at once in one write."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from gateway.datapath.aio.client_socket import ClientSocket
from gateway.datapath.aio.fanin import Outgoing, SendQueue, send_queued
from gateway.observe.metrics import GatewayMetrics
from tests.conftest import serve_app

BURST: list[str | bytes] = [
    "small",
    "é" * 100,  # 200 bytes of UTF-8: the 16-bit length form
    os.urandom(70_000),  # the 64-bit length form
    '{"type": "progress", "data": {"value": 1, "max": 20}}',
    b"",
    "",
]


@pytest.fixture
async def burst_server():
    """A server whose socket answers "burst" with BURST in one send_many; "close" closes it first."""
    problems: list[BaseException] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = ClientSocket()
        await ws.prepare(request)
        async for message in ws:
            if message.data == "burst":
                await ws.send_many(BURST)
            elif message.data == "close":
                await ws.close()
                try:
                    await ws.send_many(["after close"])
                except ConnectionResetError as exc:
                    problems.append(exc)
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner, url = await serve_app(app)
    yield url, problems
    await runner.cleanup()


async def received(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[str | bytes]:
    out: list[str | bytes] = []
    for _ in range(count):
        message = await ws.receive(timeout=5)
        assert message.type in (WSMsgType.TEXT, WSMsgType.BINARY)
        out.append(message.data)
    return out


@pytest.mark.parametrize("compress", [0, 15])
async def test_a_burst_arrives_as_the_same_messages_in_order(burst_server, compress: int) -> None:
    url, _ = burst_server
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}/ws", compress=compress) as ws:
        assert ws.compress == compress  # with 15, the socket compresses: written frame by frame
        await ws.send_str("burst")
        assert await received(ws, len(BURST)) == BURST
        await ws.send_str("burst")  # and again: nothing was left behind
        assert await received(ws, len(BURST)) == BURST


async def test_a_closing_socket_takes_nothing(burst_server) -> None:
    url, problems = burst_server
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}/ws") as ws:
        await ws.send_str("close")
        message = await ws.receive(timeout=5)
        assert message.type == WSMsgType.CLOSE  # the close frame, and no message after it
    for _ in range(100):
        if problems:
            break
        await asyncio.sleep(0.01)
    assert len(problems) == 1 and isinstance(problems[0], ConnectionResetError)


class _Writes:
    def __init__(self) -> None:
        self.writes: list[list[str | bytes]] = []

    async def send_many(self, messages: list[str | bytes]) -> None:
        self.writes.append(list(messages))


async def test_the_sender_writes_what_is_queued_at_once_together_in_order() -> None:
    metrics = GatewayMetrics(("kerniegen",))
    client = _Writes()
    senders: list[asyncio.Task[None]] = []
    meter = metrics.fan_in_meter()
    queue = SendQueue(10_000, 1 << 24, lambda kind: None,
                      lambda: senders.append(asyncio.create_task(send_queued(queue, client, meter))))  # type: ignore[arg-type]
    texts = [f'{{"type": "progress", "data": {{"value": {i}}}}}' for i in range(1000)]
    for text in texts:
        queue.put(Outgoing("progress", text, "kerniegen"))
    queue.put(Outgoing("binary", b"x" * 100_000, "kerniegen"))  # larger than a write gathers: after the rest
    await asyncio.wait_for(senders[0], 5)  # one sender for all of it, stopped once the queue is empty
    assert len(senders) == 1
    assert [m for w in client.writes for m in w] == [*texts, b"x" * 100_000]
    assert len(client.writes) <= 2  # not one write per message
