"""The distributed state store: Redis, so gateway replicas on many hosts share affinity and preferences.

Keys (all under store.key_prefix): `prompt:<id>` holds one record as JSON with a TTL of the retention
period; the sorted set `prompts` orders ids by submitted_at for the count cap; the hash `preferences`
maps user -> backend. Prune steps are Lua scripts, so replicas pruning at once never over-delete.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from gateway.config.settings import StoreSettings
from gateway.state.store import PromptRecord, StoreError

CONNECT_TIMEOUT_SECONDS = 5.0
COMMAND_TIMEOUT_SECONDS = 5.0
MAX_CONNECTIONS = 64  # a request waits (up to COMMAND_TIMEOUT_SECONDS) for a free one beyond this
PRUNE_BATCH_IDS = 500

# KEYS[1] = the sorted set; ARGV = cutoff (exclusive), batch size, prompt key prefix.
_PRUNE_OLDER_THAN = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
    redis.call('ZREM', KEYS[1], id)
    redis.call('DEL', ARGV[3] .. id)
end
return #ids
"""

# KEYS[1] = the sorted set; ARGV = max kept, batch size, prompt key prefix.
_PRUNE_BEYOND_CAP = """
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[1])
if excess <= 0 then return 0 end
local popped = redis.call('ZPOPMIN', KEYS[1], math.min(excess, tonumber(ARGV[2])))
for i = 1, #popped, 2 do
    redis.call('DEL', ARGV[3] .. popped[i])
end
return #popped / 2
"""


@contextmanager
def _as_store_error(action: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError, UnicodeError) as exc:  # UnicodeError: text Redis cannot encode (a lone surrogate)
        raise StoreError(f"redis state store: {action} failed: {exc.__class__.__name__}: {exc}") from exc


class RedisStateStore:
    """StateStore on a bounded pool of Redis connections."""

    answers_inline = False  # every call is a round trip, with its own timeouts

    def __init__(self, client: aioredis.Redis, settings: StoreSettings) -> None:
        self._client = client
        self._prefix = settings.key_prefix
        self._retention_seconds = settings.retention_seconds
        self._max_prompts = settings.max_prompts
        self._prompt_prefix = f"{self._prefix}prompt:"
        self._index_key = f"{self._prefix}prompts"
        self._preferences_key = f"{self._prefix}preferences"
        self._prune_older_than = client.register_script(_PRUNE_OLDER_THAN)
        self._prune_beyond_cap = client.register_script(_PRUNE_BEYOND_CAP)
        self._closed = False

    @classmethod
    async def open(cls, settings: StoreSettings) -> RedisStateStore:
        """Connect and check the server answers. Raises StoreError."""
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=MAX_CONNECTIONS,
            timeout=COMMAND_TIMEOUT_SECONDS,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_timeout=COMMAND_TIMEOUT_SECONDS,
            decode_responses=True,
        )
        client = aioredis.Redis.from_pool(pool)  # the client owns the pool and closes it
        store = cls(client, settings)
        try:
            await store.ping()
        except StoreError:
            await store.close()
            raise
        return store

    async def record_prompt(self, record: PromptRecord) -> None:
        age = time.time() - record.submitted_at
        ttl_ms = max(1, int((self._retention_seconds - age) * 1000))
        value = json.dumps(
            {
                "backend": record.backend,
                "user": record.user,
                "client_id": record.client_id,
                "submitted_at": record.submitted_at,
            }
        )
        with _as_store_error("record_prompt"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(self._prompt_prefix + record.prompt_id, value, px=ttl_ms)
                pipe.zadd(self._index_key, {record.prompt_id: record.submitted_at})
                await pipe.execute()

    async def forget_prompt(self, prompt_id: str) -> None:
        with _as_store_error("forget_prompt"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self._prompt_prefix + prompt_id)
                pipe.zrem(self._index_key, prompt_id)
                await pipe.execute()

    async def lookup_prompt(self, prompt_id: str) -> PromptRecord | None:
        with _as_store_error("lookup_prompt"):
            raw = await self._client.get(self._prompt_prefix + prompt_id)
        if raw is None:
            return None
        try:
            fields = json.loads(raw)
            return PromptRecord(
                prompt_id, fields["backend"], fields["user"], fields["client_id"], float(fields["submitted_at"])
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"redis state store: record for prompt {prompt_id!r} is unreadable: {exc}") from exc

    async def get_preference(self, user: str) -> str | None:
        with _as_store_error("get_preference"):
            # str, not bytes: the pool decodes responses (decode_responses=True in open)
            return cast(str | None, await self._client.hget(self._preferences_key, user))

    async def set_preference(self, user: str, backend: str) -> None:
        with _as_store_error("set_preference"):
            await self._client.hset(self._preferences_key, user, backend)

    async def delete_preference(self, user: str) -> bool:
        with _as_store_error("delete_preference"):
            return await self._client.hdel(self._preferences_key, user) > 0

    async def prune(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        removed = 0
        with _as_store_error("prune"):
            # Record keys expire by TTL on their own; this keeps the index in step and applies the cap.
            for script, limit in (
                (self._prune_older_than, repr(now - self._retention_seconds)),
                (self._prune_beyond_cap, str(self._max_prompts)),
            ):
                while True:
                    deleted = int(
                        await script(keys=[self._index_key], args=[limit, PRUNE_BATCH_IDS, self._prompt_prefix])
                    )
                    removed += deleted
                    if deleted < PRUNE_BATCH_IDS:
                        break
        return removed

    async def count_prompts(self) -> int:
        with _as_store_error("count_prompts"):
            return await self._client.zcount(self._index_key, f"({time.time() - self._retention_seconds!r}", "+inf")

    async def ping(self) -> None:
        if self._closed:  # the client would silently reconnect; a closed store must not look healthy
            raise StoreError("redis state store: closed")
        with _as_store_error("ping"):
            await self._client.ping()

    async def close(self) -> None:
        self._closed = True
        await self._client.aclose()
