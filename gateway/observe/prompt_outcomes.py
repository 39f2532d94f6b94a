"""Prompts submitted through this gateway process and not yet seen finished, and how to read a finished one's
outcome and execution time from its ComfyUI history entry. Pure: no I/O (metrics_pollers does the reading).

Only prompts this process submitted are followed, so `completed + failed <= submitted` per backend, and several
worker processes or replicas in front of one backend never count the same prompt twice.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Outcome = Literal["completed", "failed"]

# Bounds: a prompt the backend never finishes (deleted from its queue, or lost with a backend restart) is
# forgotten after a day, and at most this many are followed per backend (the oldest is forgotten first).
MAX_FOLLOWED_PER_BACKEND = 10_000
MAX_FOLLOW_SECONDS = 24 * 3600.0

_START = "execution_start"
_ENDS = frozenset({"execution_success", "execution_error", "execution_interrupted"})


@dataclass(frozen=True, slots=True)
class FinishedPrompt:
    outcome: Outcome
    execution_seconds: float | None  # None when the entry carries no usable start and end timestamps


class SubmittedPrompts:
    """Per backend, prompt_id → submission time (monotonic), in submission order."""

    def __init__(
        self,
        backends: Collection[str],
        *,
        max_per_backend: int = MAX_FOLLOWED_PER_BACKEND,
        max_age_seconds: float = MAX_FOLLOW_SECONDS,
    ) -> None:
        self._waiting: dict[str, dict[str, float]] = {name: {} for name in backends}
        self._max = max_per_backend
        self._max_age = max_age_seconds

    def add(self, backend: str, prompt_id: str, now: float | None = None) -> None:
        waiting = self._waiting.get(backend)
        if waiting is None:
            return
        waiting.pop(prompt_id, None)  # a re-used prompt_id moves to the end: the order stays submission order
        waiting[prompt_id] = time.monotonic() if now is None else now
        if len(waiting) > self._max:
            del waiting[next(iter(waiting))]

    def waiting(self, backend: str) -> Mapping[str, float]:
        return self._waiting.get(backend, {})

    def take(self, backend: str, prompt_id: str) -> bool:
        """Stop following a prompt; True if it was followed."""
        return self._waiting.get(backend, {}).pop(prompt_id, None) is not None

    def forget_older_than_max_age(self, backend: str, now: float | None = None) -> int:
        waiting = self._waiting.get(backend, {})
        cutoff = (time.monotonic() if now is None else now) - self._max_age
        stale = []
        for pid, at in waiting.items():  # submission order: the first young one ends the search
            if at >= cutoff:
                break
            stale.append(pid)
        for pid in stale:
            del waiting[pid]
        return len(stale)


def read_finished(entry: Any) -> FinishedPrompt | None:
    """The outcome of a ComfyUI history entry (`status.status_str`), and the time between its
    `execution_start` and `execution_success|error|interrupted` messages (timestamps in ms). None when the entry
    is not a finished prompt's."""
    status = entry.get("status") if isinstance(entry, dict) else None
    if not isinstance(status, dict):
        return None
    status_str = status.get("status_str")
    if status_str == "success":
        outcome: Outcome = "completed"
    elif status_str == "error":
        outcome = "failed"
    else:
        return None
    return FinishedPrompt(outcome, _execution_seconds(status.get("messages")))


def _execution_seconds(messages: Any) -> float | None:
    if not isinstance(messages, list):
        return None
    started = ended = None
    for message in messages:
        if not (isinstance(message, list) and len(message) == 2 and isinstance(message[1], dict)):
            continue
        event, data = message
        stamp = data.get("timestamp")
        if not isinstance(stamp, (int, float)) or isinstance(stamp, bool):
            continue
        if event == _START:
            started = stamp
        elif event in _ENDS:
            ended = stamp
    if started is None or ended is None or ended < started:
        return None
    return (ended - started) / 1000.0
