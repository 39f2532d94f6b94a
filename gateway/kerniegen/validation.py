"""POST /prompt validation: ComfyUI 0.3.64's `validate_prompt`, answers and all.

`validate_prompt` takes the value of the body's "prompt" key and says whether ComfyUI would queue it
(200, maybe with `node_errors` for outputs that will not run), reject it (400 with ComfyUI's `error` and
`node_errors`), or fall over (500: ComfyUI's "Server got itself in trouble", e.g. for a list).
Like ComfyUI it converts widget values in place ("64" -> 64), so the queued prompt, the history and the
PNG metadata show the converted values, exactly as ComfyUI's do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.kerniegen import validation_errors as errors
from gateway.kerniegen.inventory import Inventory
from gateway.kerniegen.nodes import NODE_CLASSES
from gateway.kerniegen.validation_errors import ValidationCrash
from gateway.kerniegen.validation_inputs import ValidationRun, validate_node


@dataclass(frozen=True)
class ValidationResult:
    status: int  # 200 accepted (maybe with node_errors), 400 rejected, 500 ComfyUI's unhandled exception
    error: dict[str, Any] | None  # the top-level "error" object when rejected, else None
    node_errors: dict[str, Any]  # keyed by node id, exactly as ComfyUI reports them
    outputs_to_execute: list[str]  # the valid output node ids, in prompt order


# ComfyUI raises out of its handler for these; the server answers text/plain
# "500 Internal Server Error\n\nServer got itself in trouble".
SERVER_FAILURE = ValidationResult(status=500, error=None, node_errors={}, outputs_to_execute=[])


def _rejected(kind: str, message: str, details: str, node_errors: dict[str, Any] | None = None) -> ValidationResult:
    error = {"type": kind, "message": message, "details": details, "extra_info": {}}
    return ValidationResult(status=400, error=error, node_errors=node_errors or {}, outputs_to_execute=[])


class _ServerFailure(Exception):
    """ComfyUI would raise out of validate_prompt here (a TypeError on a malformed graph)."""


def validate_prompt(
    prompt: object,
    inventory: Inventory,
    input_dir: Path,
    partial_execution_targets: list[str] | None = None,
    *,
    output_dir: Path | None = None,
    temp_dir: Path | None = None,
) -> ValidationResult:
    """Validate the API-format graph of a POST /prompt (output_dir/temp_dir resolve "x.png [output]")."""
    try:
        outputs = _output_nodes(prompt, partial_execution_targets)
    except _ServerFailure:
        return SERVER_FAILURE
    if isinstance(outputs, ValidationResult):
        return outputs
    if not outputs:
        return _rejected("prompt_no_outputs", "Prompt has no outputs", "")
    if not isinstance(prompt, dict):  # unreachable for JSON input; a list never gets this far
        return SERVER_FAILURE
    run = ValidationRun(prompt=prompt, inventory=inventory, input_dir=input_dir, output_dir=output_dir,
                        temp_dir=temp_dir)
    good: list[str] = []
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, Any] = {}
    for output_id in outputs:
        valid, reasons = _validate_output(run, output_id)
        if valid:
            good.append(output_id)
            continue
        failed.append((output_id, reasons))
        # ComfyUI credits every failing node validated so far (not only this output's ancestors).
        for node_id, (node_valid, node_reasons) in run.validated.items():
            if node_valid or not node_reasons:
                continue
            if node_id not in node_errors:
                node_errors[node_id] = {"errors": node_reasons, "dependent_outputs": [],
                                        "class_type": prompt[node_id]["class_type"]}
            node_errors[node_id]["dependent_outputs"].append(output_id)
    if not good:
        # Only reasons reported on the output nodes themselves make it into the summary.
        details = "\n".join(f"{reason['message']}: {reason['details']}" for _, reasons in failed for reason in reasons)
        return _rejected("prompt_outputs_failed_validation", "Prompt outputs failed validation", details, node_errors)
    return ValidationResult(status=200, error=None, node_errors=node_errors, outputs_to_execute=good)


def _output_nodes(prompt: object, targets: object) -> list[str] | ValidationResult:
    """ComfyUI's first pass: every node needs a known class_type; collect the wanted output nodes."""
    try:
        node_ids = list(prompt)  # type: ignore[call-overload]
    except TypeError:
        raise _ServerFailure from None
    outputs: list[str] = []
    for node_id in node_ids:
        try:
            node = prompt[node_id]  # type: ignore[index]
            if "class_type" not in node:
                return _rejected("invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                                 f"Node ID '#{node_id}'")
            class_type = node["class_type"]
            known = NODE_CLASSES.get(class_type)
        except (TypeError, KeyError, IndexError):
            raise _ServerFailure from None
        if known is None:
            return _rejected("invalid_prompt", f"Cannot execute because node {class_type} does not exist.",
                             f"Node ID '#{node_id}'")
        if known.output_node:
            try:
                wanted = targets is None or node_id in targets  # type: ignore[operator]
            except TypeError:
                raise _ServerFailure from None
            if wanted:
                outputs.append(node_id)
    return outputs


def _validate_output(run: ValidationRun, output_id: str) -> tuple[bool, list[dict[str, Any]]]:
    try:
        return validate_node(run, output_id)
    except ValidationCrash as crash:
        reasons = [errors.validation_crash(crash)]
    except RecursionError as ex:  # a graph deeper than Python's stack
        reasons = [errors.validation_crash(ValidationCrash(ex, errors.FRAME_INNER_VALIDATION))]
    run.validated[output_id] = (False, reasons)
    return False, reasons
