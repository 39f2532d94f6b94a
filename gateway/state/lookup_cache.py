"""A short-lived, bounded memory of affinity lookups in front of the state store.

Every /history/{id}, /view of an output and queue call about a prompt looks its affinity up. Clients poll the
same prompt every second or two while it runs, so most lookups repeat one made moments before; each costs a
SQLite read transaction (a statement and two file-lock syscalls, with the store's own work) or a Redis
round trip. Hits are remembered for `seconds`.

What this replica writes (record, forget) updates the memory at once. What another replica writes is seen
once the entry expires: only a prompt id submitted again to another backend changes its record (ids are
minted by the gateway unless a client brings its own), so for at most `seconds` such a re-submission's later
calls may still go to the backend that ran it first. Lookups that find nothing are never remembered, so a
prompt recorded by another replica is found at once.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import replace

from gateway.core.guardrail_actions import recorded_actions
from gateway.state.store import PromptRecord, StateStore


class CachedLookups:
    """StateStore that answers repeated lookups from memory and passes everything else to `store`."""

    def __init__(self, store: StateStore, *, seconds: float, max_entries: int) -> None:
        self.store = store
        self.answers_inline = store.answers_inline  # a hit waits for nothing; a miss is the store's call
        self.seconds = seconds
        self.max_entries = max_entries
        self._hits: OrderedDict[str, tuple[float, PromptRecord]] = OrderedDict()  # id -> (expires, record)

    async def lookup_prompt(self, prompt_id: str) -> PromptRecord | None:
        kept = self._hits.get(prompt_id)
        now = time.monotonic()
        if kept is not None and kept[0] > now:
            return kept[1]
        record = await self.store.lookup_prompt(prompt_id)
        if record is None:
            self._hits.pop(prompt_id, None)
        else:
            self._remember(record, now)
        return record

    async def record_prompt(self, record: PromptRecord) -> None:
        self._hits.pop(record.prompt_id, None)  # never a record the store may not hold, even if the write fails
        await self.store.record_prompt(record)
        if record.guardrails:  # remembered as the store keeps it
            record = replace(record, guardrails=recorded_actions(record.guardrails))
        self._remember(record, time.monotonic())

    async def forget_prompt(self, prompt_id: str) -> None:
        self._hits.pop(prompt_id, None)
        await self.store.forget_prompt(prompt_id)

    async def recent_prompts(
        self, limit: int, *, scan: int, backend: str | None = None, user: str | None = None
    ) -> list[PromptRecord]:
        return await self.store.recent_prompts(limit, scan=scan, backend=backend, user=user)

    async def list_preferences(self, limit: int) -> list[tuple[str, str]]:
        return await self.store.list_preferences(limit)

    async def get_preference(self, user: str) -> str | None:
        return await self.store.get_preference(user)

    async def set_preference(self, user: str, backend: str) -> None:
        await self.store.set_preference(user, backend)

    async def delete_preference(self, user: str) -> bool:
        return await self.store.delete_preference(user)

    async def prune(self, now: float | None = None) -> int:
        removed = await self.store.prune(now)
        if removed:
            self._hits.clear()  # which ones went is not known here; the next lookups fill it again
        return removed

    async def count_prompts(self) -> int:
        return await self.store.count_prompts()

    async def ping(self) -> None:
        await self.store.ping()

    async def close(self) -> None:
        self._hits.clear()
        await self.store.close()

    def _remember(self, record: PromptRecord, now: float) -> None:
        hits = self._hits
        hits[record.prompt_id] = (now + self.seconds, record)
        hits.move_to_end(record.prompt_id)
        while len(hits) > self.max_entries:
            hits.popitem(last=False)
