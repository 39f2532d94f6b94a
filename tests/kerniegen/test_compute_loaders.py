"""The simulated loaders beyond checkpoints, LoRAs and VAEs: what each hands on, that a UNETLoader's or
ImageOnlyCheckpointLoader's model and VAE work where a checkpoint's do, and UpscaleModelLoader's
run-time failure for a file that is not installed (ComfyUI's message and traceback)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.kerniegen.compute import NodeExecutionError, RunContext, run_node
from gateway.kerniegen.compute_loaders import ModelFile
from gateway.kerniegen.compute_models import SimLatent, SimModel, SimVae
from gateway.kerniegen.compute_types import EXECUTION_FRAMES
from gateway.kerniegen.inventory import Inventory

INVENTORY = Inventory(diffusion_models=("flux.safetensors",), controlnet=("canny.pth",), upscale_models=("4x.pth",),
                      style_models=("redux.safetensors",), gligen=("gligen.pth",), checkpoints=("svd.safetensors",))


@pytest.fixture
def ctx(tmp_path: Path) -> RunContext:
    return RunContext(
        prompt_id="p", prompt={}, extra_data={}, output_dir=tmp_path, temp_dir=tmp_path, input_dir=tmp_path,
        send_progress=lambda *args: None, send_image=lambda *args: None, send_text=lambda *args: None,
        inventory=INVENTORY)


@pytest.mark.parametrize(("class_type", "inputs", "outputs"), [
    ("UNETLoader", {"unet_name": "flux.safetensors", "weight_dtype": "fp8_e4m3fn"}, (SimModel("flux.safetensors"),)),
    ("ImageOnlyCheckpointLoader", {"ckpt_name": "svd.safetensors"},
     (SimModel("svd.safetensors"), ModelFile("checkpoints", "svd.safetensors"), SimVae("svd.safetensors"))),
    ("ControlNetLoader", {"control_net_name": "canny.pth"}, (ModelFile("controlnet", "canny.pth"),)),
    ("StyleModelLoader", {"style_model_name": "redux.safetensors"},
     (ModelFile("style_models", "redux.safetensors"),)),
    ("GLIGENLoader", {"gligen_name": "gligen.pth"}, (ModelFile("gligen", "gligen.pth"),)),
    ("UpscaleModelLoader", {"model_name": "4x.pth"}, (ModelFile("upscale_models", "4x.pth"),)),
])
def test_loader_hands_on_what_it_loaded(class_type: str, inputs: dict[str, Any], outputs: tuple[Any, ...],
                                        ctx: RunContext) -> None:
    result = run_node(class_type, "1", inputs, ctx)
    assert result.outputs == outputs and result.ui is None


@pytest.mark.parametrize("loader", ["UNETLoader", "ImageOnlyCheckpointLoader"])
def test_loaded_model_samples_and_decodes(loader: str, ctx: RunContext) -> None:
    inputs = {"unet_name": "flux.safetensors", "weight_dtype": "default"} if loader == "UNETLoader" \
        else {"ckpt_name": "svd.safetensors"}
    model = run_node(loader, "1", inputs, ctx).outputs[0]
    clip = run_node("CheckpointLoaderSimple", "2", {"ckpt_name": "svd.safetensors"}, ctx).outputs[1]
    positive = run_node("CLIPTextEncode", "3", {"text": "a fox", "clip": clip}, ctx).outputs[0]
    sampler_inputs = {"model": model, "seed": 1, "steps": 2, "cfg": 7.0, "sampler_name": "euler",
                      "scheduler": "normal", "positive": positive, "negative": positive,
                      "latent_image": SimLatent(8, 8, 1), "denoise": 1.0}
    latent = run_node("KSampler", "4", sampler_inputs, ctx).outputs[0]
    (image,) = run_node("VAEDecode", "5", {"samples": latent, "vae": SimVae("svd.safetensors")}, ctx).outputs[0]
    assert image.size == (64, 64)
    # A different model is a different recipe, so a different picture.
    other = run_node("KSampler", "4", {**sampler_inputs, "model": SimModel("other.safetensors")}, ctx).outputs[0]
    assert other.recipe != latent.recipe


def test_missing_upscale_model_fails_at_run_time_as_in_comfyui(ctx: RunContext) -> None:
    with pytest.raises(NodeExecutionError) as failure:
        run_node("UpscaleModelLoader", "1", {"model_name": "2x.pth"}, ctx)
    error = failure.value
    assert error.exception_type == "FileNotFoundError"
    assert error.exception_message == "Model in folder 'upscale_models' with filename '2x.pth' not found."
    # comfy_api's V3 wrappers, the node's execute, then folder_paths (ComfyUI 0.3.64, Python 3.11 markers).
    assert error.traceback == [
        *EXECUTION_FRAMES,
        '  File "/srv/ComfyUI/comfy_api/internal/__init__.py", line 149, in wrapped_func\n'
        "    return method(locked_class, **inputs)\n" + " " * 11 + "^" * 30 + "\n",
        '  File "/srv/ComfyUI/comfy_api/latest/_io.py", line 1270, in EXECUTE_NORMALIZED\n'
        "    to_return = cls.execute(*args, **kwargs)\n" + " " * 16 + "^" * 28 + "\n",
        '  File "/srv/ComfyUI/comfy_extras/nodes_upscale_model.py", line 35, in execute\n'
        '    model_path = folder_paths.get_full_path_or_raise("upscale_models", model_name)\n'
        + " " * 17 + "^" * 65 + "\n",
        '  File "/srv/ComfyUI/folder_paths.py", line 308, in get_full_path_or_raise\n'
        "    raise FileNotFoundError(f\"Model in folder '{folder_name}' with filename '{filename}' not found.\")\n",
    ]

