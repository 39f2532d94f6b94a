"""Bodies stream through the gateway: a large /view read slowly, and a large upload, never sit whole in memory."""

from __future__ import annotations

import asyncio
import tracemalloc

import aiohttp

MIB = 1024 * 1024


async def test_large_download_to_a_slow_client_is_not_buffered(start_backend, start_gateway):
    backend = await start_backend("kerniegen")
    gateway = await start_gateway({"kerniegen": backend.url})
    async with aiohttp.ClientSession() as http:
        tracemalloc.start()
        try:
            received = 0
            async with http.get(gateway.url + "/big/48") as r:
                assert r.status == 200
                # a slow reader: the gateway must hold back, not read the backend's 48 MiB into memory
                while chunk := await r.content.read(256 * 1024):
                    received += len(chunk)
                    await asyncio.sleep(0.002)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert received == 48 * MIB
    # everything in this process (backend, gateway, client) together stays far below the body's size
    assert peak < 16 * MIB, f"peak traced memory {peak / MIB:.1f} MiB"


async def test_large_upload_is_not_buffered(start_backend, start_gateway):
    backend = await start_backend("kerniegen")
    gateway = await start_gateway({"kerniegen": backend.url})

    async def body():
        block = b"u" * MIB
        for _ in range(48):
            yield block

    async with aiohttp.ClientSession() as http:
        tracemalloc.start()
        try:
            async with http.post(gateway.url + "/upload/image", data=body()) as r:
                assert r.status == 200
                assert (await r.json())["received_bytes"] == 48 * MIB
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 16 * MIB, f"peak traced memory {peak / MIB:.1f} MiB"
