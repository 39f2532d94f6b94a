"""The order nodes run in, as ComfyUI's ExecutionList picks it: a node runs once everything it
needs has run; among ready nodes, output nodes first, then nodes one or two steps from an output,
else the first added. Nodes served from cache are never scheduled as inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def is_link(value: object) -> bool:
    """ComfyUI's is_link: [node_id, output_index]."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], (int, float))
        and not isinstance(value[1], bool)
    )


class DependencyCycle(Exception):
    """The nodes left to run all wait on each other."""

    def __init__(self, node_id: str) -> None:
        super().__init__("Dependency cycle detected")
        self.node_id = node_id


class ExecutionList:
    """Nodes still to run and what blocks each one; stage one node at a time."""

    def __init__(
        self,
        prompt: dict[str, Any],
        is_cached: Callable[[str], bool],
        is_output: Callable[[str], bool],
    ) -> None:
        self._prompt = prompt
        self._is_cached = is_cached
        self._is_output = is_output
        self._pending: dict[str, None] = {}  # insertion-ordered set
        self._block_count: dict[str, int] = {}
        self._blocking: dict[str, dict[str, None]] = {}  # node -> nodes waiting for it

    def add_node(self, node_id: str) -> None:
        stack = [node_id]
        links: list[tuple[str, str]] = []
        while stack:
            current = stack.pop()
            if current in self._pending:
                continue
            self._pending[current] = None
            self._block_count[current] = 0
            self._blocking[current] = {}
            for value in self._prompt[current].get("inputs", {}).values():
                if is_link(value):
                    source = value[0]
                    if not self._is_cached(source):
                        stack.append(source)
                    links.append((source, current))
        for source, target in links:
            self._add_strong_link(source, target)

    def _add_strong_link(self, source: str, target: str) -> None:
        if self._is_cached(source):
            return
        self.add_node(source)
        if target not in self._blocking[source]:
            self._blocking[source][target] = None
            self._block_count[target] += 1

    def is_empty(self) -> bool:
        return not self._pending

    def next_node(self) -> str:
        """The node to run now; raises DependencyCycle when nothing is ready."""
        ready = [node for node in self._pending if self._block_count[node] == 0]
        if not ready:
            raise DependencyCycle(next(iter(self._pending)))
        return self._pick(ready)

    def complete(self, node_id: str) -> None:
        del self._pending[node_id]
        for waiting in self._blocking.pop(node_id):
            self._block_count[waiting] -= 1

    def _pick(self, ready: list[str]) -> str:
        # ComfyUI's ux_friendly_pick_node: show an output as soon as it can be produced.
        for node in ready:
            if self._is_output(node):
                return node
        for node in ready:
            if any(self._is_output(blocked) for blocked in self._blocking[node]):
                return node
        for node in ready:
            for blocked in self._blocking[node]:
                if any(self._is_output(next_blocked) for next_blocked in self._blocking[blocked]):
                    return node
        return ready[0]
