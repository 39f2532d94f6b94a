"""Finished prompts as GET /history shows them: insertion-ordered, bounded like ComfyUI's (oldest
dropped first), with ComfyUI's max_items/offset paging, including its quirks."""

from __future__ import annotations

from itertools import islice
from typing import Any


class History:
    """prompt_id -> history entry ({prompt, outputs, status, meta}); entries are never mutated."""

    def __init__(self, max_items: int) -> None:
        self._max_items = max_items
        self._entries: dict[str, dict[str, Any]] = {}

    def add(self, prompt_id: str, entry: dict[str, Any]) -> None:
        # A reused prompt_id keeps its original position, as a Python dict update does in ComfyUI.
        if prompt_id not in self._entries:
            while len(self._entries) >= self._max_items:
                del self._entries[next(iter(self._entries))]
        self._entries[prompt_id] = entry

    def get(self, prompt_id: str) -> dict[str, Any]:
        """{prompt_id: entry}, or {} for an unknown (or still queued) prompt."""
        entry = self._entries.get(prompt_id)
        return {} if entry is None else {prompt_id: entry}

    def page(self, max_items: int | None, offset: int | None) -> dict[str, dict[str, Any]]:
        """ComfyUI's get_history loop verbatim: max_items alone gives the newest N."""
        start = -1 if offset is None else offset
        if start < 0 and max_items is not None:
            start = len(self._entries) - max_items
        out: dict[str, dict[str, Any]] = {}
        first = max(start, 0)
        for prompt_id, entry in islice(self._entries.items(), first, None):
            out[prompt_id] = entry
            # ComfyUI adds before it checks, so max_items=0 with an offset still returns one entry.
            if max_items is not None and len(out) >= max_items:
                break
        return out

    def delete(self, prompt_id: Any) -> None:
        self._entries.pop(prompt_id, None)

    def clear(self) -> None:
        self._entries = {}

    def __len__(self) -> int:
        return len(self._entries)
