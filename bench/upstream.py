"""A fast fake ComfyUI upstream for the benchmark: /history/{id}, /queue, POST /prompt, /object_info, /view, /ws.

Run one per backend: `python bench/upstream.py --name alpha --port 8301 --data-dir DIR`. It must never be
the bottleneck, so it is aiohttp's low-level server (no router, no access log) answering from bytes built
once; /view streams files with sendfile and /ws writes pre-encoded frames straight to the socket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import uuid
from pathlib import Path

from aiohttp import web

import workload


class FakeComfy:
    """Answers every request from prepared bytes; one instance per process, named after its backend."""

    def __init__(self, name: str, data_dir: Path) -> None:
        self.name = name
        self.data_dir = data_dir
        self.prompt_id = workload.history_prompt_id(name)
        self.history = workload.history_body(self.prompt_id, name)
        self.queue = workload.queue_body()
        self.prompt_info = workload.prompt_info_body()
        self.object_info = workload.object_info_body()
        self.prompt_number = 0

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if request.method == "GET":
            if path.startswith("/history/"):
                # ComfyUI answers {} for a prompt it does not hold.
                found = path[len("/history/"):] == self.prompt_id
                return json_response(self.history if found else b"{}")
            if path == "/queue":
                return json_response(self.queue)
            if path == "/prompt":
                return json_response(self.prompt_info)
            if path == "/object_info":
                return json_response(self.object_info)
            if path == "/view":
                return self.view(request)
            if path == "/ws":
                return await self.websocket(request)
        elif request.method == "POST" and path == "/prompt":
            return await self.prompt(request)
        return web.Response(status=404, text="404: Not Found")

    async def prompt(self, request: web.BaseRequest) -> web.Response:
        """Reads and parses the whole API prompt, as ComfyUI does before it validates and queues it."""
        try:
            submitted = json.loads(await request.read())
        except ValueError:
            return prompt_error("invalid_prompt", "Invalid prompt: body is not JSON")
        graph = submitted.get("prompt") if isinstance(submitted, dict) else None
        if not isinstance(graph, dict) or not graph:
            return prompt_error("no_prompt", "No prompt provided")
        if not all(isinstance(node, dict) and "class_type" in node for node in graph.values()):
            return prompt_error("missing_node_type", "Node has no class_type")
        prompt_id = submitted.get("prompt_id")
        if not isinstance(prompt_id, str):
            prompt_id = str(uuid.uuid4())
        self.prompt_number += 1
        body = json.dumps({"prompt_id": prompt_id, "number": self.prompt_number, "node_errors": {}})
        return json_response(body.encode())

    def view(self, request: web.BaseRequest) -> web.StreamResponse:
        filename = request.query.get("filename", "")
        if filename not in (workload.SMALL_VIEW_FILENAME, workload.LARGE_VIEW_FILENAME):
            return web.Response(status=404)
        return web.FileResponse(self.data_dir / filename, headers={
            "Content-Type": "image/png", "Content-Disposition": f'filename="{filename}"'})

    async def websocket(self, request: web.BaseRequest) -> web.WebSocketResponse:
        """On the text "burst N" (or "burst N <backend>" naming this one): N progress frames then one executed
        frame, written in one go. A burst naming another backend is ignored: a gateway socket that follows several
        backends sends each of them the client's messages, and only the backend running a prompt answers."""
        socket = web.WebSocketResponse(compress=False, max_msg_size=64 * 1024, heartbeat=None)
        await socket.prepare(request)
        client_id = request.query.get("clientId") or uuid.uuid4().hex
        await socket.send_str(workload.status_frame(client_id).decode())
        async for message in socket:
            words = message.data.split() if isinstance(message.data, str) else []
            if len(words) not in (2, 3) or words[0] != "burst" or not words[1].isdigit():
                await socket.send_str(json.dumps({"type": "error", "data": "expected: burst N [backend]"}))
                continue
            if len(words) == 3 and words[2] != self.name:
                continue
            count = min(int(words[1]), workload.WS_MAX_BURST)
            assert request.transport is not None
            # Server frames are unmasked, so pre-encoded frames are valid on the wire as they are; aiohttp's
            # writer is idle between our messages, so nothing interleaves with this write.
            request.transport.write(encode_burst(count, self.name))
        return socket


def encode_burst(count: int, backend: str) -> bytes:
    prompt_id = workload.history_prompt_id(backend)
    frames = [workload.progress_frame(value, count, prompt_id) for value in range(count)]
    frames.append(workload.executed_frame(prompt_id, backend))
    return b"".join(text_frame_header(len(frame)) + frame for frame in frames)


def text_frame_header(length: int) -> bytes:
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return bytes((0x81, 126)) + length.to_bytes(2, "big")
    return bytes((0x81, 127)) + length.to_bytes(8, "big")


def json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json", charset="utf-8")


def prompt_error(kind: str, message: str) -> web.Response:
    body = {"error": {"type": kind, "message": message, "details": "", "extra_info": {}}, "node_errors": {}}
    return json_response(json.dumps(body).encode(), status=400)


async def serve(name: str, host: str, port: int, data_dir: Path) -> None:
    fake = FakeComfy(name, data_dir)
    server = web.Server(fake.handle, access_log=None)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(server, host, port, reuse_address=True, backlog=1024)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    listener.close()
    await server.shutdown(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the backend name this upstream answers as")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True, help="where the /view files are")
    args = parser.parse_args()
    asyncio.run(serve(args.name, args.host, args.port, args.data_dir))


if __name__ == "__main__":
    main()
