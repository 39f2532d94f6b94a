"""The guardrails of POST /prompt on a running gateway, both data paths, against two real KernieGens whose
checkpoints and loras differ (and a recording backend serving KernieGen's own /object_info, to see the bytes a
backend gets): seed -1 normalised with every other byte kept, a missing checkpoint refused in ComfyUI's shape
naming the backend that has it, aliases, placement by model (never over a client's or user's choice), unknown
node classes, no inventory (forwarded unchanged, counted), inventories refreshed on demand (an admin write),
and the model catalog."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.datapath.aio.keys import METRICS
from gateway.kerniegen.config import Faults, KernieGenConfig
from gateway.kerniegen.inventory import Inventory
from gateway.kerniegen.server import KernieGenServer, start_kerniegen
from tests.conftest import RunningGateway
from tests.kerniegen import workflows
from tests.ports import free_port
from tests.recording_backend import RecordingBackend

CKPT_A = "illustriousXL_v01.safetensors"
CKPT_B = "sdxl_base_1.0.safetensors"
SHARED = "shared_v2.safetensors"
LORA_A = "detail_a.safetensors"
LORA_B = "style_b.safetensors"
ADMIN = "admin-token-0123456789abcdef"
HEADER = "X-Comfy-Guardrails"

StartKernieGen = Callable[..., Awaitable[KernieGenServer]]


def txt2img(ckpt: str, *, seed: Any = 42, lora: str | None = None) -> dict[str, Any]:
    prompt = workflows.txt2img(seed, width=64, height=48, steps=2, text="a lighthouse, ünïcode", prefix="guard",
                               ckpt_name=ckpt)
    if lora:
        prompt["3"]["inputs"]["model"] = ["10", 0]
        prompt["10"] = {"class_type": "LoraLoaderModelOnly",
                        "inputs": {"model": ["4", 0], "lora_name": lora, "strength_model": 1.0}}
    return prompt


@pytest.fixture
async def start_kg(tmp_path: Path) -> AsyncIterator[StartKernieGen]:
    servers: list[KernieGenServer] = []

    async def start(checkpoints: tuple[str, ...], loras: tuple[str, ...] = (), *, port: int = 0,
                    faults: Faults | None = None) -> KernieGenServer:
        config = KernieGenConfig(
            port=port, step_delay_ms=0.0, data_dir=tmp_path / f"kg{len(servers)}", frontend_dir=None,
            inventory=Inventory(checkpoints=checkpoints, loras=loras), faults=faults or Faults(),
        )
        server = await start_kerniegen(config)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def eventually(check: Callable[[], Awaitable[bool]], *, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def inventories_read(http: aiohttp.ClientSession, gateway: RunningGateway, *names: str) -> None:
    """Wait until the gateway's background reads have an inventory of each backend."""
    async def known() -> bool:
        for name in names:
            async with http.get(f"{gateway.url}/gateway/backends/{name}/models") as r:
                if not (await r.json())["known"]:
                    return False
        return True

    await eventually(known)


def guardrail_count(gateway: RunningGateway, backend: str, action: str) -> float:
    value = gateway.app[METRICS].registry.get_sample_value(
        "comfy_gateway_guardrail_actions_total", {"backend": backend, "action": action}
    )
    return value or 0.0


async def counted(gateway: RunningGateway, backend: str, action: str, at_least: float) -> None:
    async def reached() -> bool:
        return guardrail_count(gateway, backend, action) >= at_least

    await eventually(reached, seconds=5.0)


@pytest.fixture
async def two(start_kg: StartKernieGen) -> tuple[KernieGenServer, KernieGenServer]:
    a = await start_kg((CKPT_A, SHARED), (LORA_A,))
    b = await start_kg((CKPT_B, SHARED), (LORA_B,))
    return a, b


async def gateway_of(start_gateway: Any, http: aiohttp.ClientSession, a: Any, b: Any, *,
                     a_spec: dict[str, Any] | None = None, **overrides: Any) -> RunningGateway:
    gateway = await start_gateway(
        {"kerniegen": {"url": a.url, **(a_spec or {})}, "comfyui": {"url": b.url}}, **overrides
    )
    await inventories_read(http, gateway, "kerniegen", "comfyui")
    return gateway


async def history_prompt(http: aiohttp.ClientSession, gateway: RunningGateway, prompt_id: str) -> dict[str, Any]:
    entry: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal entry
        async with http.get(f"{gateway.url}/history/{prompt_id}") as r:
            entry = (await r.json()).get(prompt_id, {})
        return bool(entry.get("status", {}).get("completed"))

    await eventually(done)
    return dict(entry["prompt"][2])


# --- seeds ------------------------------------------------------------------------------------------------------


class InventoriedBackend(RecordingBackend):
    """A recording backend that serves a real KernieGen's /object_info, so the guardrails act on its prompts."""

    object_info: bytes = b"{}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/object_info":
            return web.Response(body=self.object_info, content_type="application/json")
        return await super().handle(request)


async def test_seed_minus_one_is_normalised_and_every_other_byte_kept(
    start_kg: StartKernieGen, start_backend: Any, start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    kg = await start_kg((CKPT_A,))
    recording = await start_backend("recording", InventoriedBackend)
    async with http.get(f"{kg.url}/object_info") as r:
        recording.object_info = await r.read()
    gateway = await start_gateway({"recording": recording.url})
    await inventories_read(http, gateway, "recording")
    prompt = txt2img(CKPT_A, seed=-1)
    prompt["11"] = {"class_type": "KSampler", "inputs": {**prompt["3"]["inputs"], "seed": 2**64 - 1}}
    body = json.dumps({"prompt_id": "p-seed", "prompt": prompt, "client_id": "c"}, indent=1,
                      ensure_ascii=False).encode()
    async with http.post(f"{gateway.url}/prompt", data=body) as r:
        assert r.status == 200, await r.text()
        shown = r.headers[HEADER]
    match = re.fullmatch(r"seed_normalized node=3 input=seed value=(\d+)", shown)
    assert match is not None, shown
    seed = int(match.group(1))
    assert 0 <= seed <= 2**64 - 1
    sent = recording.last("/prompt").body
    assert sent == body.replace(b'"seed": -1', b'"seed": ' + str(seed).encode())
    assert json.loads(sent)["prompt"]["11"]["inputs"]["seed"] == 2**64 - 1
    await counted(gateway, "recording", "seed_normalized", 1)

    # nothing to change: the body goes as it came, with no header
    calm = json.dumps({"prompt_id": "p-calm", "prompt": txt2img(CKPT_A, seed=7)}).encode()
    async with http.post(f"{gateway.url}/prompt", data=calm) as r:
        assert r.status == 200 and HEADER not in r.headers
    assert recording.last("/prompt").body == calm


async def test_seed_minus_one_runs_on_kerniegen(
    two: Any, start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    gateway = await gateway_of(start_gateway, http, *two)
    async with http.post(f"{gateway.url}/prompt", json={"prompt": txt2img(CKPT_A, seed=-1)}) as r:
        answer = await r.json()
        assert r.status == 200, answer
        assert r.headers[HEADER].startswith("seed_normalized node=3 input=seed value=")
    ran = await history_prompt(http, gateway, answer["prompt_id"])
    assert ran["3"]["inputs"]["seed"] >= 0


# --- models -------------------------------------------------------------------------------------------------------


async def test_a_missing_checkpoint_is_refused_in_comfyuis_shape(
    two: Any, start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    gateway = await gateway_of(start_gateway, http, *two)
    async with http.post(f"{gateway.url}/prompt", json={"prompt": txt2img(CKPT_B, seed=-1)}) as r:
        assert r.status == 400
        assert r.headers["X-Comfy-Backend"] == "kerniegen" and r.headers["X-Comfy-Route"] == "default"
        assert r.headers[HEADER] == f"refused_model node=4 input=ckpt_name value={CKPT_B}"
        answer = await r.json()
    assert answer["error"] == {
        "type": "prompt_outputs_failed_validation",
        "message": "Prompt outputs failed validation",
        "details": "",
        "extra_info": {"gateway": {"backend": "kerniegen", "available_on": ["comfyui"]}},
    }
    assert list(answer["node_errors"]) == ["4"]
    node = answer["node_errors"]["4"]
    assert node["dependent_outputs"] == ["9"] and node["class_type"] == "CheckpointLoaderSimple"
    (error,) = node["errors"]
    assert error["type"] == "value_not_in_list" and error["message"] == "Value not in list"
    assert error["details"].startswith(f"ckpt_name: '{CKPT_B}' not in ['{CKPT_A}', '{SHARED}']")
    assert "kerniegen" in error["details"] and "comfyui" in error["details"]
    assert error["extra_info"]["input_name"] == "ckpt_name" and error["extra_info"]["received_value"] == CKPT_B
    assert error["extra_info"]["input_config"] == [
        [CKPT_A, SHARED], {"tooltip": "The name of the checkpoint (model) to load."}
    ]  # as ComfyUI quotes it: the input as the backend declares it
    await counted(gateway, "kerniegen", "refused_model", 1)

    # a lora missing too, on a backend that has the checkpoint: named with the backend that has it
    prompt = txt2img(SHARED, lora=LORA_B)
    async with http.post(f"{gateway.url}/prompt", json={"prompt": prompt}) as r:
        answer = await r.json()
        assert r.status == 400
    assert list(answer["node_errors"]) == ["10"]
    assert answer["error"]["extra_info"]["gateway"] == {"backend": "kerniegen", "available_on": ["comfyui"]}
    # and where it is, it runs
    async with http.post(f"{gateway.url}/prompt", json={"prompt": prompt}, headers={"X-Comfy-Backend": "comfyui"}) as r:
        assert r.status == 200, await r.text()


async def test_a_prompt_failing_over_is_judged_by_its_fallbacks_models(
    two: Any, start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    """A backend that refuses the connection hands its new prompt to its fallback: the fallback's inventory
    judges it there, as if it had been sent there from the start, and a prompt it cannot run goes nowhere."""
    a, b = two
    gateway = await gateway_of(
        start_gateway, http, a, b, a_spec={"fallback": "comfyui", "timeouts": {"connect_seconds": 0.5}},
        health_check_interval_seconds=60.0,  # kerniegen stays up as far as the gateway knows
    )
    await a.close()  # it refuses connections from now on
    async with http.post(f"{gateway.url}/prompt", json={"prompt": txt2img(CKPT_A, seed=-1)}) as r:
        assert r.status == 400, await r.text()
        assert r.headers["X-Comfy-Backend"] == "comfyui" and r.headers["X-Comfy-Route"] == "fallback"
        assert f"refused_model node=4 input=ckpt_name value={CKPT_A}" in r.headers[HEADER]
        answer = await r.json()
    assert answer["error"]["type"] == "prompt_outputs_failed_validation"
    assert answer["error"]["extra_info"]["gateway"]["backend"] == "comfyui"
    assert list(answer["node_errors"]) == ["4"]
    async with http.get(f"{gateway.url}/queue", headers={"X-Comfy-Backend": "comfyui"}) as r:
        queue = await r.json()
    assert queue["queue_running"] == [] and queue["queue_pending"] == []  # nothing reached the fallback
    await counted(gateway, "comfyui", "refused_model", 1)

    # a prompt the fallback can run goes there, its seed normalised once (for the first backend), the note kept
    async with http.post(f"{gateway.url}/prompt", json={"prompt": txt2img(SHARED, seed=-1)}) as r:
        assert r.status == 200, await r.text()
        assert r.headers["X-Comfy-Backend"] == "comfyui" and r.headers["X-Comfy-Route"] == "fallback"
        assert r.headers[HEADER].startswith("seed_normalized node=3 input=seed value=")
        prompt_id = (await r.json())["prompt_id"]
    graph = await history_prompt(http, gateway, prompt_id)
    assert graph["4"]["inputs"]["ckpt_name"] == SHARED and 0 <= graph["3"]["inputs"]["seed"]


async def test_an_alias_is_applied(two: Any, start_gateway: Any, http: aiohttp.ClientSession) -> None:
    gateway = await gateway_of(start_gateway, http, *two, a_spec={"aliases": {CKPT_B: CKPT_A}})
    async with http.post(f"{gateway.url}/prompt", json={"prompt": txt2img(CKPT_B)}) as r:
        answer = await r.json()
        assert r.status == 200, answer
        assert r.headers[HEADER] == f"alias_applied node=4 input=ckpt_name from={CKPT_B} to={CKPT_A}"
        assert r.headers["X-Comfy-Backend"] == "kerniegen"
    ran = await history_prompt(http, gateway, answer["prompt_id"])
    assert ran["4"]["inputs"]["ckpt_name"] == CKPT_A
    await counted(gateway, "kerniegen", "alias_applied", 1)


async def test_placement_by_model_only_for_the_default(
    two: Any, start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    gateway = await gateway_of(start_gateway, http, *two, guardrails={"place_by_model": True})
    async with http.post(f"{gateway.url}/prompt", json={"prompt": txt2img(CKPT_B)}) as r:
        answer = await r.json()
        assert r.status == 200, answer
        assert (r.headers["X-Comfy-Backend"], r.headers["X-Comfy-Route"]) == ("comfyui", "model")
        assert r.headers[HEADER] == "placed_by_model backend=comfyui from=kerniegen"
    async with http.get(f"{gateway.url}/history/{answer['prompt_id']}") as r:
        assert (r.headers["X-Comfy-Backend"], r.headers["X-Comfy-Route"]) == ("comfyui", "affinity")
    # a file both have stays on the default
    async with http.post(f"{gateway.url}/prompt", json={"prompt": txt2img(SHARED)}) as r:
        assert r.status == 200 and r.headers["X-Comfy-Backend"] == "kerniegen"
    # the client's choice, or the user's, is never overridden
    async with http.post(f"{gateway.url}/prompt", json={"prompt": txt2img(CKPT_B)},
                         headers={"X-Comfy-Backend": "kerniegen"}) as r:
        assert r.status == 400 and r.headers["X-Comfy-Route"] == "header"
    async with http.put(f"{gateway.url}/gateway/preferences/ana", json={"backend": "kerniegen"}) as r:
        assert r.status == 200
    async with http.post(f"{gateway.url}/prompt", json={"prompt": txt2img(CKPT_B)}, headers={"comfy-user": "ana"}) as r:
        assert r.status == 400 and r.headers["X-Comfy-Route"] == "preference"
    # a file no backend has: refused on the default, naming none
    async with http.post(f"{gateway.url}/prompt", json={"prompt": txt2img("nowhere.safetensors")}) as r:
        assert r.status == 400 and r.headers["X-Comfy-Backend"] == "kerniegen"
        assert (await r.json())["error"]["extra_info"]["gateway"]["available_on"] == []
    await counted(gateway, "comfyui", "placed_by_model", 1)


async def test_placement_by_model_is_off_by_default(two: Any, start_gateway: Any, http: aiohttp.ClientSession) -> None:
    gateway = await gateway_of(start_gateway, http, *two)
    async with http.post(f"{gateway.url}/prompt", json={"prompt": txt2img(CKPT_B)}) as r:
        assert r.status == 400 and r.headers["X-Comfy-Backend"] == "kerniegen"


# --- node classes ---------------------------------------------------------------------------------------------


async def test_an_unknown_node_class_is_refused(two: Any, start_gateway: Any, http: aiohttp.ClientSession) -> None:
    gateway = await gateway_of(start_gateway, http, *two)
    prompt = {
        "1": {"class_type": "NoSuchNodeType\r\nX-Evil: 1", "inputs": {"width": 64}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    async with http.post(f"{gateway.url}/prompt", json={"prompt": prompt}) as r:
        assert r.status == 400 and "X-Evil" not in r.headers
        assert r.headers[HEADER] == "refused_node_class node=1 class=NoSuchNodeType%0D%0AX-Evil:%201"
        answer = await r.json()
    assert answer == {
        "error": {
            "type": "invalid_prompt",
            "message": "Cannot execute because node NoSuchNodeType\r\nX-Evil: 1 does not exist on backend kerniegen.",
            "details": "Node ID '#1'",
            "extra_info": {"gateway": {"backend": "kerniegen", "available_on": []}},
        },
        "node_errors": {},
    }
    await counted(gateway, "kerniegen", "refused_node_class", 1)


# --- no inventory -------------------------------------------------------------------------------------------------


async def test_with_no_inventory_the_prompt_goes_on_unchanged_and_is_counted(
    start_kg: StartKernieGen, start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    kg = await start_kg((CKPT_A,), faults=Faults(error_endpoints=frozenset({"/object_info"})))
    gateway = await start_gateway({"kerniegen": kg.url})
    async with http.post(f"{gateway.url}/gateway/backends/kerniegen/refresh") as r:
        assert r.status == 502  # the backend could not say
        assert "kerniegen" in (await r.json())["error"]["message"]
    async with http.post(f"{gateway.url}/prompt", json={"prompt": txt2img(CKPT_A, seed=-1)}) as r:
        assert r.headers[HEADER] == "skipped reason=no_inventory"
        answer = await r.json()
        assert r.status == 400  # the backend's own refusal of seed -1: the body reached it unchanged
    assert answer["node_errors"]["3"]["errors"][0]["type"] == "value_smaller_than_min"
    await counted(gateway, "kerniegen", "skipped", 1)


# --- refresh and the catalog ---------------------------------------------------------------------------------------


async def test_a_model_added_appears_after_a_refresh_which_needs_the_admin(
    start_kg: StartKernieGen, start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    first = await start_kg((CKPT_A,), port=port)
    other = await start_kg((CKPT_B,))
    gateway = await start_gateway(
        {"kerniegen": first.url, "comfyui": other.url}, security={"admin_token": ADMIN}
    )
    await inventories_read(http, gateway, "kerniegen", "comfyui")
    await first.close()
    await start_kg((CKPT_A, "added.safetensors"), port=port)
    async with http.post(f"{gateway.url}/gateway/backends/kerniegen/refresh") as r:
        assert r.status == 401
    async with http.post(f"{gateway.url}/gateway/backends/kerniegen/refresh",
                         headers={"Authorization": "Bearer wrong-token-0123456789"}) as r:
        assert r.status in (401, 403)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    async with http.post(f"{gateway.url}/gateway/backends/nosuch/refresh", headers=admin) as r:
        assert r.status == 404 and r.content_type == "application/json"
    async with http.post(f"{gateway.url}/gateway/backends/kerniegen/refresh", headers=admin) as r:
        assert r.status == 200, await r.text()
        summary = await r.json()
    assert summary["backend"] == "kerniegen" and summary["known"] and summary["files"]["checkpoints"] == 2
    async with http.get(f"{gateway.url}/gateway/backends/kerniegen/models") as r:
        assert (await r.json())["folders"]["checkpoints"] == ["added.safetensors", CKPT_A]
    async with http.post(f"{gateway.url}/prompt", json={"prompt": txt2img("added.safetensors")}) as r:
        assert r.status == 200, await r.text()


async def test_the_model_catalog_across_both_backends(
    two: Any, start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    gateway = await gateway_of(start_gateway, http, *two)
    async with http.get(f"{gateway.url}/gateway/models") as r:
        assert r.status == 200 and r.content_type == "application/json"
        catalog = await r.json()
    assert catalog["backends"] == ["comfyui", "kerniegen"] and catalog["unknown_backends"] == []
    assert catalog["folders"]["checkpoints"] == {
        CKPT_A: ["kerniegen"], SHARED: ["comfyui", "kerniegen"], CKPT_B: ["comfyui"]
    }
    assert catalog["folders"]["loras"] == {LORA_B: ["comfyui"], LORA_A: ["kerniegen"]}
    async with http.get(f"{gateway.url}/gateway/backends/comfyui/models") as r:
        one = await r.json()
    assert one["backend"] == "comfyui" and one["known"]
    assert one["folders"]["checkpoints"] == [CKPT_B, SHARED] and one["folders"]["loras"] == [LORA_B]
    async with http.get(f"{gateway.url}/gateway/backends/nosuch/models") as r:
        assert r.status == 404
    # what the backends serve through the gateway is still theirs, untouched
    async with http.get(f"{gateway.url}/models/checkpoints", headers={"X-Comfy-Backend": "comfyui"}) as r:
        assert await r.json() == [CKPT_B, SHARED]
    async with http.get(f"{gateway.url}/object_info/CheckpointLoaderSimple") as r:
        info = await r.json()
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == [CKPT_A, SHARED]


async def test_a_backend_back_up_is_read_again_with_its_new_models(
    start_kg: StartKernieGen, start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    first = await start_kg((CKPT_A,), port=port)
    gateway = await start_gateway({"kerniegen": first.url}, health_check_interval_seconds=0.1,
                                  health_check_timeout_seconds=0.5)
    await inventories_read(http, gateway, "kerniegen")
    await first.close()

    async def seen_down() -> bool:
        async with http.get(f"{gateway.url}/gateway/ready") as r:
            return (await r.json())["backends"]["kerniegen"]["up"] is False

    await eventually(seen_down)
    await start_kg((CKPT_A, "restarted.safetensors"), port=port)

    async def new_models() -> bool:  # no refresh asked: the health checks saw it come back
        async with http.get(f"{gateway.url}/gateway/backends/kerniegen/models") as r:
            folders = (await r.json())["folders"]
        return folders is not None and "restarted.safetensors" in folders["checkpoints"]

    await eventually(new_models)


async def test_an_inventory_read_is_bounded_by_its_settings(
    start_kg: StartKernieGen, start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    kg = await start_kg((CKPT_A,))
    gateway = await start_gateway({"kerniegen": kg.url}, guardrails={"inventory_max_bytes": 1024})
    async with http.post(f"{gateway.url}/gateway/backends/kerniegen/refresh") as r:
        assert r.status == 502 and "1024" in (await r.json())["error"]["message"]
    async with http.get(f"{gateway.url}/gateway/backends/kerniegen/models") as r:
        status = await r.json()
    assert status["known"] is False and "1024" in status["last_error"]
    async with http.post(f"{gateway.url}/prompt", json={"prompt": txt2img(CKPT_A)}) as r:
        assert r.status == 200 and r.headers[HEADER] == "skipped reason=no_inventory"
