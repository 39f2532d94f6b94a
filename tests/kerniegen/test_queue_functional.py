"""GET/POST /queue, POST /interrupt and POST /free on a real socket: what they change, the status
broadcast each change makes, ComfyUI's answers for odd bodies, and the queue working afterwards."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from gateway.kerniegen.responses import SERVER_ERROR_TEXT
from gateway.kerniegen.server import KernieGenServer
from tests.kerniegen.conftest import StartKernieGen
from tests.kerniegen.kerniegen_client import frames_until_done, get_json, history_entry, next_json, post_raw, submit
from tests.kerniegen.workflows import save_image, slow_chain


async def wait_running(server: KernieGenServer, prompt_id: str) -> None:
    while server.state.queue.running is None or server.state.queue.running.prompt_id != prompt_id:
        await asyncio.sleep(0.002)


@pytest.fixture
async def slow_server(start_kg: StartKernieGen) -> KernieGenServer:
    return await start_kg(step_delay_ms=25)


async def test_queue_lists_running_and_pending_and_deletes_only_pending(
    slow_server: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    server = slow_server
    ids = [(await submit(http, server, slow_chain(color=color, scales=12)))["prompt_id"] for color in range(3)]
    await wait_running(server, ids[0])
    queue = await get_json(http, f"{server.url}/queue")
    assert [item[1] for item in queue["queue_running"]] == ids[:1]
    assert sorted(item[1] for item in queue["queue_pending"]) == sorted(ids[1:])
    assert all(len(item) == 5 for item in queue["queue_running"] + queue["queue_pending"])
    assert await get_json(http, f"{server.url}/prompt") == {"exec_info": {"queue_remaining": 3}}
    for body in ({"delete": [ids[2], "unknown"]}, {"delete": [ids[0]]}):
        assert (await post_raw(http, f"{server.url}/queue", json.dumps(body), None))[:2] == (200, "")
    queue = await get_json(http, f"{server.url}/queue")
    assert [item[1] for item in queue["queue_pending"]] == [ids[1]]  # the running prompt cannot be deleted
    assert (await post_raw(http, f"{server.url}/queue", b'{"clear": true}', None))[0] == 200
    assert (await get_json(http, f"{server.url}/queue"))["queue_pending"] == []
    assert (await history_entry(http, server, ids[0]))["status"]["completed"] is True
    assert await get_json(http, f"{server.url}/history/{ids[2]}") == {}  # deleted before it ran: never in history


async def test_every_queue_change_broadcasts_status(slow_server: KernieGenServer, http: aiohttp.ClientSession) -> None:
    server = slow_server
    async with http.ws_connect(f"{server.url}/ws") as ws:
        assert (await next_json(ws))["data"]["status"]["exec_info"]["queue_remaining"] == 0
        first = (await submit(http, server, slow_chain(color=1, scales=12), client_id="someone"))["prompt_id"]
        await wait_running(server, first)
        second = (await submit(http, server, save_image(color=2), client_id="someone"))["prompt_id"]
        await post_raw(http, f"{server.url}/queue", json.dumps({"delete": [second]}), None)
        await post_raw(http, f"{server.url}/queue", b'{"clear": true}', None)
        await history_entry(http, server, first)
        remaining = []
        while len(remaining) < 7:
            frame = await next_json(ws)
            assert frame["type"] == "status"  # a socket that submitted nothing hears only status
            remaining.append(frame["data"]["status"]["exec_info"]["queue_remaining"])
        # put, take, put, delete (the only pending one: ComfyUI wipes and so broadcasts twice), clear, done
        assert remaining == [1, 1, 2, 1, 1, 1, 0]


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"", 500), (b"nope", 500), (b"[]", 200), (b'["clear"]', 500), (b"3", 500), (b'{"delete": 5}', 500),
     (b'{"delete": "abc"}', 200), (b'{"clear": false}', 200)],
)
async def test_post_queue_odd_bodies(
    body: bytes, status: int, kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    got, text, _ = await post_raw(http, f"{kerniegen.url}/queue", body, "application/json")
    assert (got, text) == (status, SERVER_ERROR_TEXT if status == 500 else "")
    answer = await submit(http, kerniegen, save_image())
    assert (await history_entry(http, kerniegen, answer["prompt_id"]))["status"]["completed"] is True


async def test_targeted_interrupt_stops_only_the_named_running_prompt(
    slow_server: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    server = slow_server
    async with http.ws_connect(f"{server.url}/ws?clientId=me") as ws:
        await next_json(ws)
        first = (await submit(http, server, slow_chain(color=1, scales=8), client_id="me"))["prompt_id"]
        second = (await submit(http, server, slow_chain(color=2, scales=2), client_id="me"))["prompt_id"]
        await wait_running(server, first)
        await post_raw(http, f"{server.url}/interrupt", json.dumps({"prompt_id": second}), "application/json")
        await post_raw(http, f"{server.url}/interrupt", json.dumps({"prompt_id": first}), "application/json")
        frames = await frames_until_done(ws, first)
        interrupted = [frame for frame in frames if frame["type"] == "execution_interrupted"]
        assert len(interrupted) == 1 and interrupted[0]["data"]["prompt_id"] == first
        assert set(interrupted[0]["data"]) == {"prompt_id", "node_id", "node_type", "executed", "timestamp"}
        assert [frame["type"] for frame in frames[-3:]] == ["execution_interrupted", "status", "executing"]
        entry = await history_entry(http, server, first)
        assert (entry["status"]["status_str"], entry["status"]["completed"]) == ("error", False)
        assert (await history_entry(http, server, second))["status"]["status_str"] == "success"


@pytest.mark.parametrize("body", [None, b"", b"{}", b'{"prompt_id": ""}', b'{"prompt_id": null}'])
async def test_global_interrupt_with_no_or_empty_body(
    body: bytes | None, slow_server: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    server = slow_server
    prompt_id = (await submit(http, server, slow_chain(scales=8)))["prompt_id"]
    await wait_running(server, prompt_id)
    async with http.post(f"{server.url}/interrupt", data=body, skip_auto_headers=("Content-Type",)) as response:
        assert (response.status, await response.read(), response.headers.get("Content-Type")) == (200, b"", None)
    assert (await history_entry(http, server, prompt_id))["status"]["status_str"] == "error"


async def test_interrupt_when_idle_does_not_touch_the_next_prompt(
    kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    assert (await post_raw(http, f"{kerniegen.url}/interrupt", None))[0] == 200
    assert (await post_raw(http, f"{kerniegen.url}/interrupt", b'{"prompt_id": "not-running"}'))[0] == 200
    answer = await submit(http, kerniegen, save_image())
    assert (await history_entry(http, kerniegen, answer["prompt_id"]))["status"]["status_str"] == "success"


async def test_interrupt_with_a_non_object_body_is_a_500(
    kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    answer = await post_raw(http, f"{kerniegen.url}/interrupt", b"[1]", "application/json")
    assert answer[:2] == (500, SERVER_ERROR_TEXT)


async def test_free_memory_drops_the_node_cache(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    async def cached_nodes(prompt_id: str) -> list[str]:
        messages = (await history_entry(http, kerniegen, prompt_id))["status"]["messages"]
        nodes: list[str] = messages[1][1]["nodes"]
        return nodes

    prompt = save_image(color=5)
    assert await cached_nodes((await submit(http, kerniegen, prompt))["prompt_id"]) == []
    assert await cached_nodes((await submit(http, kerniegen, prompt))["prompt_id"]) == ["1", "2"]
    for body in (b'{"unload_models": true}', b"{}"):
        assert (await post_raw(http, f"{kerniegen.url}/free", body, "application/json"))[:2] == (200, "")
    assert await cached_nodes((await submit(http, kerniegen, prompt))["prompt_id"]) == ["1", "2"]
    assert (await post_raw(http, f"{kerniegen.url}/free", b'{"free_memory": true}', "application/json"))[0] == 200
    assert await cached_nodes((await submit(http, kerniegen, prompt))["prompt_id"]) == []
    for body in (b"", b"[]"):
        assert (await post_raw(http, f"{kerniegen.url}/free", body, "application/json"))[:2] == (500, SERVER_ERROR_TEXT)
