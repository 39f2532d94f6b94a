"""A state store the gateway must not use is refused at start-up, and one that breaks while it runs is reported.

Start-up: the real `comfy-gateway serve`, as a subprocess, on real files (and a real Redis on 127.0.0.1:6379):
it exits with status 2 and one message naming the file, what is wrong and what to do, with no traceback, and
leaves the file as it was. Run time: a real gateway, seen through HTTP: a page damaged after start-up gives 503
store_unavailable (never 500) to the requests that need it, and /gateway/ready reports a store that is damaged,
cannot write, or whose last write failed.

Tests that need Redis are skipped when it is unreachable, except with CI set in the environment, where they fail.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis import asyncio as aioredis
from yarl import URL

from gateway.config.settings import StoreSettings
from gateway.datapath.aio.keys import RUNTIME
from gateway.state import sqlite_store
from gateway.state.lookup_cache import CachedLookups
from gateway.state.sqlite_store import SCHEMA_VERSION, SqliteStateStore
from gateway.state.store import PromptRecord, StateStore, StoreError, StoreRefused, open_store
from tests.redis_keys import REDIS_URL
from tests.redis_keys import redis_prefix as fresh_redis_prefix

SERVE_TIMEOUT_SECONDS = 60
REFUSAL = "comfy-gateway: refusing to start: "

# Root passes every permission check, so a mode-000 file stops nobody; the gateway under test runs without the
# two capabilities that let it (dropped from the bounding set, so the exec'd process never has them).
AS_UNPRIVILEGED = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
os.execv(sys.argv[1], sys.argv[1:])
"""

# `comfy-gateway serve` where the redis package cannot be imported.
WITHOUT_REDIS = """
import sys
sys.modules["redis"] = None  # any `import redis` now raises ImportError
from gateway.cli import main
sys.exit(main(sys.argv[1:]))
"""


def prompt_ids(count: int) -> list[str]:
    return [f"{index:08d}-0000-4000-8000-000000000000" for index in range(count)]


async def make_store(path: Path, count: int, backend: str = "kerniegen") -> list[str]:
    """A real store file holding `count` prompts, closed (its WAL checkpointed into it); the same bytes each time."""
    ids = prompt_ids(count)
    store = await open_store(StoreSettings(path=path))
    try:
        for start in range(0, count, 500):
            await asyncio.gather(
                *(
                    store.record_prompt(PromptRecord(pid, backend, "alice", "client-1", 1.7e9 + i))
                    for i, pid in enumerate(ids[start : start + 500], start)
                )
            )
        await store.set_preference("alice", backend)
    finally:
        await store.close()
    return ids


def garble_middle(path: Path, *, seed: int = 2) -> None:
    """Overwrite the first 100 bytes (a b-tree page's header and cell pointers) of every third page in the file's
    middle third, as a failing disk or a stray write might; bytes of a page's free space would harm nothing."""
    pages = path.stat().st_size // 4096
    rng = random.Random(seed)
    with path.open("r+b") as file:
        for page in range(pages // 3, pages * 2 // 3, 3):
            file.seek(page * 4096)
            file.write(rng.randbytes(100))


def toml(value: object) -> str:
    return json.dumps(str(value))  # a TOML basic string, for the plain paths and URLs used here


def write_config(directory: Path, store: str, *, data_path: str = "fast") -> Path:
    config = directory / "gateway.toml"
    config.write_text(
        f'listen_port = 0\ndata_path = "{data_path}"\ndefault_backend = "remote"\n'
        f"state_dir = {toml(directory / 'state')}\nlog_batch_seconds = 0.5\n"
        f'[store]\n{store}\n[backends.remote]\nurl = "http://127.0.0.1:9"\n'
    )
    return config


def sqlite_config(directory: Path, path: Path, **kwargs: Any) -> Path:
    return write_config(directory, f"path = {toml(path)}", **kwargs)


def serve(config: Path, *, unprivileged: bool = False, wrapper: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
    if wrapper is not None:
        command = [sys.executable, "-c", wrapper, "serve", "--config", str(config)]
    if unprivileged and os.geteuid() == 0:
        command = [sys.executable, "-c", AS_UNPRIVILEGED, *command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFY_GATEWAY_")}
    return subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=config.parent, timeout=SERVE_TIMEOUT_SECONDS
    )


def refusal_of(result: subprocess.CompletedProcess[str]) -> str:
    """The one refusal line: status 2, no traceback, written once and after every log line."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    refusals = [line for line in lines if REFUSAL in line]
    assert len(refusals) == 1, result.stderr
    assert lines[-1] == refusals[0] and refusals[0].startswith(REFUSAL), result.stderr
    return refusals[0]


# --- SQLite files refused at start-up ----------------------------------------------------------------------------


def _random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(1).randbytes(8192))


def _text_file(path: Path) -> None:
    path.write_text("listen_port = 8190\n" * 200)


async def _truncated_half(path: Path) -> None:
    await make_store(path, 1000)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


async def _truncated_mid_page(path: Path) -> None:
    await make_store(path, 1000)
    path.write_bytes(path.read_bytes()[: 3 * 4096 + 100])


async def _our_tables_other_columns(path: Path) -> None:
    await make_store(path, 10)
    with sqlite3.connect(path) as db:
        db.executescript(
            "DROP TRIGGER prompts_inserted; DROP TRIGGER prompts_deleted; DROP TABLE prompts;"
            "CREATE TABLE prompts (id TEXT PRIMARY KEY, data BLOB);"
        )


async def _user_version(path: Path) -> None:
    await make_store(path, 10)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 7")


async def _newer_schema(path: Path) -> None:
    await make_store(path, 10)
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION + 1,))


def _another_apps_database(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); CREATE TABLE orders (id, user_id, total);"
            "INSERT INTO users (name) VALUES ('ana');"
        )
    # closed: rollback journal mode, untouched by anything but this


async def _garbled_pages(path: Path) -> None:
    await make_store(path, 1000)
    garble_middle(path)


SQLITE_REFUSALS: dict[str, tuple[Callable[[Path], Any], tuple[str, ...]]] = {
    "random-bytes": (_random_bytes, ("file is not a database", "move it aside", "set store.path")),
    "text-file": (_text_file, ("file is not a database", "move it aside")),
    "truncated-half": (_truncated_half, ("is truncated", "pages of 4096 bytes", "restore it from a backup")),
    "truncated-mid-page": (_truncated_mid_page, ("is truncated", "12388 bytes")),
    "our-tables-other-columns": (
        _our_tables_other_columns,
        ("is not a comfy-gateway state store", "table prompts has columns (id, data)", "set store.path"),
    ),
    "user-version": (_user_version, ("is not a comfy-gateway state store", "user_version 7")),
    "newer-schema": (
        _newer_schema,
        (f"schema version {SCHEMA_VERSION + 1}, newer than this gateway's {SCHEMA_VERSION}", "use a newer gateway"),
    ),
    "another-apps-database": (
        _another_apps_database,
        ("is not a comfy-gateway state store", "no schema_version table", "orders, users", "left as it is"),
    ),
    "garbled-pages": (_garbled_pages, ("is damaged", "restore it from a backup", "move it aside")),
}


@pytest.mark.parametrize("case", SQLITE_REFUSALS, ids=list(SQLITE_REFUSALS))
async def test_a_file_that_is_not_a_healthy_store_is_refused_untouched(tmp_path: Path, case: str) -> None:
    make, phrases = SQLITE_REFUSALS[case]
    path = tmp_path / "data" / "gateway.sqlite3"
    path.parent.mkdir()
    made = make(path)
    if asyncio.iscoroutine(made):
        await made
    before = path.read_bytes()

    refusal = refusal_of(serve(sqlite_config(tmp_path, path)))

    assert f"sqlite state store: {path}" in refusal
    for phrase in phrases:
        assert phrase in refusal, refusal
    assert path.read_bytes() == before


@pytest.mark.parametrize("data_path", ["fast", "aiohttp"])
def test_the_refusal_is_the_same_on_both_data_paths(tmp_path: Path, data_path: str) -> None:
    path = tmp_path / "gateway.sqlite3"
    _random_bytes(path)

    refusal = refusal_of(serve(sqlite_config(tmp_path, path, data_path=data_path)))

    assert refusal == f"{REFUSAL}sqlite state store: {path}: file is not a database (its 8192 bytes do not begin " \
        "with SQLite's header); move it aside (a new, empty store is then created in its place) or set store.path " \
        f"to another file [store.path from {tmp_path / 'gateway.toml'}]"


def test_a_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    path.mkdir()

    refusal = refusal_of(serve(sqlite_config(tmp_path, path)))

    assert f"{path} is a directory, not a database file; set store.path to a file" in refusal
    assert list(path.iterdir()) == []


@pytest.fixture
def permissions(tmp_path: Path) -> Iterator[Callable[[Path, int], None]]:
    """chmod that the gateway under test obeys (see AS_UNPRIVILEGED), undone afterwards for the clean-up."""
    changed: list[tuple[Path, int]] = []

    def chmod(path: Path, mode: int) -> None:
        changed.append((path, path.stat().st_mode & 0o7777))
        path.chmod(mode)

    probe = tmp_path / "probe"
    probe.write_text("x")
    probe.chmod(0)
    check = subprocess.run(
        [sys.executable, "-c", AS_UNPRIVILEGED, sys.executable, "-c", f"open({str(probe)!r}).read()"]
        if os.geteuid() == 0
        else [sys.executable, "-c", f"open({str(probe)!r}).read()"],
        capture_output=True,
    )
    probe.unlink()
    if check.returncode == 0:
        pytest.skip("here, permission bits do not stop a process of this user (it keeps CAP_DAC_OVERRIDE)")
    yield chmod
    for path, mode in reversed(changed):
        path.chmod(mode)


async def test_unreadable_file_is_refused(tmp_path: Path, permissions: Callable[[Path, int], None]) -> None:
    path = tmp_path / "gateway.sqlite3"
    await make_store(path, 10)
    permissions(path, 0o000)

    refusal = refusal_of(serve(sqlite_config(tmp_path, path), unprivileged=True))

    assert f"cannot read {path}: Permission denied (mode ----------" in refusal
    assert "give the gateway's user read and write access to it and to its directory" in refusal


async def test_unwritable_file_is_refused(tmp_path: Path, permissions: Callable[[Path, int], None]) -> None:
    path = tmp_path / "gateway.sqlite3"
    await make_store(path, 10)
    before = path.read_bytes()
    permissions(path, 0o444)

    refusal = refusal_of(serve(sqlite_config(tmp_path, path), unprivileged=True))

    assert f"cannot write {path}: Permission denied (mode -r--r--r--" in refusal
    assert path.read_bytes() == before


async def test_file_in_an_unwritable_directory_is_refused(
    tmp_path: Path, permissions: Callable[[Path, int], None]
) -> None:
    directory = tmp_path / "data"
    directory.mkdir()
    path = directory / "gateway.sqlite3"
    await make_store(path, 10)  # closed: its -wal and -shm are gone, and SQLite must create them to open it
    before = path.read_bytes()
    permissions(directory, 0o555)

    refusal = refusal_of(serve(sqlite_config(tmp_path, path), unprivileged=True))

    assert f"sqlite state store: cannot open {path}" in refusal
    assert f"files cannot be created in {directory} (mode dr-xr-xr-x" in refusal
    assert path.read_bytes() == before


def test_new_file_in_an_unwritable_directory_is_refused(
    tmp_path: Path, permissions: Callable[[Path, int], None]
) -> None:
    directory = tmp_path / "data"
    directory.mkdir()
    permissions(directory, 0o555)

    refusal = refusal_of(serve(sqlite_config(tmp_path, directory / "gateway.sqlite3"), unprivileged=True))

    assert f"cannot open {directory / 'gateway.sqlite3'} (unable to open database file)" in refusal
    assert f"files cannot be created in {directory}" in refusal


async def test_a_healthy_store_starts_and_serves(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    await make_store(path, 1000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFY_GATEWAY_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(sqlite_config(tmp_path, path))],
        stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )
    seen = []
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + SERVE_TIMEOUT_SECONDS
        while not any("listening on" in line for line in seen):
            assert time.monotonic() < deadline and process.poll() is None, "".join(seen)
            seen.append(process.stderr.readline())
    finally:
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=SERVE_TIMEOUT_SECONDS)[1]
    assert process.returncode == 0 and "refusing" not in "".join(seen) + rest


async def test_start_up_check_of_a_big_file_stays_within_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """quick_check of the whole file would take longer than the budget: it is cut there, and the file opens."""
    path = tmp_path / "gateway.sqlite3"
    await make_store(path, 1)
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO prompts VALUES (?, 'kerniegen', 'alice', ?, ?, 'default', NULL)",
            ((str(uuid.UUID(int=i)), str(uuid.UUID(int=-i % 2**128)), 1.7e9 + i) for i in range(200_000)),
        )
    started = time.perf_counter()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA quick_check").fetchone() == ("ok",)
    whole = time.perf_counter() - started
    budget = whole / 10
    monkeypatch.setattr(sqlite_store, "START_CHECK_SECONDS", budget)
    caplog.set_level(logging.DEBUG, logger="gateway.state.filecheck")

    started = time.perf_counter()
    store = SqliteStateStore.open(StoreSettings(path=path))
    took = time.perf_counter() - started
    await store.close()

    assert "quick_check stopped after" in caplog.text
    assert took < budget + whole / 2, (took, budget, whole)


# --- Redis refused at start-up -----------------------------------------------------------------------------------


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    async with fresh_redis_prefix() as prefix:
        yield prefix


def redis_config(directory: Path, prefix: str, url: str = REDIS_URL) -> Path:
    return write_config(directory, f'kind = "redis"\nredis_url = {toml(url)}\nkey_prefix = {toml(prefix)}')


async def test_redis_keys_of_another_type_under_the_prefix_are_refused(tmp_path: Path, redis_prefix: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    await client.rpush(f"{redis_prefix}prompts", "not ours")
    await client.aclose()

    refusal = refusal_of(serve(redis_config(tmp_path, redis_prefix)))

    assert f"redis state store at {REDIS_URL}: key '{redis_prefix}prompts' holds a list, where this gateway " \
        "keeps a sorted set" in refusal
    assert "set store.key_prefix to a prefix of the gateway's own" in refusal


async def test_redis_record_that_is_not_ours_is_refused(tmp_path: Path, redis_prefix: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    await client.zadd(f"{redis_prefix}prompts", {"p-1": 1.0})
    await client.hset(f"{redis_prefix}prompt:p-1", "task", "celery")
    await client.aclose()

    refusal = refusal_of(serve(redis_config(tmp_path, redis_prefix)))

    assert f"key '{redis_prefix}prompt:p-1' holds a hash, where this gateway keeps a prompt record" in refusal


@pytest.mark.parametrize(
    ("marker", "phrase"),
    [("2", "says schema version 2, where this gateway's is 1"), ("celery", "holds 'celery', not a schema version")],
    ids=["newer", "foreign"],
)
async def test_redis_schema_marker_of_another_version_is_refused(
    tmp_path: Path, redis_prefix: str, marker: str, phrase: str
) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    await client.set(f"{redis_prefix}schema", marker)
    await client.aclose()

    refusal = refusal_of(serve(redis_config(tmp_path, redis_prefix)))

    assert f"key '{redis_prefix}schema'" in refusal and phrase in refusal


def test_unreachable_redis_is_refused_without_its_password(tmp_path: Path) -> None:
    result = serve(redis_config(tmp_path, "comfy-gateway:", "redis://:hunter2-secret@127.0.0.1:1/0"))

    refusal = refusal_of(result)
    assert "redis state store: ping failed: ConnectionError" in refusal
    assert "(Redis at redis://***@127.0.0.1:1/0); check that Redis runs there" in refusal
    assert "hunter2-secret" not in result.stderr


def test_redis_without_the_redis_package_is_refused(tmp_path: Path) -> None:
    refusal = refusal_of(serve(redis_config(tmp_path, "comfy-gateway:"), wrapper=WITHOUT_REDIS))

    assert 'store.kind is "redis" but the redis package cannot be imported' in refusal
    assert "reinstall it (pip install --force-reinstall comfy-gateway)" in refusal


async def test_store_refused_is_a_store_error_answered_503() -> None:
    """Where a StoreError escapes a request (the gateway's own routes too), it is answered 503, never 500."""
    refused = StoreRefused("x")
    assert isinstance(refused, StoreError) and refused.status == 503 and refused.code == "store_unavailable"


# --- at run time, through a running gateway ---------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def ready(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url + "/gateway/ready") as r:
        return r.status, await r.json()


def sqlite_of(gateway: Any) -> SqliteStateStore:
    store: StateStore = gateway.app[RUNTIME].store
    inner = store.store if isinstance(store, CachedLookups) else store
    assert isinstance(inner, SqliteStateStore)
    return inner


async def submit(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.post(url + "/prompt", json={"prompt": {"3": {"inputs": {}}}, "client_id": "c1"}) as r:
        return r.status, await r.json()


async def test_pages_damaged_after_start_up_answer_503_and_ready_says_so(
    tmp_path: Path, start_backend: Any, start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    backend = await start_backend("alpha")
    path = tmp_path / "state" / "gateway.sqlite3"
    path.parent.mkdir()
    ids = await make_store(path, 1000, backend="alpha")
    gateway = await start_gateway({"alpha": backend.url}, state_file=path)
    assert (await ready(http, gateway.url))[0] == 200

    garble_middle(path)
    statuses: Counter[int] = Counter()
    errors = set()
    for prompt_id in ids[::10]:
        for route in (f"/history/{prompt_id}", f"/gateway/prompts/{prompt_id}"):
            async with http.get(gateway.url + route) as r:
                statuses[r.status] += 1
                if r.status == 503:
                    errors.add((await r.json())["error"]["type"])
    async with http.get(gateway.url + "/gateway/preferences/alice") as r:
        statuses[r.status] += 1
    status, body = await ready(http, gateway.url)

    assert statuses[503] > 0 and statuses[500] == 0, statuses
    assert errors == {"store_unavailable"}
    assert status == 503 and body["store"]["ok"] is False
    assert f"{path} is damaged" in body["store"]["error"] and "malformed" in body["store"]["error"]
    assert body["backends"]["alpha"]["up"] is True  # the store alone is the reason


async def test_ready_reports_a_store_whose_write_lock_another_process_holds(
    tmp_path: Path, start_backend: Any, start_gateway: Any, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_SECONDS", 0.2)
    backend = await start_backend("alpha")
    path = tmp_path / "gateway.sqlite3"
    gateway = await start_gateway({"alpha": backend.url}, state_file=path)
    assert (await ready(http, gateway.url))[0] == 200
    other = sqlite3.connect(path, isolation_level=None)  # another replica, stuck inside a write transaction
    try:
        other.execute("BEGIN IMMEDIATE")
        status, body = await ready(http, gateway.url)
        other.execute("ROLLBACK")
    finally:
        other.close()

    assert status == 503
    assert body["store"] == {
        "ok": False,
        "error": f"StoreError: sqlite state store: a test write to {path} failed: database is locked",
    }
    assert (await ready(http, gateway.url))[0] == 200


async def test_ready_reports_the_last_write_failing_until_a_write_succeeds(
    tmp_path: Path, start_backend: Any, start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    backend = await start_backend("alpha")
    gateway = await start_gateway({"alpha": backend.url})
    store = sqlite_of(gateway)
    # SQLite's own refusal to write, as from a file system remounted read-only under the running gateway.
    store._db.execute("PRAGMA query_only = ON")
    refused = await submit(http, gateway.url)
    while_read_only = await ready(http, gateway.url)
    store._db.execute("PRAGMA query_only = OFF")
    after = await ready(http, gateway.url)  # its test write succeeds; the last real write still had failed
    then = await ready(http, gateway.url)

    assert refused[0] == 503 and refused[1]["error"]["type"] == "store_unavailable"
    assert "record_prompt failed: attempt to write a readonly database" in refused[1]["error"]["message"]
    assert while_read_only[0] == 503
    assert "a test write to" in while_read_only[1]["store"]["error"]
    assert after[0] == 503
    assert "sqlite state store: the last write failed (record_prompt failed: attempt to write a readonly database)" \
        in after[1]["store"]["error"]
    assert then[0] == 200 and then[1]["store"] == {"ok": True}


async def test_a_real_write_succeeding_clears_the_last_failure(
    tmp_path: Path, start_backend: Any, start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    backend = await start_backend("alpha")
    gateway = await start_gateway({"alpha": backend.url})
    store = sqlite_of(gateway)
    store._db.execute("PRAGMA query_only = ON")
    assert (await submit(http, gateway.url))[0] == 503
    store._db.execute("PRAGMA query_only = OFF")

    assert (await submit(http, gateway.url))[0] == 200
    assert (await ready(http, gateway.url))[0] == 200


@pytest.fixture
async def redis_user(redis_prefix: str) -> AsyncIterator[Callable[..., Any]]:
    """An ACL user of the test Redis limited to the prefix; `grant(rules)` sets its key rules. Deleted afterwards."""
    admin = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    name, password = f"gw-test-{uuid.uuid4().hex[:12]}", f"pw-{uuid.uuid4().hex}"

    async def grant(*key_rules: str) -> str:
        await admin.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}", "+@all", *key_rules)
        return str(URL(REDIS_URL).with_user(name).with_password(password))

    try:
        yield grant
    finally:
        await admin.execute_command("ACL", "DELUSER", name)
        await admin.aclose()


async def test_ready_reports_a_redis_that_refuses_writes_and_never_its_password(
    start_backend: Any, start_gateway: Any, http: aiohttp.ClientSession, redis_prefix: str, redis_user: Any
) -> None:
    url = await redis_user(f"~{redis_prefix}*")
    password = URL(url).password
    assert password
    store = await open_store(StoreSettings(kind="redis", redis_url=url, key_prefix=redis_prefix))
    try:
        backend = await start_backend("alpha")
        gateway = await start_gateway({"alpha": backend.url}, store=store)
        assert (await ready(http, gateway.url))[0] == 200

        await redis_user(f"%R~{redis_prefix}*")  # reads only, from now on, on its open connections too
        status, body = await ready(http, gateway.url)
        await redis_user(f"~{redis_prefix}*")
        recovered = await ready(http, gateway.url)
    finally:
        await store.close()

    assert status == 503 and body["store"]["ok"] is False
    assert body["store"]["error"].startswith("StoreError: redis state store: ping failed: NoPermissionError")
    assert password not in json.dumps(body)
    assert recovered[0] == 200


async def test_ready_reports_a_redis_whose_last_write_failed(
    start_backend: Any, start_gateway: Any, http: aiohttp.ClientSession, redis_prefix: str, redis_user: Any
) -> None:
    url = await redis_user(f"~{redis_prefix}*")
    store = await open_store(StoreSettings(kind="redis", redis_url=url, key_prefix=redis_prefix))
    try:
        backend = await start_backend("alpha")
        gateway = await start_gateway({"alpha": backend.url}, store=store)
        # Records may no longer be written, the test write's key still may.
        await redis_user(f"%R~{redis_prefix}*", f"~{redis_prefix}ready-check")
        refused = await submit(http, gateway.url)
        after = await ready(http, gateway.url)
        then = await ready(http, gateway.url)
    finally:
        await store.close()

    assert refused[0] == 503 and "record_prompt failed: NoPermissionError" in refused[1]["error"]["message"]
    assert after[0] == 503 and "redis state store: the last write failed (record_prompt failed" in \
        after[1]["store"]["error"]
    assert then[0] == 200

