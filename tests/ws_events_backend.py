"""A small ComfyUI-shaped backend for WebSocket fan-in tests: /ws by clientId (the newest socket of an id wins,
as in ComfyUI), and POST /prompt that sends the submitter's socket one prompt's whole event sequence, with binary
preview frames of known bytes, before it answers (`answer_delay`: after how long), so its events race the answer.
It records the pings it gets, answering them itself (unless told not to)."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

PREVIEW_HEADER = (1).to_bytes(4, "big") + (2).to_bytes(4, "big")  # a type-1 preview frame, PNG


def preview_frames(prompt_id: str, count: int, size: int) -> list[bytes]:
    rng = random.Random(prompt_id)
    return [PREVIEW_HEADER + rng.randbytes(size) for _ in range(count)]


@dataclass
class EventsBackend:
    name: str
    url: str = ""
    answer_delay: float = 0.0
    previews: int = 2
    preview_bytes: int = 1024
    progress_steps: int = 3
    sockets: dict[str, web.WebSocketResponse] = field(default_factory=dict)
    pings: int = 0
    answer_pings: bool = True
    client_messages: list[str] = field(default_factory=list)
    queue: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        for prefix in ("", "/api"):
            app.router.add_get(prefix + "/ws", self.websocket)
            app.router.add_post(prefix + "/prompt", self.prompt)
        app.router.add_route("*", "/{tail:.*}", self.anything)
        return app

    async def anything(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0, autoping=False)
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        self.sockets[sid] = ws
        await ws.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": self.queue}},
                                                       "sid": sid}})
        async for msg in ws:
            if msg.type == WSMsgType.PING:
                self.pings += 1
                if self.answer_pings:
                    await ws.pong(msg.data)
            elif msg.type == WSMsgType.TEXT:
                self.client_messages.append(msg.data)
                if json.loads(msg.data).get("type") == "feature_flags":
                    await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        if self.sockets.get(sid) is ws:
            del self.sockets[sid]
        return ws

    async def prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt_id = body.get("prompt_id") or str(uuid.uuid4())
        ws = self.sockets.get(body.get("client_id", ""))
        self.queue += 1
        await self.broadcast({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": self.queue}}}})
        if ws is not None:
            await self.run(ws, prompt_id)
        self.queue -= 1
        await self.broadcast({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": self.queue}}}})
        if self.answer_delay:
            await asyncio.sleep(self.answer_delay)
        return web.json_response({"prompt_id": prompt_id, "number": 1, "node_errors": {}})

    async def broadcast(self, message: dict) -> None:
        for ws in list(self.sockets.values()):
            if not ws.closed:
                await ws.send_json(message)

    async def run(self, ws: web.WebSocketResponse, prompt_id: str) -> None:
        await ws.send_json({"type": "execution_start", "data": {"prompt_id": prompt_id, "timestamp": 1}})
        await ws.send_json({"type": "executing", "data": {"node": "1", "display_node": "1", "prompt_id": prompt_id}})
        frames = preview_frames(prompt_id, self.previews, self.preview_bytes)
        for step in range(self.progress_steps):
            await ws.send_json({"type": "progress", "data": {"value": step + 1, "max": self.progress_steps,
                                                             "prompt_id": prompt_id, "node": "1"}})
        for frame in frames:
            await ws.send_bytes(frame)
        await ws.send_json({"type": "executed", "data": {
            "node": "1", "display_node": "1", "prompt_id": prompt_id,
            "output": {"images": [{"filename": f"{prompt_id}.png", "subfolder": "", "type": "output"}]}}})
        await ws.send_json({"type": "execution_success", "data": {"prompt_id": prompt_id, "timestamp": 2}})
        await ws.send_json({"type": "executing", "data": {"node": None, "prompt_id": prompt_id}})
