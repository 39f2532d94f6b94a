"""The vocabulary the node catalogue is written in: builders for ComfyUI's node-info objects.

`define_node` produces a dict with the keys, key order and values ComfyUI 0.3.64's server emits for a
classic node on GET /object_info, `define_v3_node` the same for a node written against ComfyUI's V3
schema (comfy_api.latest.io); `Choices` stands for a combo list that depends on the backend
(installed models, files in input/) and is resolved when the catalogue is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

InputSpec = list[Any]  # [type] or [type, options]; type is a str or a list of choices


@dataclass(frozen=True)
class Choices:
    """A combo list filled per backend: a model folder of the inventory, or the input images."""

    source: str  # a model folder name ("checkpoints", "loras", "vae") or INPUT_IMAGES
    extra: tuple[str, ...] = ()  # entries ComfyUI appends after the files (VAELoader's "pixel_space")


INPUT_IMAGES = "input_images"


def define_node(
    name: str,
    *,
    required: dict[str, InputSpec],
    hidden: dict[str, str] | None = None,
    output: tuple[str, ...] = (),
    output_name: tuple[str, ...] | None = None,
    display_name: str | None = None,
    description: str = "",
    python_module: str = "nodes",
    category: str,
    output_node: bool = False,
    output_tooltips: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """One /object_info entry, built the way ComfyUI's node_info() builds it for a classic node."""
    inputs: dict[str, Any] = {"required": required}
    input_order: dict[str, list[str]] = {"required": list(required)}
    if hidden is not None:
        inputs["hidden"] = hidden
        input_order["hidden"] = list(hidden)
    info: dict[str, Any] = {
        "input": inputs,
        "input_order": input_order,
        "output": list(output),
        "output_is_list": [False] * len(output),
        "output_name": list(output_name if output_name is not None else output),
        "name": name,
        "display_name": display_name if display_name is not None else name,
        "description": description,
        "python_module": python_module,
        "category": category,
        "output_node": output_node,
    }
    if output_tooltips is not None:
        info["output_tooltips"] = list(output_tooltips)
    return info


def v3_combo(options: Choices) -> InputSpec:
    """A V3 `io.Combo.Input` with nothing but its options, as get_v1_info renders it.

    Its type is the string "COMBO", not the list, so ComfyUI 0.3.64's validate_inputs never checks the
    value against the options (its combo check is `isinstance(input_type, list)`): a name that is not
    installed passes validation and fails when the node runs.
    """
    return ["COMBO", {"multiselect": False, "options": options}]


def define_v3_node(
    name: str,
    *,
    required: dict[str, InputSpec],
    output: tuple[str, ...],
    display_name: str,
    python_module: str,
    category: str,
    description: str = "",
) -> dict[str, Any]:
    """One /object_info entry for a V3 node: dataclasses.asdict(Schema.get_v1_info()), unpruned.

    The NodeInfoV1 field order differs from the classic one (output_tooltips sits after output_name),
    and tooltips, deprecated, experimental and api_node are always present, as None or False.
    """
    return {
        "input": {"required": required},
        "input_order": {"required": list(required)},
        "output": list(output),
        "output_is_list": [False] * len(output),
        "output_name": list(output),
        "output_tooltips": [None] * len(output),
        "name": name,
        "display_name": display_name,
        "description": description,
        "python_module": python_module,
        "category": category,
        "output_node": False,
        "deprecated": False,
        "experimental": False,
        "api_node": False,
    }


# Hidden inputs of the savers: the server fills them with the prompt and extra_data["extra_pnginfo"].
SAVER_HIDDEN: dict[str, str] = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
