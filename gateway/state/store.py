"""The state store: prompt affinity (prompt_id -> backend) and each user's preferred backend.

One small async interface with two implementations: SQLite (sqlite_store, replicas on one host) and
Redis (redis_store, replicas anywhere). Open with `store = await open_store(settings.store)`, which
returns a ready store (schema in place, connection checked); end with `await store.close()`.
A store that must not be used (a foreign or damaged file, an unreachable Redis) is refused there with
StoreRefused, whose message says which store, what is wrong and what to do.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

from gateway.config.settings import StoreSettings
from gateway.core.errors import StoreUnavailable

# Retention is applied by prune(); this is how often prune_periodically calls it.
PRUNE_INTERVAL_SECONDS = 60.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptRecord:
    prompt_id: str
    backend: str
    user: str | None
    client_id: str | None
    submitted_at: float  # unix seconds
    # Why the gateway sent it there (core/selection.py Source: header, query, preference, default, ...); None for
    # a prompt the gateway found on a backend by asking (never routed by it) or recorded before routes were kept.
    route: str | None = None
    # What the guardrails did to it (core/guardrail_actions.py's names, each once): the stores keep only those.
    guardrails: tuple[str, ...] = ()


class StoreError(StoreUnavailable):
    """The store could not answer: I/O error, lock wait exceeded, connection lost, or an incompatible schema.

    A StoreUnavailable, so wherever one escapes a request (the proxy's pipeline, the gateway's own routes) it is
    answered 503 store_unavailable, never 500."""


class StoreRefused(StoreError):
    """open_store will not use this store. The message is whole, for an operator at start-up: the file or
    server, what is wrong with it, and what to do."""


class StateStore(Protocol):
    """Async so a networked store fits; every call is one small keyed operation and must stay cheap."""

    # True when its calls never wait on I/O of their own (SQLite, run on the loop): a decision that calls it
    # can run inline, without a task. False when they may (Redis), and may rely on running in a task.
    answers_inline: bool

    async def record_prompt(self, record: PromptRecord) -> None:
        """Insert or replace the record for record.prompt_id. Of its guardrails only the gateway's own action
        names are kept (guardrail_actions.recorded_actions), so a lookup may return fewer than were given."""

    async def forget_prompt(self, prompt_id: str) -> None:
        """Remove it; forgetting an unknown prompt is not an error."""

    async def lookup_prompt(self, prompt_id: str) -> PromptRecord | None: ...

    async def recent_prompts(
        self, limit: int, *, scan: int, backend: str | None = None, user: str | None = None
    ) -> list[PromptRecord]:
        """The newest prompts first, at most `limit`, only `backend`'s and `user`'s when given. Bounded: only the
        newest `scan` records are looked at, whatever the filters."""

    async def list_preferences(self, limit: int) -> list[tuple[str, str]]:
        """Stored preferences as (user, backend), ordered by user name, at most `limit`. When more users have one,
        which `limit` is the store's bounded choice (SQLite: the first by name; Redis: the first by name among the
        4 × limit its scan reached first)."""

    async def get_preference(self, user: str) -> str | None: ...

    async def set_preference(self, user: str, backend: str) -> None: ...

    async def delete_preference(self, user: str) -> bool:
        """True if the user had a stored preference."""

    async def prune(self, now: float | None = None) -> int:
        """Drop prompts older than retention_seconds, then the oldest beyond max_prompts; returns how many."""

    async def count_prompts(self) -> int: ...

    async def ping(self) -> None:
        """Raise StoreError if the store cannot answer, cannot write (a test write fails), or its last write
        failed and no write has succeeded since."""

    async def close(self) -> None:
        """Release the connection; calling it twice is harmless."""


async def open_store(settings: StoreSettings) -> StateStore:
    """A ready store of settings.kind. Raises StoreRefused if it cannot be opened or must not be used."""
    if settings.kind == "redis":
        # Imported here so that a SQLite gateway never loads the redis client.
        try:
            from gateway.state.redis_store import RedisStateStore
        except ImportError as exc:
            raise StoreRefused(
                f"store.kind is \"redis\" but the redis package cannot be imported ({exc}); it is a dependency of "
                "comfy-gateway: reinstall it (pip install --force-reinstall comfy-gateway) or set store.kind = "
                "\"sqlite\""
            ) from exc

        return await RedisStateStore.open(settings)
    from gateway.state.sqlite_store import SqliteStateStore

    return SqliteStateStore.open(settings)


def with_lookup_cache(store: StateStore, settings: StoreSettings) -> StateStore:
    """`store` behind a memory of recent lookups (lookup_cache), unless settings turn it off."""
    if settings.lookup_cache_seconds <= 0:
        return store
    from gateway.state.lookup_cache import CachedLookups

    return CachedLookups(store, seconds=settings.lookup_cache_seconds, max_entries=settings.lookup_cache_entries)


async def prune_periodically(store: StateStore, interval_seconds: float = PRUNE_INTERVAL_SECONDS) -> None:
    """Apply retention forever (run it as a background task and cancel it at shutdown).

    A failed prune is logged and retried at the next interval: retention is housekeeping, never a
    reason to stop serving.
    """
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            removed = await store.prune()
        except StoreError as exc:
            log.warning("state store prune failed, retrying in %.0f s: %s", interval_seconds, exc)
        else:
            if removed:
                log.info("state store pruned %d prompt records", removed)
