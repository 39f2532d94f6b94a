"""Inventories against real KernieGen servers through the gateway's real BackendCalls (the aiohttp Forwarder):
two backends with different checkpoints read and catalogued, a backend that goes away keeps its inventory and
then loses it, a restarted backend's new models picked up (on demand and when the health checks see it back),
and get() answering at once while a backend is slow."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from gateway.backends.table import Backend, BackendTable
from gateway.core.errors import UpstreamError
from gateway.datapath.aio.forward import Forwarder, create_client_session
from gateway.inventory.catalog import ModelCatalog
from gateway.inventory.inventories import Inventories
from gateway.kerniegen.config import KernieGenConfig
from gateway.kerniegen.inventory import Inventory as KernieGenInventory
from gateway.kerniegen.server import KernieGenServer, start_kerniegen
from gateway.observe.health import HealthMonitor

StartKernieGen = Callable[..., Awaitable[KernieGenServer]]


@pytest.fixture
async def start_kg(tmp_path: Path) -> AsyncIterator[StartKernieGen]:
    """start_kg(checkpoints, loras=(), port=0) -> a running KernieGen with those models."""
    servers: list[KernieGenServer] = []

    async def start(checkpoints: tuple[str, ...], loras: tuple[str, ...] = (), port: int = 0) -> KernieGenServer:
        config = KernieGenConfig(
            port=port,
            step_delay_ms=0.0,
            data_dir=tmp_path / f"kg{len(servers)}",
            frontend_dir=None,
            inventory=KernieGenInventory(checkpoints=checkpoints, loras=loras),
        )
        server = await start_kerniegen(config)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()  # closing one twice is harmless


@pytest.fixture
async def forwarder() -> AsyncIterator[Forwarder]:
    session = create_client_session()
    yield Forwarder(session, max_body_bytes=1 << 20, max_ws_message_bytes=1 << 20)
    await session.close()


def table(**servers: KernieGenServer) -> BackendTable:
    return BackendTable({name: Backend(name, URL(server.url)) for name, server in servers.items()}, next(iter(servers)))


async def eventually(check: Callable[[], bool], *, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_two_backends_are_read_and_catalogued(start_kg: StartKernieGen, forwarder: Forwarder) -> None:
    a = await start_kg(("alpha.safetensors", "shared.safetensors"), loras=("detail.safetensors",))
    b = await start_kg(("beta.ckpt", "shared.safetensors", "sdxl/refiner.safetensors"))
    inventories = Inventories(table(a=a, b=b), forwarder, timeout_seconds=10.0)
    await inventories.refresh_due()
    assert [status["known"] for status in inventories.describe()] == [True, True]
    catalog = ModelCatalog(inventories.snapshot())
    assert catalog.folders()["checkpoints"] == {
        "alpha.safetensors": ["a"],
        "beta.ckpt": ["b"],
        "sdxl/refiner.safetensors": ["b"],
        "shared.safetensors": ["a", "b"],
    }
    assert catalog.folders()["loras"] == {"detail.safetensors": ["a"]}
    assert catalog.where_available("checkpoints", "shared.safetensors") == ["a", "b"]
    assert catalog.where_available("ckpt_name", "beta.ckpt") == ["b"]
    assert catalog.where_available("lora_name", "detail.safetensors") == ["a"]
    # what each one's loaders list is what its own GET /models/{folder} lists
    async with aiohttp.ClientSession() as http:
        for name, server in (("a", a), ("b", b)):
            files = catalog.backend_files(name)
            assert files is not None
            for folder in ("checkpoints", "loras"):
                async with http.get(f"{server.url}/models/{folder}") as answer:
                    assert files[folder] == await answer.json()


async def test_a_backend_gone_keeps_its_inventory_then_loses_it(
    start_kg: StartKernieGen, forwarder: Forwarder
) -> None:
    a = await start_kg(("alpha.safetensors",))
    b = await start_kg(("beta.safetensors",))
    inventories = Inventories(
        table(a=a, b=b), forwarder, ttl_seconds=0.3, max_age_seconds=1.2, retry_seconds=0.05, tick_seconds=0.02,
        timeout_seconds=2.0,
    )
    runner = asyncio.create_task(inventories.run())
    try:
        await eventually(lambda: inventories.get("a") is not None and inventories.get("b") is not None)
        kept = inventories.get("b")
        await b.close()
        await eventually(lambda: inventories.status("b").last_error is not None)
        assert inventories.get("b") is kept  # refreshes fail, the last good one stays
        assert "'b'" in (inventories.status("b").last_error or "")
        await eventually(lambda: inventories.get("b") is None, seconds=3.0)
        status = inventories.status("b")
        assert status.inventory is None and status.last_error is not None
        # the other backend was refreshed all along
        a_status = inventories.status("a")
        assert a_status.inventory is not None and a_status.last_error is None
        assert a_status.age_seconds is not None and a_status.age_seconds < 1.2
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_a_restarted_backend_is_read_again_on_demand_and_when_it_comes_back(
    start_kg: StartKernieGen, forwarder: Forwarder
) -> None:
    first = await start_kg(("old.safetensors",))
    port = URL(first.url).port
    backends = table(a=first)
    inventories = Inventories(backends, forwarder, timeout_seconds=2.0)
    health = HealthMonitor(
        backends, forwarder, timeout_seconds=2.0, on_check=lambda name, up, _: inventories.backend_checked(name, up)
    )
    assert (await inventories.refresh("a")).files["checkpoints"] == ("old.safetensors",)

    await first.close()
    await health.check_all()  # seen down
    with pytest.raises(UpstreamError):
        await inventories.refresh("a")
    second = await start_kg(("new.safetensors", "newer.safetensors"), port=port)
    assert (await inventories.refresh("a")).files["checkpoints"] == ("new.safetensors", "newer.safetensors")

    # restarted again with other models: the health checks seeing it back is enough
    await second.close()
    await health.check_all()
    await start_kg(("third.safetensors",), port=port)
    await health.check_all()
    await eventually(lambda: inventories.get("a") is not None
                     and inventories.get("a").files["checkpoints"] == ("third.safetensors",))  # type: ignore[union-attr]


async def test_get_answers_at_once_while_a_backend_is_slow(start_kg: StartKernieGen, forwarder: Forwarder) -> None:
    a = await start_kg(("alpha.safetensors",))
    a.state.faults.delay_endpoints["/object_info"] = 0.5
    inventories = Inventories(table(a=a), forwarder, timeout_seconds=5.0)
    refresh = asyncio.create_task(inventories.refresh("a"))
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    assert inventories.get("a") is None  # nothing yet, and no waiting for it
    assert time.perf_counter() - started < 0.1
    assert inventories.status("a").refreshing
    kept = await refresh

    again = asyncio.create_task(inventories.refresh("a"))
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    assert inventories.get("a") is kept  # the one kept, while the next one is read
    assert time.perf_counter() - started < 0.1
    await again


async def test_an_answer_over_the_size_bound_is_refused(start_kg: StartKernieGen, forwarder: Forwarder) -> None:
    a = await start_kg(("alpha.safetensors",))
    inventories = Inventories(table(a=a), forwarder, max_bytes=1024)
    with pytest.raises(UpstreamError, match="1024-byte limit|more than 1024 bytes"):
        await inventories.refresh("a")
    assert inventories.get("a") is None and "1024" in (inventories.status("a").last_error or "")
