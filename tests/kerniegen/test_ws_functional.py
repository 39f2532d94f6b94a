"""/ws on a real socket: ids, the newest socket per clientId, who hears what, the feature-flags
exchange and the image frame format it selects, sampler progress, and closing on shutdown."""

from __future__ import annotations

import asyncio
import json
import re
import struct

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType

from gateway.kerniegen.server import KernieGenServer
from tests.kerniegen.conftest import StartKernieGen
from tests.kerniegen.kerniegen_client import frames_until_done, history_entry, next_json, submit
from tests.kerniegen.workflows import save_image, slow_chain, txt2img

WEBSOCKET_IMAGES = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 2, "color": 255}},
    "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
}


async def binary_frames_until_done(ws: aiohttp.ClientWebSocketResponse, prompt_id: str) -> list[bytes]:
    frames = []
    while True:
        message = await ws.receive(timeout=10)
        if message.type == WSMsgType.BINARY:
            frames.append(message.data)
        elif message.type == WSMsgType.TEXT:
            data = json.loads(message.data)
            if data["type"] == "executing" and data["data"]["node"] is None and data["data"]["prompt_id"] == prompt_id:
                return frames
        else:
            raise AssertionError(message)


async def assert_quiet(ws: aiohttp.ClientWebSocketResponse) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive(timeout=0.1)


@pytest.mark.parametrize("query", ["", "?clientId="])
async def test_a_socket_without_client_id_gets_a_generated_sid(
    query: str, kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(f"{kerniegen.url}/ws{query}") as ws:
        first = await next_json(ws)
        assert first["type"] == "status" and re.fullmatch(r"[0-9a-f]{32}", first["data"]["sid"])


async def test_newest_socket_with_a_client_id_takes_over(
    kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    old = await http.ws_connect(f"{kerniegen.url}/ws?clientId=same")
    await next_json(old)
    new = await http.ws_connect(f"{kerniegen.url}/ws?clientId=same")
    assert (await next_json(new))["data"]["sid"] == "same"
    prompt_id = (await submit(http, kerniegen, save_image(), client_id="same"))["prompt_id"]
    assert any(frame["type"] == "executed" for frame in await frames_until_done(new, prompt_id))
    await assert_quiet(old)  # still open, but it hears nothing more
    await old.close()  # and closing it does not unregister the newer socket
    prompt_id = (await submit(http, kerniegen, save_image(color=1), client_id="same"))["prompt_id"]
    assert (await frames_until_done(new, prompt_id))[-1]["data"]["prompt_id"] == prompt_id
    await new.close()


async def test_only_the_submitter_hears_its_prompt(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    mine = await http.ws_connect(f"{kerniegen.url}/ws?clientId=mine")
    other = await http.ws_connect(f"{kerniegen.url}/ws?clientId=other")
    anonymous = await http.ws_connect(f"{kerniegen.url}/ws")
    for ws in (mine, other, anonymous):
        await next_json(ws)
    prompt_id = (await submit(http, kerniegen, save_image(), client_id="mine"))["prompt_id"]
    types = [frame["type"] for frame in await frames_until_done(mine, prompt_id)]
    assert types[:4] == ["status", "status", "execution_start", "execution_cached"]
    await history_entry(http, kerniegen, prompt_id)
    for ws in (other, anonymous):
        heard = [await next_json(ws) for _ in range(3)]
        assert [frame["type"] for frame in heard] == ["status"] * 3
        await assert_quiet(ws)
        await ws.close()
    await mine.close()


@pytest.mark.parametrize(("flags", "event_type"), [(None, 1), ({"supports_preview_metadata": True}, 4),
                                                   ({"supports_preview_metadata": False}, 1)])
async def test_feature_flags_choose_the_image_frame_format(
    flags: dict[str, bool] | None, event_type: int, kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(f"{kerniegen.url}/ws?clientId=img", max_msg_size=0) as ws:
        if flags is not None:
            await ws.send_json({"type": "feature_flags", "data": flags})
        assert (await next_json(ws))["type"] == "status"
        if flags is not None:
            assert await next_json(ws) == {"type": "feature_flags",
                                           "data": {"supports_preview_metadata": True, "max_upload_size": 104857600}}
        prompt_id = (await submit(http, kerniegen, WEBSOCKET_IMAGES, client_id="img"))["prompt_id"]
        frames = await binary_frames_until_done(ws, prompt_id)
    assert [struct.unpack(">I", frame[:4])[0] for frame in frames] == [event_type, event_type]
    for frame in frames:
        image = frame[8:] if event_type == 1 else frame[8 + struct.unpack(">I", frame[4:8])[0]:]
        assert image.startswith(b"\x89PNG\r\n\x1a\n")


async def test_feature_flags_count_only_as_the_first_message(
    kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(f"{kerniegen.url}/ws") as ws:
        await ws.send_str("not json")  # ignored, and ComfyUI still waits for a first JSON message
        await ws.send_json({"type": "hello"})
        await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        assert (await next_json(ws))["type"] == "status"
        await assert_quiet(ws)


async def test_prompts_without_client_id_send_type_1_images_to_everyone(
    kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(f"{kerniegen.url}/ws?clientId=flagged") as ws:
        await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        await next_json(ws)
        await next_json(ws)
        await submit(http, kerniegen, WEBSOCKET_IMAGES)
        images = []
        while len(images) < 2:
            message = await ws.receive(timeout=10)
            if message.type == WSMsgType.BINARY:
                images.append(struct.unpack(">I", message.data[:4])[0])
        assert images == [1, 1]


async def test_sampler_progress_reaches_the_submitter(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(f"{kerniegen.url}/ws?clientId=sampler") as ws:
        await next_json(ws)
        prompt_id = (await submit(http, kerniegen, txt2img(width=64, height=64), client_id="sampler"))["prompt_id"]
        frames = await frames_until_done(ws, prompt_id)
    progress = [frame["data"] for frame in frames if frame["type"] == "progress"]
    assert [(step["value"], step["max"], step["node"]) for step in progress] == [(n, 20, "3") for n in range(1, 21)]
    # ComfyUI's pick: the loader first (two steps from the output), then ready nodes in the order
    # its depth-first walk from the output added them.
    executing = [frame["data"]["node"] for frame in frames if frame["type"] == "executing"]
    assert executing == ["4", "5", "7", "6", "3", "8", "9", None]


async def test_closing_the_server_closes_sockets_with_going_away(
    start_kg: StartKernieGen, http: aiohttp.ClientSession
) -> None:
    server = await start_kg(step_delay_ms=200)
    ws = await http.ws_connect(f"{server.url}/ws?clientId=bye")
    await next_json(ws)
    await submit(http, server, slow_chain(scales=20), client_id="bye")

    async def read_until_closed() -> WSMsgType:
        while (message := await ws.receive(timeout=5)).type in (WSMsgType.TEXT, WSMsgType.BINARY):
            pass
        return message.type

    reader = asyncio.create_task(read_until_closed())
    started = asyncio.get_running_loop().time()
    await server.close()
    assert asyncio.get_running_loop().time() - started < 1.0  # the running prompt was interrupted, not awaited
    assert await reader in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    assert ws.close_code == WSCloseCode.GOING_AWAY
