"""Is this file one the SQLite store may use? Checked when the store opens, before anything is written to it.

A file that is not a SQLite database, is truncated or damaged, belongs to another application, or holds a
schema newer than this gateway's is refused with StoreRefused, whose message names the file, says what is
wrong and what to do, and the file is left exactly as it was: the header is read with plain file I/O, the
rest through a read-only connection (a read-write one would switch a foreign file to WAL, create our tables
in it, or checkpoint its WAL on close).

The cost is bounded whatever the file's size: the header, the schema (a few small reads), one row of
prompt_count, and PRAGMA quick_check(1), which stops at the first fault it finds and is interrupted after
`check_seconds`. A file that quick_check reads through in that time is checked whole; a larger one only as far
as it got (a fault further in is still found at run time: its requests get 503 and ping() reports it).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from gateway.state.store import StoreRefused

SQLITE_HEADER = b"SQLite format 3\x00"
HEADER_BYTES = 100

_MOVE_ASIDE = "move it aside (a new, empty store is then created in its place) or set store.path to another file"
_FOREIGN = "set store.path to a file of its own (this one is left as it is)"
_DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_ACCESS_CODES = frozenset({sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_AUTH})
_LOCK_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schema:
    """What a file at `version` holds: each table's columns in order, and the other objects (type, name)."""

    version: int
    tables: dict[str, tuple[str, ...]]
    others: frozenset[tuple[str, str]]


def sqlite_code(exc: BaseException) -> int:
    """SQLite's primary result code for `exc` (0 for what is not SQLite's own error)."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF


def is_damage(exc: BaseException) -> bool:
    return sqlite_code(exc) in _DAMAGE_CODES


def check_file(path: Path) -> None:
    """Refuse a path SQLite must not open: not a regular file, unreadable or unwritable, not a database by its
    header, or shorter than its header says. Reads at most the header; a missing or empty file is a new store."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _denied(path, "read", exc) from exc
    if stat.S_ISDIR(status.st_mode):
        raise StoreRefused(
            f"sqlite state store: {path} is a directory, not a database file; set store.path to a file "
            f"(for example {path / 'gateway.sqlite3'})"
        )
    if not stat.S_ISREG(status.st_mode):
        raise StoreRefused(f"sqlite state store: {path} is not a regular file; set store.path to a file")
    try:
        with path.open("rb") as file:
            header = file.read(HEADER_BYTES)
    except OSError as exc:
        raise _denied(path, "read", exc) from exc
    if status.st_size:
        _check_header(path, header, status.st_size)
    try:
        os.close(os.open(path, os.O_RDWR))  # opening for writing writes nothing
    except OSError as exc:
        raise _denied(path, "write", exc) from exc


def _denied(path: Path, doing: str, exc: OSError) -> StoreRefused:
    return StoreRefused(f"sqlite state store: cannot {doing} {path}: {exc.strerror or exc}{_who(path)}; {_GRANT}")


def _check_header(path: Path, header: bytes, size: int) -> None:
    if not header.startswith(SQLITE_HEADER):
        if SQLITE_HEADER.startswith(header):
            raise _truncated(path, f"it holds only {size} bytes")
        raise StoreRefused(
            f"sqlite state store: {path}: file is not a database (its {size} bytes do not begin with SQLite's "
            f"header); {_MOVE_ASIDE}"
        )
    if len(header) < HEADER_BYTES:
        raise _truncated(path, f"it holds only {size} bytes")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise StoreRefused(
            f"sqlite state store: {path} is damaged: its header gives a page size of {page_size} bytes; "
            f"restore it from a backup, or {_MOVE_ASIDE}"
        )
    # A WAL or rollback journal beside it may legitimately hold the pages the file lacks (a checkpoint cut
    # short by a crash); SQLite reads them from there, so only a file on its own must match its header.
    if any(_nonempty(Path(f"{path}{suffix}")) for suffix in ("-wal", "-journal")):
        return
    pages = int.from_bytes(header[28:32], "big")
    size_is_valid = pages > 0 and header[24:28] == header[92:96]  # SQLite's own rule for the header's page count
    if size % page_size or (size_is_valid and size < pages * page_size):
        expected = f", its header says {pages} pages of {page_size} bytes ({pages * page_size})"
        raise _truncated(path, f"it holds {size} bytes{expected if size_is_valid else ''}")


def _truncated(path: Path, why: str) -> StoreRefused:
    return StoreRefused(f"sqlite state store: {path} is truncated: {why}; restore it from a backup, or {_MOVE_ASIDE}")


def _nonempty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def inspect(path: Path, schema: Schema, *, check_seconds: float, busy_timeout_seconds: float) -> int:
    """The schema version of the store at `path` (0: new or empty), after checking it is this gateway's, at a
    version it knows, and undamaged as far as `check_seconds` of quick_check can tell. Raises StoreRefused."""
    try:
        if path.stat().st_size == 0:
            return 0
    except FileNotFoundError:
        return 0
    try:
        db = sqlite3.connect(
            path.absolute().as_uri() + "?mode=ro", uri=True, timeout=busy_timeout_seconds, isolation_level=None
        )
    except sqlite3.Error as exc:
        raise refusal(path, exc, "open", busy_timeout_seconds) from exc
    with closing(db):
        try:
            version = _check_schema(db, path, schema)
            fault = _quick_check(db, check_seconds) if version else None
        except sqlite3.Error as exc:
            raise refusal(path, exc, "open", busy_timeout_seconds) from exc
    if fault is not None:
        raise StoreRefused(
            f"sqlite state store: {path} is damaged: PRAGMA quick_check found {fault!r}; restore it from a "
            f"backup (or salvage it with `sqlite3 {path} .recover`), or {_MOVE_ASIDE}"
        )
    return version


def _check_schema(db: sqlite3.Connection, path: Path, schema: Schema) -> int:
    application_id = db.execute("PRAGMA application_id").fetchone()[0]
    user_version = db.execute("PRAGMA user_version").fetchone()[0]
    if application_id or user_version:
        raise StoreRefused(
            f"sqlite state store: {path} is not a comfy-gateway state store: its PRAGMA application_id is "
            f"{application_id} and user_version {user_version}, where this gateway's files have 0 for both "
            f"(it belongs to another application, or to a newer gateway); {_FOREIGN}"
        )
    listed = db.execute("SELECT type, name FROM sqlite_master").fetchall()
    objects = {(kind, name) for kind, name in listed if not name.startswith("sqlite_")}  # not SQLite's own
    tables = sorted(name for kind, name in objects if kind == "table")
    if not objects or tables == ["schema_version"] and _version(db) is None:
        return 0  # new: nothing in it yet (a schema_version table alone is a first migration not yet run)
    if "schema_version" not in tables or _columns(db, "schema_version") != ("version",):
        raise _foreign(path, f"it has no schema_version table of comfy-gateway's (it holds {_listing(tables)})")
    found = _version(db)
    if not isinstance(found, int) or found < 1:
        raise _foreign(path, f"its schema_version table holds {found!r}, not a version number")
    if found > schema.version:
        raise StoreRefused(
            f"sqlite state store: {path} has schema version {found}, newer than this gateway's {schema.version}; "
            "use a newer gateway or another store.path"
        )
    if found < schema.version:
        return found  # an older schema: each migration's statements fail on a layout that is not ours
    for table, columns in schema.tables.items():
        have = _columns(db, table)
        if have != columns:
            held = f"table {table} has columns ({', '.join(have)})" if have else f"table {table} is missing"
            expected = ", ".join(columns)
            raise _foreign(path, f"it has schema version {found} but its {held}; this gateway's has ({expected})")
    missing = sorted(f"{kind} {name}" for kind, name in schema.others - objects)
    if missing:
        raise _foreign(path, f"it has schema version {found} but lacks its {', '.join(missing)}")
    counters = db.execute("SELECT count(*) FROM prompt_count").fetchone()[0]
    if counters != 1:
        raise StoreRefused(
            f"sqlite state store: {path} is damaged: its prompt_count table holds {counters} rows, not 1; "
            f"restore it from a backup, or {_MOVE_ASIDE}"
        )
    return found


def _version(db: sqlite3.Connection) -> object:
    try:
        found: object = db.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    except sqlite3.OperationalError:  # no such column: not our table
        return "no version column"
    return found


def _columns(db: sqlite3.Connection, table: str) -> tuple[str, ...]:
    return tuple(row[1] for row in db.execute(f'PRAGMA table_info("{table}")'))


def _listing(tables: list[str]) -> str:
    if not tables:
        return "no tables"
    shown = ", ".join(tables[:6]) + (f" and {len(tables) - 6} more" if len(tables) > 6 else "")
    return f"the table{'s' if len(tables) > 1 else ''} {shown}"


def _foreign(path: Path, why: str) -> StoreRefused:
    return StoreRefused(f"sqlite state store: {path} is not a comfy-gateway state store: {why}; {_FOREIGN}")


def _quick_check(db: sqlite3.Connection, seconds: float) -> str | None:
    """quick_check's first fault, or None when it found none (in the whole file, or in what it read in time)."""
    # sqlite3_interrupt from another thread is the one way to bound it: in this SQLite the progress handler is
    # hardly called while quick_check walks the b-trees. The connection is this check's own, so an interrupt
    # that lands late stops nothing else.
    timer = threading.Timer(seconds, db.interrupt)
    timer.start()
    try:
        fault = db.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode != sqlite3.SQLITE_INTERRUPT:
            raise
        log.debug("sqlite state store: quick_check stopped after %gs without finding a fault", seconds)
        return None
    finally:
        timer.cancel()
        timer.join()  # before the connection closes: an interrupt of a closed connection raises in that thread
    if fault == "ok":
        return None
    # One line, for a one-line refusal: its text opens with a banner line naming the schema ("main").
    return "; ".join(line for line in str(fault).splitlines() if line and not line.startswith("*** in database"))


def refusal(path: Path, exc: Exception, doing: str, busy_timeout_seconds: float) -> StoreRefused:
    """The refusal for SQLite error `exc`, met while `doing` (open, read, write) the file at start-up."""
    code = sqlite_code(exc)
    if code in _DAMAGE_CODES:
        return StoreRefused(
            f"sqlite state store: {path} is damaged ({exc}); restore it from a backup, or {_MOVE_ASIDE}"
        )
    if code in _ACCESS_CODES:
        return StoreRefused(f"sqlite state store: cannot {doing} {path} ({exc}){access_problem(path)}; {_GRANT}")
    if code in _LOCK_CODES:
        return StoreRefused(
            f"sqlite state store: {path} stayed locked for {busy_timeout_seconds:g}s ({exc}); something holds "
            "a long transaction on it (a sqlite3 shell, a stuck process): end it, then start again"
        )
    if code == sqlite3.SQLITE_FULL:
        return StoreRefused(f"sqlite state store: cannot write {path}: the disk is full; free space, then start again")
    return StoreRefused(f"sqlite state store: opening {path} failed: {exc}; {_MOVE_ASIDE}")


_GRANT = "give the gateway's user read and write access to it and to its directory, or set store.path to another file"


def access_problem(path: Path) -> str:
    """What the OS says stops this process reading or writing `path` or creating files beside it (SQLite keeps
    its -wal and -shm there), as text to append to a message; empty when it sees nothing (as for root)."""
    problems = []
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        problems.append(f"{path} is not readable and writable{_who(path)}")
    directory = path.parent
    if not os.access(directory, os.W_OK | os.X_OK):
        problems.append(f"files cannot be created in {directory}{_who(directory)}")
    try:
        read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        read_only = False
    if read_only:
        problems.append(f"{directory} is on a file system mounted read-only")
    return ": " + "; ".join(problems) if problems else ""


def _who(path: Path) -> str:
    """Who may do what with `path`, as the OS decides it: its mode and owner, and this process's user."""
    try:
        status = path.stat()
    except OSError:
        return ""
    process = f"; this process runs as uid {os.geteuid()}" if hasattr(os, "geteuid") else ""
    return f" (mode {stat.filemode(status.st_mode)}, owner uid {status.st_uid}{process})"
