"""Validation of the loaders the UI's model menus need: a model that is not in the inventory is
`value_not_in_list` quoting the inventory's list, except for UpscaleModelLoader, a V3 node whose combo
ComfyUI 0.3.64 does not check; and, as in ComfyUI, a loader no output depends on is not validated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.kerniegen.inventory import Inventory
from gateway.kerniegen.validation import validate_prompt
from gateway.kerniegen.validation_inputs import ValidationRun, validate_node
from tests.kerniegen.workflows import image_only_txt2img, save_image, unet_txt2img

INSTALLED = "installed.safetensors"
MISSING = "missing.safetensors"
# (class, model input, inventory folder, the class's other inputs)
CHECKED_LOADERS = (
    ("ControlNetLoader", "control_net_name", "controlnet", {}),
    ("UNETLoader", "unet_name", "diffusion_models", {"weight_dtype": "fp8_e4m3fn"}),
    ("StyleModelLoader", "style_model_name", "style_models", {}),
    ("GLIGENLoader", "gligen_name", "gligen", {}),
    ("ImageOnlyCheckpointLoader", "ckpt_name", "checkpoints", {}),
)


def not_in_list(input_name: str, value: Any, allowed: list[str]) -> dict[str, Any]:
    """ComfyUI's value_not_in_list reason for a classic combo without options (input_config is (type, {}))."""
    return {"type": "value_not_in_list", "message": "Value not in list",
            "details": f"{input_name}: '{value}' not in {allowed}",
            "extra_info": {"input_name": input_name, "input_config": [allowed, {}], "received_value": value}}


def validate_one(class_type: str, inputs: dict[str, Any], inventory: Inventory, tmp_path: Path) -> tuple[bool, Any]:
    """The node on its own, through the same per-node step validate_prompt takes for every node it reaches."""
    run = ValidationRun(prompt={"1": {"class_type": class_type, "inputs": inputs}}, inventory=inventory,
                        input_dir=tmp_path, output_dir=None, temp_dir=None)
    return validate_node(run, "1")


@pytest.mark.parametrize(("class_type", "input_name", "folder", "others"), CHECKED_LOADERS,
                         ids=[case[0] for case in CHECKED_LOADERS])
def test_missing_model_is_value_not_in_list(class_type: str, input_name: str, folder: str, others: dict[str, Any],
                                            tmp_path: Path) -> None:
    inventory = Inventory(**{folder: (INSTALLED, "b.safetensors")})
    valid, reasons = validate_one(class_type, {input_name: MISSING, **others}, inventory, tmp_path)
    assert (valid, reasons) == (False, [not_in_list(input_name, MISSING, ["b.safetensors", INSTALLED])])
    assert validate_one(class_type, {input_name: INSTALLED, **others}, inventory, tmp_path) == (True, [])


@pytest.mark.parametrize(("class_type", "input_name", "folder", "others"), CHECKED_LOADERS,
                         ids=[case[0] for case in CHECKED_LOADERS])
def test_model_name_is_required(class_type: str, input_name: str, folder: str, others: dict[str, Any],
                                tmp_path: Path) -> None:
    valid, reasons = validate_one(class_type, others, Inventory(), tmp_path)
    assert not valid
    assert reasons == [{"type": "required_input_missing", "message": "Required input is missing",
                        "details": input_name, "extra_info": {"input_name": input_name}}]


def test_unknown_unet_weight_dtype_is_value_not_in_list(tmp_path: Path) -> None:
    inventory = Inventory(diffusion_models=(INSTALLED,))
    valid, reasons = validate_one("UNETLoader", {"unet_name": INSTALLED, "weight_dtype": "fp4"}, inventory, tmp_path)
    assert (valid, reasons) == (False, [not_in_list(
        "weight_dtype", "fp4", ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"])])


def test_upscale_model_name_is_not_checked_by_validation(tmp_path: Path) -> None:
    # ComfyUI 0.3.64 checks combos with isinstance(input_type, list); a V3 combo's type is "COMBO".
    inventory = Inventory(upscale_models=("4x.pth",))
    assert validate_one("UpscaleModelLoader", {"model_name": MISSING}, inventory, tmp_path) == (True, [])
    valid, reasons = validate_one("UpscaleModelLoader", {}, inventory, tmp_path)
    assert not valid and [reason["type"] for reason in reasons] == ["required_input_missing"]


@pytest.mark.parametrize(("build", "node_input", "folder"), [
    pytest.param(unet_txt2img, "unet_name", "diffusion_models", id="UNETLoader"),
    pytest.param(image_only_txt2img, "ckpt_name", "checkpoints", id="ImageOnlyCheckpointLoader"),
])
def test_prompt_with_a_missing_model_is_rejected_like_comfyui(build: Any, node_input: str, folder: str,
                                                              tmp_path: Path) -> None:
    inventory = Inventory(**{folder: ("illustriousXL_v01.safetensors", INSTALLED)})
    assert validate_prompt(build(INSTALLED), inventory, tmp_path).status == 200
    result = validate_prompt(build(MISSING), inventory, tmp_path)
    assert result.status == 400 and result.error is not None
    assert result.error["type"] == "prompt_outputs_failed_validation"
    assert result.node_errors["1"]["errors"] == [not_in_list(node_input, MISSING,
                                                             ["illustriousXL_v01.safetensors", INSTALLED])]
    assert result.node_errors["1"]["dependent_outputs"] == ["9"]


@pytest.mark.parametrize(("class_type", "input_name"), [
    ("ControlNetLoader", "control_net_name"), ("StyleModelLoader", "style_model_name"),
    ("GLIGENLoader", "gligen_name"), ("UpscaleModelLoader", "model_name"),
])
def test_a_loader_no_output_needs_is_not_validated(class_type: str, input_name: str, tmp_path: Path) -> None:
    prompt = {**save_image(), "99": {"class_type": class_type, "inputs": {input_name: MISSING}}}
    result = validate_prompt(prompt, Inventory(), tmp_path)
    assert (result.status, result.node_errors) == (200, {})
