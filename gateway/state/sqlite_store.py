"""The embedded state store: one SQLite file, safely shared by gateway replicas on one host.

WAL with synchronous=NORMAL: every write is committed to the WAL before its call returns, so it survives
kill -9 of the process (only an OS crash or power loss can drop the last commits), at no fsync per write.
Calls run directly on the event loop: each is one primary-key statement that takes microseconds,
cheaper than a hop to a worker thread; the one slow step, the WAL checkpoint with its fsync, runs in a
thread (sqlite_checkpoint).

Group commit: a commit, not the statement, is most of a write's cost, so a record_prompt in a batch costs
a small part of one committed alone. Writes asked for in one turn of the event loop are queued and run
in one transaction at the end of that turn; each caller's await returns once its own write is committed,
so the guarantee is the same as one commit each. busy_timeout bounds the wait for another replica's
write lock, which each commit holds for its few statements only.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway.config.settings import StoreSettings
from gateway.state.checkpoint import WalCheckpointer
from gateway.state.store import PromptRecord, StoreError

SCHEMA_VERSION = 1
BUSY_TIMEOUT_SECONDS = 5.0
BACKSTOP_CHECKPOINT_PAGES = 10_000  # ~40 MB of WAL at 4 KiB pages
# Rows deleted per prune statement: each step holds the write lock (and the event loop) only briefly, so
# replicas and requests interleave with a large prune instead of waiting for all of it.
PRUNE_BATCH_ROWS = 100

# Statements that bring a schema of version N-1 to version N.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE prompts (
               prompt_id    TEXT PRIMARY KEY,
               backend      TEXT NOT NULL,
               user_name    TEXT,
               client_id    TEXT,
               submitted_at REAL NOT NULL
           ) WITHOUT ROWID""",
        "CREATE INDEX prompts_by_submitted_at ON prompts (submitted_at)",
        # count(*) reads the whole index (on the event loop, growing with the store); a counter kept
        # by triggers, in the same transaction as each change, makes count_prompts and the cap check O(1).
        "CREATE TABLE prompt_count (n INTEGER NOT NULL)",
        "INSERT INTO prompt_count (n) VALUES (0)",
        "CREATE TRIGGER prompts_inserted AFTER INSERT ON prompts BEGIN UPDATE prompt_count SET n = n + 1; END",
        "CREATE TRIGGER prompts_deleted AFTER DELETE ON prompts BEGIN UPDATE prompt_count SET n = n - 1; END",
        """CREATE TABLE preferences (
               user_name  TEXT PRIMARY KEY,
               backend    TEXT NOT NULL,
               updated_at REAL NOT NULL
           ) WITHOUT ROWID""",
    ),
}


class CommitFuture(asyncio.Future[int]):
    """What a write waits on: settled by the turn's commit, with the write's rowcount or its StoreError. Its
    waiter needs no task (nothing of the waiter's runs until it resumes, and nothing cancels the commit), so
    the fast path resumes it from this future's done-callback (datapath/fast/eager.py)."""


@contextmanager
def _as_store_error(action: str) -> Iterator[None]:
    try:
        yield
    except _STATEMENT_ERRORS as exc:
        raise StoreError(f"sqlite state store: {action} failed: {exc}") from exc


# What one statement can raise: SQLite's own errors, and a value it cannot bind (text that is not valid
# Unicode, such as a lone surrogate; an integer beyond 64 bits). Each fails its own call, never the store.
_STATEMENT_ERRORS = (sqlite3.Error, ValueError, OverflowError)


class SqliteStateStore:
    """StateStore on one SQLite connection. Use from one event loop."""

    answers_inline = True  # every statement runs on the loop; a write waits only for its turn's commit

    def __init__(self, connection: sqlite3.Connection, path: Path, retention_seconds: float, max_prompts: int) -> None:
        self._db = connection
        self.path = path
        self._retention_seconds = retention_seconds
        self._max_prompts = max_prompts
        self._closed = False
        self._checkpointer = WalCheckpointer(path, BUSY_TIMEOUT_SECONDS)
        # Writes queued for the commit at the end of this loop turn: (action, statement, params, rowcount).
        self._queued: list[tuple[str, str, tuple[Any, ...], asyncio.Future[int]]] = []

    @classmethod
    def open(cls, settings: StoreSettings) -> SqliteStateStore:
        """Open (creating the file, its directory and the schema if needed). Raises StoreError."""
        path = settings.path
        with _as_store_error(f"opening {path}"):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"sqlite state store: cannot create directory {path.parent}: {exc}") from exc
            # Autocommit (isolation_level=None): each statement is its own short transaction.
            # check_same_thread=False only lets a store opened before the loop started be used by it.
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False)
            try:
                mode = _enable_wal(db)
                if mode != "wal":
                    raise StoreError(f"sqlite state store: {path} cannot use WAL (journal_mode is {mode})")
                db.execute("PRAGMA synchronous = NORMAL")
                # WalCheckpointer checkpoints off the loop; SQLite's own stays as a backstop for bursts that
                # outrun it, at a threshold it should never reach.
                db.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_CHECKPOINT_PAGES}")
                _migrate(db, path)
            except BaseException:
                db.close()
                raise
        return cls(db, path, settings.retention_seconds, settings.max_prompts)

    async def record_prompt(self, record: PromptRecord) -> None:
        await self._write(
            "record_prompt",
            """INSERT INTO prompts (prompt_id, backend, user_name, client_id, submitted_at)
               VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (prompt_id) DO UPDATE SET backend = excluded.backend,
                   user_name = excluded.user_name, client_id = excluded.client_id,
                   submitted_at = excluded.submitted_at""",
            (record.prompt_id, record.backend, record.user, record.client_id, record.submitted_at),
        )

    async def forget_prompt(self, prompt_id: str) -> None:
        await self._write("forget_prompt", "DELETE FROM prompts WHERE prompt_id = ?", (prompt_id,))

    async def lookup_prompt(self, prompt_id: str) -> PromptRecord | None:
        try:  # on every /history/{id}, /view and queue call: a plain try, not _as_store_error's generator (dearer)
            row = self._db.execute(
                "SELECT prompt_id, backend, user_name, client_id, submitted_at FROM prompts WHERE prompt_id = ?",
                (prompt_id,),
            ).fetchone()
        except _STATEMENT_ERRORS as exc:
            raise StoreError(f"sqlite state store: lookup_prompt failed: {exc}") from exc
        return None if row is None else PromptRecord(*row)

    async def get_preference(self, user: str) -> str | None:
        with _as_store_error("get_preference"):
            row = self._db.execute("SELECT backend FROM preferences WHERE user_name = ?", (user,)).fetchone()
        return None if row is None else row[0]

    async def set_preference(self, user: str, backend: str) -> None:
        await self._write(
            "set_preference",
            """INSERT INTO preferences (user_name, backend, updated_at) VALUES (?, ?, ?)
               ON CONFLICT (user_name) DO UPDATE SET
                   backend = excluded.backend, updated_at = excluded.updated_at""",
            (user, backend, time.time()),
        )

    async def delete_preference(self, user: str) -> bool:
        return await self._write("delete_preference", "DELETE FROM preferences WHERE user_name = ?", (user,)) > 0

    # --- group commit ----------------------------------------------------------------------------------------

    async def _write(self, action: str, statement: str, params: tuple[Any, ...]) -> int:
        """Queue one write statement for this turn's transaction; return its rowcount once it is committed."""
        if self._closed:
            raise StoreError(f"sqlite state store: {action} failed: the store is closed")
        loop = asyncio.get_running_loop()
        if not self._queued:
            loop.call_soon(self._commit)
        committed: asyncio.Future[int] = CommitFuture(loop=loop)
        self._queued.append((action, statement, params, committed))
        return await committed

    def _commit(self) -> None:
        """Run the turn's queued writes in one transaction and tell each writer how its own went.

        The write lock is taken and released inside this one call: never held across an await, so stores
        sharing a loop (or replicas sharing a file) never wait on a commit that cannot run."""
        queued, self._queued = self._queued, []
        if not queued:
            return
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")  # waits up to busy_timeout for another replica's commit
        except sqlite3.Error as exc:
            for action, _, _, committed in queued:
                _settle(committed, StoreError(f"sqlite state store: {action} failed: {exc}"))
            return
        outcomes: list[tuple[asyncio.Future[int], int | StoreError]] = []
        for action, statement, params, committed in queued:
            try:  # a failed statement is undone alone; the others stand
                outcomes.append((committed, db.execute(statement, params).rowcount))
            except _STATEMENT_ERRORS as exc:
                outcomes.append((committed, StoreError(f"sqlite state store: {action} failed: {exc}")))
        lost: StoreError | None = None
        if not db.in_transaction:  # SQLite rolled the whole transaction back (an I/O error)
            lost = StoreError("sqlite state store: the transaction was rolled back; its writes were lost")
        else:
            try:
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                lost = StoreError(f"sqlite state store: commit failed: {exc}")
        if lost is None:
            self._checkpointer.note_writes(len(queued))
        for committed, outcome in outcomes:
            _settle(committed, lost or outcome)

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite ended it already; nothing of it is left to undo

    async def prune(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        removed = await self._delete_in_batches(now - self._retention_seconds, inclusive=False)
        cutoff = self._cap_cutoff()
        if cutoff is not None:
            removed += await self._delete_in_batches(cutoff, inclusive=True)
        return removed

    def _cap_cutoff(self) -> float | None:
        """submitted_at of the newest record beyond max_prompts (it and all older ones go), or None.

        Count and cut are read in one transaction (one snapshot), so replicas pruning at once never
        delete inside the newest max_prompts; the index scan is as long as the excess, not the table.
        """
        self._commit()  # this turn's writes first: the snapshot below is a transaction of its own
        with _as_store_error("prune"):
            self._db.execute("BEGIN")
            try:
                excess = self._db.execute("SELECT n FROM prompt_count").fetchone()[0] - self._max_prompts
                row = None
                if excess > 0:
                    row = self._db.execute(
                        "SELECT submitted_at FROM prompts ORDER BY submitted_at LIMIT 1 OFFSET ?", (excess - 1,)
                    ).fetchone()
            finally:
                self._db.execute("COMMIT")
        return None if row is None else row[0]

    async def _delete_in_batches(self, cutoff: float, *, inclusive: bool) -> int:
        comparison = "<=" if inclusive else "<"
        statement = (
            "DELETE FROM prompts WHERE prompt_id IN (SELECT prompt_id FROM prompts "
            f"WHERE submitted_at {comparison} ? ORDER BY submitted_at LIMIT {PRUNE_BATCH_ROWS})"
        )
        removed = 0
        while True:
            # One batch per commit; awaiting it lets requests run between batches.
            deleted = await self._write("prune", statement, (cutoff,))
            removed += deleted
            if deleted > 1:
                self._checkpointer.note_writes(deleted - 1)  # _commit counted the statement as one write
            if deleted < PRUNE_BATCH_ROWS:
                return removed

    async def count_prompts(self) -> int:
        with _as_store_error("count_prompts"):
            count: int = self._db.execute("SELECT n FROM prompt_count").fetchone()[0]
            return count

    async def ping(self) -> None:
        if self._closed:
            raise StoreError("sqlite state store: closed")
        with _as_store_error("ping"):
            self._db.execute("SELECT 1 FROM schema_version LIMIT 1").fetchone()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._commit()
            await self._checkpointer.wait()
            self._db.close()


def _settle(future: asyncio.Future[int], outcome: int | StoreError) -> None:
    if future.done():
        return  # its caller was cancelled; the write went with the others regardless
    if isinstance(outcome, StoreError):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _enable_wal(db: sqlite3.Connection) -> str:
    """Switch to WAL, retrying while another process does the same to a new file: that switch can answer
    "database is locked" at once, without waiting on busy_timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            mode: str = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            return mode
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to SCHEMA_VERSION. BEGIN IMMEDIATE takes the write lock first, so two
    processes opening a new file at once migrate it exactly once."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        found = db.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"sqlite state store: {path} has schema version {found}, newer than this gateway's "
                f"{SCHEMA_VERSION}; use a newer gateway or another store.path"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[version]:
                db.execute(statement)
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
