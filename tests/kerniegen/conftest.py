"""Fixtures for KernieGen's server tests: real KernieGen instances on 127.0.0.1 (port 0) and an
HTTP client session; every instance is closed at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.kerniegen.config import KernieGenConfig
from gateway.kerniegen.server import KernieGenServer, start_kerniegen

StartKernieGen = Callable[..., Awaitable[KernieGenServer]]


@pytest.fixture
async def start_kg(tmp_path: Path) -> AsyncIterator[StartKernieGen]:
    """start_kg(**config fields) -> a running KernieGen; step_delay_ms defaults to 0 here."""
    servers: list[KernieGenServer] = []

    async def start(**overrides: Any) -> KernieGenServer:
        fields = {"port": 0, "step_delay_ms": 0.0, "data_dir": tmp_path / f"kg{len(servers)}", **overrides}
        server = await start_kerniegen(KernieGenConfig(**fields))
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def kerniegen(start_kg: StartKernieGen) -> KernieGenServer:
    return await start_kg()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
