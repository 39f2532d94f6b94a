"""Definitions of the model loaders ComfyUI's web UI builds its model menus from, beyond the four
KernieGen runs txt2img with: image-only checkpoints, diffusion models, ControlNet, upscale, style and
GLIGEN models.

No recording holds these, so each is transcribed from ComfyUI 0.3.64's source (commit a125cd84): the
function named beside it, rendered the way server.py's node_info / V3's get_v1_info render it.
"""

from __future__ import annotations

from typing import Any

from gateway.kerniegen.nodes_defs import Choices, define_node, define_v3_node, v3_combo

# nodes.py UNETLoader.INPUT_TYPES
UNET_WEIGHT_DTYPES: list[str] = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]

LOADER_NODES: dict[str, dict[str, Any]] = {
    # nodes.py UNETLoader.INPUT_TYPES; display name from nodes.py NODE_DISPLAY_NAME_MAPPINGS
    "UNETLoader": define_node(
        "UNETLoader",
        required={"unet_name": [Choices("diffusion_models")], "weight_dtype": [UNET_WEIGHT_DTYPES]},
        output=("MODEL",),
        display_name="Load Diffusion Model",
        category="advanced/loaders",
    ),
    # nodes.py ControlNetLoader.INPUT_TYPES
    "ControlNetLoader": define_node(
        "ControlNetLoader",
        required={"control_net_name": [Choices("controlnet")]},
        output=("CONTROL_NET",),
        display_name="Load ControlNet Model",
        category="loaders",
    ),
    # nodes.py StyleModelLoader.INPUT_TYPES
    "StyleModelLoader": define_node(
        "StyleModelLoader",
        required={"style_model_name": [Choices("style_models")]},
        output=("STYLE_MODEL",),
        display_name="Load Style Model",
        category="loaders",
    ),
    # nodes.py GLIGENLoader.INPUT_TYPES; it has no display name mapping, so the class name shows
    "GLIGENLoader": define_node(
        "GLIGENLoader",
        required={"gligen_name": [Choices("gligen")]},
        output=("GLIGEN",),
        category="loaders",
    ),
    # comfy_extras/nodes_upscale_model.py UpscaleModelLoader.define_schema (a V3 node)
    "UpscaleModelLoader": define_v3_node(
        "UpscaleModelLoader",
        required={"model_name": v3_combo(Choices("upscale_models"))},
        output=("UPSCALE_MODEL",),
        display_name="Load Upscale Model",
        python_module="comfy_extras.nodes_upscale_model",
        category="loaders",
    ),
    # comfy_extras/nodes_video_model.py ImageOnlyCheckpointLoader.INPUT_TYPES and its
    # NODE_DISPLAY_NAME_MAPPINGS
    "ImageOnlyCheckpointLoader": define_node(
        "ImageOnlyCheckpointLoader",
        required={"ckpt_name": [Choices("checkpoints")]},
        output=("MODEL", "CLIP_VISION", "VAE"),
        display_name="Image Only Checkpoint Loader (img2vid model)",
        python_module="comfy_extras.nodes_video_model",
        category="loaders/video_models",
    ),
}
