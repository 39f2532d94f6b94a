"""Each backend's GET /history reply made ready for a merge, kept per backend and path: its entries and their
times, each entry made ready for an answer (refs prefixed) the first time an answer holds it. A paged
reply's entries are never all in the merged page: about half of them are never made ready.

A reply is read two levels deep (json_codec.history_entries): each entry as its members' own text. Only
an entry's `status` (for its time) and `outputs` (for its refs) are read further; its prompt graph, the
bulk of it, is passed on as the backend wrote it (read in a fraction of the time building every object
takes, and written out without being serialised again). A reply that reader cannot vouch for is read
by json_codec.loads_exact, and its entries are serialised again once each.

A merged answer is rebuilt whenever any backend's reply changed, and a backend's history changes once per
finished prompt. Kept parts make that rebuild cost what changed, not every backend's whole history again:
  - a reply equal to the one kept for its backend and path is not read at all;
  - a reply that is the kept one with entries added at its end (how ComfyUI's history grows, until it holds
    its maximum of 10,000 entries) reads only those entries;
  - any other reply is read whole, and kept in place of the old one.
Replies are compared byte for byte, so what is kept is always what that reply would give.

Bounded: each kept reply counts its bytes, what its entries hold or view besides them (the reply they were
read from before it grew; or, for entries json read, their text written again, about as long as the reply)
and a fixed cost per entry; all stay under `max_bytes`, least recently used out first. What is larger than
that alone is used once and not kept. Two backends of 10,000 entries (14 MB replies) take ~46 MB, ~75 MB
once both have grown.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from gateway.core import json_codec
from gateway.core.json_codec import Raw
from gateway.merge.aggregate import NO_TIMESTAMP, HistoryItem, entry_timestamp
from gateway.outputs.refs import prefix_entry, prefix_entry_members

# What an item costs besides its entry's text: the tuple, its float, the Entry, the prompt id, the members'
# mapping and views, and the entry's prefixed outputs once ready (measured: ~840 bytes).
_ITEM_OVERHEAD_BYTES = 900


# An entry made ready for answers: its members' text with `outputs` prefixed, or the whole entry's text.
Ready = dict[str, Raw] | Raw


class Entry:
    """One history entry of a kept reply: as read until an answer first holds it, then ready for answers."""

    __slots__ = ("_backend", "_value", "_ready")

    def __init__(self, backend: str, value: Any) -> None:
        self._backend = backend
        self._value = value  # {member: Raw} as history_entries reads it, or _Parsed: the entry as json reads it
        self._ready: Ready | None = None

    def ready(self) -> Ready:
        """The entry with its refs prefixed with its backend's name, for json_codec.dumps_raw (made once)."""
        if self._ready is None:
            self._ready = _prefixed(self._value, self._backend)
            self._value = None
        return self._ready


def ready_answer(merged: dict[str, Entry]) -> dict[str, Ready]:
    """A merged page of kept entries (aggregate.merge_items of HistoryParts' items) as an answer for
    json_codec.dumps_raw."""
    return {prompt_id: entry.ready() for prompt_id, entry in merged.items()}


def _prefixed(value: Any, backend: str) -> Ready:
    if type(value) is _Parsed:
        return json_codec.raw(json_codec.dumps(prefix_entry(value.entry, backend)))
    return prefix_entry_members(value, backend)


@dataclass(frozen=True, slots=True)
class _Kept:
    body: bytes
    items: tuple[HistoryItem, ...]
    other_bytes: int  # what the items hold or view besides `body`
    views_body: bool  # whether the items view `body` itself (read whole by history_entries)

    @property
    def size(self) -> int:
        return len(self.body) + self.other_bytes + len(self.items) * _ITEM_OVERHEAD_BYTES


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
        grown = _added_entries(kept.body, body) if kept is not None else None
        if kept is not None and grown is not None and not _holds_any(kept.items, grown.read.entries):
            carried = kept.items[-1].timestamp if kept.items else NO_TIMESTAMP
            # The kept items go on viewing the reply they were read from; the added ones view their own text.
            other = kept.other_bytes + (len(kept.body) if kept.views_body else 0) + grown.text_bytes
            fresh = _Kept(body, kept.items + _items(backend, grown.read, carried), other, views_body=False)
        else:
            read = _read(body)
            fresh = _Kept(body, _items(backend, read, NO_TIMESTAMP), read.other_bytes(len(body)),
                          views_body=read.as_text)
        self._keep(key, fresh)
        return fresh.items

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


class _Parsed(NamedTuple):
    """An entry as json reads it (where json_codec.history_entries could not read its reply), told apart from
    the {member: text} mapping that reader gives."""

    entry: Any


@dataclass(frozen=True, slots=True)
class _Read:
    entries: Any  # {prompt_id: {member: Raw}} when `as_text`, else what json reads (a mapping, or not)
    as_text: bool

    def other_bytes(self, text_bytes: int) -> int:
        """What the entries hold besides the text they were read from: their text written again, for json's."""
        return 0 if self.as_text else text_bytes


def _read(text: bytes) -> _Read:
    """`text`'s entries, as their members' text where json_codec.history_entries can read them, else as json
    reads them (raises ValueError, json's own, when the text is not JSON)."""
    entries = json_codec.history_entries(text)
    if entries is None:
        return _Read(json_codec.loads_exact(text), as_text=False)
    return _Read(entries, as_text=True)


def _items(backend: str, read: _Read, carried: float) -> tuple[HistoryItem, ...]:
    if not isinstance(read.entries, dict):
        return ()
    items = []
    for prompt_id, entry in read.entries.items():
        if read.as_text:
            status = entry.get("status")
            stamp = None if status is None else entry_timestamp({"status": json_codec.loads_exact(status)})
        else:
            stamp, entry = entry_timestamp(entry), _Parsed(entry)
        if stamp is not None:
            carried = stamp
        items.append(HistoryItem(backend, prompt_id, Entry(backend, entry), carried))
    return tuple(items)


@dataclass(frozen=True, slots=True)
class _Grown:
    read: _Read  # the entries added at the end
    text_bytes: int  # what they hold or view: the added text (read as text), or about as much (read by json)


def _added_entries(old: bytes, new: bytes) -> _Grown | None:
    """The entries `new` holds after those of `old` when `new` is `old` with entries added at its end (`{A}` then
    `{A, B}`), else None. Reads only what was added."""
    core = old.rstrip()
    if len(core) < 3 or core[:1] != b"{" or core[-1:] != b"}" or not new.startswith(memoryview(core)[:-1]):
        return None  # `{}` gains its first entry without a comma: read whole, which costs nothing
    rest = new[len(core) - 1 :].lstrip()
    if rest[:1] != b",":
        return None
    text = b"{" + rest[1:]
    try:
        added = _read(text)
    except ValueError:
        return None  # the whole reply is read, and refused there if it is not JSON
    return _Grown(added, len(text)) if isinstance(added.entries, dict) and added.entries else None


def _holds_any(items: Sequence[HistoryItem], added: dict[str, Any]) -> bool:
    """Whether an added entry repeats a prompt id already held: the whole reply then reads differently
    (json keeps the first place and the last value), so it is read whole."""
    return not added.keys().isdisjoint(item.prompt_id for item in items)
