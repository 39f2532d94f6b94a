"""The loaders the UI's model menus need, on a real KernieGen socket: /object_info serves each as
ComfyUI 0.3.64 declares it (model lists from the inventory), /models lists their folders, and prompts
sampling with a UNETLoader's or ImageOnlyCheckpointLoader's model run or are refused as in ComfyUI."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from PIL import Image

from gateway.kerniegen.inventory import Inventory
from gateway.kerniegen.nodes import NODE_CLASSES
from gateway.kerniegen.server import KernieGenServer
from tests.kerniegen.conftest import StartKernieGen
from tests.kerniegen.kerniegen_client import get_json, history_entry, post_raw, submit
from tests.kerniegen.test_nodes import LOADER_MODEL_INPUTS, LOADERS_THE_UI_ASSUMES, NO_MODELS, TRANSCRIBED_LOADERS
from tests.kerniegen.workflows import image_only_txt2img, unet_txt2img

CHECKPOINT = "illustriousXL_v01.safetensors"
MODELS = Inventory(diffusion_models=("flux1-dev.safetensors",), controlnet=("canny.pth", "depth.pth"),
                   upscale_models=("4x-UltraSharp.pth",), style_models=("redux.safetensors",),
                   gligen=("gligen_sd14.safetensors",), checkpoints=(CHECKPOINT, "svd_xt.safetensors"))


@pytest.mark.parametrize("class_name", sorted(TRANSCRIBED_LOADERS))
async def test_object_info_serves_comfyuis_definition(class_name: str, start_kg: StartKernieGen,
                                                      http: aiohttp.ClientSession) -> None:
    server = await start_kg(inventory=NO_MODELS)
    for prefix in ("", "/api"):
        served = await get_json(http, f"{server.url}{prefix}/object_info/{class_name}")
        assert json.dumps(served) == json.dumps({class_name: TRANSCRIBED_LOADERS[class_name]})


async def test_object_info_lists_every_class_and_the_inventorys_models(start_kg: StartKernieGen,
                                                                       http: aiohttp.ClientSession) -> None:
    server = await start_kg(inventory=MODELS)
    info = await get_json(http, f"{server.url}/object_info")
    assert list(info) == list(NODE_CLASSES) and len(info) == 30
    assert set(LOADERS_THE_UI_ASSUMES) <= set(info)
    for class_name, input_name, folder in LOADER_MODEL_INPUTS:
        spec = info[class_name]["input"]["required"][input_name]
        listed = spec[1]["options"] if spec[0] == "COMBO" else spec[0]
        assert listed == MODELS.filenames(folder) == await get_json(http, f"{server.url}/models/{folder}")


@pytest.mark.parametrize(("build", "model"), [
    pytest.param(unet_txt2img, "flux1-dev.safetensors", id="UNETLoader"),
    pytest.param(image_only_txt2img, "svd_xt.safetensors", id="ImageOnlyCheckpointLoader"),
])
async def test_prompt_sampling_with_the_loaders_model_runs(build: Any, model: str, start_kg: StartKernieGen,
                                                           http: aiohttp.ClientSession) -> None:
    server = await start_kg(inventory=MODELS)
    entry = await history_entry(http, server, (await submit(http, server, build(model)))["prompt_id"])
    assert entry["status"]["status_str"] == "success"
    (ref,) = entry["outputs"]["9"]["images"]
    with Image.open(server.state.dirs.output / ref["subfolder"] / ref["filename"]) as image:
        assert (image.format, image.size) == ("PNG", (512, 512))
        pixels = image.tobytes()
    # The same graph sampling with the checkpoint's model paints other pixels: the loader's model was used.
    baseline = build(model)
    baseline["3"]["inputs"]["model"] = ["4", 0]
    other = await history_entry(http, server, (await submit(http, server, baseline))["prompt_id"])
    (other_ref,) = other["outputs"]["9"]["images"]
    with Image.open(server.state.dirs.output / other_ref["subfolder"] / other_ref["filename"]) as image:
        assert image.tobytes() != pixels


@pytest.mark.parametrize(("build", "input_name", "allowed"), [
    pytest.param(unet_txt2img, "unet_name", ["flux1-dev.safetensors"], id="UNETLoader"),
    pytest.param(image_only_txt2img, "ckpt_name", [CHECKPOINT, "svd_xt.safetensors"], id="ImageOnlyCheckpointLoader"),
])
async def test_prompt_naming_a_missing_model_is_refused(build: Any, input_name: str, allowed: list[str],
                                                        start_kg: StartKernieGen, http: aiohttp.ClientSession) -> None:
    server = await start_kg(inventory=MODELS)
    status, text, _ = await post_raw(http, f"{server.url}/api/prompt", json.dumps({"prompt": build("gone.pt")}),
                                     "application/json")
    answer = json.loads(text)
    assert status == 400 and answer["error"]["type"] == "prompt_outputs_failed_validation"
    assert answer["node_errors"]["1"]["errors"] == [{
        "type": "value_not_in_list", "message": "Value not in list",
        "details": f"{input_name}: 'gone.pt' not in {allowed}",
        "extra_info": {"input_name": input_name, "input_config": [allowed, {}], "received_value": "gone.pt"}}]
    accepted = await submit(http, server, build(allowed[-1]))  # the queue keeps working
    assert (await history_entry(http, server, accepted["prompt_id"]))["status"]["completed"] is True


async def test_default_kerniegen_offers_no_models_for_the_new_folders(kerniegen: KernieGenServer,
                                                                     http: aiohttp.ClientSession) -> None:
    for folder in ("diffusion_models", "controlnet", "upscale_models", "style_models", "gligen"):
        assert await get_json(http, f"{kerniegen.url}/models/{folder}") == []
