"""/history answers with their output refs prefixed, kept per backend and path while the backend answers the
same bytes again: a client polling a finished prompt, or a page polling its history, is answered with what was
made for the poll before instead of the reply being read and written again (a pure function of the reply and
the backend, so the answer cannot differ). Bounded by what is kept, in bytes, least recently used out first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from gateway.outputs import refs

# A kept answer costs its reply, its rewrite, its path and this for the entry itself.
_ENTRY_BYTES = 200


class _Kept(NamedTuple):
    reply: bytes
    prefixed: bytes
    size: int


class KeptHistory:
    """refs.prefixed_history_text, kept: for `max_bytes` 0 every reply is read."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        # An answer larger than this is made every time: one large history must not push out every poll.
        self.max_entry_bytes = max_bytes // 8
        self._kept: OrderedDict[tuple[str, str], _Kept] = OrderedDict()
        self._size = 0

    @property
    def size_bytes(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self._kept)

    def prefixed(self, backend: str, path: str, reply: bytes) -> bytes:
        """`reply`, backend's answer to GET `path`, with its refs prefixed. Raises ValueError (json's own) when
        the reply is not JSON, as refs.prefixed_history_text does."""
        key = (backend, path)
        kept = self._kept.get(key)
        if kept is not None:
            if kept.reply == reply:
                self._kept.move_to_end(key)
                return kept.prefixed
            self._drop(key)
        prefixed = refs.prefixed_history_text(reply, backend)
        size = len(reply) + len(prefixed) + len(path) + len(backend) + _ENTRY_BYTES
        if size <= self.max_entry_bytes:
            while self._kept and self._size + size > self.max_bytes:
                self._drop(next(iter(self._kept)))
            self._kept[key] = _Kept(reply, prefixed, size)
            self._size += size
        return prefixed

    def _drop(self, key: tuple[str, str]) -> None:
        kept = self._kept.pop(key, None)
        if kept is not None:
            self._size -= kept.size
