"""How long each server's queue is, as far as this gateway knows: the depth its last poll read
(observe/pollers.py), plus the prompts this gateway sent it since. Where a pool's next prompt goes
(pipeline/place.py) is read from here."""

from __future__ import annotations

from collections.abc import Sequence


class QueueLengths:
    def __init__(self) -> None:
        self._polled: dict[str, int] = {}
        self._sent: dict[str, int] = {}
        self._turn = 0

    def polled(self, server: str, depth: int) -> None:
        """A poll read the server's queue: what was sent before it is in `depth`."""
        self._polled[server] = depth
        self._sent[server] = 0

    def sent(self, server: str) -> None:
        self._sent[server] = self._sent.get(server, 0) + 1

    def length(self, server: str) -> int:
        return self._polled.get(server, 0) + self._sent.get(server, 0)

    def shortest(self, servers: Sequence[str]) -> str:
        """The server with the shortest queue; among equals, each in turn (round robin)."""
        lengths = [self.length(server) for server in servers]
        low = min(lengths)
        tied = [server for server, length in zip(servers, lengths, strict=True) if length == low]
        self._turn += 1
        return tied[self._turn % len(tied)]
