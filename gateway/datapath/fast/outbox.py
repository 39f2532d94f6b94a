"""Requests to upstreams leave at the end of the loop turn that made them, all together.

A backend on the same host as the gateway (a KernieGen beside it, a ComfyUI on a shared box) is woken by each
write it receives, and on a shared core it takes the core there and then: one write per request means one
switch of processes per request, each costing both sides their caches. Holding the requests of one turn (one
batch of client reads) and writing them at its end lets the backend wake once for the whole batch. A request
waits at most for the rest of its own turn, never for a timer.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Holder(Protocol):
    """A connection with bytes held for the end of the turn."""

    def write_held(self) -> None: ...


class Outbox:
    """The connections with a request held, written in the order they were held when the turn ends."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._held: list[Holder] = []

    def hold(self, connection: Holder) -> None:
        if not self._held:
            self._loop.call_soon(self._write)
        self._held.append(connection)

    def _write(self) -> None:
        held, self._held = self._held, []
        for connection in held:
            connection.write_held()
