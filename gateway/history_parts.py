"""Each backend's GET /history reply made ready for a merge, kept per backend and path: its entries with
their refs prefixed, their times, and each entry serialised once (an orjson.Fragment, whose bytes the merged
answer's serialisation copies as they are).

A merged answer is rebuilt whenever any backend's reply changed, and a backend's history changes once per
finished prompt. Kept parts make that rebuild cost what changed, not every backend's whole history again:
  - a reply equal to the one kept for its backend and path is not parsed at all;
  - a reply that is the kept one with entries added at its end (how ComfyUI's history grows, until it holds
    its maximum of 10,000 entries) parses only those entries;
  - any other reply is parsed whole, and kept in place of the old one.
Replies are compared byte for byte, so what is kept is always what that reply would give.

Bounded: replies plus their serialised entries stay under `max_bytes`, least recently used out first; what is
larger than that alone is prepared and not kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway import json_codec
from gateway.aggregate import NO_TIMESTAMP, HistoryItem, history_items
from gateway.rewrite import prefix_entry

# What an item costs besides its serialised entry (the tuple, its float, the Fragment and the prompt id).
_ITEM_OVERHEAD_BYTES = 200


@dataclass(frozen=True, slots=True)
class _Kept:
    body: bytes
    items: tuple[HistoryItem, ...]
    entry_bytes: int  # of the serialised entries

    @property
    def size(self) -> int:
        return len(self.body) + self.entry_bytes + len(self.items) * _ITEM_OVERHEAD_BYTES


class HistoryParts:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._kept: OrderedDict[tuple[str, str], _Kept] = OrderedDict()
        self._size = 0

    def items(self, backend: str, path: str, body: bytes) -> Sequence[HistoryItem]:
        """`body`, backend's reply to GET `path`, as items ready for aggregate.merge_items. Raises ValueError
        (json's own) when the body is not JSON."""
        key = (backend, path)
        kept = self._kept.get(key)
        if kept is not None and kept.body == body:
            self._kept.move_to_end(key)
            return kept.items
        added = _added_entries(kept.body, body) if kept is not None else None
        if kept is not None and added is not None and not _holds_any(kept.items, added):
            carried = kept.items[-1].timestamp if kept.items else NO_TIMESTAMP
            more, more_bytes = _prepare(backend, added, carried)
            items, entry_bytes = kept.items + more, kept.entry_bytes + more_bytes
        else:
            items, entry_bytes = _prepare(backend, json_codec.loads_exact(body), NO_TIMESTAMP)
        self._keep(key, _Kept(body, items, entry_bytes))
        return items

    @property
    def size_bytes(self) -> int:
        return self._size

    def _keep(self, key: tuple[str, str], kept: _Kept) -> None:
        self._drop(key)
        if kept.size > self.max_bytes:
            return
        while self._kept and self._size + kept.size > self.max_bytes:
            self._drop(next(iter(self._kept)))
        self._kept[key] = kept
        self._size += kept.size

    def _drop(self, key: tuple[str, str]) -> None:
        kept = self._kept.pop(key, None)
        if kept is not None:
            self._size -= kept.size


def _prepare(backend: str, body: Any, carried: float) -> tuple[tuple[HistoryItem, ...], int]:
    """The items of a parsed reply, each entry prefixed and serialised, and how many bytes those take."""
    serialised = 0

    def ready(entry: Any) -> orjson.Fragment:
        nonlocal serialised
        written = json_codec.dumps(prefix_entry(entry, backend))
        serialised += len(written)
        return orjson.Fragment(written)

    return tuple(history_items(backend, body, carried=carried, prepare=ready)), serialised


def _added_entries(old: bytes, new: bytes) -> dict[str, Any] | None:
    """The entries `new` holds after those of `old` when `new` is `old` with entries added at its end (`{A}` then
    `{A, B}`), else None. Parses only what was added."""
    core = old.rstrip()
    if len(core) < 3 or core[:1] != b"{" or core[-1:] != b"}" or not new.startswith(memoryview(core)[:-1]):
        return None  # `{}` gains its first entry without a comma: parsed whole, which costs nothing
    rest = new[len(core) - 1 :].lstrip()
    if rest[:1] != b",":
        return None
    try:
        added = json_codec.loads_exact(b"{" + rest[1:])
    except ValueError:
        return None  # the whole reply is parsed, and refused there if it is not JSON
    return added if isinstance(added, dict) and added else None


def _holds_any(items: Sequence[HistoryItem], added: dict[str, Any]) -> bool:
    """Whether an added entry repeats a prompt id already held: the whole reply then reads differently
    (json keeps the first place and the last value), so it is parsed whole."""
    return not added.keys().isdisjoint(item.prompt_id for item in items)
