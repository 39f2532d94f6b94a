"""Timeouts without a timer per request: every connection keeps one `deadline` number, and one periodic sweep
expires the ones that have passed.

Moving a deadline is an attribute store (no TimerHandle to cancel and re-arm on every read), so the hot path
pays nothing for its timeouts; the price is precision, one tick (a quarter of the shortest timeout, 50 ms to
1 s), which no client can tell from the timeout itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Protocol

log = logging.getLogger("comfy_gateway.fastpath")

NEVER = math.inf


class Expiring(Protocol):
    deadline: float  # loop.time() after which expire() is called; NEVER when nothing is awaited

    def expire(self, now: float) -> None: ...


class Deadlines:
    """The set of watched connections and the sweep that expires them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick_seconds: float) -> None:
        self._loop = loop
        self._tick = tick_seconds
        self._watched: set[Expiring] = set()
        self._handle: asyncio.TimerHandle | None = None

    def watch(self, item: Expiring) -> None:
        self._watched.add(item)

    def forget(self, item: Expiring) -> None:
        self._watched.discard(item)

    def start(self) -> None:
        if self._handle is None:
            self._handle = self._loop.call_later(self._tick, self._sweep)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _sweep(self) -> None:
        now = self._loop.time()
        try:
            for item in [item for item in self._watched if item.deadline <= now]:
                try:
                    item.expire(now)
                except Exception:  # one broken connection must not stop every other timeout
                    log.exception("expiring %r failed", item)
        finally:
            self._handle = self._loop.call_later(self._tick, self._sweep)
