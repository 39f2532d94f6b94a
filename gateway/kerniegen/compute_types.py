"""The types node execution speaks: what a node run receives, returns and raises.

Exceptions (the executor catches both; anything else escaping `run_node` is a KernieGen bug):

    Exception
    ├── ExecutionInterrupted   an interrupt was requested; raised by the executor's callbacks
    └── NodeExecutionError     the node failed the way ComfyUI's node would; becomes execution_error
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.kerniegen.inventory import Inventory

FAKE_ROOT = "/srv/ComfyUI"  # the install path tracebacks and messages show; never the real one

# The frames every ComfyUI 0.3.64 node failure starts with (06_ws_execution_error.json), before the node's own.
EXECUTION_FRAMES: tuple[str, ...] = (
    f'  File "{FAKE_ROOT}/execution.py", line 496, in execute\n    output_data, output_ui, has_subgraph, '
    "has_pending_tasks = await get_output_data(prompt_id, unique_id, obj, input_data_all, execution_block_cb="
    "execution_block_cb, pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)\n" + " " * 62 + "^" * 163
    + "\n",
    f'  File "{FAKE_ROOT}/execution.py", line 315, in get_output_data\n    return_values = await '
    "_async_map_node_over_list(prompt_id, unique_id, obj, input_data_all, obj.FUNCTION, allow_interrupt=True, "
    "execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)\n"
    + " " * 20 + "^" * 209 + "\n",
    f'  File "{FAKE_ROOT}/execution.py", line 289, in _async_map_node_over_list\n'
    "    await process_inputs(input_dict, i)\n",
    f'  File "{FAKE_ROOT}/execution.py", line 277, in process_inputs\n    result = f(**inputs)\n'
    + " " * 13 + "^" * 11 + "\n",
)


class ExecutionInterrupted(Exception):
    """Raised by the executor's callbacks when an interrupt was requested; run_node lets it through."""


class NodeExecutionError(Exception):
    """A node failed; ComfyUI reports `f"{exception_message}\\n"` as execution_error's exception_message."""

    def __init__(self, message: str, *, exception_type: str = "RuntimeError", node_frame: str | None = None,
                 node_frames: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.exception_message = message
        self.exception_type = exception_type
        frames = list(EXECUTION_FRAMES)
        if node_frame is not None:
            frames.append(node_frame)
        frames.extend(node_frames)  # the frames below process_inputs, outermost first
        self.traceback: list[str] = frames  # execution_error's traceback, ComfyUI-shaped, no real paths


def full_type_name(error: BaseException) -> str:
    """ComfyUI's exception_type: the bare name for builtins, module-qualified otherwise."""
    klass = type(error)
    if klass.__module__ == "builtins":
        return klass.__qualname__
    return f"{klass.__module__}.{klass.__qualname__}"


def node_frame(file: str, line: int, function: str, source: str, marker: str = "") -> str:
    """One traceback frame inside a (fake-rooted) ComfyUI source file."""
    text = f'  File "{FAKE_ROOT}/{file}", line {line}, in {function}\n    {source}\n'
    return text + (f"{marker}\n" if marker else "")


@dataclass
class RunContext:
    prompt_id: str
    prompt: dict[str, Any]  # the whole API prompt, embedded in the PNG "prompt" text chunk
    extra_data: dict[str, Any]  # its "extra_pnginfo" entries become PNG text chunks, as ComfyUI does
    output_dir: Path
    temp_dir: Path
    input_dir: Path
    send_progress: Callable[[str, int, int], None]  # (node_id, value, max); may raise ExecutionInterrupted
    send_image: Callable[[str, str, bytes], None]  # (node_id, "PNG"|"JPEG", encoded image) for SaveImageWebsocket
    send_text: Callable[[str, str], None]  # (node_id, text): a binary TEXT frame
    inventory: Inventory  # the model files a loader may open; validation does not check every loader's name


@dataclass
class NodeOutput:
    outputs: tuple[Any, ...]  # one value per output slot (IMAGE = list of PIL images, LATENT, MODEL, ...)
    ui: dict[str, Any] | None = field(default=None)  # e.g. {"images": [{"filename", "subfolder", "type"}]}
