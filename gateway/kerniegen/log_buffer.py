"""KernieGen's recent log lines, kept the way ComfyUI's log interceptor keeps its console output: a
bounded ring of `{"t": iso time, "m": text}` entries for /internal/logs, plus live `logs` messages
to the WebSocket clients that subscribed (the UI's terminal panel)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any

# ComfyUI keeps the last 300 (older builds) to 1000 entries; the terminal panel shows them all.
DEFAULT_MAX_ENTRIES = 1000
MAX_MESSAGE_CHARS = 8 * 1024  # one huge record (a traceback of a traceback) must not fill memory
MAX_SUBSCRIBERS = 64
# What ComfyUI reports when it has no terminal to measure (its TerminalService fallback).
TERMINAL_SIZE = {"cols": 80, "rows": 24}

LogEntry = dict[str, str]
Deliver = Callable[[str, list[LogEntry]], None]  # (client id, new entries), called on the event loop


class LogBuffer(logging.Handler):
    """A logging handler that remembers what it saw; records may arrive from any thread."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        super().__init__(level=logging.INFO)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self._guard = threading.Lock()  # records come from the worker thread too
        self._entries: deque[LogEntry] = deque(maxlen=max_entries)
        self._subscribers: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deliver: Deliver | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)[:MAX_MESSAGE_CHARS] + "\n"
        except Exception:  # logging's own contract: a handler never raises into the caller
            self.handleError(record)
            return
        entry = {"t": datetime.fromtimestamp(record.created).isoformat(), "m": text}
        with self._guard:
            self._entries.append(entry)
            loop, deliver, subscribers = self._loop, self._deliver, tuple(self._subscribers)
        if loop is not None and deliver is not None and subscribers and not loop.is_closed():
            loop.call_soon_threadsafe(_deliver_all, deliver, subscribers, [entry])

    def entries(self) -> list[LogEntry]:
        with self._guard:
            return list(self._entries)

    def as_text(self) -> str:
        """GET /internal/logs: every entry as "<time> - <message>", joined."""
        return "".join(f"{entry['t']} - {entry['m']}" for entry in self.entries())

    def attach(self, loop: asyncio.AbstractEventLoop, deliver: Deliver) -> None:
        """Start pushing new entries to subscribers through `deliver`, on `loop`."""
        with self._guard:
            self._loop, self._deliver = loop, deliver

    def detach(self) -> None:
        with self._guard:
            self._loop, self._deliver = None, None
            self._subscribers.clear()

    def subscribe(self, client_id: str, enabled: bool) -> bool:
        """PATCH /internal/logs/subscribe; False when the subscriber bound is reached."""
        with self._guard:
            if not enabled:
                self._subscribers.discard(client_id)
                return True
            if client_id not in self._subscribers and len(self._subscribers) >= MAX_SUBSCRIBERS:
                return False
            self._subscribers.add(client_id)
            return True


def logs_message(entries: list[LogEntry]) -> dict[str, Any]:
    """The `data` of a `logs` WebSocket message, as ComfyUI's terminal service sends it."""
    return {"entries": entries, "size": dict(TERMINAL_SIZE)}


def _deliver_all(deliver: Deliver, subscribers: tuple[str, ...], entries: list[LogEntry]) -> None:
    for client_id in subscribers:
        deliver(client_id, entries)
