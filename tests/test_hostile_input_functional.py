"""Hostile or unlucky input through a running gateway, on both data paths: each bad request gets a clear 4xx
in ComfyUI's error shape and fails only itself; the next ordinary submission still works."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from tests.recording_backend import RecordingBackend


async def submit(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/prompt", data=body, headers=headers or {}) as r:
            return r.status, dict(r.headers), await r.json(content_type=None)


async def raw_request(url: str, head: bytes) -> bytes:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return answer


@pytest.fixture
async def gateway(start_backend: Callable[..., Awaitable[Any]], start_gateway: Callable[..., Awaitable[Any]]):
    backend: RecordingBackend = await start_backend("comfyui")
    running = await start_gateway({"comfyui": backend.url})
    return running, backend


async def still_submits(url: str) -> None:
    status, headers, body = await asyncio.wait_for(submit(url, b'{"prompt": {"1": {}}}'), 5)
    assert status == 200 and headers["X-Comfy-Prompt-Id"] == body["prompt_id"]


@pytest.mark.parametrize(
    ("body", "member"),
    [
        (b'{"prompt": {}, "client_id": "\\ud800"}', "client_id"),
        (b'{"prompt": {}, "prompt_id": "\\ud800"}', "prompt_id"),
        (b'{"prompt": {}, "prompt_id": "rt\\r\\nX-Injected: 1"}', "prompt_id"),
        (b'{"prompt": {}, "prompt_id": ""}', "prompt_id"),
        (b'{"prompt": {}, "prompt_id": "' + b"x" * 257 + b'"}', "prompt_id"),
    ],
    ids=["lone-surrogate-client-id", "lone-surrogate-prompt-id", "crlf-prompt-id", "empty-prompt-id", "too-long"],
)
async def test_a_bad_id_is_a_400_that_fails_only_itself(gateway, body: bytes, member: str) -> None:
    running, backend = gateway
    status, headers, answer = await asyncio.wait_for(submit(running.url, body), 5)
    assert status == 400
    assert answer["error"]["type"] == "invalid_prompt" and answer["error"]["details"] == member
    assert answer["node_errors"] == {}
    assert "X-Injected" not in headers
    assert not [s for s in backend.seen if s.raw_path == "/prompt"]  # never forwarded
    await still_submits(running.url)


@pytest.mark.parametrize(
    ("prompt_id", "shown"),
    [("中文", "%E4%B8%AD%E6%96%87"), ("🎨 #7", "%F0%9F%8E%A8 #7"), ("50%", "50%25")],
    ids=["chinese", "emoji", "percent"],
)
async def test_a_prompt_id_in_any_script_is_forwarded_and_shown_encoded(gateway, prompt_id: str, shown: str) -> None:
    running, backend = gateway
    body = f'{{"prompt": {{}}, "prompt_id": "{prompt_id}"}}'.encode()
    status, headers, answer = await asyncio.wait_for(submit(running.url, body), 5)
    assert status == 200 and answer["prompt_id"] == prompt_id
    assert headers["X-Comfy-Prompt-Id"] == shown
    backend.history[prompt_id] = {"prompt": [], "outputs": {}, "status": {"status_str": "success"}}
    async with aiohttp.ClientSession() as session:
        async with session.get(URL(f"{running.url}/history/{quote(prompt_id, safe='')}", encoded=True)) as r:
            assert r.status == 200 and r.headers["X-Comfy-Route"] == "affinity"
    await still_submits(running.url)


async def test_a_numeric_prompt_id_beyond_64_bits_is_taken_as_its_text(gateway) -> None:
    running, _ = gateway
    status, headers, answer = await submit(running.url, b'{"prompt": {}, "prompt_id": 99999999999999999999}')
    assert status == 200 and headers["X-Comfy-Prompt-Id"] == "99999999999999999999"


@pytest.mark.parametrize("sent", ["José".encode("latin-1"), "José".encode()], ids=["latin1", "utf8"])
async def test_a_user_header_in_latin1_names_the_same_user(gateway, sent: bytes) -> None:
    running, _ = gateway
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{running.url}/gateway/preferences/Jos%C3%A9", json={"backend": "comfyui"}) as r:
            assert r.status == 200
    head = b"GET /system_stats HTTP/1.1\r\nHost: gw\r\ncomfy-user: " + sent + b"\r\nConnection: close\r\n\r\n"
    answer = await raw_request(running.url, head)
    assert answer.startswith(b"HTTP/1.1 200") and b"X-Comfy-Route: preference" in answer
    await still_submits(running.url)


async def test_the_prompt_admin_route_refuses_an_id_no_backend_can_hold(gateway) -> None:
    running, backend = gateway
    async with aiohttp.ClientSession() as session:
        async with session.get(URL(f"{running.url}/gateway/prompts/a%0D%0Ab", encoded=True)) as r:
            assert r.status == 400 and (await r.json())["error"]["details"] == "prompt_id"
    assert not [s for s in backend.seen if s.raw_path.startswith("/history/")]  # nothing was probed
