"""A ComfyUI client's whole flow through the gateway against two real KernieGens with different model
inventories: submit, follow /ws, read /history, download from /view and from disk, upload and reuse, switch
backends by header and by preference, and keep every follow-up call on the backend that ran the prompt."""

from __future__ import annotations

import io
import json
import uuid

import aiohttp
import pytest
from PIL import Image

from gateway.kerniegen.config import KernieGenConfig
from gateway.kerniegen.inventory import Inventory
from gateway.kerniegen.server import start_kerniegen
from tests.conftest import both_data_paths
from tests.kerniegen import workflows
from tests.ports import free_port

# Every test here runs on both data paths: the fast path must behave exactly as the aiohttp one.
pytestmark = both_data_paths

CKPT_A = "illustriousXL_v01.safetensors"
CKPT_B = "sdxl_base_1.0.safetensors"


def txt2img(ckpt: str, *, seed: int = 42, text: str = "a lighthouse at dusk", prefix: str = "gw/t2i") -> dict:
    return workflows.txt2img(seed, width=64, height=48, steps=3, text=text, prefix=prefix, ckpt_name=ckpt)


def slow_chain(color: int) -> dict:
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}}}
    for i in range(2, 12):
        prompt[str(i)] = {"class_type": "ImageInvert", "inputs": {"image": [str(i - 1), 0]}}
    prompt["12"] = {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "slow"}}
    return prompt


@pytest.fixture
async def kerniegens(tmp_path):
    a = await start_kerniegen(
        KernieGenConfig(port=0, data_dir=tmp_path / "a", step_delay_ms=0, inventory=Inventory(checkpoints=(CKPT_A,)))
    )
    b = await start_kerniegen(
        KernieGenConfig(port=0, data_dir=tmp_path / "b", step_delay_ms=30, inventory=Inventory(checkpoints=(CKPT_B,)))
    )
    yield a, b
    await a.close()
    await b.close()


@pytest.fixture
async def gateway(kerniegens, start_gateway, tmp_path):
    a, b = kerniegens
    return await start_gateway(
        {
            "kerniegen": {"url": a.url, "output_dir": str(tmp_path / "a" / "output")},
            "comfyui": {"url": b.url, "output_dir": str(tmp_path / "b" / "output")},
        },
        output_root=tmp_path / "outputs",
    )


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def run_to_completion(http, base: str, prompt: dict, *, headers: dict | None = None, params: str = ""):
    """Like ComfyScript: open /ws first, submit with client_id, collect until `executing` with node null."""
    client_id = uuid.uuid4().hex
    frames: list[dict] = []
    async with http.ws_connect(f"{base}/ws?clientId={client_id}{params}") as ws:
        first = await ws.receive_json(timeout=5)
        assert first["type"] == "status" and "queue_remaining" in first["data"]["status"]["exec_info"]
        async with http.post(
            f"{base}/prompt", data=json.dumps({"prompt": prompt, "client_id": client_id}), headers=headers or {}
        ) as r:
            answer = await r.json()
            assert r.status == 200, answer
        while True:
            msg = await ws.receive(timeout=10)
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            frames.append(frame)
            if frame["type"] == "executing" and frame["data"]["node"] is None:
                break
    return answer, frames


async def test_txt2img_flow_refs_agree_and_resolve_everywhere(gateway, http, tmp_path):
    answer, frames = await run_to_completion(http, gateway.url, txt2img(CKPT_A))
    pid = answer["prompt_id"]
    assert isinstance(answer["number"], int) and answer["node_errors"] == {}
    types = [f["type"] for f in frames]
    assert types.index("execution_start") < types.index("executed") < types.index("execution_success")
    ws_images = next(f for f in frames if f["type"] == "executed")["data"]["output"]["images"]
    assert ws_images[0]["subfolder"] == "kerniegen/gw"

    async with http.get(f"{gateway.url}/history/{pid}") as r:
        assert (r.headers["X-Comfy-Backend"], r.headers["X-Comfy-Route"]) == ("kerniegen", "affinity")
        entry = (await r.json())[pid]
    assert entry["outputs"]["9"]["images"] == ws_images
    assert len(entry["prompt"]) == 5

    ref = ws_images[0]
    async with http.get(f"{gateway.url}/view", params=ref) as r:
        assert r.status == 200 and r.content_type == "image/png"
        fetched = await r.read()
    on_disk_root = tmp_path / "outputs" / ref["subfolder"] / ref["filename"]
    on_disk_backend = tmp_path / "a" / "output" / "gw" / ref["filename"]
    assert fetched == on_disk_root.read_bytes() == on_disk_backend.read_bytes()
    assert fetched.startswith(b"\x89PNG")


async def test_switching_backends_by_header_and_preference(gateway, http):
    # CKPT_B exists only on the backend named comfyui: the default refuses it the way ComfyUI does
    async with http.post(f"{gateway.url}/prompt", json={"prompt": txt2img(CKPT_B)}) as r:
        assert r.status == 400
        body = await r.json()
        assert body["node_errors"]["4"]["errors"][0]["type"] == "value_not_in_list"
        assert r.headers["X-Comfy-Backend"] == "kerniegen"

    answer, _ = await run_to_completion(
        http, gateway.url, txt2img(CKPT_B), headers={"X-Comfy-Backend": "comfyui"}, params="&backend=comfyui"
    )
    async with http.get(f"{gateway.url}/history/{answer['prompt_id']}") as r:
        assert r.headers["X-Comfy-Backend"] == "comfyui"
        entry = (await r.json())[answer["prompt_id"]]
        assert entry["outputs"]["9"]["images"][0]["subfolder"] == "comfyui/gw"

    async with http.put(f"{gateway.url}/gateway/preferences/ana", json={"backend": "comfyui"}) as r:
        assert r.status == 200
    async with http.get(f"{gateway.url}/object_info/CheckpointLoaderSimple", headers={"comfy-user": "ana"}) as r:
        info = await r.json()
        assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == [CKPT_B]
        assert r.headers["X-Comfy-Route"] == "preference"
    async with http.get(f"{gateway.url}/object_info/CheckpointLoaderSimple") as r:
        assert (await r.json())["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == [CKPT_A]


async def test_targeted_interrupt_follows_affinity(gateway, http):
    client_id = "watcher"
    async with http.ws_connect(f"{gateway.url}/ws?clientId={client_id}&backend=comfyui") as ws:
        await ws.receive_json(timeout=5)
        async with http.post(
            f"{gateway.url}/prompt",
            json={"prompt": slow_chain(7), "client_id": client_id},
            headers={"X-Comfy-Backend": "comfyui"},
        ) as r:
            pid = (await r.json())["prompt_id"]
        seen: list[str] = []
        while "executing" not in seen:
            seen.append((await ws.receive_json(timeout=5))["type"])
        # no header: the gateway knows where the prompt runs
        async with http.post(f"{gateway.url}/interrupt", json={"prompt_id": pid}) as r:
            assert r.status == 200 and r.headers["X-Comfy-Route"] == "affinity"
            assert r.headers["X-Comfy-Backend"] == "comfyui"
        while True:
            frame = await ws.receive_json(timeout=5)
            if frame["type"] == "execution_interrupted":
                assert frame["data"]["prompt_id"] == pid
                break
    async with http.get(f"{gateway.url}/gateway/prompts/{pid}") as r:
        info = await r.json()
    assert info["backend"] == "comfyui" and info["state"] in ("failed", "running")


async def test_upload_then_loadimage_on_the_same_backend(gateway, http, tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (10, 20, 30)).save(buffer, format="PNG")
    form = aiohttp.FormData()
    form.add_field("image", buffer.getvalue(), filename="src.png", content_type="image/png")
    form.add_field("subfolder", "uploads")
    async with http.post(f"{gateway.url}/upload/image", data=form, headers={"X-Comfy-Backend": "comfyui"}) as r:
        assert r.status == 200
        uploaded = await r.json()
    assert uploaded == {"name": "src.png", "subfolder": "uploads", "type": "input"}
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "uploads/src.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
    }
    answer, frames = await run_to_completion(
        http, gateway.url, prompt, headers={"X-Comfy-Backend": "comfyui"}, params="&backend=comfyui"
    )
    ref = next(f for f in frames if f["type"] == "executed")["data"]["output"]["images"][0]
    async with http.get(f"{gateway.url}/view", params=ref) as r:
        image = Image.open(io.BytesIO(await r.read()))
    assert image.size == (16, 12) and image.convert("RGB").getpixel((0, 0)) == (245, 235, 225)
    async with http.get(
        f"{gateway.url}/view", params={"filename": "src.png", "subfolder": "comfyui/uploads", "type": "input"}
    ) as r:
        assert r.status == 200 and await r.read() == buffer.getvalue()


async def test_clients_without_content_type_or_headers(gateway, http):
    """api-simplified sends no Content-Type; catapult octet-stream; comfy-cli form-urlencoded with Origin."""
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 3}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    for content_type in (None, "application/octet-stream", "application/x-www-form-urlencoded"):
        headers = {"Origin": gateway.url} | ({"Content-Type": content_type} if content_type else {})
        async with http.post(
            f"{gateway.url}/prompt",
            data=json.dumps({"prompt": prompt}).encode(),
            headers=headers,
            skip_auto_headers=("Content-Type",),
        ) as r:
            assert r.status == 200, await r.text()
            assert r.content_type == "application/json"
    async with http.post(f"{gateway.url}/interrupt", skip_auto_headers=("Content-Type",)) as r:
        assert r.status == 200


async def test_embedded_default_serves_with_no_other_service(start_gateway, http, tmp_path):
    port = free_port()
    gateway = await start_gateway(
        {"kerniegen": {"url": f"http://127.0.0.1:{port}", "embedded": True, "kerniegen": {"step_delay_ms": 0}}},
        output_root=tmp_path / "outputs",
    )
    answer, frames = await run_to_completion(http, gateway.url, txt2img(CKPT_A, prefix="emb"))
    ref = next(f for f in frames if f["type"] == "executed")["data"]["output"]["images"][0]
    assert ref["subfolder"] == "kerniegen"
    disk = tmp_path / "outputs" / "kerniegen" / ref["filename"]
    async with http.get(f"{gateway.url}/view", params=ref) as r:
        assert await r.read() == disk.read_bytes()
    async with http.get(f"{gateway.url}/gateway/ready") as r:
        assert r.status == 200


async def test_merged_history_over_two_real_backends(gateway, http):
    a, _ = await run_to_completion(http, gateway.url, txt2img(CKPT_A, seed=1, prefix="m/run"))
    b, _ = await run_to_completion(
        http, gateway.url, txt2img(CKPT_B, seed=2, prefix="m/run"), headers={"X-Comfy-Backend": "comfyui"},
        params="&backend=comfyui",
    )
    async with http.get(f"{gateway.url}/history") as r:
        assert r.headers["X-Comfy-Route"] == "merged"
        merged = await r.json()
    assert list(merged)[-2:] == [a["prompt_id"], b["prompt_id"]]
    async with http.get(f"{gateway.url}/history?max_items=1") as r:
        assert list(await r.json()) == [b["prompt_id"]]
    for pid, name in ((a["prompt_id"], "kerniegen"), (b["prompt_id"], "comfyui")):
        ref = merged[pid]["outputs"]["9"]["images"][0]
        assert ref["subfolder"] == f"{name}/m"
        async with http.get(f"{gateway.url}/view", params=ref) as r:
            assert r.status == 200 and r.headers["X-Comfy-Backend"] == name
