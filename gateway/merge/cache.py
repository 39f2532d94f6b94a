"""Merged answers kept with the backend replies they were made from, so a poll that finds every backend's
reply unchanged gets the same answer without parsing, merging and serialising again.

A merged answer is a pure function of the replies and the request's paging (part of the key), so equal
replies give an equal answer: the cache can never serve a stale one. It pays where merges cost most:
clients poll GET /history and /queue every second or two, while a backend's history changes once per
finished prompt. Replies are compared byte for byte (memcmp, far cheaper than parsing them); only bytes
are kept, never parsed objects, so the garbage collector has nothing more to walk.
Bounded: replies plus answers of all entries stay under `max_bytes`, least recently used out first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

Replies = Sequence[tuple[str, bytes]]  # (backend, its reply body), in the order they are merged


@dataclass(frozen=True, slots=True)
class Merged:
    answered: tuple[str, ...]  # the backends whose replies are in the answer
    body: bytes  # the merged answer
    not_json: tuple[tuple[str, str], ...] = ()  # (backend, why): replies left out for not being JSON


@dataclass(frozen=True, slots=True)
class _Entry:
    replies: tuple[tuple[str, bytes], ...]
    merged: Merged
    size: int


class MergeCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._size = 0

    def get(self, key: str, replies: Replies) -> Merged | None:
        """The answer made from exactly these replies for this key, or None."""
        entry = self._entries.get(key)
        if entry is None or len(entry.replies) != len(replies):
            return None
        for (name, body), (kept_name, kept_body) in zip(replies, entry.replies, strict=True):
            if name != kept_name or body != kept_body:
                return None
        self._entries.move_to_end(key)
        return entry.merged

    def put(self, key: str, replies: Replies, merged: Merged) -> None:
        self._drop(key)
        size = sum(len(body) for _, body in replies) + len(merged.body)
        if size > self.max_bytes:
            return  # larger than the whole cache: never kept
        while self._entries and self._size + size > self.max_bytes:
            self._drop(next(iter(self._entries)))
        self._entries[key] = _Entry(tuple(replies), merged, size)
        self._size += size

    @property
    def size_bytes(self) -> int:
        return self._size

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._size -= entry.size
