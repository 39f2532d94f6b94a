"""The error objects ComfyUI's prompt validation reports, and the tracebacks that come with crashes.

ComfyUI's validator lets some Python exceptions escape (a link to a missing node is a KeyError, a bad
output slot an IndexError) and reports them with `traceback.format_tb`. KernieGen reproduces those
reports with frames written as ComfyUI 0.3.64 prints them, under a neutral install path, so no path
of the machine running KernieGen ever reaches a client.
"""

from __future__ import annotations

from typing import Any

from gateway.kerniegen.compute_types import full_type_name
from gateway.kerniegen.compute_types import node_frame as _frame

# Where ComfyUI 0.3.64's execution.py lets each kind of exception escape (line numbers as recorded).
FRAME_VALIDATE_PROMPT = _frame(
    "execution.py", 1010, "validate_prompt", "m = await validate_inputs(prompt_id, prompt, o, validated)",
    " " * 8 + "^" * 54)
FRAME_INNER_VALIDATION = _frame(
    "execution.py", 808, "validate_inputs", "r = await validate_inputs(prompt_id, prompt, o_id, validated)",
    " " * 8 + "^" * 57)
FRAME_NODE_INPUTS = _frame(
    "execution.py", 730, "validate_inputs", "inputs = prompt[unique_id]['inputs']",
    " " * 13 + "~" * 17 + "^" * 10)
FRAME_INPUT_MEMBERSHIP = _frame(
    "execution.py", 757, "validate_inputs", "if x not in inputs:", " " * 7 + "^" * 15)
FRAME_INPUT_LOOKUP = _frame(
    "execution.py", 770, "validate_inputs", "val = inputs[x]", " " * 10 + "~" * 6 + "^" * 3)
FRAME_LINKED_NODE = _frame(
    "execution.py", 788, "validate_inputs", "o_class_type = prompt[o_id]['class_type']",
    " " * 19 + "~" * 6 + "^" * 6)
FRAME_LINKED_SLOT = _frame(
    "execution.py", 790, "validate_inputs", "received_type = r[val[1]]", " " * 20 + "~" + "^" * 8)
FRAME_CUSTOM_VALIDATION = _frame(
    "execution.py", 277, "process_inputs", "result = f(**inputs)", " " * 13 + "^" * 11)
FRAME_ANNOTATED_PATH = _frame(
    "folder_paths.py", 379, "annotated_filepath", 'if name.endswith("[output]"):', " " * 7 + "^" * 13)


class ValidationCrash(Exception):
    """An exception ComfyUI's validate_inputs does not catch itself, with the frame it escaped from."""

    def __init__(self, error: BaseException, frame: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.frame = frame


def required_input_missing(name: str) -> dict[str, Any]:
    return {"type": "required_input_missing", "message": "Required input is missing", "details": name,
            "extra_info": {"input_name": name}}


def bad_linked_input(name: str, config: list[Any], value: Any) -> dict[str, Any]:
    return {"type": "bad_linked_input",
            "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]", "details": name,
            "extra_info": {"input_name": name, "input_config": config, "received_value": value}}


def return_type_mismatch(name: str, config: list[Any], received: Any, link: list[Any]) -> dict[str, Any]:
    return {"type": "return_type_mismatch", "message": "Return type mismatch between linked nodes",
            "details": f"{name}, received_type({received}) mismatch input_type({config[0]})",
            "extra_info": {"input_name": name, "input_config": config, "received_type": received,
                           "linked_node": link}}


def inner_validation_crash(name: str, config: list[Any], crash: ValidationCrash, link: list[Any]) -> dict[str, Any]:
    return {"type": "exception_during_inner_validation", "message": "Exception when validating inner node",
            "details": str(crash.error),
            "extra_info": {"input_name": name, "input_config": config, "exception_message": str(crash.error),
                           "exception_type": full_type_name(crash.error),
                           "traceback": [FRAME_INNER_VALIDATION, crash.frame], "linked_node": link}}


def validation_crash(crash: ValidationCrash) -> dict[str, Any]:
    return {"type": "exception_during_validation", "message": "Exception when validating node",
            "details": str(crash.error),
            "extra_info": {"exception_type": full_type_name(crash.error),
                           "traceback": [FRAME_VALIDATE_PROMPT, crash.frame]}}


def invalid_input_type(name: str, config: list[Any], value: Any, error: Exception) -> dict[str, Any]:
    return {"type": "invalid_input_type", "message": f"Failed to convert an input value to a {config[0]} value",
            "details": f"{name}, {value}, {error}",
            "extra_info": {"input_name": name, "input_config": config, "received_value": value,
                           "exception_message": str(error)}}


def value_smaller_than_min(name: str, config: list[Any], value: Any) -> dict[str, Any]:
    return {"type": "value_smaller_than_min",
            "message": "Value {} smaller than min of {}".format(value, config[1]["min"]), "details": name,
            "extra_info": {"input_name": name, "input_config": config, "received_value": value}}


def value_bigger_than_max(name: str, config: list[Any], value: Any) -> dict[str, Any]:
    return {"type": "value_bigger_than_max",
            "message": "Value {} bigger than max of {}".format(value, config[1]["max"]), "details": name,
            "extra_info": {"input_name": name, "input_config": config, "received_value": value}}


def value_not_in_list(name: str, config: list[Any], value: Any) -> dict[str, Any]:
    options = config[0]
    # ComfyUI keeps huge model lists out of the answer.
    if len(options) > 20:
        list_info, quoted_config = f"(list of length {len(options)})", None
    else:
        list_info, quoted_config = str(options), config
    return {"type": "value_not_in_list", "message": "Value not in list",
            "details": f"{name}: '{value}' not in {list_info}",
            "extra_info": {"input_name": name, "input_config": quoted_config, "received_value": value}}


def custom_validation_failed(name: str, reason: str) -> dict[str, Any]:
    return {"type": "custom_validation_failed", "message": "Custom validation failed for node",
            "details": f"{name} - {reason}", "extra_info": {"input_name": name}}
