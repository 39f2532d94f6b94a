"""validate_prompt against every recorded POST /prompt that carries a prompt (02_prompt_error_*, 02_prompt_lenient_*,
01_prompt_success), then ComfyUI's rules one by one."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.kerniegen.inventory import Inventory
from gateway.kerniegen.validation import ValidationResult, validate_prompt

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui"
NO_MODELS = Inventory(checkpoints=(), loras=())
PLACEHOLDER = "gwref-dummy.safetensors"  # the checkpoint the ckpt_cases recordings had installed


def recorded_submissions() -> Iterator[Any]:
    """(file, label, request prompt, response) for each recorded POST /prompt whose body has a prompt.

    Bodies without one (not JSON, a JSON list, no "prompt" key) never reach validate_prompt: the
    server answers them before (02_prompt_error_malformed_body, 02_prompt_error_no_prompt).
    """
    names = sorted(path.name for path in FIXTURES.glob("02_prompt_*.json")) + ["01_prompt_success.json"]
    for name in names:
        record = json.loads((FIXTURES / name).read_text())
        for exchange in record.get("exchanges", [record]):
            request = exchange["request"]
            body = (request.get("body") or {}).get("json")
            if request.get("path") != "/prompt" or not isinstance(body, dict) or "prompt" not in body:
                continue
            label = exchange.get("label") or ""
            yield pytest.param(body, exchange["response"], id=f"{name[:-5]}:{label}" if label else name[:-5])


def shape(value: Any) -> Any:
    """Keys and value types, recursively; lists of objects compared as sorted multisets (ComfyUI iterates sets)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return sorted((shape(item) for item in value), key=lambda item: json.dumps(item, sort_keys=True))
    return type(value).__name__


def canonical(node_errors: dict[str, Any]) -> dict[str, Any]:
    """node_errors with each node's error list in a fixed order: ComfyUI's follows a set's hash order."""
    result = copy.deepcopy(node_errors)
    for entry in result.values():
        entry["errors"].sort(key=lambda error: json.dumps(error, sort_keys=True))
    return result


@pytest.mark.parametrize(("body", "response"), list(recorded_submissions()))
def test_recorded_submission_is_answered_alike(body: dict[str, Any], response: dict[str, Any], tmp_path: Path) -> None:
    inventory = Inventory(checkpoints=(PLACEHOLDER,), loras=()) if PLACEHOLDER in json.dumps(body) else NO_MODELS
    result = validate_prompt(copy.deepcopy(body["prompt"]), inventory, tmp_path, body.get("partial_execution_targets"))
    assert result.status == response["status"]
    if result.status == 500:
        assert response["body"]["text"].startswith("500 Internal Server Error")
        return
    recorded = response["body"]["json"]
    if result.status == 400:
        answered = {"error": result.error, "node_errors": result.node_errors}
        assert shape(answered) == shape(recorded)
        assert result.error == recorded["error"]
    assert shape(result.node_errors) == shape(recorded["node_errors"])
    # Every message, detail, config and traceback is deterministic; only the order within a node varies.
    assert canonical(result.node_errors) == canonical(recorded["node_errors"])
    assert list(result.node_errors) == list(recorded["node_errors"])


def test_there_is_a_recorded_submission_for_every_error_file() -> None:
    covered = {case.id.split(":")[0] for case in recorded_submissions()}
    files = {path.name[:-5] for path in FIXTURES.glob("02_prompt_*.json")}
    answered_by_the_server = {"02_prompt_error_malformed_body", "02_prompt_error_no_prompt"}
    assert files - covered == answered_by_the_server


def empty_save(**empty: Any) -> dict[str, Any]:
    inputs = {"width": 64, "height": 64, "batch_size": 1, "color": 0, **empty}
    return {"1": {"class_type": "EmptyImage", "inputs": inputs},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}


def txt2img(seed: Any = 42, ckpt: str = "illustriousXL_v01.safetensors") -> dict[str, Any]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 20, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "txt2img"}},
    }


def errors_of(result: ValidationResult, node_id: str) -> list[dict[str, Any]]:
    return result.node_errors[node_id]["errors"]


def test_txt2img_is_accepted_with_the_default_inventory(tmp_path: Path) -> None:
    result = validate_prompt(txt2img(), Inventory(), tmp_path)
    assert (result.status, result.error, result.node_errors, result.outputs_to_execute) == (200, None, {}, ["9"])


def test_the_largest_seed_survives_and_one_more_does_not(tmp_path: Path) -> None:
    prompt = txt2img(seed=2**64 - 1)
    assert validate_prompt(prompt, Inventory(), tmp_path).status == 200
    assert prompt["3"]["inputs"]["seed"] == 18446744073709551615 and type(prompt["3"]["inputs"]["seed"]) is int
    result = validate_prompt(txt2img(seed=2**64), Inventory(), tmp_path)
    error = errors_of(result, "3")[0]
    assert error["type"] == "value_bigger_than_max"
    assert error["message"] == "Value 18446744073709551616 bigger than max of 18446744073709551615"
    assert json.loads(json.dumps(error))["extra_info"]["input_config"][1]["max"] == 2**64 - 1


def test_widget_values_are_converted_in_place_as_comfyui_stores_them(tmp_path: Path) -> None:
    prompt = empty_save(width="64", height=64.5)
    prompt["2"]["inputs"]["filename_prefix"] = 7
    assert validate_prompt(prompt, Inventory(), tmp_path).status == 200
    assert prompt["1"]["inputs"]["width"] == 64 and prompt["1"]["inputs"]["height"] == 64
    assert prompt["2"]["inputs"]["filename_prefix"] == "7"
    wrapped = empty_save(color={"__value__": 5})
    assert validate_prompt(wrapped, Inventory(), tmp_path).status == 200 and wrapped["1"]["inputs"]["color"] == 5


def test_value_not_in_list_quotes_the_inventory(tmp_path: Path) -> None:
    result = validate_prompt(txt2img(ckpt="nope.safetensors"), Inventory(checkpoints=("a.safetensors",)), tmp_path)
    error = errors_of(result, "4")[0]
    assert error["details"] == "ckpt_name: 'nope.safetensors' not in ['a.safetensors']"
    assert error["extra_info"]["input_config"][0] == ["a.safetensors"]


def test_value_not_in_list_keeps_long_lists_out(tmp_path: Path) -> None:
    many = tuple(f"m{index:02}.safetensors" for index in range(21))
    error = errors_of(validate_prompt(txt2img(ckpt="x"), Inventory(checkpoints=many), tmp_path), "4")[0]
    assert error["details"] == "ckpt_name: 'x' not in (list of length 21)"
    assert error["extra_info"]["input_config"] is None


def test_combo_outside_its_list(tmp_path: Path) -> None:
    prompt = txt2img()
    prompt["3"]["inputs"]["sampler_name"] = "turbo"
    error = errors_of(validate_prompt(prompt, Inventory(), tmp_path), "3")[0]
    assert error["type"] == "value_not_in_list"
    assert error["details"] == "sampler_name: 'turbo' not in (list of length 42)"


def test_float_bounds_and_conversion(tmp_path: Path) -> None:
    prompt = txt2img()
    prompt["3"]["inputs"]["cfg"] = 100.5
    prompt["3"]["inputs"]["denoise"] = "x"
    errors = {error["type"]: error for error in errors_of(validate_prompt(prompt, Inventory(), tmp_path), "3")}
    assert errors["value_bigger_than_max"]["message"] == "Value 100.5 bigger than max of 100.0"
    assert errors["invalid_input_type"]["message"] == "Failed to convert an input value to a FLOAT value"
    assert errors["invalid_input_type"]["details"] == "denoise, x, could not convert string to float: 'x'"


def test_bad_linked_input(tmp_path: Path) -> None:
    prompt = empty_save()
    prompt["2"]["inputs"]["images"] = ["1", 0, "extra"]
    result = validate_prompt(prompt, Inventory(), tmp_path)
    assert errors_of(result, "2")[0]["type"] == "bad_linked_input"
    assert result.error is not None
    assert result.error["details"] == "Bad linked input, must be a length-2 list of [node_id, slot_index]: images"


def test_missing_node_behind_another_is_an_inner_crash(tmp_path: Path) -> None:
    prompt = empty_save()
    prompt["3"] = {"class_type": "ImageInvert", "inputs": {"image": ["99", 0]}}
    prompt["2"]["inputs"]["images"] = ["3", 0]
    result = validate_prompt(prompt, Inventory(), tmp_path)
    error = errors_of(result, "3")[0]
    assert (error["type"], error["details"], error["extra_info"]["exception_type"]) == (
        "exception_during_inner_validation", "'99'", "KeyError")
    assert error["extra_info"]["linked_node"] == ["3", 0] and error["extra_info"]["input_name"] == "images"
    assert all("/srv/ComfyUI/" in frame for frame in error["extra_info"]["traceback"])
    assert result.error is not None and result.error["details"] == ""


def test_tracebacks_never_show_real_paths(tmp_path: Path) -> None:
    prompt = empty_save()
    prompt["2"]["inputs"]["images"] = ["1", "0"]  # a string slot index: TypeError
    result = validate_prompt(prompt, Inventory(), tmp_path)
    text = json.dumps(result.node_errors)
    assert "tuple indices must be integers or slices, not str" in text
    assert str(tmp_path) not in text and "/work/" not in text and "site-packages" not in text


def test_node_without_inputs_crashes_like_comfyui(tmp_path: Path) -> None:
    prompt = empty_save()
    del prompt["1"]["inputs"]
    error = errors_of(validate_prompt(prompt, Inventory(), tmp_path), "1")[0]
    assert (error["type"], error["details"]) == ("exception_during_inner_validation", "'inputs'")


def test_link_cycle_is_reported_not_endless(tmp_path: Path) -> None:
    prompt = {"1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
              "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}}
    result = validate_prompt(prompt, Inventory(), tmp_path)
    assert result.status == 400
    assert "RecursionError" in json.dumps(result.node_errors)


def test_one_valid_output_among_two_is_accepted(tmp_path: Path) -> None:
    prompt = {**empty_save(), "3": {"class_type": "EmptyImage", "inputs": {"width": -5, "height": 8,
                                                                          "batch_size": 1, "color": 0}},
              "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "bad"}}}
    result = validate_prompt(prompt, Inventory(), tmp_path)
    assert (result.status, result.error, result.outputs_to_execute) == (200, None, ["2"])
    assert result.node_errors["3"]["dependent_outputs"] == ["4"]


def test_error_details_join_the_output_nodes_own_reasons(tmp_path: Path) -> None:
    prompt = {"1": {"class_type": "SaveImage", "inputs": {}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}}}
    result = validate_prompt(prompt, Inventory(), tmp_path)
    assert result.error is not None
    assert result.error["details"] == ("Required input is missing: images\nRequired input is missing: filename_prefix\n"
                                       "Exception when validating node: '9'")


def test_dependent_outputs_follow_comfyuis_bookkeeping(tmp_path: Path) -> None:
    # ComfyUI credits a failing node to every later failing output, related or not.
    prompt = {**empty_save(width=-1), "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}}
    result = validate_prompt(prompt, Inventory(), tmp_path)
    assert result.node_errors["1"]["dependent_outputs"] == ["2", "3"]
    assert result.node_errors["3"]["dependent_outputs"] == ["3"]


def test_partial_execution_targets_pick_outputs(tmp_path: Path) -> None:
    prompt = {**empty_save(), "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "b"}}}
    assert validate_prompt(prompt, Inventory(), tmp_path, ["3"]).outputs_to_execute == ["3"]
    result = validate_prompt(prompt, Inventory(), tmp_path, ["1"])
    assert result.error is not None and result.error["type"] == "prompt_no_outputs"


@pytest.mark.parametrize("prompt", [[{"1": {}}], "text", 5, None, {"1": 5}, {"1": ["class_type"]},
                                    {"1": {"class_type": ["x"]}}], ids=repr)
def test_malformed_graphs_fail_like_comfyui_does(prompt: Any, tmp_path: Path) -> None:
    assert validate_prompt(prompt, Inventory(), tmp_path).status == 500


@pytest.mark.parametrize("prompt", [[], "", {}], ids=repr)
def test_empty_graphs_have_no_outputs(prompt: Any, tmp_path: Path) -> None:
    result = validate_prompt(prompt, Inventory(), tmp_path)
    assert result.status == 400 and result.error is not None and result.error["type"] == "prompt_no_outputs"


def test_node_that_is_a_list_lacks_its_class_type(tmp_path: Path) -> None:
    result = validate_prompt({"1": ["inputs"]}, Inventory(), tmp_path)
    assert result.error == {"type": "invalid_prompt",
                            "message": "Cannot execute because a node is missing the class_type property.",
                            "details": "Node ID '#1'", "extra_info": {}}


def load_image_prompt(name: str) -> dict[str, Any]:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}


def test_load_image_accepts_files_in_input_and_its_subfolders(tmp_path: Path) -> None:
    (tmp_path / "gwref").mkdir()
    (tmp_path / "gwref" / "src.png").write_bytes(b"x")
    (tmp_path / "top.png").write_bytes(b"x")
    for name in ("top.png", "gwref/src.png"):
        assert validate_prompt(load_image_prompt(name), Inventory(), tmp_path).status == 200


def test_load_image_annotations_pick_the_folder(tmp_path: Path) -> None:
    inputs, outputs = tmp_path / "input", tmp_path / "output"
    inputs.mkdir()
    outputs.mkdir()
    (outputs / "made.png").write_bytes(b"x")
    prompt = load_image_prompt("made.png [output]")
    assert validate_prompt(prompt, Inventory(), inputs, output_dir=outputs).status == 200
    assert validate_prompt(load_image_prompt("made.png [output]"), Inventory(), inputs).status == 400
    assert validate_prompt(load_image_prompt("made.png"), Inventory(), inputs, output_dir=outputs).status == 400


@pytest.mark.parametrize("name", ["../secret.png", "/etc/passwd", "sub/../../secret.png", "a\x00b.png"])
def test_load_image_cannot_leave_input(name: str, tmp_path: Path) -> None:
    inputs = tmp_path / "input"
    inputs.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    error = errors_of(validate_prompt(load_image_prompt(name), Inventory(), inputs), "1")[0]
    assert error == {"type": "custom_validation_failed", "message": "Custom validation failed for node",
                     "details": f"image - Invalid image file: {name}", "extra_info": {"input_name": "image"}}


def test_load_image_without_its_input_crashes_its_custom_validation(tmp_path: Path) -> None:
    prompt = load_image_prompt("x")
    prompt["1"]["inputs"] = {}
    error = errors_of(validate_prompt(prompt, Inventory(), tmp_path), "1")[0]
    assert error["type"] == "exception_during_inner_validation"
    assert error["details"] == "LoadImage.VALIDATE_INPUTS() missing 1 required positional argument: 'image'"


def test_load_image_name_that_is_not_text(tmp_path: Path) -> None:
    error = errors_of(validate_prompt(load_image_prompt(5), Inventory(), tmp_path), "1")[0]  # type: ignore[arg-type]
    assert (error["extra_info"]["exception_type"], error["details"]) == (
        "AttributeError", "'int' object has no attribute 'endswith'")


def test_linking_a_combo_input_is_a_type_mismatch(tmp_path: Path) -> None:
    prompt = txt2img()
    prompt["3"]["inputs"]["sampler_name"] = ["5", 0]
    error = errors_of(validate_prompt(prompt, Inventory(), tmp_path), "3")[0]
    assert error["type"] == "return_type_mismatch"
    assert error["details"].startswith("sampler_name, received_type(LATENT) mismatch input_type(['euler', ")


def test_linked_ints_skip_the_widget_checks(tmp_path: Path) -> None:
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
              "2": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}},
              "3": {"class_type": "EmptyImage", "inputs": {"width": ["2", 0], "height": ["2", 1],
                                                           "batch_size": ["2", 2], "color": 0}},
              "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}
    assert validate_prompt(prompt, Inventory(), tmp_path).status == 200


def test_results_are_plain_json(tmp_path: Path) -> None:
    result = validate_prompt(txt2img(seed=-1, ckpt="missing"), Inventory(), tmp_path)
    assert json.loads(json.dumps({"error": result.error, "node_errors": result.node_errors})) == {
        "error": result.error, "node_errors": result.node_errors}


@pytest.mark.parametrize(
    "name", ["02_prompt_lenient_float_for_int.json", "02_prompt_lenient_string_number_for_int.json"])
def test_lenient_values_are_stored_converted_as_the_recorded_history_shows(name: str, tmp_path: Path) -> None:
    record = json.loads((FIXTURES / name).read_text())
    prompt = copy.deepcopy(record["request"]["body"]["json"]["prompt"])
    assert validate_prompt(prompt, NO_MODELS, tmp_path).status == 200
    prompt_id = record["response"]["body"]["json"]["prompt_id"]
    history = json.loads((FIXTURES / "03_history_get.json").read_text())
    stored = next(page["response"]["body"]["json"][prompt_id] for page in history["exchanges"]
                  if prompt_id in ((page["response"]["body"] or {}).get("json") or {}))
    assert json.dumps(prompt) == json.dumps(stored["prompt"][2])
