"""Redis for tests: the server at TEST_REDIS_URL (127.0.0.1:6379 by default), a fresh key prefix per test whose
keys are deleted afterwards. A test that needs it fails under CI when it is unreachable, and is skipped
elsewhere."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NoReturn

import pytest
from redis import asyncio as aioredis

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def fresh_prefix() -> str:
    return f"comfy-gateway-test:{uuid.uuid4().hex}:"


def unreachable(exc: BaseException) -> NoReturn:
    if "CI" in os.environ:
        pytest.fail(f"CI is set and Redis at {REDIS_URL} is unreachable: {exc}")
    pytest.skip(f"Redis at {REDIS_URL} is unreachable: {exc}")


async def delete_keys(prefix: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@asynccontextmanager
async def redis_prefix() -> AsyncIterator[str]:
    """A fresh key prefix on a Redis that answers; its keys deleted at the end."""
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:  # any way of not answering
        unreachable(exc)
    finally:
        await client.aclose()
    prefix = fresh_prefix()
    try:
        yield prefix
    finally:
        await delete_keys(prefix)
