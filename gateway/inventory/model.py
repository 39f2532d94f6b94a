"""A backend's /object_info, read once into frozen values: its node classes, their inputs, and the files its
loaders list, by folder.

A backend may answer anything, so reading never raises on what the JSON holds: an entry that cannot be read
(a class, a section, an input, a combo option) is left out and counted in `skipped`, with the first few
reasons kept in `problems`. Only bytes that are not a JSON object at all are an error (`read_object_info`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gateway.core.json_codec import JsonTooDeep, check_depth, loads_exact
from gateway.inventory.files import (
    INPUT_FOLDER,
    MODEL_EXTENSIONS,
    MODEL_FOLDERS,
    all_file_names,
    extension,
    file_folder,
    looks_like_file,
)

Number = int | float
ComboValue = str | int | float
Scalar = str | int | float | bool

# The widget types ComfyUI's frontend draws; every other type name is a link (MODEL, IMAGE, "*", "IMAGE,MASK").
WIDGET_TYPES: frozenset[str] = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
# The frontend's legacy convention: an INT named so gets the control even when the class does not declare it.
SEED_NAMES: frozenset[str] = frozenset({"seed", "noise_seed"})
MAX_PROBLEMS = 10
MAX_SHOWN_NAME_CHARS = 80
# ComfyUI's answer nests 6 deep (class, input, required, name, spec, options list); custom nodes add a little.
MAX_DEPTH = 32


class InventoryError(ValueError):
    """An /object_info answer that is not a JSON object: nothing in it can be read."""


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One required or optional input of a node class."""

    name: str
    type: str  # INT, FLOAT, STRING, BOOLEAN, COMBO, or a link type
    required: bool
    default: Scalar | None = None  # only a default of the input's own kind
    minimum: Number | None = None  # INT and FLOAT only, finite
    maximum: Number | None = None
    step: Number | None = None
    control_after_generate: bool = False  # the frontend changes it after each run (seeds)
    options: tuple[ComboValue, ...] = ()  # COMBO only, in the backend's order
    # The same options as a set: "is this value one of them" is asked for every model input of every prompt,
    # and a backend may list thousands of files
    choices: frozenset[ComboValue] = frozenset()
    is_files: bool = False  # the options are file names (files.py says when)
    folder: str | None = None  # where those files live: a model folder, "input", or None when unknown
    files: tuple[str, ...] = ()  # the options that are file names (placeholders and built-ins left out)
    # COMBO only: the input as the backend declares it, what ComfyUI quotes as input_config when it refuses a
    # value (JSON values; not to be changed)
    config: tuple[Any, ...] = ()

    @property
    def is_link(self) -> bool:
        """Fed by another node's output, not a widget."""
        return self.type not in WIDGET_TYPES

    @property
    def is_seed(self) -> bool:
        """An INT the frontend changes after each run, with the range a random one is drawn from declared."""
        return (
            self.type == "INT"
            and self.control_after_generate
            and isinstance(self.minimum, int)
            and isinstance(self.maximum, int)
            and self.minimum <= self.maximum
        )

    @property
    def names_model(self) -> bool:
        """A combo of model files: a model folder's, or (folder unknown) options that all carry a model file's
        extension. Uploads (the input folder) change with every upload, faster than any inventory: not these."""
        if self.type != "COMBO" or not self.is_files:
            return False
        if self.folder is not None:
            return self.folder in MODEL_FOLDERS
        return bool(self.files) and all(extension(name) in MODEL_EXTENSIONS for name in self.files)


@dataclass(frozen=True, slots=True)
class NodeClass:
    name: str
    inputs: Mapping[str, InputSpec]  # required ones first, then optional ones, each in the backend's order
    outputs: tuple[str, ...] = ()  # output types
    output_node: bool = False
    display_name: str = ""
    seed_inputs: tuple[InputSpec, ...] = ()  # the inputs that are seeds (InputSpec.is_seed)
    model_inputs: tuple[InputSpec, ...] = ()  # the inputs that name model files (InputSpec.names_model)

    def input(self, name: str) -> InputSpec | None:
        return self.inputs.get(name)


@dataclass(frozen=True, slots=True)
class Inventory:
    """What one backend can run: its node classes, and the files its loaders list, per folder."""

    nodes: Mapping[str, NodeClass]
    # folder → sorted file names, for every folder some loader of this backend lists (an empty list is "none
    # installed", an absent folder "no loader says"); model folders in ComfyUI's order, then "input"
    files: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    # input name → every string option any class lists for it: "does this backend offer ckpt_name X?"
    choices: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))
    skipped: int = 0
    problems: tuple[str, ...] = ()
    # the classes with seed or model inputs (NodeClass.seed_inputs, model_inputs): what the guardrails look at
    guarded: Mapping[str, NodeClass] = field(default_factory=lambda: MappingProxyType({}))
    # names the backend lists whose entries could not be read: it may well run them, so none is called unknown
    unreadable: frozenset[str] = frozenset()

    def node(self, class_type: str) -> NodeClass | None:
        return self.nodes.get(class_type)

    def has_file(self, folder: str, name: str) -> bool:
        return name in self.files.get(folder, ())

    def offers(self, input_name: str, value: str) -> bool:
        """Some class lists `value` among the options of an input named `input_name`."""
        return value in self.choices.get(input_name, frozenset())

    def files_by_folder(self, *, include_input: bool = False) -> dict[str, list[str]]:
        """Folder → sorted file names, JSON-able; the input folder (uploads, not models) only when asked."""
        return {
            folder: list(names) for folder, names in self.files.items() if include_input or folder != INPUT_FOLDER
        }

    def describe(self) -> dict[str, object]:
        return {
            "node_classes": len(self.nodes),
            "files": {folder: len(names) for folder, names in self.files.items()},
            "skipped": self.skipped,
            "problems": list(self.problems),
        }


def read_object_info(body: bytes) -> Inventory:
    """An /object_info answer's bytes, read; InventoryError when they are not a JSON object, nothing else."""
    try:
        check_depth(body, MAX_DEPTH)
        value = loads_exact(body)
    except JsonTooDeep as too_deep:  # its own name: the compiled build keeps one type per name
        raise InventoryError(f"JSON nested deeper than {too_deep.max_depth} levels") from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise InventoryError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InventoryError(f"a JSON {type(value).__name__}, not an object of node classes")
    return parse_object_info(value)


def parse_object_info(value: object) -> Inventory:
    """The inventory in a decoded /object_info body; never raises, whatever `value` is."""
    reading = _Reading()
    nodes: dict[str, NodeClass] = {}
    if not isinstance(value, dict):
        reading.skip("the answer is not an object of node classes")
        return Inventory(MappingProxyType({}), skipped=reading.skipped, problems=tuple(reading.problems))
    unreadable: set[str] = set()
    for class_type, info in value.items():
        if not isinstance(class_type, str) or not isinstance(info, dict):
            reading.skip(f"class {_shown(class_type)}: not an object")
            if isinstance(class_type, str):
                unreadable.add(class_type)
            continue
        if "input" not in info and "output" not in info:  # every node class ComfyUI lists has both
            reading.skip(f"class {_shown(class_type)}: neither input nor output, not a node class")
            unreadable.add(class_type)
            continue
        nodes[class_type] = reading.node_class(class_type, info)
    return Inventory(
        MappingProxyType(nodes),
        files=_files_by_folder(nodes),
        choices=_choices(nodes),
        guarded=MappingProxyType({name: n for name, n in nodes.items() if n.seed_inputs or n.model_inputs}),
        skipped=reading.skipped,
        problems=tuple(reading.problems),
        unreadable=frozenset(unreadable),
    )


class _Reading:
    """What one parse skipped, and why (the first few reasons)."""

    def __init__(self) -> None:
        self.skipped = 0
        self.problems: list[str] = []

    def skip(self, problem: str, count: int = 1) -> None:
        self.skipped += count
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    def node_class(self, class_type: str, info: dict[Any, Any]) -> NodeClass:
        inputs: dict[str, InputSpec] = {}
        sections = info.get("input", {})
        if not isinstance(sections, dict):
            self.skip(f"{_shown(class_type)}: input is not an object")
            sections = {}
        for section, required in (("required", True), ("optional", False)):  # hidden ones the server fills
            specs = sections.get(section, {})
            if not isinstance(specs, dict):
                self.skip(f"{_shown(class_type)}: input.{section} is not an object")
                continue
            for name, spec in specs.items():
                if not isinstance(name, str):
                    self.skip(f"{_shown(class_type)}: an input name that is not a string")
                elif name not in inputs:  # one named in both sections is required
                    parsed = self.input_spec(class_type, name, spec, required)
                    if parsed is not None:
                        inputs[name] = parsed
        outputs = info.get("output", [])
        if not isinstance(outputs, list):
            outputs = []
        display_name = info.get("display_name")
        return NodeClass(
            name=class_type,
            inputs=MappingProxyType(inputs),
            outputs=tuple(out for out in outputs if isinstance(out, str)),
            output_node=info.get("output_node") is True,
            display_name=display_name if isinstance(display_name, str) else class_type,
            seed_inputs=tuple(spec for spec in inputs.values() if spec.is_seed),
            model_inputs=tuple(spec for spec in inputs.values() if spec.names_model),
        )

    def input_spec(self, class_type: str, name: str, spec: object, required: bool) -> InputSpec | None:
        where = f"{_shown(class_type)}.{_shown(name)}"
        if not isinstance(spec, list) or not spec:
            self.skip(f"{where}: not a [type, options] list")
            return None
        head, options = spec[0], spec[1] if len(spec) > 1 else {}
        if not isinstance(options, dict):
            options = {}
        if isinstance(head, list):  # the classic combo: [[...options], {...}]
            return self._combo(class_type, name, options, head, required, where, listed=True)
        if head == "COMBO":  # the V3 combo: ["COMBO", {"options": [...]}]
            values = options.get("options", [])
            values = values if isinstance(values, list) else []
            return self._combo(class_type, name, options, values, required, where, listed=False)
        if not isinstance(head, str):
            self.skip(f"{where}: the type is neither a name nor a list of options")
            return None
        kind = head
        numeric = kind in ("INT", "FLOAT")
        return InputSpec(
            name=name,
            type=kind,
            required=required,
            default=_default(kind, options.get("default")),
            minimum=_number(options.get("min")) if numeric else None,
            maximum=_number(options.get("max")) if numeric else None,
            step=_number(options.get("step")) if numeric else None,
            control_after_generate=kind == "INT" and _control(options, name in SEED_NAMES),
        )

    def _combo(
        self,
        class_type: str,
        name: str,
        options: dict[Any, Any],
        values: list[Any],
        required: bool,
        where: str,
        *,
        listed: bool,
    ) -> InputSpec:
        kept = tuple(value for value in values if _combo_value(value))
        if len(kept) < len(values):
            self.skip(f"{where}: {len(values) - len(kept)} options that are not strings or numbers",
                      len(values) - len(kept))
        folder = file_folder(class_type, name, options)
        is_files = folder is not None or all_file_names(kept)
        default = options.get("default")
        return InputSpec(
            name=name,
            type="COMBO",
            required=required,
            default=default if _combo_value(default) else None,
            control_after_generate=_control(options, False),
            options=kept,
            choices=frozenset(kept),
            is_files=is_files,
            folder=folder,
            files=tuple(v for v in kept if isinstance(v, str) and looks_like_file(v)) if is_files else (),
            # [options, {...}] (ComfyUI's classic combo) or ["COMBO", {"options": [...], ...}] (its V3 one)
            config=(list(kept) if listed else "COMBO", {str(key): value for key, value in options.items()}),
        )


def _control(options: dict[Any, Any], by_name: bool) -> bool:
    # The frontend reads `control_after_generate ?? by_name`: a declared false wins over a seed's name.
    declared = options.get("control_after_generate")
    return by_name if declared is None else bool(declared)


def _number(value: object) -> Number | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if isinstance(value, int) or math.isfinite(value) else None


def _default(kind: str, value: object) -> Scalar | None:
    if kind in ("INT", "FLOAT"):
        return _number(value)
    if kind == "STRING":
        return value if isinstance(value, str) else None
    if kind == "BOOLEAN":
        return value if isinstance(value, bool) else None
    return None  # a link has no value of its own


def _combo_value(value: object) -> bool:
    # What the frontend's zComboOption allows: a string or a number.
    return isinstance(value, str) or _number(value) is not None


def _files_by_folder(nodes: Mapping[str, NodeClass]) -> Mapping[str, tuple[str, ...]]:
    found: dict[str, set[str]] = {}
    for node in nodes.values():
        for spec in node.inputs.values():
            if spec.folder is not None:
                found.setdefault(spec.folder, set()).update(spec.files)
    order = [folder for folder in (*MODEL_FOLDERS, INPUT_FOLDER) if folder in found]
    return MappingProxyType({folder: tuple(sorted(found[folder])) for folder in order})


def _choices(nodes: Mapping[str, NodeClass]) -> Mapping[str, frozenset[str]]:
    found: dict[str, set[str]] = {}
    for node in nodes.values():
        for spec in node.inputs.values():
            if spec.type == "COMBO":
                found.setdefault(spec.name, set()).update(v for v in spec.options if isinstance(v, str))
    return MappingProxyType({name: frozenset(values) for name, values in found.items()})


def _shown(name: object) -> str:
    text = name if isinstance(name, str) else repr(name)
    return text if len(text) <= MAX_SHOWN_NAME_CHARS else text[: MAX_SHOWN_NAME_CHARS - 1] + "…"
