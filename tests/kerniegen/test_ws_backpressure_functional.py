"""A /ws client that upgrades and then never reads, on a real TCP socket with a tiny receive buffer:
KernieGen holds at most `ws_outbox_bytes` unsent for it and then drops it, while a reading client
hears every message and every prompt finishes; shutdown does not wait on it either."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType
from PIL import Image

from gateway.kerniegen.config import KernieGenConfig
from gateway.kerniegen.server import KernieGenServer, start_kerniegen
from gateway.kerniegen.ws_hub import WsClient
from tests.kerniegen.conftest import StartKernieGen
from tests.kerniegen.kerniegen_client import TIMEOUT_SECONDS, frames_until_done, history_entry, submit, wait_idle
from tests.kerniegen.workflows import slow_chain

# Several times what one prompt below sends in a burst (the worker thread can post a whole run's
# messages before the loop gets to send any), so only the socket that never reads can reach it.
BOUND = 512 * 1024
SCALES = 20
# A high-water mark no frame here comes near; past it aiohttp's writer waits for the client to drain.
WRITER_HIGH_WATER = 64 * 1024


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT_SECONDS
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def stuck_socket(server: KernieGenServer, client_id: str) -> socket.socket:
    """Upgrade to a WebSocket, read exactly the 101 answer, and never read again."""
    loop = asyncio.get_running_loop()
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect, so the window stays small
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(sock, (
        f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    answer = b""
    while not answer.endswith(b"\r\n\r\n"):  # one byte at a time, so no frame after it is read
        byte = await asyncio.wait_for(loop.sock_recv(sock, 1), TIMEOUT_SECONDS)
        assert byte, f"closed during the handshake: {answer!r}"
        answer += byte
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


async def connection_ends(sock: socket.socket) -> None:
    """Read what the kernel still holds until the server's end of the connection shows."""
    loop = asyncio.get_running_loop()
    try:
        while await asyncio.wait_for(loop.sock_recv(sock, 65536), TIMEOUT_SECONDS):
            pass
    except ConnectionResetError:
        pass  # an aborted connection: the RST overtakes the unread bytes


def server_side(server: KernieGenServer, sid: str) -> WsClient | None:
    return next((client for client in server.state.hub.clients() if client.sid == sid), None)


def without_ids(value: Any) -> Any:
    """A message with the values that differ between runs of the same graph left out."""
    if isinstance(value, dict):
        return {key: without_ids(item) for key, item in value.items() if key not in ("prompt_id", "timestamp")}
    if isinstance(value, list):
        return [without_ids(item) for item in value]
    return value


class Listener:
    """A client that reads everything, keeping each prompt's messages in order and counting statuses."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.by_prompt: dict[str, list[Any]] = defaultdict(list)
        self.statuses = 0
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            assert message.type == WSMsgType.TEXT, message
            frame = json.loads(message.data)
            if frame["type"] == "status":
                self.statuses += 1
            elif "prompt_id" in frame["data"]:
                self.by_prompt[frame["data"]["prompt_id"]].append((frame["type"], without_ids(frame["data"])))

    async def until_statuses(self, count: int) -> None:
        await wait_until(lambda: self.statuses >= count or self._task.done(), f"{count} status messages")
        assert not self._task.done(), "the reading socket ended"
        assert self.statuses == count

    async def close(self) -> None:
        await self.ws.close()
        await self._task


async def test_a_socket_that_never_reads_is_dropped_at_the_bound_and_nobody_else_notices(
    start_kg: StartKernieGen, http: aiohttp.ClientSession
) -> None:
    server = await start_kg(ws_outbox_bytes=BOUND)
    listener = Listener(await http.ws_connect(f"{server.url}/ws?clientId=reader"))
    await listener.until_statuses(1)
    # Without a client_id, every progress_state goes to every socket (ComfyUI's broadcast).
    baseline_id = (await submit(http, server, slow_chain(color=0, scales=SCALES)))["prompt_id"]
    await listener.until_statuses(4)  # the prompt's put, take and finish
    baseline = listener.by_prompt[baseline_id]
    assert len(baseline) > 2 * SCALES

    sock = await stuck_socket(server, "stuck")
    try:
        await wait_until(lambda: server_side(server, "stuck") is not None, "the stuck socket to register")
        stuck = server_side(server, "stuck")
        assert stuck is not None and stuck.transport is not None
        transport = stuck.transport
        most_in_transport = 0

        async def watch_transport() -> None:
            nonlocal most_in_transport
            while not transport.is_closing():
                most_in_transport = max(most_in_transport, transport.get_write_buffer_size())
                await asyncio.sleep(0.001)

        watcher = asyncio.create_task(watch_transport())
        prompt_ids: list[str] = []
        for batch in range(30):  # until the kernel's buffers are full and the bound is reached
            for index in range(10):
                prompt = slow_chain(color=1 + batch * 10 + index, scales=SCALES)
                prompt_ids.append((await submit(http, server, prompt))["prompt_id"])
            await wait_idle(http, server)
            if stuck not in server.state.hub.clients():
                break
        await wait_until(lambda: stuck not in server.state.hub.clients(), "the stuck socket to be dropped")
        await watcher

        assert stuck.outbox.overflowed and transport.is_closing()
        assert 0.75 * BOUND < stuck.outbox.peak_bytes <= BOUND  # it got near the bound, never past it
        assert most_in_transport <= BOUND
        await connection_ends(sock)
    finally:
        sock.close()

    # The reader heard all of every prompt, the stuck socket's drop changed nothing for it.
    await listener.until_statuses(4 + 3 * len(prompt_ids))
    for prompt_id in prompt_ids:
        assert listener.by_prompt[prompt_id] == baseline, prompt_id
        assert (await history_entry(http, server, prompt_id))["status"]["status_str"] == "success"
    await listener.close()


async def test_one_frame_larger_than_the_bound_still_reaches_a_reading_client(
    start_kg: StartKernieGen, http: aiohttp.ClientSession
) -> None:
    server = await start_kg(ws_outbox_bytes=64 * 1024)
    noise = io.BytesIO()
    Image.frombytes("RGB", (192, 192), os.urandom(192 * 192 * 3)).save(noise, format="PNG")
    form = aiohttp.FormData()
    form.add_field("image", noise.getvalue(), filename="noise.png", content_type="image/png")
    async with http.post(f"{server.url}/upload/image", data=form) as response:
        assert response.status == 200
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "noise.png"}},
              "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}}}
    async with http.ws_connect(f"{server.url}/ws?clientId=big", max_msg_size=0) as ws:
        prompt_id = (await submit(http, server, prompt, client_id="big"))["prompt_id"]
        images: list[bytes] = []

        async def collect() -> None:
            while True:
                message = await ws.receive(timeout=TIMEOUT_SECONDS)
                if message.type == WSMsgType.BINARY:
                    images.append(message.data)
                    return

        await collect()
        await frames_until_done(ws, prompt_id)
        assert len(images) == 1 and len(images[0]) > 64 * 1024
        assert server_side(server, "big") is not None


async def test_shutdown_does_not_wait_for_a_socket_that_never_reads(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    server = await start_kerniegen(KernieGenConfig(port=0, step_delay_ms=0.0, data_dir=tmp_path / "kg"))
    closed = False
    sock = await stuck_socket(server, "stuck")
    try:
        await wait_until(lambda: server_side(server, "stuck") is not None, "the stuck socket to register")
        stuck = server_side(server, "stuck")
        assert stuck is not None and stuck.transport is not None
        transport = stuck.transport
        for index in range(10):
            await submit(http, server, slow_chain(color=index, scales=40))
        # Past the writer's high-water mark its sender waits on a drain that never comes; under the bound.
        await wait_until(lambda: transport.get_write_buffer_size() > WRITER_HIGH_WATER, "a full transport")
        await wait_idle(http, server)
        assert stuck in server.state.hub.clients()
        await asyncio.wait_for(server.close(), TIMEOUT_SECONDS)
        closed = True
        assert transport.is_closing()
        await connection_ends(sock)
    finally:
        sock.close()
        if not closed:
            await server.close()
