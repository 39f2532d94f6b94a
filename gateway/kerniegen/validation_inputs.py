"""Validation of one node's inputs, following ComfyUI 0.3.64's `validate_inputs` step by step.

It walks upstream through links, converts widget values in place ("64" -> 64, as ComfyUI stores them in
its queue and history), and checks min/max, combo lists and LoadImage's file. Python exceptions ComfyUI
would let escape are raised as `ValidationCrash` for the caller to report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.kerniegen import validation_errors as errors
from gateway.kerniegen.images_files import file_exists, resolve_annotated_path
from gateway.kerniegen.inventory import Inventory
from gateway.kerniegen.nodes import NODE_CLASSES, WIDGET_CONVERTERS, NodeDef, input_config, resolve_choices
from gateway.kerniegen.nodes_defs import Choices
from gateway.kerniegen.validation_errors import ValidationCrash

NodeResult = tuple[bool, list[dict[str, Any]]]  # (valid, errors attached to this node)


@dataclass
class ValidationRun:
    """The state of one validate_prompt call: the prompt, the backend's facts, the per-node results."""

    prompt: dict[str, Any]
    inventory: Inventory
    input_dir: Path
    output_dir: Path | None
    temp_dir: Path | None
    validated: dict[Any, NodeResult] = field(default_factory=dict)
    in_progress: set[Any] = field(default_factory=set)


def validate_node(run: ValidationRun, unique_id: Any) -> NodeResult:
    if unique_id in run.validated:
        return run.validated[unique_id]
    run.in_progress.add(unique_id)
    try:
        result = _validate_node_inputs(run, unique_id)
    finally:
        run.in_progress.discard(unique_id)
    # A cycle may already have recorded a crash for this node; ComfyUI would report only that.
    earlier = run.validated.get(unique_id)
    run.validated[unique_id] = earlier if earlier is not None else result
    return run.validated[unique_id]


def _validate_node_inputs(run: ValidationRun, unique_id: Any) -> NodeResult:
    node_data = run.prompt[unique_id]
    try:
        inputs = node_data["inputs"]
    except Exception as ex:
        raise ValidationCrash(ex, errors.FRAME_NODE_INPUTS) from None
    node = NODE_CLASSES[node_data["class_type"]]
    found: list[dict[str, Any]] = []
    valid = True
    for name, category, spec in node.declared_inputs():
        try:
            present = name in inputs
        except Exception as ex:
            raise ValidationCrash(ex, errors.FRAME_INPUT_MEMBERSHIP) from None
        if not present:
            if category == "required":
                found.append(errors.required_input_missing(name))
            continue
        try:
            value = inputs[name]
        except Exception as ex:
            raise ValidationCrash(ex, errors.FRAME_INPUT_LOOKUP) from None
        if isinstance(value, list):
            error, upstream_valid = _check_link(run, node, name, value)
            valid = valid and upstream_valid
        else:
            error = _check_widget(run, node, inputs, name, spec, value)
        if error is not None:
            found.append(error)
    if node.self_validated:
        found.extend(_run_custom_validation(run, node, inputs))
    return (not found and valid), found


def _check_link(run: ValidationRun, node: NodeDef, name: str, link: list[Any]) -> tuple[dict[str, Any] | None, bool]:
    """One linked input: the slot's type must match, and the upstream node must be valid itself."""
    config = input_config(node.name, name, run.inventory)
    if len(link) != 2:
        return errors.bad_linked_input(name, config, link), True
    upstream_id = link[0]
    try:
        upstream_class = run.prompt[upstream_id]["class_type"]
    except Exception as ex:
        raise ValidationCrash(ex, errors.FRAME_LINKED_NODE) from None
    try:
        received_type = NODE_CLASSES[upstream_class].return_types[link[1]]
    except Exception as ex:
        raise ValidationCrash(ex, errors.FRAME_LINKED_SLOT) from None
    if not _types_match(received_type, config[0]):
        return errors.return_type_mismatch(name, config, received_type, link), True
    if upstream_id in run.in_progress:
        # ComfyUI recurses around a cycle until Python gives up; report what it would report.
        crash = ValidationCrash(RecursionError("maximum recursion depth exceeded"), errors.FRAME_INNER_VALIDATION)
        run.validated[upstream_id] = (False, [errors.inner_validation_crash(name, config, crash, link)])
        return None, False
    try:
        upstream_valid, _ = validate_node(run, upstream_id)
    except ValidationCrash as crash:
        run.validated[upstream_id] = (False, [errors.inner_validation_crash(name, config, crash, link)])
        return None, False
    return None, upstream_valid


def _types_match(received: Any, expected: Any) -> bool:
    """ComfyUI's validate_node_input: equal, or overlapping comma-separated unions, or a wildcard."""
    if received == expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    received_set = {part.strip() for part in received.split(",")}
    expected_set = {part.strip() for part in expected.split(",")}
    if "*" in received_set or "*" in expected_set:
        return True
    return bool(received_set & expected_set)


def _check_widget(
    run: ValidationRun, node: NodeDef, inputs: dict[str, Any], name: str, spec: list[Any], value: Any
) -> dict[str, Any] | None:
    """One literal input: convert it like ComfyUI (in place), then min/max and combo checks."""
    if isinstance(value, dict) and "__value__" in value:
        value = value["__value__"]
        inputs[name] = value
    input_type = spec[0]
    converter = WIDGET_CONVERTERS.get(input_type) if isinstance(input_type, str) else None
    if converter is not None:
        try:
            value = converter(value)
        except Exception as ex:
            return errors.invalid_input_type(name, input_config(node.name, name, run.inventory), value, ex)
        inputs[name] = value
    if name in node.self_validated:
        return None
    options = spec[1] if len(spec) > 1 else {}
    if "min" in options and value < options["min"]:
        return errors.value_smaller_than_min(name, input_config(node.name, name, run.inventory), value)
    if "max" in options and value > options["max"]:
        return errors.value_bigger_than_max(name, input_config(node.name, name, run.inventory), value)
    if isinstance(input_type, (list, Choices)):
        choices = input_type if isinstance(input_type, list) else resolve_choices(input_type, run.inventory, ())
        if value not in choices:
            return errors.value_not_in_list(name, input_config(node.name, name, run.inventory), value)
    return None


def _run_custom_validation(run: ValidationRun, node: NodeDef, inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """LoadImage's and LoadImageMask's VALIDATE_INPUTS(image): the named file must exist."""
    if "image" not in inputs:
        # ComfyUI then calls VALIDATE_INPUTS() with no argument at all.
        missing = TypeError(f"{node.name}.VALIDATE_INPUTS() missing 1 required positional argument: 'image'")
        raise ValidationCrash(missing, errors.FRAME_CUSTOM_VALIDATION)
    image = inputs["image"]
    if isinstance(image, list):
        image = None  # ComfyUI passes None for a linked value here
    if not image_file_exists(image, run.input_dir, run.output_dir, run.temp_dir):
        return [errors.custom_validation_failed("image", f"Invalid image file: {image}")]
    return []


def image_file_exists(name: Any, input_dir: Path, output_dir: Path | None, temp_dir: Path | None) -> bool:
    try:
        path = resolve_annotated_path(name, input_dir, output_dir, temp_dir)
    except Exception as ex:
        raise ValidationCrash(ex, errors.FRAME_ANNOTATED_PATH) from None
    return file_exists(path)
