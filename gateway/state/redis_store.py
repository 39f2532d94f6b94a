"""The distributed state store: Redis, so gateway replicas on many hosts share affinity and preferences.

Keys (all under store.key_prefix): `prompt:<id>` holds one record as JSON (its guardrails a list of action
names, left out when empty) with a TTL of the retention period; the sorted set `prompts` orders ids by
submitted_at for the count cap; the hash `preferences` maps user -> backend. Prune steps are Lua scripts, so
replicas pruning at once never over-delete.

`schema` is kept for a later layout: this one (version 1) does not write it, and a store whose `schema` says
anything else, or whose keys are of other types, belongs to something else and is refused at start-up.
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
from gateway.core.guardrail_actions import recorded_actions
from gateway.core.redact import shown_url
from gateway.state.store import PromptRecord, StoreError, StoreRefused

PRUNE_BATCH_IDS = 500
RECENT_BATCH_IDS = 200  # ids (and records) read per round trip when listing recent prompts
SCHEMA_VERSION = 1
# ping()'s test write is a SET with this expiry and a DEL in one transaction: nothing is left behind, and
# the expiry would clear the key even if the DEL never ran.
PROBE_TTL_MS = 10_000

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


def _failure(action: str, exc: Exception) -> StoreError:
    return StoreError(f"redis state store: {action} failed: {exc.__class__.__name__}: {exc}")


def _record(prompt_id: str, raw: str | bytes) -> PromptRecord:
    try:
        fields = json.loads(raw)
        backend, user, client_id = fields["backend"], fields["user"], fields["client_id"]
        submitted_at = float(fields["submitted_at"])
        route = fields.get("route")  # absent from records written before routes were kept
        guardrails = fields.get("guardrails", ())  # absent likewise, and when the guardrails did nothing
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StoreError(f"redis state store: record for prompt {prompt_id!r} is unreadable: {exc}") from exc
    # Values of other types would fail later, where a request would see a 500.
    if (
        not isinstance(backend, str)
        or not all(value is None or isinstance(value, str) for value in (user, client_id, route))
        or not isinstance(guardrails, (list, tuple))
    ):
        raise StoreError(f"redis state store: record for prompt {prompt_id!r} is unreadable: {raw!r}")
    return PromptRecord(prompt_id, backend, user, client_id, submitted_at, route, recorded_actions(guardrails))


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
        self._schema_key = f"{self._prefix}schema"
        self._probe_key = f"{self._prefix}ready-check"
        self._shown_url = shown_url(settings.redis_url)
        # The last real write's failure, for a reason of the store's (not of its input), until a write succeeds.
        self._write_failure: StoreError | None = None
        self._prune_older_than = client.register_script(_PRUNE_OLDER_THAN)
        self._prune_beyond_cap = client.register_script(_PRUNE_BEYOND_CAP)
        self._closed = False

    @classmethod
    async def open(cls, settings: StoreSettings) -> RedisStateStore:
        """Connect, check the keys under the prefix are this gateway's, and make a test write. Raises
        StoreRefused."""
        try:
            pool = aioredis.BlockingConnectionPool.from_url(
                settings.redis_url,
                # a request waits up to redis_command_seconds for a free connection beyond the pool's size
                max_connections=settings.redis_max_connections,
                timeout=settings.redis_command_seconds,
                socket_connect_timeout=settings.redis_connect_seconds,
                socket_timeout=settings.redis_command_seconds,
                decode_responses=True,
            )
        except ValueError as exc:
            raise StoreRefused(
                f"redis state store: store.redis_url {shown_url(settings.redis_url)} is not a Redis URL ({exc}); "
                "set it to redis://host:port/db"
            ) from exc
        client = aioredis.Redis.from_pool(pool)  # the client owns the pool and closes it
        store = cls(client, settings)
        try:
            await store._check_layout()
            await store.ping()
        except StoreRefused:
            await store.close()
            raise
        except StoreError as exc:
            await store.close()
            raise StoreRefused(
                f"{exc} (Redis at {store._shown_url}); check that Redis runs there and that store.redis_url's "
                "credentials may read and write under the key prefix"
            ) from exc
        return store

    async def _check_layout(self) -> None:
        """Refuse keys under the prefix that another program (or a newer gateway) wrote: a type this layout
        never gives them, or a schema marker. Bounded: three keys and the records of the oldest and newest id."""
        with self._errors("ping"):
            async with self._client.pipeline(transaction=False) as pipe:
                for key in (self._index_key, self._preferences_key, self._schema_key):
                    pipe.type(key)
                kinds = cast(list[str], await pipe.execute())
            keys = (self._index_key, self._preferences_key, self._schema_key)
            for key, kind, expected in zip(keys, kinds, ("zset", "hash", "string"), strict=True):
                if kind not in ("none", expected):
                    shown = "sorted set" if expected == "zset" else expected
                    raise self._foreign(f"key {key!r} holds a {kind}, where this gateway keeps a {shown}")
            if kinds[2] == "string":
                marker = cast(str, await self._client.get(self._schema_key) or "")
                if not marker.isdigit():
                    raise self._foreign(f"key {self._schema_key!r} holds {marker!r}, not a schema version")
                if int(marker) != SCHEMA_VERSION:
                    raise StoreRefused(
                        f"redis state store: key {self._schema_key!r} at {self._shown_url} says schema version "
                        f"{marker}, where this gateway's is {SCHEMA_VERSION}; use a gateway of that version or "
                        "another store.key_prefix"
                    )
            if kinds[0] != "zset":
                return
            index = self._index_key
            sampled = [*await self._client.zrange(index, 0, 0), *await self._client.zrange(index, -1, -1)]
            for prompt_id in dict.fromkeys(cast(list[str], sampled)):
                key = self._prompt_prefix + prompt_id
                kind = cast(str, await self._client.type(key))
                if kind not in ("none", "string"):
                    raise self._foreign(f"key {key!r} holds a {kind}, where this gateway keeps a prompt record")
                raw = await self._client.get(key)
                if raw is None:
                    continue  # expired since
                try:
                    _record(prompt_id, raw)
                except StoreError as exc:
                    raise self._foreign(str(exc).removeprefix("redis state store: ")) from exc

    def _foreign(self, why: str) -> StoreRefused:
        return StoreRefused(
            f"redis state store at {self._shown_url}: {why}: something else uses the key prefix {self._prefix!r}; "
            "set store.key_prefix to a prefix of the gateway's own"
        )

    @contextmanager
    def _errors(self, action: str, *, write: bool = False) -> Iterator[None]:
        """StoreError for what Redis (or the way to it) says; a real write's failure is kept for ping()."""
        try:
            yield
        except UnicodeError as exc:  # text Redis cannot encode (a lone surrogate): the input's fault, not the store's
            raise _failure(action, exc) from exc
        except (RedisError, OSError) as exc:
            error = _failure(action, exc)
            if write:
                self._write_failure = error
            raise error from exc
        if write:
            self._write_failure = None

    async def record_prompt(self, record: PromptRecord) -> None:
        age = time.time() - record.submitted_at
        ttl_ms = max(1, int((self._retention_seconds - age) * 1000))
        fields: dict[str, object] = {
            "backend": record.backend,
            "user": record.user,
            "client_id": record.client_id,
            "submitted_at": record.submitted_at,
            "route": record.route,
        }
        if record.guardrails:  # left out when there are none, as most prompts have
            fields["guardrails"] = list(recorded_actions(record.guardrails))
        value = json.dumps(fields)
        with self._errors("record_prompt", write=True):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(self._prompt_prefix + record.prompt_id, value, px=ttl_ms)
                pipe.zadd(self._index_key, {record.prompt_id: record.submitted_at})
                await pipe.execute()

    async def forget_prompt(self, prompt_id: str) -> None:
        with self._errors("forget_prompt", write=True):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self._prompt_prefix + prompt_id)
                pipe.zrem(self._index_key, prompt_id)
                await pipe.execute()

    async def lookup_prompt(self, prompt_id: str) -> PromptRecord | None:
        with self._errors("lookup_prompt"):
            raw = await self._client.get(self._prompt_prefix + prompt_id)
        return None if raw is None else _record(prompt_id, raw)

    async def recent_prompts(
        self, limit: int, *, scan: int, backend: str | None = None, user: str | None = None
    ) -> list[PromptRecord]:
        found: list[PromptRecord] = []
        if limit <= 0:
            return found
        with self._errors("recent_prompts"):
            # The index newest first, a batch of ids and their records per round trip, until `limit` match or
            # `scan` ids were looked at.
            for start in range(0, scan, RECENT_BATCH_IDS):
                stop = min(start + RECENT_BATCH_IDS, scan) - 1
                ids = cast(list[str], await self._client.zrevrange(self._index_key, start, stop))
                if not ids:
                    break
                raws = cast(list[str | None], await self._client.mget([self._prompt_prefix + pid for pid in ids]))
                for prompt_id, raw in zip(ids, raws, strict=True):
                    if raw is None:
                        continue  # expired; prune drops it from the index
                    record = _record(prompt_id, raw)
                    if (backend is None or record.backend == backend) and (user is None or record.user == user):
                        found.append(record)
                        if len(found) >= limit:
                            return found
                if len(ids) <= stop - start:
                    break
        return found

    async def list_preferences(self, limit: int) -> list[tuple[str, str]]:
        with self._errors("list_preferences"):
            count = await self._client.hlen(self._preferences_key)
            pairs: list[tuple[str, str]]
            if count <= limit * 4:
                pairs = list(cast(dict[str, str], await self._client.hgetall(self._preferences_key)).items())
            else:  # a bounded walk: the first `limit` users by name among those the walk reached
                pairs = []
                async for pair in self._client.hscan_iter(self._preferences_key, count=RECENT_BATCH_IDS):
                    pairs.append(cast(tuple[str, str], pair))
                    if len(pairs) >= limit * 4:
                        break
        return sorted(pairs)[:limit]

    async def get_preference(self, user: str) -> str | None:
        with self._errors("get_preference"):
            # str, not bytes: the pool decodes responses (decode_responses=True in open)
            return cast(str | None, await self._client.hget(self._preferences_key, user))

    async def set_preference(self, user: str, backend: str) -> None:
        with self._errors("set_preference", write=True):
            await self._client.hset(self._preferences_key, user, backend)

    async def delete_preference(self, user: str) -> bool:
        with self._errors("delete_preference", write=True):
            return await self._client.hdel(self._preferences_key, user) > 0

    async def prune(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        removed = 0
        with self._errors("prune", write=True):
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
        with self._errors("count_prompts"):
            return await self._client.zcount(self._index_key, f"({time.time() - self._retention_seconds!r}", "+inf")

    async def ping(self) -> None:
        if self._closed:  # the client would silently reconnect; a closed store must not look healthy
            raise StoreError("redis state store: closed")
        earlier = self._write_failure
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(self._probe_key, "1", px=PROBE_TTL_MS)
                pipe.delete(self._probe_key)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            # "ping failed": what it always said; the test write fails the way any write or read would
            raise _failure("ping", exc) from exc
        self._write_failure = None
        if earlier is not None:
            raise StoreError(
                f"redis state store: the last write failed ({str(earlier).removeprefix('redis state store: ')}) "
                "and none succeeded after it until this check's own test write"
            )

    async def close(self) -> None:
        self._closed = True
        await self._client.aclose()
