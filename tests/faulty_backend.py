"""A backend that misbehaves on purpose, on a real socket: it hangs, answers late, closes mid-body, answers
invalid JSON or redirects, and can be stopped and started again on the same port (killed and restarted).

Its behaviour is a mode that a test changes while the gateway runs; every request it takes is counted.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["ok", "hang", "slow", "close_before_answer", "close_mid_body", "invalid_json", "redirect"]


@dataclass
class FaultyBackend:
    name: str
    mode: Mode = "ok"
    delay_seconds: float = 0.5  # mode "slow": answers after this long
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, target) of every request
    prompts: list[str] = field(default_factory=list)  # prompt ids taken by POST /prompt
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _transports: set[asyncio.BaseTransport] = field(default_factory=set)  # every connection, from its accept
    _generation: int = 0  # bumped by stop(): a connection accepted before it is cut however late it starts

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> FaultyBackend:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _TrackedProtocol(self._transports, self._serve), self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Killed: the listener closed and every open connection cut."""
        self._generation += 1
        if self._server is not None:
            # Let connections the loop has accepted but not yet made transports for get theirs first: asyncio
            # (3.11) leaks the socket of one whose transport is made after its server closed.
            for _ in range(3):
                await asyncio.sleep(0)
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            for transport in list(self._transports):
                transport.abort()  # (abort() on a Transport: every transport the server makes has it)
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        generation = self._generation if self._server is not None else -1
        self._writers.add(writer)
        try:
            while generation == self._generation:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                body = await reader.readexactly(length) if length else b""
                self.requests.append((method, target))
                if not await self._answer(method, target, body, reader, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _answer(
        self, method: str, target: str, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False: the connection is done."""
        mode = self.mode
        if mode == "hang":  # silent until the gateway gives up and closes, or the backend is stopped
            while await reader.read(65536):
                pass
            return False
        if mode == "slow":
            await asyncio.sleep(self.delay_seconds)
        path = target.split("?", 1)[0].removeprefix("/api")
        if mode == "redirect" and path not in ("/prompt", "/queue"):  # health checks and probes answered
            writer.write(b"HTTP/1.1 302 Found\r\nLocation: /elsewhere?from=" + path.encode() + b"\r\n"
                         b"X-Backend-Own: kept\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return True
        if mode == "close_before_answer":
            if method == "POST" and path == "/prompt":
                self.prompts.append(json.loads(body)["prompt_id"])  # taken, and then the connection drops
            return False
        if mode == "close_mid_body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"part")
            await writer.drain()
            return False
        if mode == "invalid_json":
            payload = b"this is not json {"
        elif method == "POST" and path == "/prompt":
            prompt_id = json.loads(body)["prompt_id"]
            self.prompts.append(prompt_id)
            payload = json.dumps({"prompt_id": prompt_id, "number": len(self.prompts), "node_errors": {}}).encode()
        elif path == "/prompt":
            payload = b'{"exec_info": {"queue_remaining": 0}}'
        elif path == "/queue":
            payload = b'{"queue_running": [], "queue_pending": []}'
        elif path.startswith("/history"):
            payload = b"{}"
        else:
            payload = json.dumps({"backend": self.name, "path": path}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
        await writer.drain()
        return True


class _TrackedProtocol(asyncio.StreamReaderProtocol):
    """asyncio.start_server's protocol, registering its transport from the moment of the accept, so that a
    stop cuts a connection whose handler has not started yet."""

    def __init__(self, transports: set[asyncio.BaseTransport], handler) -> None:  # type: ignore[no-untyped-def]
        super().__init__(asyncio.StreamReader(), handler)
        self._transports = transports
        self._own: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._own = transport
        self._transports.add(transport)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._own is not None:
            self._transports.discard(self._own)
        super().connection_lost(exc)
