"""The StateStore contract, run against SQLite and Redis alike, plus what only Redis must do.

Redis tests use a unique key_prefix each and delete their keys afterwards. When Redis is unreachable
they are skipped, except with CI set in the environment, where they fail.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config.settings import StoreSettings
from gateway.state.redis_store import RECENT_BATCH_IDS
from gateway.state.sqlite_store import PRUNE_BATCH_ROWS
from gateway.state.store import PromptRecord, StateStore, StoreError, open_store, with_lookup_cache
from tests.redis_keys import REDIS_URL, delete_keys, fresh_prefix, unreachable

RETENTION_SECONDS = 3600.0

OpenStore = Callable[..., Awaitable[StateStore]]


def a_record(prompt_id: str = "p-1", *, backend: str = "kerniegen", submitted_at: float | None = None) -> PromptRecord:
    return PromptRecord(
        prompt_id=prompt_id,
        backend=backend,
        user="alice",
        client_id="client-1",
        submitted_at=time.time() if submitted_at is None else submitted_at,
    )


async def _open_redis(settings: StoreSettings) -> StateStore:
    try:
        return await open_store(settings)
    except StoreError as exc:
        unreachable(exc)


@pytest.fixture
async def open_redis_store() -> AsyncIterator[OpenStore]:
    """Opens Redis stores sharing one fresh key_prefix; closes them and deletes the keys at the end."""
    prefix = fresh_prefix()
    opened: list[StateStore] = []

    async def open_one(**overrides: Any) -> StateStore:
        settings = StoreSettings(kind="redis", redis_url=REDIS_URL, key_prefix=prefix, **overrides)
        store = await _open_redis(settings)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()
    if opened:
        await delete_keys(prefix)


@pytest.fixture
async def open_sqlite_store(tmp_path: Path) -> AsyncIterator[OpenStore]:
    """Opens SQLite stores on one file under tmp_path; closes them at the end."""
    opened: list[StateStore] = []

    async def open_one(**overrides: Any) -> StateStore:
        store = await open_store(StoreSettings(kind="sqlite", path=tmp_path / "state" / "gateway.sqlite3", **overrides))
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


@pytest.fixture(params=["sqlite", "redis"])
def open_any_store(request: pytest.FixtureRequest) -> OpenStore:
    return request.getfixturevalue(f"open_{request.param}_store")


@pytest.fixture
async def store(open_any_store: OpenStore) -> StateStore:
    return await open_any_store(retention_seconds=RETENTION_SECONDS)


async def test_recorded_prompt_is_found_with_every_field(store: StateStore) -> None:
    # Within retention: Redis keeps an older record 1 ms (its time is up), which a lookup could race.
    record = PromptRecord("p-1", "comfyui", "alice", "client-1", int(time.time()) + 0.123456)

    await store.record_prompt(record)

    assert await store.lookup_prompt("p-1") == record


async def test_optional_fields_may_be_none(store: StateStore) -> None:
    record = PromptRecord("p-1", "comfyui", None, None, time.time())

    await store.record_prompt(record)

    assert await store.lookup_prompt("p-1") == record


async def test_unknown_prompt_is_none(store: StateStore) -> None:
    assert await store.lookup_prompt("never-seen") is None


async def test_record_prompt_replaces_an_existing_record(store: StateStore) -> None:
    await store.record_prompt(a_record("p-1", backend="kerniegen"))
    replacement = a_record("p-1", backend="comfyui")

    await store.record_prompt(replacement)

    assert await store.lookup_prompt("p-1") == replacement
    assert await store.count_prompts() == 1


async def test_forget_prompt(store: StateStore) -> None:
    await store.record_prompt(a_record("p-1"))
    await store.record_prompt(a_record("p-2"))

    await store.forget_prompt("p-1")
    await store.forget_prompt("never-seen")

    assert await store.lookup_prompt("p-1") is None
    assert await store.lookup_prompt("p-2") is not None
    assert await store.count_prompts() == 1


@pytest.mark.parametrize(
    "prompt_id",
    ["a:b:c", "ünïcødé-✓", "with space", "x" * 500, "'; DROP TABLE prompts; --"],
    ids=["colons", "unicode", "space", "long", "sql-ish"],
)
async def test_any_prompt_id_round_trips(store: StateStore, prompt_id: str) -> None:
    await store.record_prompt(a_record(prompt_id))

    assert (await store.lookup_prompt(prompt_id)).prompt_id == prompt_id  # type: ignore[union-attr]


async def test_the_route_is_kept_with_the_record(store: StateStore) -> None:
    record = PromptRecord("p-1", "comfyui", "alice", None, time.time(), route="preference")

    await store.record_prompt(record)

    assert await store.lookup_prompt("p-1") == record


async def test_the_guardrail_actions_are_kept_with_the_record(store: StateStore) -> None:
    record = PromptRecord("p-1", "comfyui", "alice", None, time.time(), "model", ("placed_by_model", "seed_normalized"))

    await store.record_prompt(record)

    assert await store.lookup_prompt("p-1") == record
    assert await store.recent_prompts(5, scan=10) == [record]


async def test_only_the_gateways_own_action_names_are_kept_each_once(open_any_store: OpenStore) -> None:
    store = with_lookup_cache(await open_any_store(), StoreSettings(lookup_cache_seconds=5.0))
    given = ("seed_normalized", "<img src=x onerror=alert(1)>", "seed_normalized", "x" * 100_000, "skipped", "")
    await store.record_prompt(PromptRecord("p-1", "one", None, None, time.time(), "default", given))

    cached = await store.lookup_prompt("p-1")
    listed = await store.recent_prompts(5, scan=10)
    stored = await store.store.lookup_prompt("p-1")  # type: ignore[attr-defined]

    assert cached is not None and cached.guardrails == ("seed_normalized", "skipped")
    assert [r.guardrails for r in listed] == [("seed_normalized", "skipped")]
    assert stored == cached


async def test_recent_prompts_are_newest_first_and_bounded(store: StateStore) -> None:
    now = time.time()
    for i in range(7):
        await store.record_prompt(a_record(f"p-{i}", submitted_at=now - 100 + i))

    listed = await store.recent_prompts(5, scan=1000)

    assert [r.prompt_id for r in listed] == ["p-6", "p-5", "p-4", "p-3", "p-2"]
    assert listed[0] == await store.lookup_prompt("p-6")
    assert await store.recent_prompts(0, scan=1000) == []


async def test_recent_prompts_filter_by_backend_and_user(store: StateStore) -> None:
    now = time.time()
    for i, (backend, user) in enumerate(
        [("kerniegen", "ana"), ("comfyui", "ana"), ("comfyui", "bo"), ("kerniegen", None), ("comfyui", "ana")]
    ):
        await store.record_prompt(PromptRecord(f"p-{i}", backend, user, None, now - 10 + i, route="default"))

    by_backend = await store.recent_prompts(10, scan=1000, backend="comfyui")
    by_user = await store.recent_prompts(10, scan=1000, user="ana")
    both = await store.recent_prompts(10, scan=1000, backend="comfyui", user="ana")
    nobody = await store.recent_prompts(10, scan=1000, user="<script>alert(1)</script>")

    assert [r.prompt_id for r in by_backend] == ["p-4", "p-2", "p-1"]
    assert [r.prompt_id for r in by_user] == ["p-4", "p-1", "p-0"]
    assert [r.prompt_id for r in both] == ["p-4", "p-1"]
    assert nobody == []


async def test_recent_prompts_look_only_at_the_newest_scan_records(store: StateStore) -> None:
    now = time.time()
    await store.record_prompt(PromptRecord("old-ana", "kerniegen", "ana", None, now - 50))
    for i in range(5):
        await store.record_prompt(PromptRecord(f"bo-{i}", "kerniegen", "bo", None, now - 10 + i))

    assert await store.recent_prompts(10, scan=5, user="ana") == []
    assert [r.prompt_id for r in await store.recent_prompts(10, scan=6, user="ana")] == ["old-ana"]


async def test_preferences_are_listed_by_user_and_bounded(store: StateStore) -> None:
    assert await store.list_preferences(10) == []
    for user, backend in [("carla", "kerniegen"), ("ana", "comfyui"), ("bo", "kerniegen")]:
        await store.set_preference(user, backend)

    assert await store.list_preferences(10) == [("ana", "comfyui"), ("bo", "kerniegen"), ("carla", "kerniegen")]
    assert await store.list_preferences(2) == [("ana", "comfyui"), ("bo", "kerniegen")]
    await store.delete_preference("ana")
    assert await store.list_preferences(10) == [("bo", "kerniegen"), ("carla", "kerniegen")]


async def test_listings_pass_through_the_lookup_cache(open_any_store: OpenStore) -> None:
    cached = with_lookup_cache(await open_any_store(), StoreSettings(lookup_cache_seconds=5.0))
    await cached.record_prompt(a_record("p-1"))
    await cached.set_preference("ana", "comfyui")

    assert [r.prompt_id for r in await cached.recent_prompts(5, scan=100)] == ["p-1"]
    assert await cached.list_preferences(5) == [("ana", "comfyui")]


async def test_preferences(store: StateStore) -> None:
    assert await store.get_preference("alice") is None

    await store.set_preference("alice", "comfyui")
    await store.set_preference("bob", "kerniegen")
    await store.set_preference("alice", "kerniegen")

    assert await store.get_preference("alice") == "kerniegen"
    assert await store.get_preference("bob") == "kerniegen"
    assert await store.delete_preference("alice") is True
    assert await store.delete_preference("alice") is False
    assert await store.get_preference("alice") is None


async def test_prune_drops_prompts_older_than_retention(store: StateStore) -> None:
    now = time.time()
    await store.record_prompt(a_record("old", submitted_at=now - RETENTION_SECONDS - 5))
    await store.record_prompt(a_record("older", submitted_at=now - 2 * RETENTION_SECONDS))
    await store.record_prompt(a_record("fresh", submitted_at=now - 5))

    assert await store.prune(now) == 2

    assert await store.lookup_prompt("old") is None
    assert await store.lookup_prompt("older") is None
    assert await store.lookup_prompt("fresh") is not None
    assert await store.count_prompts() == 1


async def test_prune_keeps_only_the_newest_max_prompts(open_any_store: OpenStore) -> None:
    store = await open_any_store(max_prompts=3)
    now = time.time()
    for index in range(10):
        await store.record_prompt(a_record(f"p-{index}", submitted_at=now - 100 + index))

    assert await store.prune(now) == 7

    assert await store.count_prompts() == 3
    kept = [index for index in range(10) if await store.lookup_prompt(f"p-{index}") is not None]
    assert kept == [7, 8, 9]


async def test_replicas_pruning_at_once_remove_exactly_the_excess(open_any_store: OpenStore) -> None:
    replicas = [await open_any_store(max_prompts=100) for _ in range(3)]
    now = time.time()
    await asyncio.gather(*(replicas[0].record_prompt(a_record(f"p-{i}", submitted_at=now - i)) for i in range(1300)))

    removed = await asyncio.gather(*(replica.prune(now) for replica in replicas))

    assert sum(removed) == 1200
    assert await replicas[1].count_prompts() == 100
    assert await replicas[2].lookup_prompt("p-99") is not None
    assert await replicas[2].lookup_prompt("p-100") is None


async def test_prune_works_through_many_batches(store: StateStore) -> None:
    now = time.time()
    expired = PRUNE_BATCH_ROWS * 2 + 17
    await asyncio.gather(
        *(store.record_prompt(a_record(f"old-{i}", submitted_at=now - 2 * RETENTION_SECONDS)) for i in range(expired))
    )
    await store.record_prompt(a_record("fresh", submitted_at=now))

    assert await store.prune(now) == expired
    assert await store.count_prompts() == 1


async def test_prune_with_nothing_to_do(store: StateStore) -> None:
    await store.record_prompt(a_record("fresh"))

    assert await store.prune() == 0
    assert await store.count_prompts() == 1


async def test_concurrent_calls_all_land(store: StateStore) -> None:
    await asyncio.gather(*(store.record_prompt(a_record(f"p-{i}")) for i in range(200)))

    found = await asyncio.gather(*(store.lookup_prompt(f"p-{i}") for i in range(200)))

    assert all(record is not None for record in found)
    assert await store.count_prompts() == 200


async def test_state_survives_closing_and_reopening(open_any_store: OpenStore) -> None:
    first = await open_any_store()
    await first.record_prompt(a_record("p-1", backend="comfyui"))
    await first.set_preference("alice", "comfyui")
    await first.close()

    second = await open_any_store()

    assert (await second.lookup_prompt("p-1")).backend == "comfyui"  # type: ignore[union-attr]
    assert await second.get_preference("alice") == "comfyui"


async def test_ping_answers_until_closed(store: StateStore) -> None:
    await store.ping()

    await store.close()
    await store.close()  # twice is harmless

    with pytest.raises(StoreError):
        await store.ping()


# Redis only.


async def test_redis_record_expires_after_retention(open_redis_store: OpenStore) -> None:
    store = await open_redis_store(retention_seconds=RETENTION_SECONDS)
    await store.record_prompt(a_record("p-1", submitted_at=time.time() - 600))
    client = store._client  # type: ignore[attr-defined]

    ttl_ms = await client.pttl(store._prompt_prefix + "p-1")  # type: ignore[attr-defined]

    assert (RETENTION_SECONDS - 600 - 5) * 1000 < ttl_ms <= (RETENTION_SECONDS - 600) * 1000


async def test_redis_keys_stay_under_the_prefix(open_redis_store: OpenStore) -> None:
    store = await open_redis_store()
    await store.record_prompt(a_record("p-1"))
    await store.set_preference("alice", "comfyui")
    prefix = store._prefix  # type: ignore[attr-defined]

    keys = sorted([key async for key in store._client.scan_iter(match=f"{prefix}*")])  # type: ignore[attr-defined]

    assert keys == [f"{prefix}preferences", f"{prefix}prompt:p-1", f"{prefix}prompts"]


async def test_redis_records_written_before_routes_were_kept_read_with_no_route(open_redis_store: OpenStore) -> None:
    store = await open_redis_store()
    prefix = store._prefix  # type: ignore[attr-defined]
    client = store._client  # type: ignore[attr-defined]
    now = time.time()
    older = {"backend": "comfyui", "user": "ana", "client_id": None, "submitted_at": now}  # no "route" member
    await client.set(f"{prefix}prompt:old", json.dumps(older), px=60_000)
    await client.zadd(f"{prefix}prompts", {"old": now})

    assert await store.lookup_prompt("old") == PromptRecord("old", "comfyui", "ana", None, now, None, ())
    assert await store.recent_prompts(5, scan=10, user="ana") == [PromptRecord("old", "comfyui", "ana", None, now)]
    reopened = await open_redis_store()  # the layout check at start-up takes it too
    assert (await reopened.lookup_prompt("old")).route is None  # type: ignore[union-attr]


async def test_redis_records_keep_guardrails_as_a_list_left_out_when_empty(open_redis_store: OpenStore) -> None:
    store = await open_redis_store()
    prefix = store._prefix  # type: ignore[attr-defined]
    client = store._client  # type: ignore[attr-defined]
    now = time.time()
    await store.record_prompt(PromptRecord("calm", "one", None, None, now, "default"))
    await store.record_prompt(PromptRecord("guarded", "one", None, None, now, "default", ("seed_normalized",)))

    calm = json.loads(await client.get(f"{prefix}prompt:calm"))
    guarded = json.loads(await client.get(f"{prefix}prompt:guarded"))

    assert "guardrails" not in calm and guarded["guardrails"] == ["seed_normalized"]


@pytest.mark.parametrize("guardrails", ["seed_normalized", {"a": 1}, 7])
async def test_redis_guardrails_that_are_not_a_list_make_the_record_unreadable(
    open_redis_store: OpenStore, guardrails: Any
) -> None:
    store = await open_redis_store()
    prefix = store._prefix  # type: ignore[attr-defined]
    client = store._client  # type: ignore[attr-defined]
    fields = {"backend": "one", "user": None, "client_id": None, "submitted_at": time.time(), "guardrails": guardrails}
    await client.set(f"{prefix}prompt:odd", json.dumps(fields), px=60_000)
    mixed = {**fields, "guardrails": [["seed_normalized"], {"x": 1}, None, "alias_applied"]}
    await client.set(f"{prefix}prompt:mixed", json.dumps(mixed), px=60_000)

    with pytest.raises(StoreError, match="record for prompt 'odd' is unreadable"):
        await store.lookup_prompt("odd")
    assert (await store.lookup_prompt("mixed")).guardrails == ("alias_applied",)  # type: ignore[union-attr]


async def test_redis_recent_prompts_skip_expired_records_and_read_past_one_batch(open_redis_store: OpenStore) -> None:
    store = await open_redis_store()
    now = time.time()
    for i in range(RECENT_BATCH_IDS + 50):
        await store.record_prompt(PromptRecord(f"p-{i}", "one", "ana" if i == 0 else "bo", None, now - 1000 + i))
    await store._client.delete(f"{store._prefix}prompt:p-{RECENT_BATCH_IDS + 49}")  # type: ignore[attr-defined]

    newest = await store.recent_prompts(2, scan=10_000)
    oldest_ana = await store.recent_prompts(5, scan=10_000, user="ana")

    assert [r.prompt_id for r in newest] == [f"p-{RECENT_BATCH_IDS + 48}", f"p-{RECENT_BATCH_IDS + 47}"]
    assert [r.prompt_id for r in oldest_ana] == ["p-0"]


async def test_redis_stores_with_other_prefixes_do_not_see_each_other(open_redis_store: OpenStore) -> None:
    mine = await open_redis_store()
    other = await _open_redis(StoreSettings(kind="redis", redis_url=REDIS_URL, key_prefix=f"other-{uuid.uuid4().hex}:"))
    try:
        await mine.record_prompt(a_record("p-1"))
        await mine.set_preference("alice", "comfyui")

        assert await other.lookup_prompt("p-1") is None
        assert await other.get_preference("alice") is None
    finally:
        await other.close()


async def test_unreachable_redis_is_a_store_error() -> None:
    settings = StoreSettings(kind="redis", redis_url="redis://127.0.0.1:1/0")

    with pytest.raises(StoreError, match="redis state store: ping failed"):
        await open_store(settings)


async def test_whether_calls_can_wait_is_said_by_the_store_and_passed_through_the_lookup_cache(
    open_sqlite_store: OpenStore, open_redis_store: OpenStore
) -> None:
    """The fast path decides inline (no task per request) only where the store's calls never wait."""
    sqlite, redis = await open_sqlite_store(), await open_redis_store()
    assert sqlite.answers_inline is True and redis.answers_inline is False
    cached = with_lookup_cache(sqlite, StoreSettings(lookup_cache_seconds=5))
    assert cached is not sqlite and cached.answers_inline is True
    assert with_lookup_cache(redis, StoreSettings(lookup_cache_seconds=5)).answers_inline is False
