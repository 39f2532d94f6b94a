"""The fast path's side facing backends: the connection cap, reusing pooled connections safely (a retry only
when it cannot repeat a request's effect, never for POST /prompt), backends that break off, and memory
that stays bounded when a client reads slowly."""

from __future__ import annotations

import asyncio
import json
import tracemalloc

import aiohttp

from gateway.datapath.fast.limits import Limits
from tests.fastpath.conftest import ok, parse_responses, raw_connection, send_raw

MIB = 1024 * 1024


async def test_connections_to_a_backend_are_capped(raw_backend, start_fast) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await backend.read_request(reader, writer):
            await asyncio.sleep(0.1)
            writer.write(ok())
            await writer.drain()

    backend = await raw_backend(slow)
    gateway = await start_fast({"raw": backend.url}, limits=Limits(max_connections_per_backend=2))
    async with aiohttp.ClientSession() as http:

        async def get(i: int) -> int:
            async with http.get(f"{gateway.url}/slow/{i}") as r:
                return r.status

        assert await asyncio.gather(*(get(i) for i in range(8))) == [200] * 8
    assert backend.most_open == 2 and len(backend.requests) == 8


async def test_a_pooled_connection_the_backend_dropped_is_retried_for_get_never_for_post(
    raw_backend, start_fast
) -> None:
    async def one_answer_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Answers the first request as keep-alive, then reads the second and drops the connection unanswered:
        # the race of a backend closing an idle connection just as the gateway reuses it.
        await backend.read_request(reader, writer)
        writer.write(ok(b'{"prompt_id": "p", "number": 1, "node_errors": {}}'))
        await writer.drain()
        await backend.read_request(reader, writer)

    backend = await raw_backend(one_answer_per_connection)
    gateway = await start_fast({"raw": backend.url})
    async with aiohttp.ClientSession() as http:
        for _ in range(3):  # each GET after the first meets a dropped connection, and is sent again
            async with http.get(f"{gateway.url}/queue", headers={"X-Comfy-Backend": "raw"}) as r:
                assert r.status == 200
        gets = len(backend.requests)
        assert gets == 5  # 3 answered, 2 dropped and retried
        # The pooled connection is the one that will be dropped: POST /prompt is not sent again.
        async with http.post(f"{gateway.url}/prompt", json={"prompt": {}, "prompt_id": "first"}) as r:
            assert r.status == 502  # the backend may have it: sending it again could run it twice
            assert (await r.json())["error"]["type"] == "backend_unavailable"
        async with http.get(f"{gateway.url}/gateway/prompts/first") as r:
            assert r.status == 404  # a failed submission is forgotten
        async with http.post(f"{gateway.url}/prompt", json={"prompt": {}, "prompt_id": "second"}) as r:
            assert r.status == 200  # a fresh connection
        posts = [req for req in backend.requests[gets:] if req.startswith(b"POST")]
        assert [json.loads(req.split(b"\r\n\r\n", 1)[1])["prompt_id"] for req in posts] == ["first", "second"]


async def test_a_backend_that_closed_an_idle_connection_is_not_noticed_by_clients(raw_backend, start_fast) -> None:
    async def close_after_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await backend.read_request(reader, writer)
        writer.write(ok())
        await writer.drain()

    backend = await raw_backend(close_after_answer)
    gateway = await start_fast({"raw": backend.url})
    for _ in range(3):
        data = await send_raw(
            gateway.url, b"POST /interrupt HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        assert data.startswith(b"HTTP/1.1 200")
        await asyncio.sleep(0.05)  # the backend's close has arrived: the pooled connection is skipped, unused
    assert backend.connections == 3


async def test_a_backend_breaking_off_mid_body_cuts_the_client_and_nothing_else(raw_backend, start_fast) -> None:
    async def short_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await backend.read_request(reader, writer)
        if b"/short" in request:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        else:
            writer.write(ok())
        await writer.drain()

    backend = await raw_backend(short_body)
    gateway = await start_fast({"raw": backend.url})
    data = await send_raw(gateway.url, b"GET /short HTTP/1.1\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"x" * 10)  # then the connection was cut
    assert (await send_raw(gateway.url, b"GET /fine HTTP/1.1\r\nConnection: close\r\n\r\n")).startswith(b"HTTP/1.1 200")


async def test_malformed_answers_are_a_502(raw_backend, start_fast) -> None:
    async def nonsense(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await backend.read_request(reader, writer)
        writer.write(b"SPDY/3 ok\r\n\r\n")
        await writer.drain()

    backend = await raw_backend(nonsense)
    gateway = await start_fast({"raw": backend.url})
    (response,) = parse_responses(await send_raw(gateway.url, b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n"))
    assert response.status == 502 and response.header("X-Comfy-Backend") == b"raw"


async def test_a_large_answer_to_a_slow_reader_stays_within_a_few_mib(raw_backend, start_fast) -> None:
    block = memoryview(bytes(range(256)) * 1024)  # 256 KiB, sent again and again: the backend allocates nothing

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await backend.read_request(reader, writer)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % (48 * MIB))
        for _ in range(48 * 4):
            writer.write(block)
            await writer.drain()

    backend = await raw_backend(large)
    gateway = await start_fast({"raw": backend.url})
    async with raw_connection(gateway.url) as (reader, writer):
        tracemalloc.start()
        try:
            writer.write(b"GET /view?filename=big.png HTTP/1.1\r\nConnection: close\r\n\r\n")
            received = 0
            while chunk := await asyncio.wait_for(reader.read(64 * 1024), 10):
                received += len(chunk)
                await asyncio.sleep(0.0005)  # a slow reader: the gateway must pause the backend, not buffer
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert received > 48 * MIB  # the head and every byte of the body
    # everything allocated in this process (client, backend, gateway) while 48 MiB went through
    assert peak < 3 * MIB, f"peak traced memory {peak / MIB:.2f} MiB"
