"""CachedLookups: repeated lookups come from memory for a bounded time; this replica's writes show at once;
another replica's new records show at once; its changes to a remembered record show once that expires."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.config.settings import StoreSettings
from gateway.state.lookup_cache import CachedLookups
from gateway.state.store import PromptRecord, StateStore, open_store


def record(prompt_id: str, backend: str = "comfyui") -> PromptRecord:
    return PromptRecord(prompt_id, backend, None, None, time.time())


@pytest.fixture
async def two_replicas(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[tuple[CachedLookups, StateStore]]]]:
    """Opens this replica's store behind the lookup memory, and another replica's on the same file; closes both."""
    opened: list[StateStore] = []

    async def open_both(seconds: float = 60.0, max_entries: int = 1000) -> tuple[CachedLookups, StateStore]:
        settings = StoreSettings(path=tmp_path / "gateway.sqlite3")
        mine = CachedLookups(await open_store(settings), seconds=seconds, max_entries=max_entries)
        other = await open_store(settings)  # another replica, sharing the file
        opened.extend((mine, other))
        return mine, other

    yield open_both
    for store in opened:
        await store.close()


async def test_a_remembered_record_is_served_until_it_expires(two_replicas) -> None:
    mine, other = await two_replicas(seconds=0.2)
    await other.record_prompt(record("p-1", "comfyui"))
    assert (await mine.lookup_prompt("p-1")).backend == "comfyui"  # type: ignore[union-attr]

    await other.record_prompt(record("p-1", "kerniegen"))  # submitted again, elsewhere, by another replica
    assert (await mine.lookup_prompt("p-1")).backend == "comfyui"  # type: ignore[union-attr]
    await asyncio.sleep(0.25)
    assert (await mine.lookup_prompt("p-1")).backend == "kerniegen"  # type: ignore[union-attr]


async def test_a_lookup_that_found_nothing_is_not_remembered(two_replicas) -> None:
    mine, other = await two_replicas()
    assert await mine.lookup_prompt("p-1") is None
    await other.record_prompt(record("p-1"))

    assert await mine.lookup_prompt("p-1") is not None


async def test_this_replica_s_writes_show_at_once(two_replicas) -> None:
    mine, other = await two_replicas()
    await mine.record_prompt(record("p-1", "comfyui"))
    assert (await mine.lookup_prompt("p-1")).backend == "comfyui"  # type: ignore[union-attr]
    await mine.record_prompt(record("p-1", "kerniegen"))
    assert (await mine.lookup_prompt("p-1")).backend == "kerniegen"  # type: ignore[union-attr]
    assert (await other.lookup_prompt("p-1")).backend == "kerniegen"  # type: ignore[union-attr]

    await mine.forget_prompt("p-1")

    assert await mine.lookup_prompt("p-1") is None
    assert await other.lookup_prompt("p-1") is None


async def test_at_most_max_entries_are_remembered(two_replicas) -> None:
    mine, other = await two_replicas(max_entries=2)
    for prompt_id in ("p-1", "p-2", "p-3"):
        await mine.record_prompt(record(prompt_id, "comfyui"))
    for prompt_id in ("p-1", "p-2", "p-3"):
        await other.record_prompt(record(prompt_id, "kerniegen"))

    # p-1, the least recently used, was let go: the store answers for it; the others come from memory.
    assert [(await mine.lookup_prompt(p)).backend for p in ("p-3", "p-2", "p-1")] == [  # type: ignore[union-attr]
        "comfyui", "comfyui", "kerniegen"]
    assert len(mine._hits) == 2


async def test_a_prune_that_removed_records_forgets_what_was_remembered(tmp_path: Path) -> None:
    settings = StoreSettings(path=tmp_path / "gateway.sqlite3", retention_seconds=60)
    mine = CachedLookups(await open_store(settings), seconds=60, max_entries=100)
    try:
        await mine.record_prompt(PromptRecord("old", "comfyui", None, None, time.time() - 120))
        assert await mine.lookup_prompt("old") is not None

        assert await mine.prune() == 1

        assert await mine.lookup_prompt("old") is None
    finally:
        await mine.close()
