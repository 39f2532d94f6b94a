"""Each backend's GET /history reply made ready for a merge, kept per backend and path: its entries and their
times, each entry made ready for an answer (refs prefixed, serialised once as an orjson.Fragment, whose
bytes the merged answer's serialisation copies as they are) the first time an answer holds it. A paged
reply's entries are never all in the merged page: about half of them are never made ready.

A merged answer is rebuilt whenever any backend's reply changed, and a backend's history changes once per
finished prompt. Kept parts make that rebuild cost what changed, not every backend's whole history again:
  - a reply equal to the one kept for its backend and path is not parsed at all;
  - a reply that is the kept one with entries added at its end (how ComfyUI's history grows, until it holds
    its maximum of 10,000 entries) parses only those entries;
  - any other reply is parsed whole, and kept in place of the old one.
Replies are compared byte for byte, so what is kept is always what that reply would give.

Bounded: replies plus their entries, counted as twice the reply's bytes (an entry serialised again is about
as long as in the reply) plus a fixed cost per entry, stay under `max_bytes`, least recently used out first;
what is larger than that alone is used once and not kept.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway import json_codec
from gateway.aggregate import NO_TIMESTAMP, HistoryItem, history_items
from gateway.rewrite import prefix_entry

# What an item costs besides its entry's bytes (the tuple, its float, the Entry and the prompt id).
_ITEM_OVERHEAD_BYTES = 200


class Entry:
    """One history entry of a kept reply: as parsed until an answer first holds it, then ready for answers."""

    __slots__ = ("_backend", "_value")

    def __init__(self, backend: str, parsed: Any) -> None:
        self._backend = backend
        self._value = parsed

    def ready(self) -> orjson.Fragment:
        """The entry with its refs prefixed with its backend's name, serialised (once)."""
        value = self._value
        if type(value) is not orjson.Fragment:
            value = self._value = orjson.Fragment(json_codec.dumps(prefix_entry(value, self._backend)))
        return value


def ready_answer(merged: dict[str, Entry]) -> dict[str, orjson.Fragment]:
    """A merged page of kept entries (aggregate.merge_items of HistoryParts' items) as an answer to serialise."""
    return {prompt_id: entry.ready() for prompt_id, entry in merged.items()}


@dataclass(frozen=True, slots=True)
class _Kept:
    body: bytes
    items: tuple[HistoryItem, ...]

    @property
    def size(self) -> int:
        return 2 * len(self.body) + len(self.items) * _ITEM_OVERHEAD_BYTES


class HistoryParts:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._kept: OrderedDict[tuple[str, str], _Kept] = OrderedDict()
        self._size = 0

    def items(self, backend: str, path: str, body: bytes) -> Sequence[HistoryItem]:
        """`body`, backend's reply to GET `path`, as items for aggregate.merge_items, each holding an Entry.
        Raises ValueError (json's own) when the body is not JSON."""
        key = (backend, path)
        kept = self._kept.get(key)
        if kept is not None and kept.body == body:
            self._kept.move_to_end(key)
            return kept.items
        added = _added_entries(kept.body, body) if kept is not None else None
        if kept is not None and added is not None and not _holds_any(kept.items, added):
            carried = kept.items[-1].timestamp if kept.items else NO_TIMESTAMP
            items = kept.items + _items(backend, added, carried)
        else:
            items = _items(backend, json_codec.loads_exact(body), NO_TIMESTAMP)
        self._keep(key, _Kept(body, items))
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


def _items(backend: str, body: Any, carried: float) -> tuple[HistoryItem, ...]:
    return tuple(history_items(backend, body, carried=carried, prepare=functools.partial(Entry, backend)))


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
