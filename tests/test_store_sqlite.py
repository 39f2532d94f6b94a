"""The SQLite store's own promises: durable across kill -9, shared by two processes, versioned schema."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from gateway.config.settings import StoreSettings
from gateway.state.checkpoint import CHECKPOINT_EVERY_WRITES
from gateway.state.sqlite_store import _MIGRATIONS, BACKSTOP_CHECKPOINT_PAGES, SCHEMA_VERSION, SqliteStateStore
from gateway.state.store import PromptRecord, StoreError, StoreRefused, open_store

SUBPROCESS_TIMEOUT_SECONDS = 30

# Writes 200 prompts and a preference, says so, then keeps writing until it is killed.
WRITE_UNTIL_KILLED = """
import asyncio, sys
from pathlib import Path
from gateway.config.settings import StoreSettings
from gateway.state.store import PromptRecord, open_store

async def main():
    store = await open_store(StoreSettings(path=Path(sys.argv[1])))
    for i in range(200):
        await store.record_prompt(PromptRecord(f"p-{i}", "comfyui", "alice", "client-1", 1000.0 + i))
    await store.set_preference("alice", "comfyui")
    print("written", flush=True)
    i = 200
    while True:
        await store.record_prompt(PromptRecord(f"p-{i}", "comfyui", "alice", "client-1", 1000.0 + i))
        i += 1

asyncio.run(main())
"""

# Waits until a shared start time, then opens the (new) file and writes 300 prompts.
WRITE_AT_START_TIME = """
import asyncio, sys, time
from pathlib import Path
from gateway.config.settings import StoreSettings
from gateway.state.store import PromptRecord, open_store

async def main():
    path, writer, start = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    time.sleep(max(0.0, start - time.time()))
    store = await open_store(StoreSettings(path=path))
    for i in range(300):
        await store.record_prompt(PromptRecord(f"{writer}-{i}", "kerniegen", writer, None, time.time()))
    await store.set_preference(writer, "kerniegen")
    await store.close()

asyncio.run(main())
"""


def settings_for(path: Path) -> StoreSettings:
    return StoreSettings(kind="sqlite", path=path)


async def test_records_survive_kill_9_of_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    command = [sys.executable, "-c", WRITE_UNTIL_KILLED, str(path)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as writer:
        try:
            assert writer.stdout is not None
            announced = writer.stdout.readline().strip()  # EOF from a crashed writer fails below, not hangs
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait(SUBPROCESS_TIMEOUT_SECONDS)
    assert announced == "written"
    assert writer.returncode == -signal.SIGKILL

    store = await open_store(settings_for(path))
    try:
        for i in range(200):
            expected = PromptRecord(f"p-{i}", "comfyui", "alice", "client-1", 1000.0 + i)
            assert await store.lookup_prompt(f"p-{i}") == expected
        assert await store.get_preference("alice") == "comfyui"
        assert await store.count_prompts() >= 200
    finally:
        await store.close()


async def test_two_processes_open_and_write_one_new_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "gateway.sqlite3"
    start = time.time() + 0.5  # both open the file at the same moment, racing to create the schema
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITE_AT_START_TIME, str(path), name, str(start)])
        for name in ("replica-a", "replica-b")
    ]
    codes = [writer.wait(SUBPROCESS_TIMEOUT_SECONDS) for writer in writers]
    assert codes == [0, 0]

    store = await open_store(settings_for(path))
    try:
        assert await store.count_prompts() == 600
        assert await store.lookup_prompt("replica-a-299") is not None
        assert await store.lookup_prompt("replica-b-0") is not None
        assert await store.get_preference("replica-a") == "kerniegen"
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        versions = db.execute("SELECT version FROM schema_version").fetchall()
        assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]


async def test_two_stores_in_one_process_share_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    first, second = await open_store(settings_for(path)), await open_store(settings_for(path))
    try:
        await first.record_prompt(PromptRecord("p-1", "comfyui", None, None, time.time()))
        await second.set_preference("alice", "comfyui")

        assert (await second.lookup_prompt("p-1")).backend == "comfyui"  # type: ignore[union-attr]
        assert await first.get_preference("alice") == "comfyui"
    finally:
        await first.close()
        await second.close()


async def test_file_uses_wal_and_synchronous_normal(tmp_path: Path) -> None:
    store = SqliteStateStore.open(settings_for(tmp_path / "gateway.sqlite3"))
    try:
        assert store._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert store._db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
        assert store._db.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    finally:
        await store.close()


async def test_missing_directories_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "gateway.sqlite3"

    store = await open_store(settings_for(path))
    await store.close()

    assert path.is_file()


async def test_file_from_a_newer_gateway_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    await (await open_store(settings_for(path))).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION + 1,))

    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this gateway's"):
        await open_store(settings_for(path))


async def test_a_file_of_schema_version_1_is_migrated_and_keeps_its_records(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    with closing(sqlite3.connect(path, isolation_level=None)) as db:  # a version-1 file, as the gateway wrote it
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in _MIGRATIONS[1]:
            db.execute(statement)
        db.execute("INSERT INTO schema_version (version) VALUES (1)")
        db.execute("INSERT INTO prompts VALUES ('old', 'comfyui', 'ana', 'c-1', 1000.0)")

    store = await open_store(settings_for(path))
    try:
        await store.record_prompt(PromptRecord("new", "kerniegen", "bo", None, 2000.0, route="header"))
        assert await store.lookup_prompt("old") == PromptRecord("old", "comfyui", "ana", "c-1", 1000.0, None)
        assert [r.prompt_id for r in await store.recent_prompts(10, scan=10)] == ["new", "old"]
        assert (await store.lookup_prompt("new")).route == "header"  # type: ignore[union-attr]
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION == 3


async def test_a_file_of_schema_version_2_is_migrated_keeping_its_records_and_then_keeps_guardrails(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.sqlite3"
    with closing(sqlite3.connect(path, isolation_level=None)) as db:  # a version-2 file, as the gateway wrote it
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version in (1, 2):
            for statement in _MIGRATIONS[version]:
                db.execute(statement)
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        db.execute("INSERT INTO prompts VALUES ('old', 'comfyui', 'ana', 'c-1', 1000.0, 'header')")
        db.execute("INSERT INTO preferences VALUES ('ana', 'comfyui', 1000.0)")

    store = await open_store(settings_for(path))
    try:
        old = await store.lookup_prompt("old")
        await store.record_prompt(
            PromptRecord("new", "kerniegen", "bo", None, 2000.0, route="default", guardrails=("seed_normalized",))
        )
        listed = await store.recent_prompts(10, scan=10)
        preference = await store.get_preference("ana")
        count = await store.count_prompts()
    finally:
        await store.close()
    reopened = await open_store(settings_for(path))  # the migrated file passes the start-up check as it is
    try:
        again = await reopened.lookup_prompt("new")
    finally:
        await reopened.close()

    assert old == PromptRecord("old", "comfyui", "ana", "c-1", 1000.0, "header", ())
    assert [(r.prompt_id, r.guardrails) for r in listed] == [("new", ("seed_normalized",)), ("old", ())]
    assert preference == "comfyui" and count == 2
    assert again is not None and again.guardrails == ("seed_normalized",)
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,), (2,), (3,)]
        assert db.execute("SELECT guardrails FROM prompts ORDER BY prompt_id").fetchall() == [
            ("seed_normalized",), (None,)
        ]


async def test_guardrails_read_back_from_the_file_are_only_the_gateways_action_names(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    store = await open_store(settings_for(path))
    try:
        with sqlite3.connect(path) as db:  # what another writer (or a newer gateway) could leave in the column
            db.execute(
                "INSERT INTO prompts VALUES ('p-1', 'one', NULL, NULL, 1.0, NULL, ?)",
                ("<script>alert(1)</script>,seed_normalized,,seed_normalized,skipped," + "x" * 10_000,),
            )
        found = await store.lookup_prompt("p-1")
    finally:
        await store.close()

    assert found is not None and found.guardrails == ("seed_normalized", "skipped")


@pytest.mark.parametrize(
    ("make_path", "expected"),
    [
        (lambda tmp: _write(tmp / "not-a-db.sqlite3", b"this is not a database" * 100), "file is not a database"),
        (lambda tmp: _write(tmp / "a-file", b"") / "gateway.sqlite3", "cannot create directory"),
    ],
    ids=["not-a-database", "parent-is-a-file"],
)
async def test_unusable_path_is_a_store_error(tmp_path: Path, make_path, expected: str) -> None:
    with pytest.raises(StoreError, match=expected):
        await open_store(settings_for(make_path(tmp_path)))


async def test_calls_after_close_are_store_errors(tmp_path: Path) -> None:
    store = await open_store(settings_for(tmp_path / "gateway.sqlite3"))
    await store.close()

    with pytest.raises(StoreError, match="lookup_prompt failed"):
        await store.lookup_prompt("p-1")


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


async def test_wal_is_checkpointed_off_the_loop_long_before_sqlites_own_threshold(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    store = SqliteStateStore.open(settings_for(path))
    empty_size = path.stat().st_size
    try:
        # ~4 WAL pages per write: 300 writes stay far below the backstop, so only WalCheckpointer copies pages.
        for i in range(CHECKPOINT_EVERY_WRITES + 100):
            await store.record_prompt(PromptRecord(f"p-{i}", "comfyui", None, None, time.time()))
        await store._checkpointer.wait()

        assert path.stat().st_size > empty_size
    finally:
        await store.close()


async def test_wal_stays_bounded_under_a_write_burst(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    wal = Path(f"{path}-wal")
    store = await open_store(settings_for(path))
    largest = 0
    try:
        for i in range(5000):  # unbounded, this WAL would pass 60 MB
            await store.record_prompt(PromptRecord(f"p-{i}", "comfyui", None, None, time.time()))
            if i % 250 == 0:
                largest = max(largest, wal.stat().st_size)
    finally:
        await store.close()

    assert largest < BACKSTOP_CHECKPOINT_PAGES * 4096 * 1.25


async def test_writes_of_one_turn_share_a_commit_and_fail_alone(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    store = await open_store(StoreSettings(path=path))
    reader = sqlite3.connect(path)
    try:
        before = reader.execute("PRAGMA data_version").fetchone()[0]  # changes when another connection commits
        broken = PromptRecord("p-bad", None, None, None, 1.0)  # type: ignore[arg-type]  # backend is NOT NULL

        outcomes = await asyncio.gather(
            store.record_prompt(PromptRecord("p-1", "comfyui", None, None, 1.0)),
            store.record_prompt(broken),
            store.set_preference("alice", "comfyui"),
            store.record_prompt(PromptRecord("p-2", "kerniegen", None, None, 2.0)),
            return_exceptions=True,
        )

        assert outcomes[0] is None and outcomes[2] is None and outcomes[3] is None
        assert isinstance(outcomes[1], StoreError) and "record_prompt failed" in str(outcomes[1])
        rows = reader.execute("SELECT prompt_id, backend FROM prompts ORDER BY prompt_id").fetchall()
        assert rows == [("p-1", "comfyui"), ("p-2", "kerniegen")]
        assert reader.execute("SELECT backend FROM preferences WHERE user_name = 'alice'").fetchone() == ("comfyui",)
        # Seen from another connection: the three writes arrived as one commit.
        assert reader.execute("PRAGMA data_version").fetchone()[0] == before + 1
    finally:
        reader.close()
        await store.close()


async def test_a_cancelled_writer_does_not_undo_its_write(tmp_path: Path) -> None:
    store = await open_store(StoreSettings(path=tmp_path / "gateway.sqlite3"))
    try:
        writing = asyncio.ensure_future(store.record_prompt(PromptRecord("p-1", "comfyui", None, None, 1.0)))
        await asyncio.sleep(0)  # queued, not yet committed
        writing.cancel()
        await asyncio.sleep(0)

        assert (await store.lookup_prompt("p-1")) is not None
    finally:
        await store.close()


async def test_ping_makes_a_real_write_and_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    store = await open_store(StoreSettings(path=path))
    reader = sqlite3.connect(path)
    try:
        await store.record_prompt(PromptRecord("p-1", "comfyui", None, None, 1.0))
        before = reader.execute("PRAGMA data_version").fetchone()[0]
        size = path.stat().st_size

        await store.ping()

        assert reader.execute("PRAGMA data_version").fetchone()[0] == before + 1  # one commit, seen by others
        assert reader.execute("SELECT prompt_id FROM prompts").fetchall() == [("p-1",)]
        assert await store.count_prompts() == 1
        assert path.stat().st_size == size
    finally:
        reader.close()
        await store.close()


async def test_ping_joins_the_turns_group_commit(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    store = await open_store(StoreSettings(path=path))
    reader = sqlite3.connect(path)
    try:
        before = reader.execute("PRAGMA data_version").fetchone()[0]

        await asyncio.gather(store.record_prompt(PromptRecord("p-1", "comfyui", None, None, 1.0)), store.ping())

        assert reader.execute("PRAGMA data_version").fetchone()[0] == before + 1
    finally:
        reader.close()
        await store.close()


async def test_a_record_read_back_as_the_wrong_types_is_a_store_error_and_marks_the_store_damaged(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.sqlite3"
    store = await open_store(StoreSettings(path=path))
    try:
        with sqlite3.connect(path) as db:  # what a damaged page can read back as: a blob where text belongs
            db.execute("INSERT INTO prompts VALUES ('p-1', X'00ff', NULL, NULL, 1.0, NULL, NULL)")

        with pytest.raises(StoreError, match="the record of prompt 'p-1' is malformed"):
            await store.lookup_prompt("p-1")
        with pytest.raises(StoreError, match="is damaged"):
            await store.ping()
    finally:
        await store.close()


async def test_a_write_failing_alone_for_its_input_does_not_make_the_store_unready(tmp_path: Path) -> None:
    store = await open_store(StoreSettings(path=tmp_path / "gateway.sqlite3"))
    try:
        with pytest.raises(StoreError, match="record_prompt failed"):
            await store.record_prompt(PromptRecord("p-1", None, None, None, 1.0))  # type: ignore[arg-type]

        await store.ping()
    finally:
        await store.close()


async def test_a_new_file_is_not_checked_and_an_empty_one_becomes_a_store(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite3"
    empty.write_bytes(b"")

    for path in (tmp_path / "new.sqlite3", empty):
        store = await open_store(StoreSettings(path=path))
        await store.ping()
        await store.close()
    with sqlite3.connect(empty) as db:
        versions = db.execute("SELECT version FROM schema_version").fetchall()
        assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]


async def test_refusals_are_store_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    path.write_text("not a database")

    with pytest.raises(StoreRefused, match=f"sqlite state store: {path}: file is not a database"):
        await open_store(StoreSettings(path=path))
