"""Failover, opt-in per backend, on real sockets and both data paths: while a backend is down, its new prompts
go to its fallback (X-Comfy-Route: fallback); prompts placed before stay with it; a client's explicit choice
is never overridden unless the backend allows it; with no fallback configured nothing moves."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import both_data_paths
from tests.faulty_backend import FaultyBackend

pytestmark = both_data_paths

# One refused call opens a circuit; health checks only at start-up.
CHECKS = {"health_check_interval_seconds": 60.0, "resilience": {"consecutive_failures": 1, "retries": 0}}
TIMEOUTS = {"connect_seconds": 0.5, "first_byte_seconds": 0.5}
PROMPT = {"prompt": {"1": {"class_type": "Noop", "inputs": {}}}, "client_id": "c"}


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


@pytest.fixture
async def backends():
    main, spare = FaultyBackend("main"), FaultyBackend("spare")
    await main.start()
    await spare.start()
    yield main, spare
    await main.stop()
    await spare.stop()


async def submit(http, gateway, **kwargs):
    async with http.post(gateway.url + "/prompt", json=PROMPT, **kwargs) as r:
        body = await r.json()
        return r.status, r.headers, body


async def stop_and_trip(http, gateway, backend):
    """Kill `backend` once the gateway's start-up checks and polls are done with it; one refused call (or the
    start-up health check) opens its circuit."""
    async with http.get(gateway.url + "/gateway/ready"):
        pass
    await asyncio.sleep(0.2)
    await backend.stop()
    async with http.get(gateway.url + f"/system_stats?backend={backend.name}") as r:
        assert r.status in (502, 503)
    async with http.get(gateway.url + "/gateway/ready") as r:
        assert (await r.json())["backends"][backend.name]["circuit"]["state"] == "open"


async def test_new_prompts_go_to_the_fallback_and_placed_ones_stay(backends, start_gateway, http):
    main, spare = backends
    gateway = await start_gateway(
        {"main": {"url": main.url, "timeouts": TIMEOUTS, "fallback": "spare"}, "spare": spare.url}, **CHECKS
    )
    status, headers, body = await submit(http, gateway)
    assert status == 200 and headers["X-Comfy-Backend"] == "main" and headers["X-Comfy-Route"] == "default"
    placed = body["prompt_id"]
    await stop_and_trip(http, gateway, main)

    status, headers, body = await submit(http, gateway)
    assert status == 200
    assert headers["X-Comfy-Backend"] == "spare" and headers["X-Comfy-Route"] == "fallback"
    moved = body["prompt_id"]
    assert spare.prompts == [moved] and moved not in main.prompts
    async with http.get(gateway.url + f"/history/{moved}") as r:
        assert r.status == 200 and r.headers["X-Comfy-Backend"] == "spare"  # its follow-ups follow it
    async with http.get(gateway.url + f"/history/{placed}") as r:
        assert r.status in (502, 503) and r.headers["X-Comfy-Backend"] == "main"  # placed before: stays

    status, headers, _ = await submit(http, gateway, headers={"X-Comfy-Backend": "main"})
    assert status in (502, 503) and headers["X-Comfy-Backend"] == "main"  # the client's choice stands
    assert spare.prompts == [moved]


async def test_an_explicit_choice_moves_only_with_fallback_on_explicit(backends, start_gateway, http):
    main, spare = backends
    gateway = await start_gateway(
        {
            "main": {"url": main.url, "timeouts": TIMEOUTS, "fallback": "spare", "fallback_on_explicit": True},
            "spare": spare.url,
        },
        **CHECKS,
    )
    await stop_and_trip(http, gateway, main)
    status, headers, body = await submit(http, gateway, headers={"X-Comfy-Backend": "main"})
    assert status == 200 and headers["X-Comfy-Route"] == "fallback" and spare.prompts == [body["prompt_id"]]


async def test_without_a_fallback_nothing_moves(backends, start_gateway, http):
    main, spare = backends
    gateway = await start_gateway({"main": {"url": main.url, "timeouts": TIMEOUTS}, "spare": spare.url}, **CHECKS)
    await stop_and_trip(http, gateway, main)
    status, headers, _ = await submit(http, gateway)
    assert status in (502, 503) and headers["X-Comfy-Backend"] == "main"
    assert spare.prompts == []


async def test_a_prompt_refused_by_its_backend_s_connection_goes_to_the_fallback(backends, start_gateway, http):
    main, spare = backends
    gateway = await start_gateway(
        {"main": {"url": main.url, "timeouts": TIMEOUTS, "fallback": "spare"}, "spare": spare.url},
        health_check_interval_seconds=60.0,  # main stays up and closed as far as the gateway knows
    )
    async with http.get(gateway.url + "/gateway/ready") as r:
        assert (await r.json())["backends"]["main"]["up"] is True
    await asyncio.sleep(0.2)
    await main.stop()
    status, headers, body = await submit(http, gateway)
    assert status == 200 and headers["X-Comfy-Backend"] == "spare" and headers["X-Comfy-Route"] == "fallback"
    assert spare.prompts == [body["prompt_id"]] and main.prompts == []
    async with http.get(gateway.url + f"/history/{body['prompt_id']}") as r:
        assert r.status == 200 and r.headers["X-Comfy-Backend"] == "spare"  # its affinity moved with it
    status, headers, _ = await submit(http, gateway, headers={"X-Comfy-Backend": "main"})
    assert status == 502 and headers["X-Comfy-Backend"] == "main"  # a named backend is not replaced
    assert len(spare.prompts) == 1
