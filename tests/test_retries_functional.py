"""Retries on real sockets, on both data paths: a GET and a POST /prompt go again when the connection was refused
(nothing was sent), a POST /prompt never once the backend may have read it, a GET once more when the backend
closed before answering; the backend sees each prompt once."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest

from tests.conftest import both_data_paths
from tests.faulty_backend import FaultyBackend
from tests.ports import free_port

pytestmark = both_data_paths

TIMEOUTS = {"connect_seconds": 0.5, "first_byte_seconds": 1.0, "read_seconds": 5}
# A backoff long enough to see the first try fail before the backend is started; no breaker in the way.
RESILIENCE = {"circuit_breaker": False, "retry_backoff_seconds": 1.5}
QUIET = {"health_check_interval_seconds": 60.0, "queue_poll_interval_seconds": 60.0}


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


@pytest.fixture
async def late():
    """A backend whose port is known before it listens."""
    backend = FaultyBackend("late", port=free_port())
    yield backend
    await backend.stop()


async def retries(http, gateway, backend, reason):
    async with http.get(gateway.url + "/metrics") as r:
        text = await r.text()
    found = re.search(
        rf'comfy_gateway_upstream_retries_total{{backend="{backend}",reason="{reason}"}} ([0-9.]+)', text
    )
    return float(found.group(1)) if found else 0.0


async def start_after_first_refusal(http, gateway, backend):
    deadline = time.monotonic() + 5
    while await retries(http, gateway, backend.name, "connect") < 1:
        assert time.monotonic() < deadline, "the refused call was never retried"
        await asyncio.sleep(0.02)
    await backend.start()


async def test_a_get_refused_once_is_retried_and_served(late, start_backend, start_gateway, http):
    good = await start_backend("good")
    gateway = await start_gateway(
        {"good": good.url, "late": {"url": late.url, "timeouts": TIMEOUTS}}, resilience=RESILIENCE, **QUIET
    )
    call = asyncio.create_task(http.get(gateway.url + "/queue?backend=late"))
    await start_after_first_refusal(http, gateway, late)
    async with await call as r:
        assert r.status == 200 and r.headers["X-Comfy-Backend"] == "late"
    assert [t for m, t in late.requests if t == "/queue"] == ["/queue"]
    assert await retries(http, gateway, "late", "connect") == 1


async def test_a_prompt_is_retried_only_before_any_byte_was_sent(late, start_backend, start_gateway, http):
    good = await start_backend("good")
    gateway = await start_gateway(
        {"late": {"url": late.url, "timeouts": TIMEOUTS}, "good": good.url}, resilience=RESILIENCE, **QUIET
    )
    payload = {"prompt": {"1": {"class_type": "Noop", "inputs": {}}}, "client_id": "c"}
    call = asyncio.create_task(http.post(gateway.url + "/prompt", json=payload))
    await start_after_first_refusal(http, gateway, late)
    async with await call as r:
        assert r.status == 200
        prompt_id = (await r.json())["prompt_id"]
    assert late.prompts == [prompt_id]  # refused, then sent once: one prompt

    late.mode = "close_before_answer"  # the backend reads the request, then drops the connection
    async with http.post(gateway.url + "/prompt", json=payload) as r:
        assert r.status == 502
    assert len(late.prompts) == 2  # the second prompt reached it once, and was not sent again
    async with http.get(gateway.url + "/system_stats") as r:
        assert r.status == 502
    assert [t for _, t in late.requests if t == "/system_stats"] == ["/system_stats"] * 2  # a GET goes once more
