"""Merged answers for GET /history, /queue and /prompt when no backend was chosen: one ComfyUI-shaped body
built from every backend's own body. Pure; the caller fetches the parts and leaves out backends that are down.

History order (ComfyUI keeps insertion order, oldest first): entries are merged by the timestamp of their
`execution_start` status message (else the first message that has one). Each backend's own order is never
changed: an entry without a timestamp takes the one of the entry before it on the same backend, or sorts
before everything when it has none; equal times keep the order of `parts`. A prompt id held by two
backends (client-chosen ids can collide) keeps only the later entry in that order, at its own place.
"""

from __future__ import annotations

import heapq
import itertools
import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

NO_TIMESTAMP = -math.inf


class HistoryItem(NamedTuple):
    """One history entry in merged order, with the backend that holds it (a tuple: 20,000 of them are made
    for a large merge, at a third of a frozen dataclass's cost)."""

    backend: str
    prompt_id: str
    entry: Any
    timestamp: float


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
        return float(value)
    return None


def entry_timestamp(entry: Any) -> float | None:
    """The `execution_start` timestamp of a history entry, else its first message's, else None."""
    try:
        messages = entry["status"]["messages"]
    except (KeyError, TypeError):
        return None
    if not isinstance(messages, list):
        return None
    first: float | None = None
    for message in messages:
        if not (isinstance(message, list) and len(message) == 2 and isinstance(message[1], dict)):
            continue
        stamp = _number(message[1].get("timestamp"))
        if stamp is None:
            continue
        if message[0] == "execution_start":
            return stamp
        if first is None:
            first = stamp
    return first


def order_items(streams: Sequence[Sequence[HistoryItem]]) -> list[HistoryItem]:
    """Every part's items (`streams`, in parts order) in merged time order, duplicates of a prompt id
    resolved (later wins)."""
    if all(_in_time_order(stream) for stream in streams):
        # The usual case: a stable sort of the streams one after another is the merge below (ties keep
        # parts order, then each part's own order), and faster: timsort merges the sorted runs.
        merged = sorted(itertools.chain.from_iterable(streams), key=_TIMESTAMP)
    else:
        # heapq.merge takes from the heads of the streams, so no backend's own order is ever reordered, even
        # where its timestamps step back. Heads of two streams differ in the part index, so the comparison
        # never reaches the items.
        keyed = [[(item.timestamp, index, item) for item in stream] for index, stream in enumerate(streams)]
        merged = [item for _, _, item in heapq.merge(*keyed)]
    last_position = {item.prompt_id: position for position, item in enumerate(merged)}
    if len(last_position) == len(merged):
        return merged  # no prompt id held twice (the usual case)
    return [item for position, item in enumerate(merged) if last_position[item.prompt_id] == position]


_TIMESTAMP = operator.itemgetter(3)  # HistoryItem.timestamp


def _in_time_order(stream: Sequence[HistoryItem]) -> bool:
    stamps = [item.timestamp for item in stream]
    return stamps == sorted(stamps)


def parse_history_paging(query: Mapping[str, str]) -> tuple[int | None, int | None]:
    """`max_items` and `offset` of a GET /history query, read as ComfyUI reads them (`int()` of the raw
    value, so " 5", "+5" and "-1" are accepted). Where ComfyUI answers 500 (`max_items=abc`, `offset=`),
    this raises ValueError naming the parameter, for the caller to answer 400."""
    values: list[int | None] = []
    for name in ("max_items", "offset"):
        raw = query.get(name)
        if raw is None:
            values.append(None)
            continue
        try:
            values.append(int(raw))
        except ValueError:
            raise ValueError(f"/history {name} must be an integer, got {raw[:40]!r}") from None
    return values[0], values[1]


def page_like_comfyui(items: Sequence[Any], max_items: int | None, offset: int | None) -> Sequence[Any]:
    """Slice exactly as ComfyUI's `PromptQueue.get_history(max_items=, offset=)` walks its dict.

    ComfyUI's GET /history passes `offset` -1 when absent. A negative offset with `max_items` becomes
    `len - max_items` (the newest N); a negative offset without it means everything. The walk adds an entry
    before it compares the count with `max_items`, so `max_items <= 0` with `offset >= 0` still yields one
    entry, while `max_items=0` alone yields none. An offset past the end yields none.
    """
    if offset is None:
        offset = -1
    if offset < 0 and max_items is not None:
        offset = len(items) - max_items
    start = max(offset, 0)
    if max_items is None:
        return items[start:]
    return items[start : start + max(max_items, 1)]


def merge_items(
    streams: Sequence[Sequence[HistoryItem]], max_items: int | None, offset: int | None
) -> dict[str, Any]:
    """One `/history` body from every part's items (history_parts.HistoryParts.items), merged in time order
    and paged exactly as ComfyUI pages one history."""
    page = page_like_comfyui(order_items(streams), max_items, offset)
    return {item.prompt_id: item.entry for item in page}


def backend_history_query(max_items: int | None, offset: int | None) -> dict[str, str]:
    """Query to send each backend so its answer holds every entry the merged page can need.

    The merged order keeps every backend's own order, so the merged first K (or last K) entries come from
    each backend's first K (or last K). `{}` means the whole history (no `max_items`: every entry from the
    offset on can come from anywhere). Exact when every entry has a timestamp and no prompt id is held by
    two backends inside the window.
    """
    if max_items is None:
        return {}
    if offset is None or offset < 0:
        return {"max_items": str(max(max_items, 0))}
    return {"max_items": str(offset + max(max_items, 1)), "offset": "0"}


def _queue_number(item: Any) -> tuple[int, float]:
    number = _number(item[0]) if isinstance(item, list) and item else None
    return (0, number) if number is not None else (1, 0.0)


def merge_queue(parts: Sequence[tuple[str, Any]]) -> dict[str, list[Any]]:
    """One `/queue` body: running items of every backend in `parts` order; pending items of every backend
    ordered by their `number` (then `parts` order; a non-number sorts last). Items are passed through as
    they are, so every 5-element array stays 5 elements."""
    running: list[Any] = []
    pending: list[tuple[tuple[int, float], int, Any]] = []
    for index, (_backend, body) in enumerate(parts):
        if not isinstance(body, dict):
            continue
        body_running = body.get("queue_running")
        if isinstance(body_running, list):
            running.extend(body_running)
        body_pending = body.get("queue_pending")
        if isinstance(body_pending, list):
            pending.extend((_queue_number(item), index, item) for item in body_pending)
    pending.sort(key=lambda t: (t[0], t[1]))
    return {"queue_running": running, "queue_pending": [item for _, _, item in pending]}


def merge_prompt_info(parts: Sequence[tuple[str, Any]]) -> dict[str, dict[str, int]]:
    """One GET /prompt body: `queue_remaining` summed over the parts (a part without a count adds 0)."""
    total = 0
    for _backend, body in parts:
        try:
            remaining = body["exec_info"]["queue_remaining"]
        except (KeyError, TypeError):
            continue
        if isinstance(remaining, int) and not isinstance(remaining, bool):
            total += remaining
    return {"exec_info": {"queue_remaining": total}}
