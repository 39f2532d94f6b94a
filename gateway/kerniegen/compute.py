"""Running one node: `run_node` dispatches a class to its computation and shapes its failures.

Synchronous and free of asyncio, so the executor may call it from a worker thread; it keeps no state
between calls. Links arrive resolved to upstream output values; widget values are converted here the
way ComfyUI's validation converts them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.kerniegen import compute_images, compute_loaders, compute_models, compute_save
from gateway.kerniegen.compute_types import (
    ExecutionInterrupted,
    NodeExecutionError,
    NodeOutput,
    RunContext,
    full_type_name,
)
from gateway.kerniegen.nodes import NODE_CLASSES, coerce_inputs

__all__ = ["ExecutionInterrupted", "NodeExecutionError", "NodeOutput", "RunContext", "run_node"]

_NODE_FUNCTIONS: dict[str, Callable[[str, dict[str, Any], RunContext], NodeOutput]] = {
    **compute_images.NODE_FUNCTIONS,
    **compute_loaders.NODE_FUNCTIONS,
    **compute_models.NODE_FUNCTIONS,
    **compute_save.NODE_FUNCTIONS,
}


def run_node(class_type: str, node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    """Compute one node; raises NodeExecutionError (ComfyUI-shaped) or lets ExecutionInterrupted through."""
    node = NODE_CLASSES.get(class_type)
    function = _NODE_FUNCTIONS.get(class_type)
    if node is None or function is None:
        raise NodeExecutionError(f"'{class_type}'", exception_type="KeyError")
    for name, category, _ in node.declared_inputs():
        if category == "required" and name not in inputs:
            raise NodeExecutionError(f"{class_type}() missing 1 required positional argument: '{name}'",
                                     exception_type="TypeError")
    try:
        return function(node_id, coerce_inputs(class_type, inputs), ctx)
    except (ExecutionInterrupted, NodeExecutionError):
        raise
    except Exception as ex:  # a node failing the way Python fails: report it as ComfyUI would
        raise NodeExecutionError(str(ex), exception_type=full_type_name(ex)) from ex
