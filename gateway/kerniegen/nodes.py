"""KernieGen's node catalogue: which classes exist, their inputs and outputs, and /object_info.

`NODE_CLASSES` is the single registry that validation, execution and the server read. `object_info`
renders it exactly as ComfyUI 0.3.64 serves it, with the backend's model and input-file lists filled in.
"""

from __future__ import annotations

import copy
import mimetypes
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gateway.kerniegen.inventory import Inventory
from gateway.kerniegen.nodes_defs import INPUT_IMAGES, Choices
from gateway.kerniegen.nodes_defs_images import IMAGE_NODES
from gateway.kerniegen.nodes_defs_loaders import LOADER_NODES
from gateway.kerniegen.nodes_defs_models import MODEL_NODES

# ComfyUI registers classes in this order (nodes.py first, then comfy_extras, then custom_nodes), and
# /object_info lists them in registration order.
# comfy_extras load one module at a time, in nodes.py's extras_files order (nodes_upscale_model,
# nodes_mask, nodes_images, nodes_video_model).
_REGISTRATION_ORDER: tuple[str, ...] = (
    "KSampler", "CheckpointLoaderSimple", "CLIPTextEncode", "CLIPSetLastLayer", "VAEDecode", "VAELoader",
    "EmptyLatentImage", "LatentUpscale", "SaveImage", "PreviewImage", "LoadImage", "LoadImageMask", "ImageScale",
    "ImageScaleBy", "ImageInvert", "EmptyImage", "KSamplerAdvanced", "LoraLoader", "UNETLoader", "ControlNetLoader",
    "StyleModelLoader", "GLIGENLoader", "SaveLatent", "LoraLoaderModelOnly", "UpscaleModelLoader", "ImageToMask",
    "MaskToImage", "GetImageSize", "ImageOnlyCheckpointLoader", "SaveImageWebsocket",
)

# Inputs a class checks in its own VALIDATE_INPUTS; ComfyUI then skips its min/max and list checks for them.
_SELF_VALIDATED: dict[str, frozenset[str]] = {
    "LoadImage": frozenset({"image"}),
    "LoadImageMask": frozenset({"image"}),
}


@dataclass(frozen=True)
class NodeDef:
    """One node class: its /object_info template plus the facts validation and execution need."""

    name: str
    info: Mapping[str, Any]
    return_types: tuple[str, ...]
    output_node: bool
    self_validated: frozenset[str]

    def declared_inputs(self) -> Iterator[tuple[str, str, list[Any]]]:
        """(name, "required"|"optional", spec) for every input validation looks at."""
        for category in ("required", "optional"):
            for name, spec in self.info["input"].get(category, {}).items():
                yield name, category, spec

    def input_spec(self, name: str) -> list[Any] | None:
        for category in ("required", "optional"):
            spec: list[Any] | None = self.info["input"].get(category, {}).get(name)
            if spec is not None:
                return spec
        return None


def _build_registry() -> Mapping[str, NodeDef]:
    templates = {**MODEL_NODES, **LOADER_NODES, **IMAGE_NODES}
    registry = {
        name: NodeDef(
            name=name,
            info=templates[name],
            return_types=tuple(templates[name]["output"]),
            output_node=templates[name]["output_node"],
            self_validated=_SELF_VALIDATED.get(name, frozenset()),
        )
        for name in _REGISTRATION_ORDER
    }
    return MappingProxyType(registry)


NODE_CLASSES: Mapping[str, NodeDef] = _build_registry()


# How ComfyUI converts a widget value of each primitive type before a node sees it.
WIDGET_CONVERTERS: Mapping[str, Any] = MappingProxyType({"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool})


def coerce_inputs(class_type: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """A copy of `inputs` with widget values converted as ComfyUI's validation converts them.

    "64" and 64.5 become 64 for an INT, {"__value__": v} becomes v; values that do not convert are
    kept as they are (validation has rejected them already).
    """
    node = NODE_CLASSES[class_type]
    converted = dict(inputs)
    for name, value in inputs.items():
        spec = node.input_spec(name)
        if spec is None:
            continue
        if isinstance(value, dict) and "__value__" in value:
            value = value["__value__"]
        converter = WIDGET_CONVERTERS.get(spec[0]) if isinstance(spec[0], str) else None
        if converter is not None and not isinstance(value, list):
            try:
                value = converter(value)
            except (TypeError, ValueError, OverflowError):
                pass
        converted[name] = value
    return converted


def is_output_node(class_type: str) -> bool:
    node = NODE_CLASSES.get(class_type)
    return node is not None and node.output_node


def resolve_choices(choices: Choices, inventory: Inventory, input_files: Sequence[str]) -> list[str]:
    """The concrete combo list a `Choices` stands for on this backend."""
    if choices.source == INPUT_IMAGES:
        files = sorted(name for name in input_files if _is_image_name(name))
    else:
        files = inventory.filenames(choices.source)
    return files + list(choices.extra)


def _resolved(value: Any, inventory: Inventory, input_files: Sequence[str]) -> Any:
    if isinstance(value, Choices):
        return resolve_choices(value, inventory, input_files)
    if isinstance(value, dict):
        return {key: _resolved(item, inventory, input_files) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolved(item, inventory, input_files) for item in value]
    return value


def object_info(inventory: Inventory, input_files: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The full GET /object_info body: class name -> definition, a fresh copy the caller may keep."""
    return {name: _resolved(node.info, inventory, input_files) for name, node in NODE_CLASSES.items()}


def input_config(class_type: str, input_name: str, inventory: Inventory) -> list[Any]:
    """ComfyUI's `input_config` for an error: [type, options], options {} when the class declares none."""
    spec = NODE_CLASSES[class_type].input_spec(input_name)
    assert spec is not None
    # Combos that list input files never reach an error that quotes them, so no directory scan here.
    resolved = _resolved(spec, inventory, ())
    options = copy.deepcopy(resolved[1]) if len(resolved) > 1 else {}
    return [resolved[0], options]


def list_input_images(input_dir: Path) -> list[str]:
    """What ComfyUI offers in LoadImage's list: image files at the top level of input/, sorted."""
    try:
        entries = [entry for entry in input_dir.iterdir() if entry.is_file()]
    except OSError:
        return []
    return sorted(entry.name for entry in entries if _is_image_name(entry.name))


def _is_image_name(name: str) -> bool:
    # ComfyUI filters by the MIME type guessed from the extension, with webp forced to "image".
    if name.rsplit(".", 1)[-1].lower() == "webp":
        return True
    mime_type, _ = mimetypes.guess_type(name, strict=False)
    return mime_type is not None and mime_type.startswith("image/")
