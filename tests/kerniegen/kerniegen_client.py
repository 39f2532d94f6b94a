"""The few client moves the functional tests repeat: submit a prompt, wait for its history entry,
send a raw body, open a socket and read JSON frames."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from gateway.kerniegen.server import KernieGenServer

TIMEOUT_SECONDS = 10.0


async def submit(
    http: aiohttp.ClientSession, server: KernieGenServer, prompt: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """POST /prompt; asserts 200 and returns the answer."""
    async with http.post(f"{server.url}/prompt", json={"prompt": prompt, **extra}) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


async def post_raw(http: aiohttp.ClientSession, url: str, body: bytes | str | None,
                   content_type: str | None = None) -> tuple[int, str, str | None]:
    """(status, body text, Content-Type) for a body sent exactly as given."""
    headers = {"Content-Type": content_type} if content_type else {}
    async with http.post(url, data=body, headers=headers, skip_auto_headers=("Content-Type",)) as response:
        return response.status, await response.text(), response.headers.get("Content-Type")


async def history_entry(http: aiohttp.ClientSession, server: KernieGenServer, prompt_id: str) -> dict[str, Any]:
    """Wait until the prompt has a history entry, and return it."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT_SECONDS
    while True:
        async with http.get(f"{server.url}/history/{prompt_id}") as response:
            found: dict[str, Any] = await response.json()
        if found:
            entry: dict[str, Any] = found[prompt_id]
            return entry
        assert asyncio.get_running_loop().time() < deadline, f"prompt {prompt_id} never finished"
        await asyncio.sleep(0.005)


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def next_json(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next text frame, skipping binary ones."""
    while True:
        message = await ws.receive(timeout=TIMEOUT_SECONDS)
        if message.type == aiohttp.WSMsgType.TEXT:
            frame: dict[str, Any] = json.loads(message.data)
            return frame
        if message.type != aiohttp.WSMsgType.BINARY:
            raise AssertionError(f"socket ended: {message.type} {message.data!r}")


async def frames_until_done(ws: aiohttp.ClientWebSocketResponse, prompt_id: str) -> list[dict[str, Any]]:
    """Text frames up to the final `executing` (node null) of this prompt."""
    frames = []
    while True:
        frame = await next_json(ws)
        frames.append(frame)
        if frame["type"] == "executing" and frame["data"]["node"] is None and frame["data"]["prompt_id"] == prompt_id:
            return frames


async def wait_idle(http: aiohttp.ClientSession, server: KernieGenServer) -> None:
    """Until nothing is queued or running."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT_SECONDS
    while (await get_json(http, f"{server.url}/prompt"))["exec_info"]["queue_remaining"]:
        assert asyncio.get_running_loop().time() < deadline, "the queue never drained"
        await asyncio.sleep(0.005)
