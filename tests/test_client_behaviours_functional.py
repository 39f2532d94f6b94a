"""The things a gateway most easily breaks for real ComfyUI clients (shared/CLIENTS.md), each checked on real
sockets against real KernieGens behind the gateway."""

from __future__ import annotations

import asyncio
import io
import json

import aiohttp
import pytest

from gateway.config.settings import StoreSettings
from gateway.kerniegen.config import KernieGenConfig
from gateway.kerniegen.server import start_kerniegen
from gateway.state.sqlite_store import SqliteStateStore
from tests.conftest import both_data_paths

# Every test here runs on both data paths: the fast path must behave exactly as the aiohttp one.
pytestmark = both_data_paths


@pytest.fixture
async def kerniegen(tmp_path):
    server = await start_kerniegen(KernieGenConfig(port=0, data_dir=tmp_path / "k", step_delay_ms=0))
    yield server
    await server.close()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


class GatedStore:
    """The real SQLite store, except that forgetting a prompt waits until the test says so."""

    def __init__(self, inner: SqliteStateStore) -> None:
        self._inner = inner
        self.release_forget = asyncio.Event()
        self.forget_started = asyncio.Event()

    async def forget_prompt(self, prompt_id: str) -> None:
        self.forget_started.set()
        await self.release_forget.wait()
        await self._inner.forget_prompt(prompt_id)

    def __getattr__(self, name):
        return getattr(self._inner, name)


async def test_prompt_answer_is_sent_before_any_bookkeeping_after_it(kerniegen, start_gateway, http, tmp_path):
    """CLIENTS.md 1: nothing may sit between the backend's answer and ours (here: forgetting a rejected prompt)."""
    store = GatedStore(SqliteStateStore.open(StoreSettings(path=tmp_path / "gated.sqlite3")))
    gateway = await start_gateway({"kerniegen": kerniegen.url}, store=store)
    async with http.post(f"{gateway.url}/prompt", json={"prompt": {"1": {"class_type": "Nope", "inputs": {}}}}) as r:
        # the answer is readable while the store is still blocked in forget_prompt
        body = await asyncio.wait_for(r.json(), timeout=5)
        assert r.status == 400 and body["error"]["type"] == "invalid_prompt"
    await asyncio.wait_for(store.forget_started.wait(), timeout=5)
    store.release_forget.set()
    await store.close()


async def test_websocket_origin_from_the_client_passes_the_backend_check(kerniegen, start_gateway, http):
    """CLIENTS.md 4: comfy-cli sends Origin = the URL it was given (the gateway's) on the upgrade."""
    gateway = await start_gateway({"kerniegen": kerniegen.url})
    with pytest.raises(aiohttp.WSServerHandshakeError) as direct:
        await http.ws_connect(f"{kerniegen.url}/ws?clientId=x", origin=gateway.url)
    assert direct.value.status == 403  # the backend's own check is live
    async with http.ws_connect(f"{gateway.url}/ws?clientId=x", origin=gateway.url) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "status"


async def test_json_answers_keep_content_type_and_exact_array_shapes(kerniegen, start_gateway, http):
    """CLIENTS.md 5: application/json everywhere, 5-element queue and history arrays, exec_info kept."""
    gateway = await start_gateway({"kerniegen": kerniegen.url, "other": "http://127.0.0.1:9"})
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 5}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "shape"}}}
    async with http.post(f"{gateway.url}/prompt", json={"prompt": prompt}) as r:
        answer = await r.json()
        assert set(answer) >= {"prompt_id", "number", "node_errors"}
    for _ in range(100):
        async with http.get(f"{gateway.url}/history/{answer['prompt_id']}") as r:
            history = await r.json()
        if history:
            break
        await asyncio.sleep(0.02)
    assert len(history[answer["prompt_id"]]["prompt"]) == 5
    for path in ("/history", "/queue", "/prompt", "/history?max_items=1"):
        async with http.get(gateway.url + path) as r:
            assert r.status == 200 and r.content_type == "application/json", path
            body = await r.json()
        if path == "/prompt":
            assert body == {"exec_info": {"queue_remaining": 0}}
        if path.startswith("/history"):
            assert all(len(entry["prompt"]) == 5 for entry in body.values())
    async with http.get(gateway.url + "/queue", headers={"X-Comfy-Backend": "nope"}) as r:
        assert r.status == 400 and r.content_type == "application/json"


async def test_binary_frames_and_broadcasts_pass_through_untouched(kerniegen, start_gateway, http):
    """CLIENTS.md 6: no frame injected, none turned into a broadcast; binary image frames byte-identical."""
    gateway = await start_gateway({"kerniegen": kerniegen.url})
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 255}},
              "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}}}
    async with http.ws_connect(f"{gateway.url}/ws?clientId=mine") as mine, \
            http.ws_connect(f"{kerniegen.url}/ws?clientId=direct") as direct, \
            http.ws_connect(f"{gateway.url}/ws?clientId=bystander") as bystander:
        for ws in (mine, direct, bystander):
            await ws.receive_json(timeout=5)
        async with http.post(f"{gateway.url}/prompt", json={"prompt": prompt, "client_id": "mine"}) as r:
            assert r.status == 200

        async def collect(ws):
            frames = []
            while True:
                msg = await ws.receive(timeout=5)
                frames.append(msg)
                if msg.type == aiohttp.WSMsgType.TEXT and '"executing"' in msg.data and '"node": null' in msg.data:
                    return frames

        frames = await collect(mine)
        binary = [m.data for m in frames if m.type == aiohttp.WSMsgType.BINARY]
        assert len(binary) == 1 and binary[0][:8] == b"\x00\x00\x00\x01\x00\x00\x00\x02"
        # the bystander hears only status broadcasts, as from ComfyUI itself
        await asyncio.sleep(0.1)
        bystander_types = []
        while True:
            try:
                msg = await bystander.receive(timeout=0.2)
            except TimeoutError:
                break
            bystander_types.append(json.loads(msg.data)["type"] if msg.type == aiohttp.WSMsgType.TEXT else "binary")
        assert set(bystander_types) <= {"status"}


@pytest.mark.parametrize("style", ["percent", "slash", "plus"])
async def test_view_subfolder_in_every_client_encoding(kerniegen, start_gateway, http, style):
    """CLIENTS.md 7: subfolder sent back as %2F, / or with + for spaces must all resolve."""
    gateway = await start_gateway({"kerniegen": kerniegen.url})
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 9}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "my dir/x"}}}
    async with http.ws_connect(f"{gateway.url}/ws?clientId=enc") as ws:
        await ws.receive_json(timeout=5)
        async with http.post(f"{gateway.url}/prompt", json={"prompt": prompt, "client_id": "enc"}):
            pass
        while True:
            frame = await ws.receive_json(timeout=5)
            if frame["type"] == "executed":
                ref = frame["data"]["output"]["images"][0]
                break
    assert ref["subfolder"] == "kerniegen/my dir"
    encoded = {
        "percent": "kerniegen%2Fmy%20dir",
        "slash": "kerniegen/my%20dir",
        "plus": "kerniegen/my+dir",
    }[style]
    url = aiohttp.client.URL(
        f"{gateway.url}/view?filename={ref['filename']}&type=output&subfolder={encoded}", encoded=True
    )
    async with http.get(url) as r:
        assert r.status == 200 and (await r.read()).startswith(b"\x89PNG")


async def test_non_numeric_node_ids_and_large_extra_data(kerniegen, start_gateway, http):
    """CLIENTS.md 14: node ids like "EmptyImage.0" and a whole script in extra_data (several MB)."""
    gateway = await start_gateway({"kerniegen": kerniegen.url})
    prompt = {
        "EmptyImage.0": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 1}},
        "SaveImage.0": {"class_type": "SaveImage", "inputs": {"images": ["EmptyImage.0", 0], "filename_prefix": "ids"}},
    }
    script = "x = 1\n" * 800_000  # ~4.8 MB
    body = io.BytesIO(json.dumps({"prompt": prompt, "extra_data": {"script": script}}).encode())
    async with http.post(f"{gateway.url}/prompt", data=body) as r:
        assert r.status == 200, await r.text()
        pid = (await r.json())["prompt_id"]
    for _ in range(200):
        async with http.get(f"{gateway.url}/history/{pid}") as r:
            history = await r.json()
        if history:
            break
        await asyncio.sleep(0.02)
    entry = history[pid]
    assert entry["prompt"][3]["script"] == script
    assert entry["outputs"]["SaveImage.0"]["images"][0]["subfolder"] == "kerniegen"
