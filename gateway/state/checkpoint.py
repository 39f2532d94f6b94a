"""WAL checkpoints for the SQLite state store, run in a worker thread instead of on the event loop.

SQLite's automatic checkpoint runs inside whichever commit crosses the threshold, copying the WAL into
the database and fsyncing it: that made an occasional record_prompt hold the loop for an fsync.
The store turns it off on its connection and asks this class for a PASSIVE checkpoint every so many
writes, which copies the same pages on its own connection in a thread while commits go on.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from contextlib import closing
from pathlib import Path

# About SQLite's own default threshold (1000 WAL pages) at 4-5 pages per single-row write.
CHECKPOINT_EVERY_WRITES = 200

log = logging.getLogger(__name__)


class WalCheckpointer:
    """Counts writes; past the threshold, starts one background checkpoint (never two at once)."""

    def __init__(self, path: Path, busy_timeout_seconds: float) -> None:
        self._path = path
        self._busy_timeout_seconds = busy_timeout_seconds
        self._writes = 0
        self._running: asyncio.Future[None] | None = None

    def note_writes(self, count: int = 1) -> None:
        self._writes += count
        if self._writes >= CHECKPOINT_EVERY_WRITES and (self._running is None or self._running.done()):
            self._writes = 0
            self._running = asyncio.get_running_loop().run_in_executor(None, self._checkpoint)
            self._running.add_done_callback(self._report)

    async def wait(self) -> None:
        """Let a running checkpoint finish (before the store's connection closes)."""
        if self._running is not None and not self._running.done():
            await asyncio.wait([self._running])

    def _checkpoint(self) -> None:
        with closing(sqlite3.connect(self._path, timeout=self._busy_timeout_seconds)) as db:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def _report(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            # Not fatal: the pages stay in the WAL and the next checkpoint copies them.
            log.warning("sqlite state store: WAL checkpoint of %s failed: %s", self._path, future.exception())
