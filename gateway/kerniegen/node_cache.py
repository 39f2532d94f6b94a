"""Node output caching as ComfyUI's default cache does it: a node whose class, widget values and
upstream graph are unchanged is served from cache. Only nodes of the current prompt stay cached,
so memory holds at most one prompt's outputs."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.kerniegen.execution_order import is_link

# Classes whose IS_CHANGED makes every run new (SaveImageWebsocket returns time.time()).
ALWAYS_RERUN = frozenset({"SaveImageWebsocket"})
# Classes whose IS_CHANGED hashes the input file they name; here the file's size and mtime stand in.
FILE_INPUTS = {"LoadImage": "image", "LoadImageMask": "image"}
_ANNOTATIONS = (" [input]", " [output]", " [temp]")


@dataclass(frozen=True)
class CachedNode:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None  # what `executed` and history show; None when the node has no UI output


def compute_signatures(prompt: dict[str, Any], input_dir: Path) -> dict[str, str]:
    """node id -> a key that changes whenever the node or anything upstream of it changes."""
    signatures: dict[str, str] = {}
    for root in prompt:
        _sign_from(root, prompt, input_dir, signatures)
    return signatures


def _sign_from(root: str, prompt: dict[str, Any], input_dir: Path, signatures: dict[str, str]) -> None:
    # Iterative depth-first walk: a long chain must not hit the recursion limit.
    stack = [root]
    entered: set[str] = set()
    while stack:
        node_id = stack[-1]
        if node_id in signatures:
            stack.pop()
            continue
        node = prompt.get(node_id)
        if not (isinstance(node, dict) and isinstance(inputs := node.get("inputs"), dict)):
            signatures[node_id] = _never_cached()
            stack.pop()
            continue
        missing = [value[0] for value in inputs.values() if is_link(value) and value[0] not in signatures]
        if missing and node_id not in entered:
            entered.add(node_id)
            stack.extend(missing)
            continue
        # Back here with inputs still unsigned means they wait on this node: a cycle, never cached.
        signatures[node_id] = _never_cached() if missing else _sign(node, inputs, input_dir, signatures)
        stack.pop()


def _sign(node: dict[str, Any], inputs: dict[str, Any], input_dir: Path, signatures: dict[str, str]) -> str:
    class_type = node.get("class_type")
    if class_type in ALWAYS_RERUN:
        return _never_cached()
    described = {
        name: ["link", signatures[value[0]], value[1]] if is_link(value) else ["value", value]
        for name, value in inputs.items()
    }
    changed = _file_state(inputs.get(FILE_INPUTS[class_type]), input_dir) if class_type in FILE_INPUTS else None
    text = json.dumps([class_type, changed, described], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _file_state(name: object, input_dir: Path) -> list[int] | None:
    if not isinstance(name, str):
        return None
    for annotation in _ANNOTATIONS:
        if name.endswith(annotation):
            name = name[: -len(annotation)]
    try:
        stat = os.stat(os.path.join(input_dir, name))
    except (OSError, ValueError):
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _never_cached() -> str:
    return f"uncached-{uuid.uuid4().hex}"


class NodeCache:
    """signature -> outputs; used by the executor thread only."""

    def __init__(self) -> None:
        self._entries: dict[str, CachedNode] = {}

    def keep_only(self, signatures: Iterable[str]) -> None:
        """Drop everything the new prompt cannot use (ComfyUI's clean_unused)."""
        wanted = set(signatures)
        self._entries = {key: entry for key, entry in self._entries.items() if key in wanted}

    def get(self, signature: str | None) -> CachedNode | None:
        return None if signature is None else self._entries.get(signature)

    def put(self, signature: str, entry: CachedNode) -> None:
        self._entries[signature] = entry

    def clear(self) -> None:
        self._entries = {}
