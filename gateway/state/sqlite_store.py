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

Opening checks the file before writing anything to it (filecheck.py): a file that is not a database, is
truncated or damaged, or holds another application's tables or a newer schema is refused with StoreRefused,
untouched. At run time a statement that finds the file damaged fails its own call (503 store_unavailable) and
from then on ping() (GET /gateway/ready) reports the store damaged; ping() also makes a test write, and reports
the last write's failure until a write succeeds again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from gateway.config.settings import StoreSettings
from gateway.core.guardrail_actions import recorded_actions
from gateway.state import filecheck
from gateway.state.checkpoint import WalCheckpointer
from gateway.state.store import PromptRecord, StoreError, StoreRefused

SCHEMA_VERSION = 3
BUSY_TIMEOUT_SECONDS = 5.0
BACKSTOP_CHECKPOINT_PAGES = 10_000  # ~40 MB of WAL at 4 KiB pages
# Rows deleted per prune statement: each step holds the write lock (and the event loop) only briefly, so
# replicas and requests interleave with a large prune instead of waiting for all of it.
PRUNE_BATCH_ROWS = 100
# How long opening an existing file may spend in PRAGMA quick_check (filecheck.py): a file it reads through in
# that time (about 250,000 prompts, with the file in the page cache) is checked whole, a larger one in part.
START_CHECK_SECONDS = 0.1

# ping()'s test write: a row no client can name (client ids hold no control character, pipeline/identifiers.py),
# inserted and deleted in one commit, so it goes the way a record_prompt goes (the table, its index, the counter
# triggers, a WAL frame) and leaves nothing behind. It joins the turn's group commit like any other write.
_PROBE_ID = "\x00comfy-gateway ready check"
_PROBE_INSERT = (
    "INSERT INTO prompts (prompt_id, backend, submitted_at) VALUES (?, '', 0.0) ON CONFLICT (prompt_id) DO NOTHING"
)
_PROBE_DELETE = "DELETE FROM prompts WHERE prompt_id = ?"
# PromptRecord's fields in order; guardrails is its action names joined by ",", NULL when there are none.
_RECORD_COLUMNS = "prompt_id, backend, user_name, client_id, submitted_at, route, guardrails"
_LOOKUP = f"SELECT {_RECORD_COLUMNS} FROM prompts WHERE prompt_id = ?"

log = logging.getLogger(__name__)

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
    # Why each prompt went where it went, for the console; NULL in records written before it was kept.
    2: ("ALTER TABLE prompts ADD COLUMN route TEXT",),
    # What the guardrails did to each prompt, for the console; NULL in records written before it was kept.
    3: ("ALTER TABLE prompts ADD COLUMN guardrails TEXT",),
}


class CommitFuture(asyncio.Future[int]):
    """What a write waits on: settled by the turn's commit, with the write's rowcount or its StoreError. Its
    waiter needs no task (nothing of the waiter's runs until it resumes, and nothing cancels the commit), so
    the fast path resumes it from this future's done-callback (datapath/fast/eager.py)."""


_Queued = tuple[str, str, tuple[Any, ...], asyncio.Future[int]]

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
        self._queued: list[_Queued] = []
        # What SQLite said when a statement first found the file damaged: a damaged page stays damaged, so
        # from then on ping() says so (the file must be restored or moved aside, which needs a restart).
        self._damage: str | None = None
        # The last real write's failure, for a reason of the store's (not of its input), until a write succeeds.
        self._write_failure: StoreError | None = None
        self._probe_action = f"a test write to {path}"

    @classmethod
    def open(cls, settings: StoreSettings) -> SqliteStateStore:
        """Open (creating the file, its directory and the schema if needed). Raises StoreRefused, leaving a
        file it refuses as it was."""
        path = settings.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreRefused(
                f"sqlite state store: cannot create directory {path.parent}: {exc}; set store.path to a file in a "
                "directory the gateway may create or write"
            ) from exc
        filecheck.check_file(path)
        filecheck.inspect(
            path, expected_schema(), check_seconds=START_CHECK_SECONDS, busy_timeout_seconds=BUSY_TIMEOUT_SECONDS
        )
        try:
            # Autocommit (isolation_level=None): each statement is its own short transaction.
            # check_same_thread=False only lets a store opened before the loop started be used by it.
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise filecheck.refusal(path, exc, "open", BUSY_TIMEOUT_SECONDS) from exc
        try:
            mode = _enable_wal(db)
            if mode != "wal":
                raise StoreRefused(
                    f"sqlite state store: {path} cannot use WAL (journal_mode is {mode}); set store.path to a file "
                    "on a local file system"
                )
            db.execute("PRAGMA synchronous = NORMAL")
            # WalCheckpointer checkpoints off the loop; SQLite's own stays as a backstop for bursts that
            # outrun it, at a threshold it should never reach.
            db.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_CHECKPOINT_PAGES}")
            _migrate(db, path)
        except _STATEMENT_ERRORS as exc:
            db.close()
            raise filecheck.refusal(path, exc, "write", BUSY_TIMEOUT_SECONDS) from exc
        except BaseException:
            db.close()
            raise
        return cls(db, path, settings.retention_seconds, settings.max_prompts)

    async def record_prompt(self, record: PromptRecord) -> None:
        await self._write(
            "record_prompt",
            """INSERT INTO prompts (prompt_id, backend, user_name, client_id, submitted_at, route, guardrails)
               VALUES (?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (prompt_id) DO UPDATE SET backend = excluded.backend,
                   user_name = excluded.user_name, client_id = excluded.client_id,
                   submitted_at = excluded.submitted_at, route = excluded.route, guardrails = excluded.guardrails""",
            (
                record.prompt_id,
                record.backend,
                record.user,
                record.client_id,
                record.submitted_at,
                record.route,
                (",".join(recorded_actions(record.guardrails)) or None) if record.guardrails else None,
            ),
        )

    async def forget_prompt(self, prompt_id: str) -> None:
        await self._write("forget_prompt", "DELETE FROM prompts WHERE prompt_id = ?", (prompt_id,))

    async def lookup_prompt(self, prompt_id: str) -> PromptRecord | None:
        try:  # on every /history/{id}, /view and queue call: a plain try, not _errors' generator (dearer)
            row = self._db.execute(_LOOKUP, (prompt_id,)).fetchone()
        except _STATEMENT_ERRORS as exc:
            raise self._failed("lookup_prompt", exc) from exc
        return None if row is None else self._record("lookup_prompt", row)

    def _record(self, action: str, row: tuple[Any, ...]) -> PromptRecord:
        # A damaged page can also read back as values of the wrong type, which would fail later, as a 500.
        prompt_id, backend, user, client, submitted_at, route, guardrails = row
        if (
            type(prompt_id) is not str
            or type(backend) is not str
            or type(submitted_at) is not float
            or not _text_or_none(user, client, route, guardrails)
        ):
            found = f"the record of prompt {prompt_id!r} is malformed: {row!r}"
            self._note_damage(f"{action} found {found}")
            raise StoreError(f"sqlite state store: {action} failed: {found}")
        actions = recorded_actions(guardrails.split(",")) if guardrails else ()
        return PromptRecord(prompt_id, backend, user, client, submitted_at, route, actions)

    async def recent_prompts(
        self, limit: int, *, scan: int, backend: str | None = None, user: str | None = None
    ) -> list[PromptRecord]:
        # The newest `scan` rows through the submitted_at index, then the filters: a bounded read on the loop
        # whatever the store's size and however rare the filtered-for user is.
        with self._errors("recent_prompts"):
            rows = self._db.execute(
                f"""SELECT {_RECORD_COLUMNS} FROM (
                        SELECT {_RECORD_COLUMNS} FROM prompts WHERE prompt_id != :probe
                        ORDER BY submitted_at DESC LIMIT :scan
                    )
                    WHERE (:backend IS NULL OR backend = :backend) AND (:user IS NULL OR user_name = :user)
                    ORDER BY submitted_at DESC LIMIT :limit""",
                {"probe": _PROBE_ID, "scan": scan, "backend": backend, "user": user, "limit": limit},
            ).fetchall()
        return [self._record("recent_prompts", row) for row in rows]

    async def list_preferences(self, limit: int) -> list[tuple[str, str]]:
        with self._errors("list_preferences"):
            rows = self._db.execute(
                "SELECT user_name, backend FROM preferences ORDER BY user_name LIMIT ?", (limit,)
            ).fetchall()
        return [(user, backend) for user, backend in rows]

    async def get_preference(self, user: str) -> str | None:
        with self._errors("get_preference"):
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

    # --- failures ------------------------------------------------------------------------------------------------

    def _failed(self, action: str, exc: Exception) -> StoreError:
        """The StoreError for `action` failing with `exc`; notes the file damaged when that is what SQLite says."""
        if filecheck.is_damage(exc):
            self._note_damage(f"{action} found: {exc}")
        return StoreError(f"sqlite state store: {action} failed: {exc}")

    def _note_damage(self, found: str) -> None:
        if self._damage is None:
            self._damage = found
            log.error(
                "sqlite state store: %s is damaged (%s): requests that need the damaged part get 503 and "
                "/gateway/ready reports it; stop the gateway, then restore the file from a backup or move it aside",
                self.path,
                found,
            )

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except _STATEMENT_ERRORS as exc:
            raise self._failed(action, exc) from exc

    # --- group commit ----------------------------------------------------------------------------------------

    async def _write(self, action: str, statement: str, params: tuple[Any, ...]) -> int:
        """Queue one write statement for this turn's transaction; return its rowcount once it is committed."""
        if self._closed:
            raise StoreError(f"sqlite state store: {action} failed: the store is closed")
        return await self._queue(action, statement, params)

    def _queue(self, action: str, statement: str, params: tuple[Any, ...]) -> CommitFuture:
        loop = asyncio.get_running_loop()
        if not self._queued:
            loop.call_soon(self._commit)
        committed = CommitFuture(loop=loop)
        self._queued.append((action, statement, params, committed))
        return committed

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
            self._note_writes(queued, str(exc))
            for action, _, _, committed in queued:
                _settle(committed, self._failed(action, exc))
            return
        outcomes: list[tuple[asyncio.Future[int], int | StoreError]] = []
        failure: StoreError | str | None = None  # a real write failing for the store's reason, not its input's
        for action, statement, params, committed in queued:
            try:  # a failed statement is undone alone; the others stand
                outcomes.append((committed, db.execute(statement, params).rowcount))
            except _STATEMENT_ERRORS as exc:
                error = self._failed(action, exc)
                outcomes.append((committed, error))
                if action != self._probe_action and _is_store_fault(exc):
                    failure = error
        lost: StoreError | None = None
        if not db.in_transaction:  # SQLite rolled the whole transaction back (an I/O error)
            lost = StoreError("sqlite state store: the transaction was rolled back; its writes were lost")
        else:
            try:
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                lost = self._failed("commit", exc)
                failure = failure or str(exc)
        if lost is None:
            self._checkpointer.note_writes(len(queued))
        self._note_writes(queued, failure or lost)
        for committed, outcome in outcomes:
            _settle(committed, lost or outcome)

    def _note_writes(self, queued: list[_Queued], failure: StoreError | str | None) -> None:
        """Keep what ping() reports: a commit that failed a real write, until one (ping's own included) succeeds.
        `failure` is a writer's own StoreError, or what SQLite said when the commit itself failed."""
        if failure is None:
            self._write_failure = None
            return
        real = next((action for action, _, _, _ in queued if action != self._probe_action), None)
        if real is None:
            return  # only ping's test write failed: ping says so itself
        # A bare text (the commit's own failure) is said as its writers were told it.
        self._write_failure = failure if isinstance(failure, StoreError) else StoreError(
            f"sqlite state store: {real} failed: {failure}"
        )

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
        with self._errors("prune"):
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
        with self._errors("count_prompts"):
            count: int = self._db.execute("SELECT n FROM prompt_count").fetchone()[0]
            return count

    async def ping(self) -> None:
        if self._closed:
            raise StoreError("sqlite state store: closed")
        if self._damage is not None:
            raise StoreError(
                f"sqlite state store: {self.path} is damaged ({self._damage}); stop the gateway, then restore the "
                "file from a backup or move it aside"
            )
        earlier = self._write_failure
        # Both in this turn's commit: the row is never seen by another connection.
        written = [self._queue(self._probe_action, sql, (_PROBE_ID,)) for sql in (_PROBE_INSERT, _PROBE_DELETE)]
        failure: StoreError | None = None
        for committed in written:
            try:
                await committed
            except StoreError as exc:  # every one awaited, so none is left with an unretrieved exception
                failure = failure or exc
        if failure is not None:
            raise failure
        if earlier is not None:
            raise StoreError(
                f"sqlite state store: the last write failed ({str(earlier).removeprefix('sqlite state store: ')}) "
                "and none succeeded after it until this check's own test write"
            )

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


def _text_or_none(*values: object) -> bool:
    return all(value is None or type(value) is str for value in values)


def _is_store_fault(exc: Exception) -> bool:
    """Whether a failed write says the store cannot write (locked, read-only, I/O, full, damaged), not that the
    write itself was unusable (a constraint it broke, a value SQLite cannot hold)."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError)
    )


@functools.cache
def expected_schema() -> filecheck.Schema:
    """The tables, columns and other objects a file at SCHEMA_VERSION holds: what the migrations make of an
    empty database, so the check never drifts from them."""
    with closing(sqlite3.connect(":memory:", isolation_level=None)) as db:
        _migrate(db, Path(":memory:"))
        objects = {(kind, name) for kind, name in db.execute("SELECT type, name FROM sqlite_master")}
        tables = {
            name: tuple(row[1] for row in db.execute(f'PRAGMA table_info("{name}")'))
            for kind, name in sorted(objects)
            if kind == "table"
        }
    return filecheck.Schema(SCHEMA_VERSION, tables, frozenset(o for o in objects if o[0] != "table"))


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to SCHEMA_VERSION. BEGIN IMMEDIATE takes the write lock first, so two
    processes opening a new file at once migrate it exactly once."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        found = db.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
        if found > SCHEMA_VERSION:  # written by a newer gateway since filecheck.inspect read it
            raise StoreRefused(
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
