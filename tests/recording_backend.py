"""A small ComfyUI-shaped aiohttp app that records what reaches it, for gateway tests that must see exactly
what the gateway sent (headers, raw path, body) or need behaviour KernieGen does not have (huge or slow bodies).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import aiohttp
from aiohttp import WSMsgType, web


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RecordingBackend:
    name: str
    seen: list[Seen] = field(default_factory=list)
    history: dict[str, dict] = field(default_factory=dict)
    queue_running: list[list] = field(default_factory=list)
    queue_pending: list[list] = field(default_factory=list)
    files: dict[tuple[str, str, str], bytes] = field(default_factory=dict)  # (type, subfolder, filename) -> bytes
    number: int = 0
    reject_prompts: bool = False
    url: str = ""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    def last(self, path_prefix: str) -> Seen:
        return [s for s in self.seen if s.raw_path.startswith(path_prefix)][-1]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path in ("/ws", "/api/ws") and request.headers.get("Upgrade", "").lower() == "websocket":
            return await self.websocket(request)
        body = await request.read() if not request.path.startswith("/upload") else b""
        agent = request.headers.get("User-Agent", "")
        if "health-check" not in agent and "inventory" not in agent:  # the gateway's background reads
            self.seen.append(Seen(request.method, request.raw_path, dict(request.headers), body))
        path = request.path.removeprefix("/api")
        if request.method == "POST" and path == "/prompt":
            payload = json.loads(body)
            if self.reject_prompts:
                return web.json_response(
                    {"error": {"type": "prompt_no_outputs", "message": "no", "details": "", "extra_info": {}},
                     "node_errors": {}},
                    status=400,
                )
            self.number += 1
            return web.json_response({"prompt_id": payload["prompt_id"], "number": self.number, "node_errors": {}})
        if request.method == "GET" and path == "/history":
            return web.json_response(self.history)
        if request.method == "GET" and path.startswith("/history/"):
            pid = path.removeprefix("/history/")
            return web.json_response({pid: self.history[pid]} if pid in self.history else {})
        if request.method == "GET" and path == "/queue":
            return web.json_response({"queue_running": self.queue_running, "queue_pending": self.queue_pending})
        if request.method == "GET" and path == "/prompt":
            remaining = len(self.queue_running) + len(self.queue_pending)
            return web.json_response({"exec_info": {"queue_remaining": remaining}})
        if path == "/view":
            q = request.query
            data = self.files.get((q.get("type", "output"), q.get("subfolder", ""), q.get("filename", "")))
            if data is None:
                return web.Response(status=404)
            return web.Response(body=data, content_type="image/png")
        if path.startswith("/upload/"):
            return await self.upload(request)
        if path.startswith("/big/"):
            return await self.big(request, int(path.removeprefix("/big/")))
        if path == "/slow":
            await asyncio.sleep(float(request.query.get("seconds", "2")))
            return web.json_response({"slow": True})
        if path == "/redirect":
            raise web.HTTPFound("/elsewhere")
        return web.json_response(
            {
                "backend": self.name,
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": dict(request.headers),
            }
        )

    async def upload(self, request: web.Request) -> web.Response:
        total = 0
        try:
            async for chunk in request.content.iter_chunked(65536):
                total += len(chunk)
        except (ConnectionResetError, aiohttp.ClientPayloadError):
            return web.Response(status=400)  # the gateway cut the upload short, as it should for oversize bodies
        self.seen.append(Seen(request.method, request.raw_path, dict(request.headers), b""))
        return web.json_response({"received_bytes": total, "backend": self.name})

    async def big(self, request: web.Request, mebibytes: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = mebibytes * 1024 * 1024
        await response.prepare(request)
        block = bytes(range(256)) * 4096  # 1 MiB
        for _ in range(mebibytes):
            await response.write(block)
        await response.write_eof()
        return response

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self.seen.append(Seen("WS", request.raw_path, dict(request.headers), b""))
        sid = request.query.get("clientId", "generated-sid")
        await ws.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": sid}})
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                if msg.data == "close-4001":
                    await ws.close(code=4001, message=b"asked")
                    break
                if msg.data.startswith("executed:"):
                    subfolder = msg.data.removeprefix("executed:")
                    await ws.send_json(
                        {"type": "executed", "data": {"node": "9", "display_node": "9", "prompt_id": "p",
                         "output": {"images": [{"filename": "a.png", "subfolder": subfolder, "type": "output"}]}}}
                    )
                    continue
                await ws.send_str("echo:" + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(b"echo:" + msg.data)
        return ws
