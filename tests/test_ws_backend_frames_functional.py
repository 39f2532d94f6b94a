"""A backend's frames through the gateway, on both data paths, from a backend that writes them byte by byte:
messages right behind its 101, a text message in fragments with a ping between them (answered), a binary
message of megabytes in many writes, progress as ComfyUI writes it; all reach the client whole and in order.
A text frame that is not UTF-8 then ends the client's socket with 1007, as aiohttp's own reader ends it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

import aiohttp

from tests.ws_frames import BINARY, CONTINUATION, PING, PONG, TEXT, progress, server_frame

ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
IMAGE = bytes(range(256)) * 12_288  # 3 MiB


class RawBackend:
    """Answers the upgrade itself and writes its frames as given; records the frames the gateway sends it."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.pong = asyncio.Event()
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + ACCEPT_GUID).digest())
        status = json.dumps({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "c"}})
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + server_frame(TEXT, status.encode())
                     + server_frame(TEXT, b'{"type": "early", "data": {}}'))
        await writer.drain()
        await asyncio.sleep(0.2)  # the client is connected and reading
        stream = server_frame(TEXT, b'{"type": "frag', fin=False) + server_frame(PING, b"in between")
        stream += server_frame(CONTINUATION, b'mented", "data": {"text": "caf\xc3\xa9"}}')
        stream += server_frame(BINARY, IMAGE) + server_frame(TEXT, progress(1))
        for start in range(0, len(stream), 7_001):  # cut anywhere, frames and headers alike
            writer.write(stream[start : start + 7_001])
            await writer.drain()
        await asyncio.wait_for(self._read_until_pong(reader), 5)
        writer.write(server_frame(TEXT, b'{"type": "bad", "data": "\xff"}'))
        await writer.drain()
        try:
            self.received += await asyncio.wait_for(reader.read(1024), 5)  # the gateway's close
        finally:
            writer.close()

    async def _read_until_pong(self, reader: asyncio.StreamReader) -> None:
        while True:
            self.received += await reader.read(4096)
            if self.received and self.received[0] & 0x0F == PONG:
                self.pong.set()
                return
            if not self.received:
                raise AssertionError("the gateway closed the socket")


async def test_frames_cut_anywhere_arrive_whole_and_in_order_and_bad_text_ends_the_socket(start_gateway) -> None:
    backend = RawBackend()
    await backend.start()
    gateway = await start_gateway({"raw": backend.url})
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{gateway.url}/ws?clientId=c") as ws:
        got = []
        while True:
            message = await ws.receive(timeout=10)
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                break
            got.append(json.loads(message.data)["type"] if message.type == aiohttp.WSMsgType.TEXT else message.data)
        assert got == ["status", "early", "fragmented", IMAGE, "progress"]
        assert ws.close_code == 1007
    assert backend.pong.is_set()  # the ping between the fragments was answered, with its payload
    assert unmasked_payload(bytes(backend.received)) == b"in between"
    assert backend.server is not None
    backend.server.close()


def unmasked_payload(frame: bytes) -> bytes:
    """The payload of a short client frame (masked, RFC 6455 §5.3)."""
    length, mask = frame[1] & 0x7F, frame[2:6]
    return bytes(b ^ mask[i % 4] for i, b in enumerate(frame[6 : 6 + length]))
