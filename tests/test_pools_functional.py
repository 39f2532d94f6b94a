"""Backend pools on real sockets and both data paths: three KernieGen servers behind the one name `gpu`.

New prompts go to the member with the shortest queue (a slowed member gets fewer); a member that goes down
mid-run costs its own earlier prompts a clear error naming it while new prompts go to the others; the /view
refs and WebSocket events of a prompt on member 2 reach the client; merges of the pool ask every member; a
caller's upload and the prompt that reads it land on one member.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from gateway.kerniegen.config import KernieGenConfig
from gateway.kerniegen.server import start_kerniegen
from tests.conftest import both_data_paths

pytestmark = both_data_paths

FAST_MS, SLOW_MS = 2.0, 400.0
POLLS = {"queue_poll_interval_seconds": 0.1, "health_check_interval_seconds": 0.5}


def image_prompt(color: int, prefix: str = "pool") -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture
async def members(tmp_path: Path):
    """Three KernieGens; the third executes each node 200 times slower."""
    started = []
    for number, delay in ((1, FAST_MS), (2, FAST_MS), (3, SLOW_MS)):
        config = KernieGenConfig(port=0, data_dir=tmp_path / f"m{number}", step_delay_ms=delay)
        started.append(await start_kerniegen(config))
    yield started
    for server in started:
        await server.close()


@pytest.fixture
async def gateway(members, start_gateway, tmp_path: Path):
    pool = {"members": [{"url": m.url, "output_dir": str(tmp_path / f"m{n}" / "output")}
                        for n, m in enumerate(members, 1)], "kind": "kerniegen"}
    gateway = await start_gateway({"gpu": pool}, **POLLS)
    async with aiohttp.ClientSession() as session, session.get(gateway.url + "/gateway/ready") as r:
        assert r.status == 200, await r.text()
    return gateway


async def submit(http, url: str, prompt: dict, **extra) -> tuple[int, str, str, dict]:
    headers = extra.pop("headers", {})
    async with http.post(url + "/prompt", json={"prompt": prompt, **extra}, headers=headers) as r:
        body = await r.json()
        return r.status, r.headers.get("X-Comfy-Backend", ""), r.headers.get("X-Comfy-Route", ""), body


async def finished(http, url: str, prompt_id: str, seconds: float = 20.0) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        async with http.get(f"{url}/history/{prompt_id}") as r:
            body = await r.json()
        if prompt_id in body and body[prompt_id]["status"]["status_str"] in ("success", "error"):
            return body[prompt_id]
        await asyncio.sleep(0.05)
    raise AssertionError(f"prompt {prompt_id} did not finish in {seconds} s")


async def test_new_prompts_go_to_the_shortest_queue(gateway, http) -> None:
    placed: Counter[str] = Counter()
    ids: dict[str, str] = {}
    for color in range(36):
        status, backend, route, body = await submit(http, gateway.url, image_prompt(color))
        assert status == 200, body
        assert route == "default"
        placed[backend] += 1
        ids[body["prompt_id"]] = backend
        await asyncio.sleep(0.03)
    assert set(placed) <= {"gpu.1", "gpu.2", "gpu.3"}
    # the slowed member's queue stays long, so the fast ones take most prompts
    assert placed["gpu.3"] >= 1
    assert placed["gpu.3"] < placed["gpu.1"] and placed["gpu.3"] < placed["gpu.2"], placed
    # every follow-up reaches the member that holds the prompt
    some = [pid for pid, backend in ids.items() if backend == "gpu.1"][:3]
    for prompt_id in some:
        entry = await finished(http, gateway.url, prompt_id)
        image = entry["outputs"]["2"]["images"][0]
        assert image["subfolder"].split("/")[0] == "gpu.1"


async def test_a_member_going_down_costs_only_its_own_prompts(gateway, members, http) -> None:
    on_two = None
    for color in range(12):
        status, backend, _, body = await submit(http, gateway.url, image_prompt(color))
        assert status == 200, body
        if backend == "gpu.2":
            on_two = body["prompt_id"]
    assert on_two is not None
    await finished(http, gateway.url, on_two)
    await members[1].close()

    # new prompts go to the other members (a refused connection is taken by another member at once)
    for color in range(12):
        status, backend, route, body = await submit(http, gateway.url, image_prompt(100 + color))
        assert status == 200, body
        assert backend in ("gpu.1", "gpu.3"), (backend, route)
    # the prompt held by the dead member: a clear error naming it, not another member's answer
    async with http.get(f"{gateway.url}/history/{on_two}") as r:
        assert r.status in (502, 503)
        text = await r.text()
    assert "gpu.2" in text
    async with http.get(f"{gateway.url}/gateway/ready") as r:
        ready = await r.json()
    assert r.status == 200 and ready["backends"]["gpu.2"]["pool"] == "gpu"


async def test_view_and_socket_events_of_a_prompt_on_member_two(gateway, members, http, tmp_path) -> None:
    async with http.ws_connect(gateway.url + "/ws?clientId=watcher") as ws:
        status, backend, route, body = await submit(
            http, gateway.url, image_prompt(7, "member2"), client_id="watcher", headers={"X-Comfy-Backend": "gpu.2"}
        )
        assert (status, backend, route) == (200, "gpu.2", "header")
        prompt_id = body["prompt_id"]
        executed = None
        async with asyncio.timeout(20):
            while executed is None:
                message = await ws.receive()
                if message.type is not aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(message.data)
                if event["type"] == "executed" and event["data"]["prompt_id"] == prompt_id:
                    executed = event["data"]
    image = executed["output"]["images"][0]
    assert image["subfolder"].split("/")[0] == "gpu.2"
    params = {"filename": image["filename"], "subfolder": image["subfolder"], "type": image["type"]}
    async with http.get(gateway.url + "/view", params=params) as r:
        assert r.status == 200
        assert r.headers["X-Comfy-Backend"] == "gpu.2"
        served = await r.read()
    on_disk = tmp_path / "m2" / "output" / image["subfolder"].partition("/")[2] / image["filename"]
    assert served == on_disk.read_bytes()


async def test_the_pools_merges_ask_every_member(gateway, http) -> None:
    ids = []
    for number in (1, 2, 3):
        chosen = {"X-Comfy-Backend": f"gpu.{number}"}
        status, _, _, body = await submit(http, gateway.url, image_prompt(number), headers=chosen)
        assert status == 200
        ids.append(body["prompt_id"])
    for prompt_id in ids[:2]:
        await finished(http, gateway.url, prompt_id)
    async with http.get(gateway.url + "/history", headers={"X-Comfy-Backend": "gpu"}) as r:
        assert r.status == 200
        assert r.headers["X-Comfy-Route"] == "merged"
        assert set(r.headers["X-Comfy-Backend"].split(",")) == {"gpu.1", "gpu.2", "gpu.3"}
        history = await r.json()
    assert set(ids[:2]) <= set(history)
    async with http.post(gateway.url + "/queue", json={"clear": True}, headers={"X-Comfy-Backend": "gpu"}) as r:
        assert r.status == 200
        assert set(r.headers["X-Comfy-Backend"].split(",")) == {"gpu.1", "gpu.2", "gpu.3"}
    async with http.get(gateway.url + "/system_stats", headers={"X-Comfy-Backend": "nope"}) as r:
        assert r.status == 400
        assert (await r.json())["error"]["details"] == ["gpu"]  # the pool, not its members
    async with http.get(gateway.url + "/gateway/backends") as r:
        described = await r.json()
    (pool,) = described["backends"]
    assert [(m["name"], m["member"], m["up"], m["circuit"]) for m in pool["members"]] == [
        ("gpu.1", 1, True, "closed"), ("gpu.2", 2, True, "closed"), ("gpu.3", 3, True, "closed")
    ]
    assert all(isinstance(m["queue"], int) for m in pool["members"])


async def test_an_upload_and_the_prompt_that_reads_it_land_on_one_member(gateway, http) -> None:
    form = aiohttp.FormData()
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buffer, format="PNG")
    png = buffer.getvalue()
    form.add_field("image", png, filename="pooled-upload.png", content_type="image/png")
    async with http.post(gateway.url + "/upload/image", data=form) as r:
        assert r.status == 200, await r.text()
        uploaded_on = r.headers["X-Comfy-Backend"]
        name = (await r.json())["name"]
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "pooled"}},
    }
    for _ in range(6):  # by queue alone, some of these would go elsewhere
        status, backend, _, body = await submit(http, gateway.url, prompt)
        assert status == 200, body
        assert backend == uploaded_on
        entry = await finished(http, gateway.url, body["prompt_id"])
        assert entry["status"]["status_str"] == "success"


async def test_the_console_shows_members_and_filters_by_pool(gateway, http) -> None:
    status, backend, _, body = await submit(http, gateway.url, image_prompt(3), headers={"X-Comfy-Backend": "gpu.3"})
    assert (status, backend) == (200, "gpu.3")
    async with http.get(gateway.url + "/gateway/console/backends") as r:
        cards = await r.json()
    cards = cards["backends"] if isinstance(cards, dict) else cards
    assert [(c["name"], c["pool"], c["member"], c["default"]) for c in cards] == [
        ("gpu.1", "gpu", 1, True), ("gpu.2", "gpu", 2, True), ("gpu.3", "gpu", 3, True)
    ]
    async with http.get(gateway.url + "/gateway/console/prompts", params={"backend": "gpu"}) as r:
        listed = (await r.json())["prompts"]
    assert [(p["prompt_id"], p["backend"]) for p in listed] == [(body["prompt_id"], "gpu.3")]
    async with http.get(gateway.url + "/gateway/console/users") as r:
        assert (await r.json())["backends"] == ["gpu"]


async def test_metrics_join_members_to_their_pool(gateway, http) -> None:
    async with http.get(gateway.url + "/metrics") as r:
        text = await r.text()
    members = sorted(line for line in text.splitlines() if line.startswith("comfy_gateway_pool_member{"))
    assert members == [
        f'comfy_gateway_pool_member{{backend="gpu.{n}",member="{n}",pool="gpu"}} 1.0' for n in (1, 2, 3)
    ]
    assert 'comfy_gateway_backend_up{backend="gpu.2"} 1.0' in text


async def test_a_socket_on_a_pool_hears_prompts_another_gateway_placed(members, start_gateway, http, tmp_path) -> None:
    """Two gateways on one state file (two workers, or two replicas): the socket is held by one, the prompt
    placed by the other on another member; the socket follows every member of its pool, so it hears it."""
    pool = {"urls": [m.url for m in members], "kind": "kerniegen"}
    state = tmp_path / "shared.sqlite3"
    holder = await start_gateway({"gpu": pool}, state_file=state, **POLLS)
    placer = await start_gateway({"gpu": pool}, state_file=state, **POLLS)
    async with http.ws_connect(holder.url + "/ws?clientId=elsewhere") as ws:
        opened_on = ws._response.headers["X-Comfy-Backend"]
        other = next(f"gpu.{n}" for n in (1, 2) if f"gpu.{n}" != opened_on)
        status, backend, _, body = await submit(
            http, placer.url, image_prompt(9), client_id="elsewhere", headers={"X-Comfy-Backend": other}
        )
        assert (status, backend) == (200, other)
        async with asyncio.timeout(20):
            while True:
                message = await ws.receive()
                assert message.type is aiohttp.WSMsgType.TEXT, message
                event = json.loads(message.data)
                if event["type"] == "executed" and event["data"]["prompt_id"] == body["prompt_id"]:
                    break
    assert event["data"]["output"]["images"][0]["subfolder"].split("/")[0] == other
