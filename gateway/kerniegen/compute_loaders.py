"""The simulated loaders the UI's model menus need beyond checkpoints, LoRAs and VAEs.

A MODEL or VAE they load is the same record the checkpoint loader hands out, so KSampler and
VAEDecode take it; the other kinds (CLIP vision, ControlNet, upscale, style and GLIGEN models) are a
`ModelFile` naming what was loaded, for the nodes that will consume them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.kerniegen.compute_models import SimModel, SimVae
from gateway.kerniegen.compute_types import NodeExecutionError, NodeOutput, RunContext, node_frame


@dataclass(frozen=True)
class ModelFile:
    """A loaded model file of a kind no KernieGen node computes with."""

    folder: str  # the ComfyUI model folder it came from ("controlnet", "upscale_models", ...)
    name: str


def image_only_checkpoint_loader(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    name = inputs["ckpt_name"]
    return NodeOutput((SimModel(name), ModelFile("checkpoints", name), SimVae(name)))


def unet_loader(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    # The weight dtype changes precision, not the picture a sampler is asked for.
    return NodeOutput((SimModel(inputs["unet_name"]),))


def control_net_loader(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    return NodeOutput((ModelFile("controlnet", inputs["control_net_name"]),))


def style_model_loader(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    return NodeOutput((ModelFile("style_models", inputs["style_model_name"]),))


def gligen_loader(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    return NodeOutput((ModelFile("gligen", inputs["gligen_name"]),))


def upscale_model_loader(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    name = inputs["model_name"]
    # A V3 combo is not checked by validation (nodes_defs.v3_combo), so a missing file fails here,
    # in folder_paths.get_full_path_or_raise, as it does in ComfyUI.
    if name not in ctx.inventory.filenames("upscale_models"):
        raise NodeExecutionError(f"Model in folder 'upscale_models' with filename '{name}' not found.",
                                 exception_type="FileNotFoundError", node_frames=_UPSCALE_LOADER_FRAMES)
    return NodeOutput((ModelFile("upscale_models", name),))


def _carets(source: str, expression: str) -> str:
    """Python 3.11's marker line under `expression` within the frame's `source` line."""
    return " " * (4 + source.index(expression)) + "^" * len(expression)


def _frame(file: str, line: int, function: str, source: str, expression: str | None = None) -> str:
    return node_frame(file, line, function, source, _carets(source, expression) if expression else "")


_CALL_LOCKED = "return method(locked_class, **inputs)"
_CALL_EXECUTE = "to_return = cls.execute(*args, **kwargs)"
_CALL_RAISE = 'model_path = folder_paths.get_full_path_or_raise("upscale_models", model_name)'
# A V3 node runs through comfy_api's wrappers before its execute (ComfyUI 0.3.64's line numbers).
_UPSCALE_LOADER_FRAMES: tuple[str, ...] = (
    _frame("comfy_api/internal/__init__.py", 149, "wrapped_func", _CALL_LOCKED, _CALL_LOCKED[len("return "):]),
    _frame("comfy_api/latest/_io.py", 1270, "EXECUTE_NORMALIZED", _CALL_EXECUTE,
           _CALL_EXECUTE[len("to_return = "):]),
    _frame("comfy_extras/nodes_upscale_model.py", 35, "execute", _CALL_RAISE, _CALL_RAISE[len("model_path = "):]),
    _frame("folder_paths.py", 308, "get_full_path_or_raise",
           "raise FileNotFoundError(f\"Model in folder '{folder_name}' with filename '{filename}' not found.\")"),
)


NODE_FUNCTIONS: dict[str, Callable[[str, dict[str, Any], RunContext], NodeOutput]] = {
    "ImageOnlyCheckpointLoader": image_only_checkpoint_loader,
    "UNETLoader": unet_loader,
    "ControlNetLoader": control_net_loader,
    "StyleModelLoader": style_model_loader,
    "GLIGENLoader": gligen_loader,
    "UpscaleModelLoader": upscale_model_loader,
}
