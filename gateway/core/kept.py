"""A mapping that keeps at most so many entries, the oldest out first: what the hot path keeps of values it
made once for a key that comes again (a request head, a set of answer headers), bounded whatever clients send."""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Kept(dict[K, V]):
    """At most `size` entries (0: none kept). Read it as a dict; add with keep()."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def keep(self, key: K, value: V) -> V:
        """Keep `value` for `key`, letting the oldest entry go when full; returns `value`."""
        if self.size <= 0:
            return value
        if key not in self and len(self) >= self.size:
            del self[next(iter(self))]
        self[key] = value
        return value
