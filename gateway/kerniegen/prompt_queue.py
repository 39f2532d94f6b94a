"""The prompt queue: pending prompts in ComfyUI's heap order, the one running prompt, the `number`
counter, and the change notification that drives the `status` broadcasts."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# ComfyUI moves these extra_data keys aside so /queue and /history never show them.
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


@dataclass(frozen=True)
class QueueItem:
    """One accepted prompt, as ComfyUI's 6-tuple (number, id, prompt, extra_data, outputs, sensitive)."""

    number: int | float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs_to_execute: list[str]
    sensitive: dict[str, Any]

    def as_list(self) -> list[Any]:
        """The 5-element array /queue and /history show (sensitive data left out)."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs_to_execute]

    @property
    def client_id(self) -> Any:
        """The submitting client's id (ComfyUI's server.client_id), None when it gave none."""
        return self.extra_data.get("client_id")


class QueueFull(Exception):
    """More pending prompts than the configured bound."""


class PromptQueue:
    """Pending prompts plus the running one; every change calls `on_change` (a status broadcast)."""

    def __init__(self, on_change: Callable[[], None], max_pending: int) -> None:
        self._on_change = on_change
        self._max_pending = max_pending
        # Entries are (number, prompt_id, arrival, item): ComfyUI's heap compares (number, prompt_id, ...)
        # tuples, so its pending list comes out in the same heap order; `arrival` only breaks full ties.
        self._heap: list[tuple[Any, str, int, QueueItem]] = []
        self._arrivals = 0
        self._running: QueueItem | None = None
        self._available = asyncio.Event()
        self._next_number = 0

    def take_number(self, front: bool) -> int:
        """ComfyUI's server.number: counts every parsed submission; `front` makes it negative."""
        number = -self._next_number if front else self._next_number
        self._next_number += 1
        return number

    def put(self, item: QueueItem) -> None:
        if len(self._heap) >= self._max_pending:
            raise QueueFull(f"{len(self._heap)} prompts are already pending")
        self._arrivals += 1
        heapq.heappush(self._heap, (item.number, item.prompt_id, self._arrivals, item))
        self._available.set()
        self._on_change()

    async def get(self) -> QueueItem:
        """Wait for the next prompt and mark it running."""
        while not self._heap:
            self._available.clear()
            await self._available.wait()
        item = heapq.heappop(self._heap)[3]
        self._running = item
        self._on_change()
        return item

    def task_done(self) -> None:
        self._running = None
        self._on_change()

    @property
    def running(self) -> QueueItem | None:
        return self._running

    def remaining(self) -> int:
        """queue_remaining: pending plus running."""
        return len(self._heap) + (1 if self._running is not None else 0)

    def pending_items(self) -> list[QueueItem]:
        """Pending prompts in heap order (not necessarily sorted), as ComfyUI lists them."""
        return [entry[3] for entry in self._heap]

    def clear(self) -> None:
        self._heap = []
        self._on_change()

    def delete(self, prompt_id: object) -> bool:
        """Remove the first pending prompt with this id; a running prompt is never touched."""
        for index, entry in enumerate(self._heap):
            if entry[1] == prompt_id:
                if len(self._heap) == 1:
                    self.clear()  # ComfyUI wipes the queue here, which broadcasts once more
                else:
                    self._heap.pop(index)
                    heapq.heapify(self._heap)
                self._on_change()
                return True
        return False
