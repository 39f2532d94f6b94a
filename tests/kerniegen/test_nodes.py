"""The node catalogue against ComfyUI's recorded /object_info, and the inventory's model folders."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.kerniegen.inventory import Inventory
from gateway.kerniegen.nodes import (
    NODE_CLASSES,
    coerce_inputs,
    is_output_node,
    list_input_images,
    object_info,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui"
ISSUE_CLASSES = (
    "CheckpointLoaderSimple", "LoraLoader", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "KSamplerAdvanced",
    "VAEDecode", "SaveImage", "PreviewImage", "EmptyImage", "LoadImage", "ImageInvert", "ImageScale", "GetImageSize",
    "SaveImageWebsocket",
)
NO_MODELS = Inventory(checkpoints=(), loras=(), vae=(), embeddings=())
# ComfyUI frontend 1.27 maps model folders to these classes and cannot build any model menu when
# one of them is missing from /object_info.
LOADERS_THE_UI_ASSUMES = (
    "CheckpointLoaderSimple", "ImageOnlyCheckpointLoader", "LoraLoader", "LoraLoaderModelOnly", "VAELoader",
    "ControlNetLoader", "UNETLoader", "UpscaleModelLoader", "StyleModelLoader", "GLIGENLoader",
)


def classic_loader(name: str, inputs: dict[str, Any], output: list[str], display_name: str, category: str,
                   python_module: str = "nodes") -> dict[str, Any]:
    """server.py node_info() for a classic loader without tooltips or description, with no models installed."""
    return {"input": {"required": inputs}, "input_order": {"required": list(inputs)}, "output": output,
            "output_is_list": [False] * len(output), "output_name": output, "name": name,
            "display_name": display_name, "description": "", "python_module": python_module, "category": category,
            "output_node": False}


# No recording holds these six; each is transcribed by hand from ComfyUI 0.3.64 (commit a125cd84).
TRANSCRIBED_LOADERS: dict[str, dict[str, Any]] = {
    # nodes.py, ControlNetLoader.INPUT_TYPES; display name from nodes.py NODE_DISPLAY_NAME_MAPPINGS
    "ControlNetLoader": classic_loader("ControlNetLoader", {"control_net_name": [[]]}, ["CONTROL_NET"],
                                       "Load ControlNet Model", "loaders"),
    # nodes.py, UNETLoader.INPUT_TYPES
    "UNETLoader": classic_loader(
        "UNETLoader", {"unet_name": [[]], "weight_dtype": [["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]]},
        ["MODEL"], "Load Diffusion Model", "advanced/loaders"),
    # nodes.py, StyleModelLoader.INPUT_TYPES
    "StyleModelLoader": classic_loader("StyleModelLoader", {"style_model_name": [[]]}, ["STYLE_MODEL"],
                                       "Load Style Model", "loaders"),
    # nodes.py, GLIGENLoader.INPUT_TYPES (no display name mapping, so node_info uses the class name)
    "GLIGENLoader": classic_loader("GLIGENLoader", {"gligen_name": [[]]}, ["GLIGEN"], "GLIGENLoader", "loaders"),
    # comfy_extras/nodes_video_model.py, ImageOnlyCheckpointLoader.INPUT_TYPES and NODE_DISPLAY_NAME_MAPPINGS
    "ImageOnlyCheckpointLoader": classic_loader(
        "ImageOnlyCheckpointLoader", {"ckpt_name": [[]]}, ["MODEL", "CLIP_VISION", "VAE"],
        "Image Only Checkpoint Loader (img2vid model)", "loaders/video_models", "comfy_extras.nodes_video_model"),
    # comfy_extras/nodes_upscale_model.py, UpscaleModelLoader.define_schema: a V3 node, so the entry is
    # dataclasses.asdict(Schema.get_v1_info()) from comfy_api/latest/_io.py (io.Combo.Input.as_dict for the input)
    "UpscaleModelLoader": {
        "input": {"required": {"model_name": ["COMBO", {"multiselect": False, "options": []}]}},
        "input_order": {"required": ["model_name"]},
        "output": ["UPSCALE_MODEL"], "output_is_list": [False], "output_name": ["UPSCALE_MODEL"],
        "output_tooltips": [None], "name": "UpscaleModelLoader", "display_name": "Load Upscale Model",
        "description": "", "python_module": "comfy_extras.nodes_upscale_model", "category": "loaders",
        "output_node": False, "deprecated": False, "experimental": False, "api_node": False,
    },
}
# (class, input, inventory folder) for every model list the six take from the inventory
LOADER_MODEL_INPUTS = (
    ("ControlNetLoader", "control_net_name", "controlnet"),
    ("UNETLoader", "unet_name", "diffusion_models"),
    ("StyleModelLoader", "style_model_name", "style_models"),
    ("GLIGENLoader", "gligen_name", "gligen"),
    ("ImageOnlyCheckpointLoader", "ckpt_name", "checkpoints"),
    ("UpscaleModelLoader", "model_name", "upscale_models"),
)


def load_fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def recorded_mock_classes() -> dict[str, Any]:
    return load_fixture("07_object_info_mock_classes.json")["response"]["body"]["json_subset"]


def recorded_input_files(definitions: dict[str, Any]) -> list[str]:
    return definitions["LoadImage"]["input"]["required"]["image"][0]


def test_every_class_the_issue_names_is_known() -> None:
    assert set(ISSUE_CLASSES) <= set(NODE_CLASSES)


@pytest.mark.parametrize("class_name", sorted(recorded_mock_classes()))
def test_definition_is_verbatim_comfyui(class_name: str) -> None:
    recorded = recorded_mock_classes()
    served = object_info(NO_MODELS, recorded_input_files(recorded))
    # Same keys in the same order, same values: the serialised JSON is identical.
    assert json.dumps(served[class_name]) == json.dumps(recorded[class_name])


@pytest.mark.parametrize("class_name", sorted(load_fixture("07_object_info_subset.json")["subset"]))
def test_definition_matches_the_first_recording_too(class_name: str) -> None:
    recorded = load_fixture("07_object_info_subset.json")["subset"]
    served = object_info(NO_MODELS, recorded_input_files(recorded))
    assert json.dumps(served[class_name]) == json.dumps(recorded[class_name])


@pytest.mark.parametrize("class_name", sorted(TRANSCRIBED_LOADERS))
def test_loader_definition_is_comfyuis_transcribed(class_name: str) -> None:
    served = object_info(NO_MODELS, [])
    assert json.dumps(served[class_name]) == json.dumps(TRANSCRIBED_LOADERS[class_name])


@pytest.mark.parametrize(("class_name", "input_name", "folder"), LOADER_MODEL_INPUTS)
def test_loader_model_list_comes_from_its_inventory_folder(class_name: str, input_name: str, folder: str) -> None:
    inventory = Inventory(**{folder: ("z.safetensors", "sub/a.pt", "z.safetensors")})
    spec = object_info(inventory, [])[class_name]["input"]["required"][input_name]
    # A V3 combo carries its list in "options"; a classic one as the type itself.
    listed = spec[1]["options"] if spec[0] == "COMBO" else spec[0]
    assert listed == ["sub/a.pt", "z.safetensors"]
    assert Inventory().filenames(folder) == (["illustriousXL_v01.safetensors"] if folder == "checkpoints" else [])


def test_every_loader_the_ui_assumes_is_served() -> None:
    assert set(LOADERS_THE_UI_ASSUMES) <= set(object_info(Inventory(), []))


def test_known_classes_are_known_to_comfyui() -> None:
    recorded_names = set(load_fixture("07_object_info_subset.json")["all_node_class_names"])
    assert set(NODE_CLASSES) <= recorded_names


def test_model_lists_come_from_the_inventory() -> None:
    inventory = Inventory(checkpoints=("b.safetensors", "a.safetensors"), loras=("l.safetensors",), vae=("v.pt",))
    info = object_info(inventory, [])
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["a.safetensors", "b.safetensors"]
    assert info["LoraLoader"]["input"]["required"]["lora_name"][0] == ["l.safetensors"]
    assert info["LoraLoaderModelOnly"]["input"]["required"]["lora_name"][0] == ["l.safetensors"]
    assert info["VAELoader"]["input"]["required"]["vae_name"][0] == ["v.pt", "pixel_space"]


def test_default_inventory_offers_one_checkpoint_and_one_lora() -> None:
    info = object_info(Inventory(), [])
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["illustriousXL_v01.safetensors"]
    assert len(info["LoraLoader"]["input"]["required"]["lora_name"][0]) == 1


def test_load_image_lists_image_files_sorted() -> None:
    info = object_info(NO_MODELS, ["z.png", "notes.txt", "a.JPG", "b.webp", "gwref"])
    expected = ["a.JPG", "b.webp", "z.png"]
    assert info["LoadImage"]["input"]["required"]["image"] == [expected, {"image_upload": True}]
    assert info["LoadImageMask"]["input"]["required"]["image"][0] == expected


def test_object_info_is_a_fresh_copy_each_time() -> None:
    first = object_info(Inventory(), [])
    first["KSampler"]["input"]["required"]["sampler_name"][0].clear()
    assert object_info(Inventory(), [])["KSampler"]["input"]["required"]["sampler_name"][0][0] == "euler"


def test_object_info_lists_classes_in_comfyui_registration_order() -> None:
    names = list(object_info(Inventory(), []))
    assert names[0] == "KSampler"  # the recorded /object_info body starts with KSampler too
    assert names[-1] == "SaveImageWebsocket"  # custom nodes register last
    # nodes.py's NODE_CLASS_MAPPINGS order, then comfy_extras module by module.
    loaders = [name for name in names if name in TRANSCRIBED_LOADERS or name in ("LoraLoader", "LoraLoaderModelOnly")]
    assert loaders == ["LoraLoader", "UNETLoader", "ControlNetLoader", "StyleModelLoader", "GLIGENLoader",
                       "LoraLoaderModelOnly", "UpscaleModelLoader", "ImageOnlyCheckpointLoader"]
    assert names.index("UpscaleModelLoader") < names.index("ImageToMask")  # nodes_upscale_model before nodes_mask


def test_seed_maximum_is_an_exact_int() -> None:
    seed = object_info(Inventory(), [])["KSampler"]["input"]["required"]["seed"][1]["max"]
    assert type(seed) is int and seed == 2**64 - 1
    assert '"max": 18446744073709551615' in json.dumps(object_info(Inventory(), []))


@pytest.mark.parametrize(("class_name", "expected"), [
    ("SaveImage", True), ("PreviewImage", True), ("SaveImageWebsocket", True), ("SaveLatent", True),
    ("KSampler", False), ("LoadImage", False), ("GetImageSize", False), ("NoSuchNode", False),
])
def test_is_output_node(class_name: str, expected: bool) -> None:
    assert is_output_node(class_name) is expected


def test_inventory_folders_are_comfyuis() -> None:
    recorded = load_fixture("07_models.json")["exchanges"][0]["response"]["body"]["json"]
    folders = Inventory(checkpoints=("b", "a", "a")).folders()
    assert list(folders) == recorded
    assert folders["checkpoints"] == ["a", "b"]
    assert folders["configs"] == []


def test_every_inventory_field_is_a_comfyui_model_folder() -> None:
    recorded = load_fixture("07_models.json")["exchanges"][0]["response"]["body"]["json"]
    assert {item.name for item in dataclasses.fields(Inventory)} <= set(recorded)


def test_list_input_images_takes_top_level_images_only(tmp_path: Path) -> None:
    (tmp_path / "b.png").write_bytes(b"x")
    (tmp_path / "a.jpeg").write_bytes(b"x")
    (tmp_path / "readme.txt").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.png").write_bytes(b"x")
    assert list_input_images(tmp_path) == ["a.jpeg", "b.png"]
    assert list_input_images(tmp_path / "missing") == []


def test_coerce_inputs_converts_widgets_like_comfyui() -> None:
    converted = coerce_inputs("EmptyImage", {"width": "64", "height": 64.5, "batch_size": {"__value__": 2},
                                            "color": 0})
    assert converted == {"width": 64, "height": 64, "batch_size": 2, "color": 0}
    cfg = coerce_inputs("KSampler", {"cfg": 7, "seed": str(2**64 - 1)})
    assert cfg == {"cfg": 7.0, "seed": 2**64 - 1} and type(cfg["cfg"]) is float


def test_coerce_inputs_leaves_links_and_objects_alone() -> None:
    images = [object()]
    assert coerce_inputs("ImageInvert", {"image": images})["image"] is images
    assert coerce_inputs("EmptyImage", {"width": ["2", 0]})["width"] == ["2", 0]
