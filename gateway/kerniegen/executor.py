"""Runs one prompt in the worker thread the way ComfyUI's PromptExecutor does: the cached-node
report, the node order, a step delay per executed node, interrupts, run-time errors, and the
outputs and status messages history records. Events leave through a RunReporter."""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.kerniegen.compute import run_node
from gateway.kerniegen.compute_types import ExecutionInterrupted, NodeExecutionError, RunContext
from gateway.kerniegen.config import Directories
from gateway.kerniegen.execution_order import DependencyCycle, ExecutionList, is_link
from gateway.kerniegen.inventory import Inventory
from gateway.kerniegen.node_cache import CachedNode, NodeCache, compute_signatures
from gateway.kerniegen.nodes import is_output_node
from gateway.kerniegen.prompt_queue import QueueItem
from gateway.kerniegen.run_events import RunEvent, RunReporter

log = logging.getLogger(__name__)

INJECTED_FAULT_MESSAGE = "KernieGen fault injection: this prompt was set up to fail"
_MAX_INPUT_TEXT = 2000  # current_inputs show str() of non-JSON values; an image list must not flood it


@dataclass(frozen=True)
class RunResult:
    success: bool
    status_messages: list[tuple[str, dict[str, Any]]]
    outputs: dict[str, Any]
    meta: dict[str, Any]


@dataclass
class _Failure:
    node_id: str
    interrupted: bool
    details: dict[str, Any] = field(default_factory=dict)


class PromptExecutor:
    """Owns the node cache; `run` is called from one worker thread at a time."""

    def __init__(
        self,
        dirs: Directories,
        step_delay_seconds: float,
        interrupt: threading.Event,
        post: Callable[[RunEvent], None],
        inventory: Inventory,
    ) -> None:
        self.dirs = dirs
        self.inventory = inventory
        self._step_delay = step_delay_seconds
        self._interrupt = interrupt
        self._post = post
        self.cache = NodeCache()

    def free_memory(self) -> None:
        """POST /free {"free_memory": true}: forget every cached node (call only between prompts)."""
        self.cache.clear()

    def run(self, item: QueueItem, fail_on_purpose: bool = False) -> RunResult:
        """Run one prompt; the caller clears the interrupt flag when the prompt becomes the running one."""
        reporter = RunReporter(item.prompt_id, item.client_id, self._post)
        try:
            return _PromptRun(self, item, reporter, fail_on_purpose).run()
        finally:
            reporter.finish_run()

    # used by _PromptRun -----------------------------------------------------------------------------
    def pause_for_step(self) -> None:
        """The node-start interrupt check (ComfyUI's before_node_execution) plus the step delay."""
        if self._interrupt.is_set() or (self._step_delay > 0 and self._interrupt.wait(self._step_delay)):
            raise ExecutionInterrupted

    def check_interrupt(self) -> None:
        if self._interrupt.is_set():
            raise ExecutionInterrupted


class _PromptRun:
    """One execution of one prompt."""

    def __init__(self, executor: PromptExecutor, item: QueueItem, reporter: RunReporter, fail: bool) -> None:
        self._executor = executor
        self._cache = executor.cache
        self._item = item
        self._prompt = item.prompt
        self._reporter = reporter
        self._fail_next_node = fail
        self._executed: set[str] = set()
        dirs = executor.dirs
        self._signatures = compute_signatures(self._prompt, dirs.input)
        self._context = RunContext(
            prompt_id=item.prompt_id,
            prompt=self._prompt,
            extra_data=item.extra_data,
            output_dir=dirs.output,
            temp_dir=dirs.temp,
            input_dir=dirs.input,
            send_progress=self._send_progress,
            send_image=reporter.image,
            send_text=reporter.text,
            inventory=executor.inventory,
        )

    def run(self) -> RunResult:
        reporter, prompt_id = self._reporter, self._item.prompt_id
        reporter.add_message("execution_start", {"prompt_id": prompt_id})
        self._cache.keep_only(self._signatures.values())
        cached = [node_id for node_id in self._prompt if self._is_cached(node_id)]
        reporter.add_message("execution_cached", {"nodes": cached, "prompt_id": prompt_id})
        failure = self._run_nodes()
        if failure is None:
            reporter.add_message("execution_success", {"prompt_id": prompt_id})
        else:
            self._report_failure(failure)
        outputs, meta = self._collect_outputs()
        return RunResult(failure is None, reporter.status_messages, outputs, meta)

    def _run_nodes(self) -> _Failure | None:
        order = ExecutionList(self._prompt, self._is_cached, self._is_output)
        try:
            for output_id in self._item.outputs_to_execute:
                order.add_node(output_id)
            while not order.is_empty():
                node_id = order.next_node()
                failure = self._run_node(node_id)
                if failure is not None:
                    return failure
                order.complete(node_id)
        except DependencyCycle as cycle:
            details = {"exception_message": str(cycle), "exception_type": "graph.DependencyCycleError",
                       "traceback": [], "current_inputs": []}
            return _Failure(cycle.node_id, interrupted=False, details=details)
        return None

    def _run_node(self, node_id: str) -> _Failure | None:
        reporter, node = self._reporter, self._prompt[node_id]
        signature = self._signatures[node_id]
        fail_here, self._fail_next_node = self._fail_next_node, False
        cached = self._cache.get(signature)
        if cached is not None and not fail_here:
            reporter.send("executed", {"node": node_id, "display_node": node_id, "output": cached.ui,
                                       "prompt_id": self._item.prompt_id})
            reporter.finish_progress(node_id)
            return None
        reporter.start_progress(node_id)
        inputs: dict[str, Any] | None = None
        try:
            inputs = self._resolve_inputs(node["inputs"])
            reporter.executing(node_id)
            self._executor.pause_for_step()
            if fail_here:
                raise NodeExecutionError(INJECTED_FAULT_MESSAGE)
            result = run_node(node["class_type"], node_id, inputs, self._context)
        except ExecutionInterrupted:
            return _Failure(node_id, interrupted=True)
        except Exception as error:  # a node failure, or a KernieGen bug reported the way ComfyUI would
            return _Failure(node_id, interrupted=False, details=_error_details(error, inputs))
        ui = result.ui or None
        if ui is not None:
            reporter.send("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                       "prompt_id": self._item.prompt_id})
        self._cache.put(signature, CachedNode(tuple(result.outputs), ui))
        reporter.finish_progress(node_id)
        self._executed.add(node_id)
        return None

    def _resolve_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        resolved: dict[str, Any] = {}
        for name, value in inputs.items():
            if is_link(value):
                source = self._cache.get(self._signatures.get(value[0]))
                if source is None:
                    raise RuntimeError(f"input {name!r}: node {value[0]!r} has no output to give")
                resolved[name] = source.outputs[int(value[1])]
            else:
                resolved[name] = value
        return resolved

    def _send_progress(self, node_id: str, value: int, max_value: int) -> None:
        self._executor.check_interrupt()  # ComfyUI's progress hook checks first, so samplers stop mid-run
        self._reporter.update_progress(node_id, value, max_value)

    def _report_failure(self, failure: _Failure) -> None:
        node_type = self._prompt[failure.node_id]["class_type"]
        common = {"prompt_id": self._item.prompt_id, "node_id": failure.node_id, "node_type": node_type,
                  "executed": list(self._executed)}
        if failure.interrupted:
            self._reporter.add_message("execution_interrupted", common, broadcast=True)
            return
        self._reporter.add_message(
            "execution_error", {**common, **failure.details, "current_outputs": list(self._prompt)}
        )

    def _collect_outputs(self) -> tuple[dict[str, Any], dict[str, Any]]:
        outputs: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        for node_id in self._prompt:
            entry = self._cache.get(self._signatures[node_id])
            if entry is not None and entry.ui is not None:
                outputs[node_id] = entry.ui
                meta[node_id] = {"node_id": node_id, "display_node": node_id, "parent_node": None,
                                 "real_node_id": node_id}
        return outputs, meta

    def _is_cached(self, node_id: str) -> bool:
        return self._cache.get(self._signatures.get(node_id)) is not None

    def _is_output(self, node_id: str) -> bool:
        return is_output_node(self._prompt[node_id].get("class_type"))


def _error_details(error: Exception, inputs: dict[str, Any] | None) -> dict[str, Any]:
    if isinstance(error, NodeExecutionError):
        message, kind, frames = error.exception_message, error.exception_type, list(error.traceback)
    else:
        log.error("kerniegen: node raised unexpectedly", exc_info=error)
        kind = type(error).__qualname__ if type(error).__module__ == "builtins" else (
            f"{type(error).__module__}.{type(error).__qualname__}")
        message, frames = str(error), traceback.format_tb(error.__traceback__)
    current_inputs = {} if inputs is None else {name: [_format_value(value)] for name, value in inputs.items()}
    return {"exception_message": f"{message}\n", "exception_type": kind, "traceback": frames,
            "current_inputs": current_inputs}


def _format_value(value: Any) -> Any:
    """ComfyUI's format_value: JSON scalars as they are, anything else as (bounded) str()."""
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    return str(value)[:_MAX_INPUT_TEXT]
