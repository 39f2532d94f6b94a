"""Requests to upstreams leave at the end of the loop turn that made them, all together.

A backend on the same host as the gateway (a KernieGen beside it, a ComfyUI on a shared box) is woken by each
write it receives, and on a shared core it takes the core as that write returns. Written as they were made,
the requests of one turn (one batch of client reads) handed the core over in the middle of the turn's work,
each switch costing both sides their caches; written at its end, after everything else the turn does, they
interrupt nothing (the gateway's CPU per small request fell by about a tenth, its backend's too). Each write
still wakes the backend, which then answers about one request per wake-up: waking it once per turn would
take every request of the turn in one system call. A request waits at most for the rest of its own turn,
never for a timer.
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
