"""The guardrails of POST /prompt: the prompt checked against what the target backend can run (its inventory,
read from its /object_info in the background), before it is recorded and forwarded. One step of decide.py's
submission, so both data paths obey it.

    seeds      an integer seed below its input's declared minimum (seed -1, "random", which ComfyUI refuses)
               becomes a random one in the declared [min, max]
    placement  (opt-in) a prompt on the default backend, which lacks a model file it names, goes to a backend
               that has them all (X-Comfy-Route: model); never when the client or its user chose the backend
    classes    a node class the target lacks: refused as ComfyUI refuses it (invalid_prompt)
    models     a model file the target lacks: its alias on that backend spliced in, else refused as ComfyUI
               refuses it (value_not_in_list), naming the backends that have it

Every change is spliced into the client's bytes (prompt_nodes.py) and reported in X-Comfy-Guardrails, the
access log and comfy_gateway_guardrail_actions_total. A guardrail never stands in the way of a backend
because of its own failure: with no inventory known, or a body it cannot read, the prompt goes on unchanged
and the skip is reported the same way.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from gateway.core.errors import PromptRefused
from gateway.core.headers import GUARDRAILS_HEADER
from gateway.core.json_codec import integer_value, string_value
from gateway.core.selection import Selection, Source
from gateway.inventory.model import InputSpec, Inventory
from gateway.pipeline.prompt_nodes import (
    NotWalked,
    PromptNode,
    Raw,
    read_nodes,
    splice,
    value_spans,
)
from gateway.runtime import GuardrailPolicy, Runtime

# ComfyUI leaves long option lists out of a value_not_in_list answer ("scanned model filepaths").
MAX_LISTED_OPTIONS = 20


@dataclass(frozen=True, slots=True)
class Guarded:
    """What the guardrails made of a submission: where it goes, the bytes it goes with, what was done."""

    selection: Selection
    body: bytes
    actions: tuple[str, ...] = ()  # metric label values (observe/metrics.py's GUARDRAIL_ACTIONS)
    headers: Mapping[str, str] = field(default_factory=dict)  # X-Comfy-Guardrails, when anything was done


@dataclass(frozen=True, slots=True)
class _Change:
    node: str
    input: str
    value: str  # the new value's JSON text
    action: str
    note: str  # its X-Comfy-Guardrails entry


@dataclass(frozen=True, slots=True)
class _Missing:
    node: str
    class_type: str
    spec: InputSpec
    value: str


@dataclass(slots=True)
class _Review:
    """One prompt read against one backend's inventory."""

    changes: list[_Change] = field(default_factory=list)
    missing: list[_Missing] = field(default_factory=list)
    unknown_class: tuple[str, str] | None = None  # (node id, class_type): the first one, as ComfyUI reports

    @property
    def runnable(self) -> bool:
        return not self.missing and self.unknown_class is None


def guard_prompt(
    rt: Runtime, selection: Selection, body: bytes, nodes: Mapping[str, PromptNode] | None = None
) -> Guarded:
    """The submission `body` (its `nodes`, when they were read already), bound for `selection`, after the
    guardrails; raises PromptRefused."""
    policy = rt.guardrails
    if not policy.any_on or rt.inventories is None:
        return Guarded(selection, body)
    inventory = _usable(rt.inventories.get(selection.backend))
    if inventory is None:
        return _skipped(selection, body, "no_inventory")
    if nodes is None:
        nodes = read_nodes(body)
    if nodes is None:
        return _skipped(selection, body, "unreadable_body")
    found = _review(nodes, inventory, policy.aliases.get(selection.backend, {}), policy)
    notes: list[str] = []
    actions: list[str] = []
    if found.missing and policy.place_by_model and selection.source is Source.DEFAULT:
        placed = _place(rt, nodes, selection.backend)
        if placed is not None:
            name, inventory, found = placed
            notes.append(f"placed_by_model backend={name} from={selection.backend}")
            actions.append("placed_by_model")
            selection = Selection(name, Source.MODEL)
    if found.unknown_class is not None:
        raise _class_refusal(rt, selection.backend, *found.unknown_class)
    if found.missing and policy.check_models:
        refusal = _model_refusal(rt, selection.backend, inventory, found.missing, body)
        if refusal is not None:
            raise refusal
    if found.changes:
        changed = _spliced(body, found.changes)
        if changed is None:  # the values could not be placed in the bytes: they go as the client wrote them
            notes.append("skipped reason=unreadable_body")
            actions.append("skipped")
        else:
            body = changed
            notes += (change.note for change in found.changes)
            actions += (change.action for change in found.changes)
    if not actions:
        return Guarded(selection, body)
    return Guarded(selection, body, tuple(actions), {GUARDRAILS_HEADER: ", ".join(notes)})


def _usable(inventory: Inventory | None) -> Inventory | None:
    # An answer that lists no node class at all (a server that is not ComfyUI's kind) says nothing to check by.
    return inventory if inventory is not None and inventory.nodes else None


def _skipped(selection: Selection, body: bytes, reason: str) -> Guarded:
    return Guarded(selection, body, ("skipped",), {GUARDRAILS_HEADER: f"skipped reason={reason}"})


def _review(
    nodes: Mapping[str, PromptNode], inventory: Inventory, aliases: Mapping[str, str], policy: GuardrailPolicy
) -> _Review:
    found = _Review()
    seeds, models = policy.normalize_seeds, policy.check_models or policy.place_by_model
    known, guarded = inventory.nodes, inventory.guarded
    for node_id, node in nodes.items():
        class_type = node.class_type
        # `in` and [], not get(): a read-only mapping's get() calls its dict's get() by name
        if class_type not in guarded:  # most nodes: nothing of theirs to look at
            if found.unknown_class is None and policy.check_node_classes and class_type not in known:
                if class_type not in inventory.unreadable:  # listed, but unread: not ours to refuse
                    found.unknown_class = (node_id, class_type)
            continue
        node_class = guarded[class_type]
        inputs = node.inputs
        if seeds:
            for spec in node_class.seed_inputs:
                raw = inputs.get(spec.name)
                if raw is not None:
                    _check_seed(found, node_id, spec, raw)
        if models:
            for spec in node_class.model_inputs:
                raw = inputs.get(spec.name)
                if raw is not None:
                    name = string_value(raw)
                    if name is not None and name not in spec.choices:  # most are: nothing more to look at
                        _check_model(found, node_id, class_type, spec, name, aliases)
    return found


def _check_seed(found: _Review, node_id: str, spec: InputSpec, raw: Raw) -> None:
    text = bytes(raw)
    minimum, maximum = spec.minimum, spec.maximum
    assert isinstance(minimum, int) and isinstance(maximum, int)  # InputSpec.is_seed
    if minimum <= 0 and not text.startswith(b"-"):
        return  # the usual case, decided without reading the number
    value = integer_value(raw)
    if value is not None and value < minimum:
        seed = random.randint(minimum, maximum)
        note = f"seed_normalized node={_shown(node_id)} input={_shown(spec.name)} value={seed}"
        found.changes.append(_Change(node_id, spec.name, str(seed), "seed_normalized", note))


def _check_model(
    found: _Review, node_id: str, class_type: str, spec: InputSpec, name: str, aliases: Mapping[str, str]
) -> None:
    """A model file `spec` does not list: an alias the backend has, or missing."""
    alias = aliases.get(name)
    if alias is not None and alias in spec.choices:
        note = f"alias_applied node={_shown(node_id)} input={_shown(spec.name)} from={_shown(name)} to={_shown(alias)}"
        found.changes.append(_Change(node_id, spec.name, json.dumps(alias), "alias_applied", note))
    else:
        found.missing.append(_Missing(node_id, class_type, spec, name))


def _place(
    rt: Runtime, nodes: Mapping[str, PromptNode], default: str
) -> tuple[str, Inventory, _Review] | None:
    """The first backend, in the configured order, up and able to run every node and file of the prompt."""
    assert rt.inventories is not None
    down = rt.known_down()
    for name in rt.backends:
        if name == default or name in down:
            continue
        inventory = _usable(rt.inventories.get(name))
        if inventory is None:
            continue
        found = _review(nodes, inventory, rt.guardrails.aliases.get(name, {}), rt.guardrails)
        if found.runnable:
            return name, inventory, found
    return None


def _spliced(body: bytes, changes: list[_Change]) -> bytes | None:
    wanted: dict[str, list[str]] = {}
    for change in changes:
        wanted.setdefault(change.node, []).append(change.input)
    try:
        spans = value_spans(body, wanted)
    except NotWalked:
        return None
    values = {}
    for change in changes:
        span = spans.get((change.node, change.input))
        if span is None:  # the search and the read disagree: change nothing
            return None
        values[span] = change.value.encode()
    return splice(body, values)


def _shown(value: str) -> str:
    """A client's name or value as a header entry carries it: no space, comma, '=', control or non-ASCII
    character, so it can neither split the entry nor the header."""
    return quote(value, safe="-._~/:[]()+@", errors="surrogatepass")


# --- refusals, as ComfyUI answers them ---------------------------------------------------------------------------


def _available_on(rt: Runtime, target: str, class_type: str, input_name: str | None, value: str | None) -> list[str]:
    """The other backends, in the configured order, whose inventory has the class (and the file, after their
    aliases)."""
    assert rt.inventories is not None
    found = []
    for name in rt.backends:
        inventory = None if name == target else _usable(rt.inventories.get(name))
        node_class = None if inventory is None else inventory.node(class_type)
        if node_class is None:
            continue
        if input_name is not None and value is not None:
            spec = node_class.input(input_name)
            aliased = rt.guardrails.aliases.get(name, {}).get(value)
            if spec is None or (value not in spec.choices and aliased not in spec.choices):
                continue
        found.append(name)
    return found


def _class_refusal(rt: Runtime, target: str, node_id: str, class_type: str) -> PromptRefused:
    message = f"Cannot execute because node {class_type} does not exist on backend {target}."
    answer = {
        "error": {
            "type": "invalid_prompt",
            "message": message,
            "details": f"Node ID '#{node_id}'",
            "extra_info": {
                "gateway": {"backend": target, "available_on": _available_on(rt, target, class_type, None, None)}
            },
        },
        "node_errors": {},
    }
    note = f"refused_node_class node={_shown(node_id)} class={_shown(class_type)}"
    return PromptRefused(message, answer=answer, backend=target, action="refused_node_class", note=note)


def _model_refusal(
    rt: Runtime, target: str, inventory: Inventory, missing: list[_Missing], body: bytes
) -> PromptRefused | None:
    """ComfyUI's prompt_outputs_failed_validation for the missing files an output depends on; None when no
    output does (ComfyUI validates only what its outputs need, and runs the rest)."""
    try:
        prompt = json.loads(body)["prompt"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    dependents = _dependent_outputs(prompt, inventory) if isinstance(prompt, dict) else {}
    node_errors: dict[str, Any] = {}
    everywhere: set[str] | None = None
    for item in missing:
        outputs = dependents.get(item.node)
        if not outputs:
            continue
        available = _available_on(rt, target, item.class_type, item.spec.name, item.value)
        everywhere = set(available) if everywhere is None else everywhere & set(available)
        entry = node_errors.setdefault(
            item.node, {"errors": [], "dependent_outputs": outputs, "class_type": item.class_type}
        )
        entry["errors"].append(_value_not_in_list(target, item, available))
    if not node_errors:
        return None
    backends = [name for name in rt.backends if name in (everywhere or set())]
    answer = {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "",
            "extra_info": {"gateway": {"backend": target, "available_on": backends}},
        },
        "node_errors": node_errors,
    }
    first = missing[0]
    message = f"backend {target} has no {first.spec.folder or first.spec.name} file {first.value!r}"
    note = ", ".join(
        f"refused_model node={_shown(item.node)} input={_shown(item.spec.name)} value={_shown(item.value)}"
        for item in missing
        if item.node in node_errors
    )
    return PromptRefused(message, answer=answer, backend=target, action="refused_model", note=note)


def _value_not_in_list(target: str, item: _Missing, available: list[str]) -> dict[str, Any]:
    options = list(item.spec.options)
    if len(options) > MAX_LISTED_OPTIONS:
        listed, config = f"(list of length {len(options)})", None
    else:
        listed, config = str(options), list(item.spec.config) or [options, {}]
    where = f"backend {target} has {len(item.spec.files)} {item.spec.folder or 'such'} files"
    elsewhere = f"; available on {', '.join(available)}" if available else "; on no other backend"
    return {
        "type": "value_not_in_list",
        "message": "Value not in list",
        "details": f"{item.spec.name}: '{item.value}' not in {listed} ({where}{elsewhere})",
        "extra_info": {
            "input_name": item.spec.name,
            "input_config": config,
            "received_value": item.value,
            "gateway": {"backend": target, "available_on": available},
        },
    }


def _dependent_outputs(prompt: dict[str, Any], inventory: Inventory) -> dict[str, list[str]]:
    """node id → the output nodes whose inputs lead to it (ComfyUI's dependent_outputs), outputs sorted."""
    outputs = []
    for node_id, node in prompt.items():
        class_type = node.get("class_type") if isinstance(node, dict) else None
        node_class = inventory.node(class_type) if isinstance(class_type, str) else None
        if node_class is not None and node_class.output_node:
            outputs.append(node_id)
    dependents: dict[str, list[str]] = {}
    for output in sorted(outputs):
        reached, stack = {output}, [output]
        while stack:
            node = prompt.get(stack.pop())
            inputs = node.get("inputs") if isinstance(node, dict) else None
            if not isinstance(inputs, dict):
                continue
            for value in inputs.values():
                if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                    if value[0] in prompt and value[0] not in reached:
                        reached.add(value[0])
                        stack.append(value[0])
        for node_id in reached:
            dependents.setdefault(node_id, []).append(output)
    return dependents
